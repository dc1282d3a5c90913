"""Which model is used when none is named; torch-free, so argument parsing and --help stay fast."""

import os

DEFAULT_MODEL_ID = "allenai/MolmoE-1B-0924"
# Pinned to the commit whose remote code (config_molmoe.py, modeling_molmoe.py, preprocessing
# files) the reference behaviour in docs/ENGINE.md was checked against: the hub tree at 03d86d0 is the
# "Update preprocessing_molmo.py (#13)" commit, after which only the model card changed. It ships
# the weights as pytorch_model.bin (the repo is tagged PyTorch, not Safetensors), which
# `checkpoint.find_weight_files` accepts. The other public commit, 9867b99, could not be matched to
# any file listing or code we could check, so it is not the default.
DEFAULT_REVISION = "03d86d0fc2cc9a8840f92c0df54d178d08b86be5"
MODEL_ENV_VAR = "MOLMO_MODEL"


def default_model() -> str:
    """The model to use when none is given: $MOLMO_MODEL, else the public MolmoE-1B."""
    return os.environ.get(MODEL_ENV_VAR) or DEFAULT_MODEL_ID
