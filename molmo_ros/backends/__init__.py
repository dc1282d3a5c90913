"""Model backends behind one small interface; none imports ROS.

The bottom of this package is what every backend shares and the pointing service may import: the
interface (`interface`: backend protocol, cancel control and stages), the error types (`errors`), the
settings (`settings`), and, for local models, `device` and `hub`. Above it, three independent backends:
`molmoe` (our own MolmoE-1B engine), `molmo2` (transformers' native Molmo2) and `openai_chat` (any
OpenAI-compatible chat-completions server, such as vLLM serving Molmo2). `factory.load_backend` builds
the one `BackendSettings.backend` names.
"""
