"""Raw and compressed image buffers to RGB numpy arrays and back, without ROS.

cv_bridge from PyPI cannot be used here (a ROS 1 port that breaks with numpy 2 and OpenCV 5 and maps
16UC1 to 8 bits), so these helpers take the plain fields of sensor_msgs/Image and CompressedImage.

Results are HxWx3 uint8 RGB and C-contiguous. rgb8 without row padding is returned as a zero-copy view of
the message buffer (read-only when the buffer is); every other case is one new array. Channel swaps use
cv2.cvtColor, about a hundred times faster than numpy slicing plus a copy for a 1080p frame.

16-bit images (mono16, 16UC1: depth or infrared cameras) are stretched per frame, min to 0 and max to 255.
The model needs contrast, and the useful range of such frames is a small, camera-dependent part of 0-65535
(depth in millimetres, 10- or 12-bit infrared with a black level), so a fixed shift by 8 bits would give an
almost black image. A frame of one value maps to all zeros.
"""

import cv2
import numpy as np

SUPPORTED_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "16UC1")
PUBLISHABLE_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")

BufferLike = bytes | bytearray | memoryview | np.ndarray


class ImageConversionError(ValueError):
    """An image that cannot be turned into RGB; the message names the encoding or the sizes."""


class UnsupportedEncodingError(ImageConversionError):
    pass


class CorruptImageError(ImageConversionError):
    pass


# encoding -> (channels, bytes per channel, cv2 conversion to RGB or None)
_RAW_LAYOUTS: dict[str, tuple[int, int, int | None]] = {
    "rgb8": (3, 1, None),
    "bgr8": (3, 1, cv2.COLOR_BGR2RGB),
    "rgba8": (4, 1, cv2.COLOR_RGBA2RGB),
    "bgra8": (4, 1, cv2.COLOR_BGRA2RGB),
    "mono8": (1, 1, cv2.COLOR_GRAY2RGB),
    "mono16": (1, 2, cv2.COLOR_GRAY2RGB),
    "16UC1": (1, 2, cv2.COLOR_GRAY2RGB),
}

_FROM_RGB: dict[str, tuple[int, int | None]] = {
    "rgb8": (3, None),
    "bgr8": (3, cv2.COLOR_RGB2BGR),
    "rgba8": (4, cv2.COLOR_RGB2RGBA),
    "bgra8": (4, cv2.COLOR_RGB2BGRA),
    "mono8": (1, cv2.COLOR_RGB2GRAY),
}

# cv2.imdecode(IMREAD_UNCHANGED) channel count -> conversion of its BGR(A)/gray result to RGB
_DECODED_TO_RGB = {1: cv2.COLOR_GRAY2RGB, 3: cv2.COLOR_BGR2RGB, 4: cv2.COLOR_BGRA2RGB}


def raw_to_rgb(
    data: BufferLike, encoding: str, height: int, width: int, step: int, is_bigendian: bool
) -> np.ndarray:
    """HxWx3 uint8 RGB from the fields of a sensor_msgs/Image."""
    if encoding not in _RAW_LAYOUTS:
        raise UnsupportedEncodingError(
            f"unsupported image encoding {encoding!r}; supported: {', '.join(SUPPORTED_ENCODINGS)}"
        )
    channels, channel_bytes, to_rgb = _RAW_LAYOUTS[encoding]
    buffer = _byte_array(data)
    row_bytes = width * channels * channel_bytes
    if height <= 0 or width <= 0:
        raise CorruptImageError(f"{encoding} image has no pixels: height {height}, width {width}")
    if step < row_bytes:
        raise CorruptImageError(
            f"{encoding} image row step {step} is shorter than width {width} x {channels * channel_bytes} "
            f"bytes per pixel = {row_bytes}"
        )
    if buffer.size < step * height:
        raise CorruptImageError(
            f"{encoding} image data has {buffer.size} bytes, but height {height} x step {step} needs "
            f"{step * height}"
        )
    rows = buffer[: step * height].reshape(height, step)[:, :row_bytes]
    if channel_bytes == 2:
        # a native, contiguous copy: OpenCV misreads 16-bit rows whose step is not a multiple of 2
        pixels = _stretch_to_uint8(rows.view(">u2" if is_bigendian else "<u2").astype(np.uint16))
    else:
        pixels = rows.reshape(height, width, channels) if channels > 1 else rows
    if to_rgb is None:
        return np.ascontiguousarray(pixels)
    return cv2.cvtColor(pixels, to_rgb)


def compressed_to_rgb(data: BufferLike, format: str) -> np.ndarray:
    """HxWx3 uint8 RGB from the fields of a sensor_msgs/CompressedImage (JPEG, PNG, ...).

    The image is decoded from its own header, so `format` ("jpeg", "png", "bgr8; jpeg compressed bgr8")
    only serves the error messages and to refuse compressedDepth, whose extra header OpenCV cannot read.
    """
    if "compresseddepth" in format.replace(" ", "").lower():
        raise UnsupportedEncodingError(
            f"unsupported compressed format {format!r}: compressedDepth images are not supported"
        )
    buffer = _byte_array(data)
    if buffer.size == 0:
        raise CorruptImageError(f"compressed image ({format!r}) has no data")
    decoded = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    if decoded is None:
        raise CorruptImageError(f"cannot decode {buffer.size} bytes of compressed image data ({format!r})")
    if decoded.dtype == np.uint16:
        # one fixed scale for all channels keeps a 16-bit colour image's colours
        decoded = _stretch_to_uint8(decoded) if decoded.ndim == 2 else (decoded >> 8).astype(np.uint8)
    channels = 1 if decoded.ndim == 2 else decoded.shape[2]
    if decoded.dtype != np.uint8 or channels not in _DECODED_TO_RGB:
        raise UnsupportedEncodingError(
            f"compressed image ({format!r}) decodes to {channels} channel(s) of {decoded.dtype}, "
            "which has no RGB conversion"
        )
    return cv2.cvtColor(decoded, _DECODED_TO_RGB[channels])


def rgb_to_raw(rgb: np.ndarray, encoding: str = "rgb8") -> tuple[bytes, int]:
    """(data, step) of a sensor_msgs/Image holding `rgb` in `encoding`, rows unpadded."""
    if encoding not in _FROM_RGB:
        raise UnsupportedEncodingError(
            f"cannot publish encoding {encoding!r}; publishable: {', '.join(PUBLISHABLE_ENCODINGS)}"
        )
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or rgb.size == 0:
        raise CorruptImageError(
            f"expected a non-empty HxWx3 uint8 RGB array, got shape {rgb.shape} of {rgb.dtype}"
        )
    channels, from_rgb = _FROM_RGB[encoding]
    converted = rgb if from_rgb is None else cv2.cvtColor(rgb, from_rgb)
    return converted.tobytes(), rgb.shape[1] * channels


def _stretch_to_uint8(gray: np.ndarray) -> np.ndarray:
    """Linear map of a single-channel frame's min..max onto 0..255 (see the module docstring for why)."""
    return cv2.normalize(gray, None, 0, 255, cv2.NORM_MINMAX, dtype=cv2.CV_8U)


def _byte_array(data: BufferLike) -> np.ndarray:
    """A flat uint8 view of any buffer, without copying when the buffer is contiguous."""
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    return np.frombuffer(data, dtype=np.uint8)
