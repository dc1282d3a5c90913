"""Which MolmoE checkpoint is used when none is named; torch-free, so --help stays fast."""

from molmo_ros.backends.settings import DefaultModel

# The revision is the commit whose remote code (config_molmoe.py, modeling_molmoe.py, preprocessing
# files) the reference behaviour in docs/ENGINE.md was checked against: the hub tree at 03d86d0 is the
# "Update preprocessing_molmo.py (#13)" commit. It ships the weights as pytorch_model.bin, which
# `checkpoint_reader.find_weight_files` accepts.
MOLMOE_DEFAULT = DefaultModel(
    family="MolmoE",
    model_id="allenai/MolmoE-1B-0924",
    revision="03d86d0fc2cc9a8840f92c0df54d178d08b86be5",
)
