"""What model to run and how: the `engine.*` settings of every backend, each default written once here.

Torch-free, so the node can declare its parameters and the CLI parse its arguments without importing a
model stack. Settings a backend does not use are ignored by it (a server backend has no dtype).
"""

import os
from dataclasses import dataclass

from molmo_ros.settings_fields import SettingRef, check_setting_bounds, setting, setting_error

BACKENDS = ("molmoe", "molmo2", "openai")
MODEL_ENV_VAR = "MOLMO_MODEL"  # the model when the model setting is empty
DEVICES_HELP = "auto (CUDA if present, else CPU), cpu, cuda or cuda:N"
DTYPES = ("auto", "float32", "bfloat16", "float16")
QUANTIZATIONS = ("none", "int8")


@dataclass(frozen=True)
class BackendSettings:
    backend: str = setting(
        "molmoe",
        "Which model runs: molmoe (our MolmoE-1B engine), molmo2 (transformers' Molmo2) or openai "
        "(an OpenAI-compatible chat-completions server such as vLLM).",
        choices=BACKENDS,
    )
    model: str = setting(
        "",
        "Hugging Face model id or local checkpoint directory (molmoe, molmo2), or the served model name "
        f"(openai). Empty: ${MODEL_ENV_VAR}, else the backend's default model.",
    )
    revision: str = setting(
        "", "Commit of a Hugging Face model id; empty means the backend's pinned default."
    )
    device: str = setting("auto", f"Where a local model runs: {DEVICES_HELP}.")
    dtype: str = setting(
        "auto", "Weights dtype of a local model: auto (bfloat16 on CUDA, float32 on CPU).", choices=DTYPES
    )
    quantization: str = setting(
        "none",
        "Weights of a local model (molmoe, molmo2): none (in the dtype setting) or int8 (weight-only, one "
        "scale per output channel; about half the memory of bfloat16; the vision tower stays in dtype).",
        choices=QUANTIZATIONS,
    )
    max_new_tokens: int = setting(200, "Longest answer, in tokens.", minimum=1, maximum=4096)
    cache_dir: str = setting(
        "",
        "Where molmoe keeps its one-time bfloat16 (or int8) conversion of the checkpoint; empty means the "
        "default.",
    )
    url: str = setting("http://localhost:8000/v1", "openai: base URL of the server's OpenAI-compatible API.")
    api_key_env: str = setting(
        "MOLMO_API_KEY",
        "openai: NAME of the environment variable that holds the API key (the key itself is never a "
        "parameter and never logged); an unset variable sends no key.",
    )
    request_timeout: float = setting(
        60.0, "openai: seconds to wait for one answer from the server.", minimum=0.1, maximum=3600.0
    )
    max_retries: int = setting(
        2, "openai: retries after a connection error or an HTTP 5xx answer.", minimum=0, maximum=10
    )
    max_in_flight: int = setting(
        4, "openai: requests sent to the server at once (a server batches them).", minimum=1, maximum=64
    )
    max_image_side: int = setting(
        0,
        "openai: downscale frames whose longer side exceeds this many pixels before sending (0 = never); "
        "points are still given in the original frame's pixels.",
        minimum=0,
        maximum=16384,
    )
    image_format: str = setting("jpeg", "openai: how frames are sent: jpeg or png.", choices=("jpeg", "png"))

    def __post_init__(self) -> None:
        check_setting_bounds(self)
        if self.backend == "openai" and self.quantization != "none":
            raise setting_error(
                self,
                f"quantization {self.quantization!r} does not apply to the openai backend: the server holds "
                "the weights and quantizes them itself (vLLM: its --quantization and --dtype options); set "
                "the quantization setting to none",
                "quantization",
            )


@dataclass(frozen=True)
class DefaultModel:
    """A backend's model when none is set: its family (for messages), model id and pinned revision."""

    family: str
    model_id: str
    revision: str = ""


def chosen_model(model_setting: str, default: DefaultModel) -> str:
    """The one resolution of every backend's model: the setting, else $MOLMO_MODEL, else the default."""
    return model_setting or os.environ.get(MODEL_ENV_VAR) or default.model_id


def backend_setting(field_name: str) -> SettingRef:
    """A reference to one of these settings, for an error message about it."""
    return SettingRef(BackendSettings, field_name)
