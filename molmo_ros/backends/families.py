"""Which backend runs a checkpoint, told from its config.json: one place, so every backend that is handed
another family's checkpoint names the backend that runs it, in the same words."""

from collections.abc import Mapping
from typing import Any

from molmo_ros.backends.errors import IncompatibleCheckpointError
from molmo_ros.backends.settings import backend_setting

MOLMOE = "molmoe"
MOLMO2 = "molmo2"
DENSE_MOLMO = "dense Molmo"

# What to do with each family's checkpoint.
_HOW_TO_RUN = {
    MOLMOE: "it is MolmoE: run it with the molmoe backend",
    MOLMO2: "it is Molmo2: run it with the molmo2 backend, or serve it with vLLM and use the openai backend",
    DENSE_MOLMO: (
        "it is a dense Molmo such as Molmo-7B-D or Molmo-7B-O: serve it with vLLM and use the openai "
        "backend with the url setting naming that server's OpenAI-compatible URL"
    ),
}


def checkpoint_family(config: Mapping[str, Any]) -> str | None:
    """MOLMOE, MOLMO2 or DENSE_MOLMO from config.json's model_type and architectures; None otherwise."""
    model_type = str(config.get("model_type", ""))
    architectures = [str(name) for name in config.get("architectures") or []]
    if model_type.startswith("molmo2") or any(name.startswith("Molmo2") for name in architectures):
        return MOLMO2
    if model_type == "molmo":
        moe = config.get("block_type") == "moe" or "moe_num_experts" in config
        return MOLMOE if moe else DENSE_MOLMO
    return None


def check_family(config: Mapping[str, Any], expected: str, what: str, supported: str | None = None) -> None:
    """Raises IncompatibleCheckpointError when `config` is another family's, naming the checkpoint (`what`),
    what it is and the backend that runs it. An unrecognised config is refused with `supported` (what this
    backend runs), or let through when that is None (the backend's own field checks then say more)."""
    family = checkpoint_family(config)
    if family == expected or (family is None and supported is None):
        return
    architectures = ", ".join(str(name) for name in config.get("architectures") or []) or "none listed"
    found = (
        f"{what} is not a {expected} checkpoint (model_type {config.get('model_type', '')!r}, "
        f"architectures {architectures})"
    )
    if family is None:
        raise IncompatibleCheckpointError(f"{found}; the {expected} backend runs {supported}")
    settings = [backend_setting("backend")] + ([backend_setting("url")] if family == DENSE_MOLMO else [])
    raise IncompatibleCheckpointError(f"{found}: {_HOW_TO_RUN[family]}", settings)
