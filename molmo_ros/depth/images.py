"""Depth images as sensor_msgs/Image carries them (16UC1/mono16 in mm, 32FC1 in m), read where needed."""

import math

import numpy as np

from molmo_ros.depth.errors import DepthError

DEPTH_ENCODINGS = ("16UC1", "mono16", "32FC1")
# metres per unit of integer depth: millimetres, as depth_image_proc reads uint16 depth
MILLIMETRES = 0.001


class DepthImage:
    """A depth image in its message's own buffer, converted to metres only where it is read.

    Converting a whole 1080p frame takes several milliseconds, and lifting a point reads a few small
    windows of it, so slicing (`image[top:bottom, left:right]`) converts just that slice (NaN where there
    is no depth). `read_depth` checks the image when it builds one.
    """

    def __init__(self, values: np.ndarray, metres_per_unit: float | None) -> None:
        self._values = values  # HxW, the message's own dtype and byte order
        self._metres_per_unit = metres_per_unit  # None: the values are metres already (float depth)

    @property
    def shape(self) -> tuple[int, int]:
        return self._values.shape

    def metres(self) -> np.ndarray:
        """The whole image in metres, HxW float32, NaN where there is no depth."""
        return self[:, :]

    def __getitem__(self, key: object) -> np.ndarray:
        values = self._values[key]
        metres = values.astype(np.float32)
        if self._metres_per_unit is None:
            metres[~np.isfinite(metres) | (metres == 0)] = np.nan
        else:
            metres *= np.float32(self._metres_per_unit)
            metres[values == 0] = np.nan
        return metres


def read_depth(
    data: bytes | bytearray | memoryview | np.ndarray,
    encoding: str,
    height: int,
    width: int,
    step: int,
    is_bigendian: bool,
    scale: float | None = None,
) -> DepthImage:
    """The depth image in the fields of a sensor_msgs/Image, checked, without converting it.

    16UC1 and mono16 are millimetres unless `scale` (metres per unit) says otherwise; 32FC1 is metres and
    ignores `scale`. 0, NaN and +-inf mean "no depth", as in depth_image_proc.
    """
    if encoding not in DEPTH_ENCODINGS:
        raise DepthError(
            f"depth encoding {encoding!r} is not supported; use {', '.join(DEPTH_ENCODINGS)} "
            "(16-bit in millimetres, or float in metres)"
        )
    if scale is not None and not (math.isfinite(scale) and scale > 0):
        raise DepthError(f"depth scale must be a positive number of metres per unit, not {scale!r}")
    is_float = encoding == "32FC1"
    pixel_bytes = 4 if is_float else 2
    if height <= 0 or width <= 0:
        raise DepthError(f"{encoding} depth image has no pixels: height {height}, width {width}")
    row_bytes = width * pixel_bytes
    if step < row_bytes or step % pixel_bytes:
        raise DepthError(
            f"{encoding} depth image step {step} does not fit width {width} x {pixel_bytes} bytes per "
            f"pixel = {row_bytes} (it must be at least that and a multiple of {pixel_bytes})"
        )
    if isinstance(data, np.ndarray):
        buffer = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    else:
        buffer = np.frombuffer(data, dtype=np.uint8)
    if buffer.size < step * height:
        raise DepthError(
            f"{encoding} depth image has {buffer.size} bytes, but height {height} x step {step} needs "
            f"{step * height}"
        )
    order = ">" if is_bigendian else "<"
    dtype = np.dtype(f"{order}f4" if is_float else f"{order}u2")
    values = buffer[: step * height].reshape(height, step)[:, :row_bytes].view(dtype)
    return DepthImage(values, None if is_float else (MILLIMETRES if scale is None else scale))
