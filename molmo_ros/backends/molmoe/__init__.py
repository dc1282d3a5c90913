"""The molmoe backend: our own MolmoE-1B engine (no ROS imports); load once, then ask about images.

    from molmo_ros.backends.settings import BackendSettings
    from molmo_ros.backends.molmoe.engine import MolmoEngine

    engine = MolmoEngine.load(BackendSettings(model="allenai/MolmoE-1B-0924"))
    result = engine.generate(rgb_array, ["Point to the red mug"])
    result.texts[0], result.timings

Import what you need from its module: `backend` (the engine behind the backend interface), `engine`
(MolmoEngine), `defaults` (torch-free), `checkpoint`, `checkpoint_source`, `checkpoint_reader`,
`weights_cache`, `config`, `key_mapping`, `modeling`, `preprocessing`, `generation`, `fast_generation`,
`quantization` (weight-only int8).
See docs/ENGINE.md for the facts of the reference model this engine reproduces.
"""
