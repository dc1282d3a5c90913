"""Our own MolmoE-1B engine (no ROS imports): load once, then ask about images.

    engine = MolmoEngine.load(EngineSettings(model="allenai/MolmoE-1B-0924"))
    result = engine.generate(rgb_array, ["Point to the red mug"])
    result.texts[0], result.timings

The error types import at once; everything else is imported on first use, so code that only
catches engine errors (the pointing service, its tests) does not pay for importing torch.
"""

import importlib

from molmo_ros.engine.errors import (
    EngineError,
    EngineOutOfMemoryError,
    IncompatibleCheckpointError,
    InvalidImageError,
    WeightsNotFoundError,
)

_LAZY_EXPORTS = {
    "DEFAULT_MODEL_ID": "molmo_ros.engine.defaults",
    "DEFAULT_REVISION": "molmo_ros.engine.defaults",
    "EngineResult": "molmo_ros.engine.engine",
    "EngineSettings": "molmo_ros.engine.engine",
    "MolmoEngine": "molmo_ros.engine.engine",
    "StageTimings": "molmo_ros.engine.engine",
}

__all__ = [
    "DEFAULT_MODEL_ID",
    "DEFAULT_REVISION",
    "EngineError",
    "EngineOutOfMemoryError",
    "EngineResult",
    "EngineSettings",
    "IncompatibleCheckpointError",
    "InvalidImageError",
    "MolmoEngine",
    "StageTimings",
    "WeightsNotFoundError",
]


def __getattr__(name: str) -> object:
    module = _LAZY_EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
