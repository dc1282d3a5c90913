"""Model backends behind one small interface; none imports ROS.

The bottom of this package is what the pointing service may import: the interface (`interface`: backend
protocol, cancel control and stages), the error types (`errors`) and the settings (`settings`). Above
it, what the backends share (`device`, `hub`, `families`, `images`, `api_key`), then three independent
backends:
`molmoe` (our own MolmoE-1B engine), `molmo2` (transformers' native Molmo2) and `openai_chat` (any
OpenAI-compatible chat-completions server, such as vLLM serving Molmo2). `factory.load_backend` builds
the one `BackendSettings.backend` names.
"""
