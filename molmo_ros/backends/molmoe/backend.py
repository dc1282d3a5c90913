"""The `molmoe` backend: our own MolmoE-1B engine (`engine.MolmoEngine`) behind the backend interface."""

from collections.abc import Sequence

import numpy as np

from molmo_ros.backends.errors import SEVERAL_IMAGES_HINT, BackendError, UnsupportedRequestError
from molmo_ros.backends.interface import BackendAnswer, GenerationControl
from molmo_ros.backends.molmoe.engine import MolmoEngine
from molmo_ros.backends.settings import BackendSettings, backend_setting


class MolmoEBackend:
    """One image per prompt (MolmoE was trained on single images) and one call at a time (one GPU)."""

    name = "molmoe"
    max_images = 1
    max_concurrent_calls = 1

    def __init__(self, engine: MolmoEngine) -> None:
        self._engine: MolmoEngine | None = engine

    @property
    def engine(self) -> MolmoEngine:
        if self._engine is None:
            raise BackendError("the molmoe backend was closed; activate the node again to reload the model")
        return self._engine

    def generate(
        self, images: Sequence[np.ndarray], prompts: Sequence[str], control: GenerationControl | None = None
    ) -> BackendAnswer:
        if len(images) != self.max_images:
            raise UnsupportedRequestError(
                f"the molmoe backend answers about exactly one image, got {len(images)}; "
                + SEVERAL_IMAGES_HINT,
                [backend_setting("backend")],
            )
        return BackendAnswer(texts=self.engine.generate(images[0], prompts, control=control).texts)

    def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.close()


def load_molmoe_backend(settings: BackendSettings) -> MolmoEBackend:
    return MolmoEBackend(MolmoEngine.load(settings))
