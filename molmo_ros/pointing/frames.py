"""Camera frames as the pointing service sees them, and the store that keeps only what is needed.

A frame is decoded only when the model is about to use it: at 30 Hz most frames are replaced before
anyone looks at them, so decoding on arrival would burn a core for nothing. Once decoded, a frame keeps
its pixels, so every request about the same frame hands the model the same array (the engine reuses its
image work for that array). Depth frames are kept a little longer than colour frames, in a short buffer
per camera, because the one to use is the one stamped nearest the colour frame the model saw, which is
not always the newest.
"""

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from molmo_ros.depth.camera import CameraModel
from molmo_ros.depth.errors import DepthError
from molmo_ros.depth.pairing import DepthFrame

DEPTH_FRAMES_KEPT = 30  # one second of a 30 Hz depth stream: more than any sensible max_depth_skew


class _DecodeOnce:
    """Calls `decode` at most once successfully and keeps the result; failures are raised again each time."""

    def __init__(self, decode: Callable[[], np.ndarray]) -> None:
        self._decode = decode
        self._lock = threading.Lock()
        self._result: np.ndarray | None = None

    def __call__(self) -> np.ndarray:
        with self._lock:
            if self._result is None:
                self._result = self._decode()
            return self._result


@dataclass(frozen=True)
class Frame:
    """One image with the stamp and frame of the message it came in, decoded on demand (once).

    `decode` returns an HxWx3 uint8 RGB array or raises `ImageConversionError`.
    """

    camera: str
    stamp_ns: int
    frame_id: str
    received_ns: int
    decode: Callable[[], np.ndarray]

    def __post_init__(self) -> None:
        object.__setattr__(self, "decode", _DecodeOnce(self.decode))


@dataclass
class _CameraStore:
    frame: Frame | None = None
    sequence: int = 0
    depth: deque[DepthFrame] = field(default_factory=lambda: deque(maxlen=DEPTH_FRAMES_KEPT))
    camera_model: CameraModel | DepthError | None = None  # the error when its CameraInfo is unusable


class LatestFrames:
    """The newest frame per camera (older ones are dropped, so nothing queues up while the model runs),
    a few recent depth frames per camera, and the camera model of the newest CameraInfo."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cameras: dict[str, _CameraStore] = {}

    def _store(self, camera: str) -> _CameraStore:
        return self._cameras.setdefault(camera, _CameraStore())

    def put(self, frame: Frame) -> None:
        with self._lock:
            store = self._store(frame.camera)
            store.frame = frame
            store.sequence += 1

    def get(self, camera: str) -> Frame | None:
        with self._lock:
            store = self._cameras.get(camera)
            return store.frame if store else None

    def sequence(self, camera: str) -> int:
        """How many frames this camera has delivered so far (0 = none yet)."""
        with self._lock:
            store = self._cameras.get(camera)
            return store.sequence if store else 0

    def put_depth(self, camera: str, depth: DepthFrame) -> None:
        with self._lock:
            self._store(camera).depth.append(depth)

    def nearest_depth(self, camera: str, stamp_ns: int) -> DepthFrame | None:
        """The kept depth frame stamped nearest `stamp_ns`, the newest among equally near ones (a driver
        may stamp frames alike); None when there is none at all."""
        with self._lock:
            store = self._cameras.get(camera)
            newest_first = list(reversed(store.depth)) if store else []
        return min(newest_first, key=lambda depth: abs(depth.stamp_ns - stamp_ns), default=None)

    def put_camera_model(self, camera: str, model: CameraModel | DepthError) -> None:
        with self._lock:
            self._store(camera).camera_model = model

    def camera_model(self, camera: str) -> CameraModel | DepthError | None:
        with self._lock:
            store = self._cameras.get(camera)
            return store.camera_model if store else None

    def clear(self) -> None:
        """Forget everything (the node was deactivated: old frames must not answer new requests)."""
        with self._lock:
            self._cameras.clear()
