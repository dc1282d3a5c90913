"""The one seam between the pointing service and a model: images and prompts in, one text per prompt out.

Torch-free on purpose: the pointing service, the ROS node and their tests import this without paying
for torch. Every backend raises the error types of `molmo_ros.backends.errors`, so the service maps
failures to answers the same way whatever runs the model.
"""

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

import numpy as np

from molmo_ros.backends.errors import GenerationCancelledError


class Stage(IntEnum):
    """Where a request is; the values are the Point action's feedback constants."""

    QUEUED = 0
    VISION = 1
    DECODING = 2


ProgressCallback = Callable[[Stage, int], None]


class GenerationControl:
    """Handed to one `generate` call: a cancel signal checked between decode steps, and progress reports.

    `report(Stage.VISION)` when the image work starts, `report(Stage.DECODING, tokens)` as tokens come
    (at most once per step; a backend that cannot see steps reports what it can). Both are cheap and
    never wait for the device.
    """

    def __init__(self, on_progress: ProgressCallback | None = None) -> None:
        self._cancelled = threading.Event()
        self._on_progress = on_progress

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def wait(self, seconds: float) -> None:
        """Sleeps `seconds` (a retry's backoff), returning at once when the call is cancelled."""
        self._cancelled.wait(seconds)

    def raise_if_cancelled(self) -> None:
        if self._cancelled.is_set():
            raise GenerationCancelledError("generation was cancelled")

    def report(self, stage: Stage, tokens: int = 0) -> None:
        if self._on_progress is not None:
            self._on_progress(stage, tokens)


@dataclass(frozen=True)
class BackendAnswer:
    texts: list[str]  # one answer per prompt, special tokens removed


class PointingBackend(Protocol):
    """What the pointing service needs from a model.

    `generate` answers every prompt about the same images (one RGB uint8 HxWx3 array per image, in the
    order the prompt refers to them); `max_images` says how many images one call may carry (1 for
    MolmoE). `max_concurrent_calls` says how many `generate` calls the service may run at once: 1 for
    a local GPU, more for a server that batches requests itself. `close` frees the model (GPU memory,
    connections); the backend is not used afterwards.
    """

    name: str
    max_images: int
    max_concurrent_calls: int

    def generate(
        self,
        images: Sequence[np.ndarray],
        prompts: Sequence[str],
        control: GenerationControl | None = None,
    ) -> BackendAnswer: ...

    def close(self) -> None: ...
