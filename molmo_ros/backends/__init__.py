"""Model backends behind one small interface (`interface.PointingBackend`); none imports ROS.

`molmoe` is our own MolmoE-1B engine (`molmo_ros.engine`), `molmo2` is transformers' native Molmo2,
`openai` is any OpenAI-compatible chat-completions server (vLLM serving Molmo2 or Molmo-7B). Pick one
with `BackendSettings.backend` and build it with `factory.load_backend`.
"""
