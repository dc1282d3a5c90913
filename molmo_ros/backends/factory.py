"""`load_backend`: the one place that turns the backend setting into a loaded backend.

Each branch imports its backend only when chosen, so a node running the openai backend never imports
torch or transformers, and the molmoe backend never needs torchvision.
"""

from molmo_ros.backends.interface import PointingBackend
from molmo_ros.backends.settings import BackendSettings


def load_backend(settings: BackendSettings) -> PointingBackend:
    """The backend `settings.backend` names, loaded (weights in memory, or a client ready to send)."""
    if settings.backend == "molmo2":
        from molmo_ros.backends.molmo2 import Molmo2Backend

        return Molmo2Backend.load(settings)
    if settings.backend == "openai":
        from molmo_ros.backends.openai_chat import OpenAIChatBackend

        return OpenAIChatBackend.load(settings)
    if settings.backend == "molmoe":
        from molmo_ros.backends.molmoe.backend import load_molmoe_backend

        return load_molmoe_backend(settings)
    # BackendSettings checks its choices, so only a new entry in BACKENDS without a branch gets here.
    raise ValueError(f"no loader for backend {settings.backend!r}")
