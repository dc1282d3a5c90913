"""Camera frames as the pointing service sees them, and the store that keeps only the newest one.

A frame is decoded only when the model is about to use it: at 30 Hz most frames are replaced
before anyone looks at them, so decoding on arrival would burn a core for nothing.
"""

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One image with the stamp and frame of the message it came in, decoded on demand.

    `decode` returns an HxWx3 uint8 RGB array or raises `ImageConversionError`.
    """

    camera: str
    stamp_ns: int
    frame_id: str
    received_ns: int
    decode: Callable[[], np.ndarray]


class LatestFrames:
    """The newest frame per camera; older frames are dropped, so nothing queues up while the model runs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._frames: dict[str, Frame] = {}
        self._sequence: dict[str, int] = {}

    def put(self, frame: Frame) -> None:
        with self._lock:
            self._frames[frame.camera] = frame
            self._sequence[frame.camera] = self._sequence.get(frame.camera, 0) + 1

    def get(self, camera: str) -> Frame | None:
        with self._lock:
            return self._frames.get(camera)

    def sequence(self, camera: str) -> int:
        """How many frames this camera has delivered so far (0 = none yet)."""
        with self._lock:
            return self._sequence.get(camera, 0)
