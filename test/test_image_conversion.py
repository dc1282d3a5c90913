"""Image buffer conversions against expectations built with plain numpy slicing and Pillow."""

import array
import io

import cv2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from molmo_ros.image_conversion import (
    PUBLISHABLE_ENCODINGS,
    SUPPORTED_ENCODINGS,
    CorruptImageError,
    ImageConversionError,
    UnsupportedEncodingError,
    compressed_to_rgb,
    raw_to_rgb,
    rgb_to_raw,
)

# encoding -> (channels, numpy dtype of one channel in a little-endian message)
LAYOUTS = {
    "rgb8": (3, np.uint8),
    "bgr8": (3, np.uint8),
    "rgba8": (4, np.uint8),
    "bgra8": (4, np.uint8),
    "mono8": (1, np.uint8),
    "mono16": (1, np.uint16),
    "16UC1": (1, np.uint16),
}


def pack(pixels: np.ndarray, padding: int, bigendian: bool = False) -> tuple[bytes, int]:
    """Message data and step for an HxWxC (or HxW) array, each row followed by `padding` junk bytes."""
    dtype = pixels.dtype.newbyteorder(">" if bigendian else "<")
    rows = [row.astype(dtype).tobytes() + bytes([0xAB]) * padding for row in pixels]
    return b"".join(rows), len(rows[0])


def expected_rgb(pixels: np.ndarray, encoding: str) -> np.ndarray:
    """What the conversion must give, by numpy indexing and arithmetic only."""
    if encoding in ("rgb8", "rgba8"):
        return pixels[..., :3]
    if encoding in ("bgr8", "bgra8"):
        return pixels[..., 2::-1]
    if encoding == "mono8":
        return np.repeat(pixels[..., None], 3, axis=2)
    low, high = int(pixels.min()), int(pixels.max())
    span = max(high - low, 1)
    gray = np.round((pixels.astype(np.float64) - low) * 255 / span).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


def random_pixels(encoding: str, height: int, width: int, seed: int = 0) -> np.ndarray:
    channels, dtype = LAYOUTS[encoding]
    shape = (height, width, channels) if channels > 1 else (height, width)
    return np.random.default_rng(seed).integers(0, np.iinfo(dtype).max, shape, endpoint=True, dtype=dtype)


def assert_converted(result: np.ndarray, pixels: np.ndarray, encoding: str) -> None:
    assert result.shape == (*pixels.shape[:2], 3) and result.dtype == np.uint8
    assert result.flags.c_contiguous
    expected = expected_rgb(pixels, encoding)
    if LAYOUTS[encoding][1] == np.uint16:
        # rounding of exact halves may differ by one grey level; the range ends must be exact
        assert np.abs(result.astype(int) - expected.astype(int)).max() <= 1
        assert result.min() == 0 and result.max() == (255 if pixels.min() < pixels.max() else 0)
    else:
        np.testing.assert_array_equal(result, expected)


@pytest.mark.parametrize("encoding", SUPPORTED_ENCODINGS)
@pytest.mark.parametrize("padding", [0, 1, 5])
def test_every_encoding_with_and_without_row_padding(encoding, padding):
    pixels = random_pixels(encoding, 7, 11)
    data, step = pack(pixels, padding)
    assert_converted(raw_to_rgb(data, encoding, 7, 11, step, False), pixels, encoding)


@pytest.mark.parametrize("encoding", ["mono16", "16UC1"])
def test_big_endian_16_bit(encoding):
    pixels = np.array([[0x0102, 0x0201], [0x00FF, 0xFF00]], dtype=np.uint16)
    data, step = pack(pixels, 3, bigendian=True)
    assert data[:2] == b"\x01\x02"
    result = raw_to_rgb(data, encoding, 2, 2, step, True)
    assert_converted(result, pixels, encoding)
    little, little_step = pack(pixels, 0)
    np.testing.assert_array_equal(raw_to_rgb(little, encoding, 2, 2, little_step, False), result)


def test_16_bit_stretches_the_frame_range_onto_8_bits():
    depth_mm = np.array([[500, 1000], [1500, 2500]], dtype=np.uint16)
    data, step = pack(depth_mm, 0)
    gray = raw_to_rgb(data, "16UC1", 2, 2, step, False)[..., 0]
    np.testing.assert_array_equal(gray, [[0, 64], [128, 255]])  # (v - 500) * 255 / 2000, rounded


def test_a_16_bit_frame_of_one_value_is_black():
    data, step = pack(np.full((3, 4), 4000, dtype=np.uint16), 0)
    assert not raw_to_rgb(data, "mono16", 3, 4, step, False).any()


def test_rgb8_without_padding_is_a_zero_copy_view():
    pixels = random_pixels("rgb8", 4, 5)
    buffer = bytearray(pixels.tobytes())
    result = raw_to_rgb(buffer, "rgb8", 4, 5, 15, False)
    assert np.shares_memory(result, np.frombuffer(buffer, np.uint8))
    buffer[0] ^= 0xFF
    assert result[0, 0, 0] == pixels[0, 0, 0] ^ 0xFF


def test_rgb8_with_padding_is_a_contiguous_copy():
    pixels = random_pixels("rgb8", 4, 5)
    data, step = pack(pixels, 2)
    buffer = bytearray(data)
    result = raw_to_rgb(buffer, "rgb8", 4, 5, step, False)
    assert not np.shares_memory(result, np.frombuffer(buffer, np.uint8))
    assert result.flags.c_contiguous


@pytest.mark.parametrize(
    "wrap",
    [
        bytes,
        bytearray,
        memoryview,
        lambda data: array.array("B", data),
        lambda data: np.frombuffer(data, np.uint8),
    ],
    ids=["bytes", "bytearray", "memoryview", "array.array (rclpy)", "numpy"],
)
def test_buffer_types_of_ros_messages(wrap):
    pixels = random_pixels("bgr8", 3, 2)
    data, step = pack(pixels, 1)
    assert_converted(raw_to_rgb(wrap(data), "bgr8", 3, 2, step, False), pixels, "bgr8")


def test_a_non_byte_numpy_array_is_read_as_its_bytes():
    pixels = random_pixels("mono16", 3, 4)
    words = pixels.astype("<u2")
    assert_converted(raw_to_rgb(words, "mono16", 3, 4, 8, False), pixels, "mono16")


def test_trailing_bytes_after_the_last_row_are_ignored():
    pixels = random_pixels("rgba8", 2, 3)
    data, step = pack(pixels, 0)
    assert_converted(raw_to_rgb(data + b"\x00" * 7, "rgba8", 2, 3, step, False), pixels, "rgba8")


@given(
    encoding=st.sampled_from(SUPPORTED_ENCODINGS),
    height=st.integers(1, 12),
    width=st.integers(1, 12),
    padding=st.integers(0, 9),
    bigendian=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_layout_converts_like_numpy_indexing(encoding, height, width, padding, bigendian, seed):
    pixels = random_pixels(encoding, height, width, seed)
    data, step = pack(pixels, padding, bigendian)
    assert_converted(raw_to_rgb(data, encoding, height, width, step, bigendian), pixels, encoding)


# --- errors --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["yuv422", "32FC1", "bayer_rggb8", "RGB8", ""])
def test_unsupported_encodings_are_named(encoding):
    with pytest.raises(UnsupportedEncodingError, match=f"unsupported image encoding {encoding!r}"):
        raw_to_rgb(b"\x00" * 64, encoding, 4, 4, 16, False)


@pytest.mark.parametrize(
    ("data", "height", "width", "step", "words"),
    [
        (b"\x00" * 10, 48, 64, 192, ["10 bytes", "48", "192", "9216"]),
        (b"", 2, 2, 6, ["0 bytes", "12"]),
        (b"\x00" * 100, 0, 4, 12, ["height 0"]),
        (b"\x00" * 100, 4, 0, 12, ["width 0"]),
        (b"\x00" * 100, -1, 4, 12, ["height -1"]),
        (b"\x00" * 100, 4, 4, 11, ["step 11", "width 4", "12"]),
    ],
)
def test_corrupt_sizes_are_reported_with_the_numbers(data, height, width, step, words):
    with pytest.raises(CorruptImageError) as raised:
        raw_to_rgb(data, "rgb8", height, width, step, False)
    for word in words:
        assert word in str(raised.value)
    assert "rgb8" in str(raised.value)


def test_16_bit_step_counts_bytes():
    with pytest.raises(CorruptImageError, match="step 4 .* 8"):
        raw_to_rgb(b"\x00" * 64, "mono16", 2, 4, 4, False)


def test_error_kinds_share_one_value_error_base():
    assert issubclass(UnsupportedEncodingError, ImageConversionError)
    assert issubclass(CorruptImageError, ImageConversionError)
    assert issubclass(ImageConversionError, ValueError)


# --- compressed ----------------------------------------------------------------------------------------


def pillow_encoded(pixels: np.ndarray, image_format: str, **options) -> bytes:
    stream = io.BytesIO()
    Image.fromarray(pixels).save(stream, format=image_format, **options)
    return stream.getvalue()


def smooth_rgb(height: int = 48, width: int = 64) -> np.ndarray:
    rows, columns = np.mgrid[0:height, 0:width]
    return np.stack([columns * 4, rows * 5, (rows + columns) * 2], axis=2).astype(np.uint8)


@pytest.mark.parametrize("format_string", ["png", "rgb8; png compressed bgr8"])
def test_png_round_trip_is_exact(format_string):
    pixels = random_pixels("rgb8", 9, 13)
    np.testing.assert_array_equal(compressed_to_rgb(pillow_encoded(pixels, "PNG"), format_string), pixels)


@pytest.mark.parametrize(
    "format_string", ["jpeg", "bgr8; jpeg compressed bgr8", "rgb8; jpeg compressed bgr8"]
)
def test_jpeg_round_trip_is_close_and_in_rgb_order(format_string):
    pixels = smooth_rgb()
    result = compressed_to_rgb(pillow_encoded(pixels, "JPEG", quality=95), format_string)
    assert result.shape == pixels.shape and result.dtype == np.uint8 and result.flags.c_contiguous
    assert np.abs(result.astype(int) - pixels.astype(int)).mean() < 2


def test_grey_and_rgba_png_become_rgb():
    gray = random_pixels("mono8", 5, 6)
    rgba = random_pixels("rgba8", 5, 6)
    mono_format = "mono8; png compressed mono8"
    np.testing.assert_array_equal(
        compressed_to_rgb(pillow_encoded(gray, "PNG"), mono_format), expected_rgb(gray, "mono8")
    )
    np.testing.assert_array_equal(compressed_to_rgb(pillow_encoded(rgba, "PNG"), "png"), rgba[..., :3])


def test_16_bit_png_is_stretched_like_raw_16_bit():
    depth = random_pixels("mono16", 5, 6)
    stream = io.BytesIO()
    Image.fromarray(depth).save(stream, format="PNG")
    data, step = pack(depth, 0)
    from_png = compressed_to_rgb(stream.getvalue(), "mono16; png compressed mono16")
    np.testing.assert_array_equal(from_png, raw_to_rgb(data, "mono16", 5, 6, step, False))


def test_16_bit_colour_png_keeps_its_high_bytes():
    rgb16 = random_pixels("rgb8", 3, 4).astype(np.uint16) * 256 + 3
    ok, png = cv2.imencode(".png", np.ascontiguousarray(rgb16[..., ::-1]))
    assert ok
    np.testing.assert_array_equal(compressed_to_rgb(png.tobytes(), "png"), (rgb16 // 256).astype(np.uint8))


def test_compressed_depth_is_unsupported():
    with pytest.raises(UnsupportedEncodingError, match="compressedDepth"):
        compressed_to_rgb(b"\x00" * 32, "16UC1; compressedDepth png")


@pytest.mark.parametrize(
    ("data", "words"),
    [(b"", ["no data"]), (b"not an image at all", ["19 bytes", "'jpeg'"]), (b"\xff\xd8\xff", ["3 bytes"])],
)
def test_undecodable_compressed_data_is_corrupt(data, words):
    with pytest.raises(CorruptImageError) as raised:
        compressed_to_rgb(data, "jpeg")
    for word in words:
        assert word in str(raised.value)


def test_truncated_png_is_corrupt():
    png = pillow_encoded(random_pixels("rgb8", 20, 20), "PNG")
    with pytest.raises(CorruptImageError):
        compressed_to_rgb(png[: len(png) // 2], "png")


# --- publishing ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
def test_colour_publishing_round_trips(encoding):
    pixels = random_pixels("rgb8", 6, 7)
    data, step = rgb_to_raw(pixels, encoding)
    channels = LAYOUTS[encoding][0]
    assert isinstance(data, bytes) and step == 7 * channels and len(data) == step * 6
    np.testing.assert_array_equal(raw_to_rgb(data, encoding, 6, 7, step, False), pixels)


def test_published_bytes_are_in_the_encoding_order():
    pixels = np.array([[[10, 20, 30]]], dtype=np.uint8)
    assert rgb_to_raw(pixels, "rgb8")[0] == bytes([10, 20, 30])
    assert rgb_to_raw(pixels, "bgr8")[0] == bytes([30, 20, 10])
    assert rgb_to_raw(pixels, "rgba8")[0] == bytes([10, 20, 30, 255])
    assert rgb_to_raw(pixels, "bgra8")[0] == bytes([30, 20, 10, 255])


def test_mono8_publishing_is_luminance():
    pixels = random_pixels("rgb8", 6, 7)
    data, step = rgb_to_raw(pixels, "mono8")
    assert step == 7
    luminance = pixels.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    published = np.frombuffer(data, np.uint8).reshape(6, 7).astype(int)
    assert np.abs(published - np.round(luminance)).max() <= 1
    grey = np.repeat(published.astype(np.uint8)[..., None], 3, axis=2)
    grey_data, grey_step = rgb_to_raw(grey, "mono8")
    np.testing.assert_array_equal(raw_to_rgb(grey_data, "mono8", 6, 7, grey_step, False), grey)


def test_publishing_a_non_contiguous_view():
    pixels = random_pixels("rgb8", 6, 8)[:, ::2]
    data, step = rgb_to_raw(pixels, "rgb8")
    np.testing.assert_array_equal(raw_to_rgb(data, "rgb8", 6, 4, step, False), pixels)


@pytest.mark.parametrize("encoding", ["mono16", "16UC1", "yuv422"])
def test_unpublishable_encodings(encoding):
    with pytest.raises(UnsupportedEncodingError, match=encoding):
        rgb_to_raw(random_pixels("rgb8", 2, 2), encoding)
    assert encoding not in PUBLISHABLE_ENCODINGS


@pytest.mark.parametrize(
    "array_",
    [
        np.zeros((4, 4), np.uint8),
        np.zeros((4, 4, 4), np.uint8),
        np.zeros((4, 4, 3), np.float32),
        np.zeros((0, 4, 3), np.uint8),
    ],
)
def test_publishing_needs_a_non_empty_rgb_uint8_array(array_):
    with pytest.raises(CorruptImageError, match=r"HxWx3 uint8"):
        rgb_to_raw(array_)


@given(
    arrays(np.uint8, st.tuples(st.integers(1, 10), st.integers(1, 10), st.just(3))),
    st.sampled_from(["rgb8", "bgr8"]),
)
def test_any_rgb_round_trips(pixels, encoding):
    data, step = rgb_to_raw(pixels, encoding)
    np.testing.assert_array_equal(raw_to_rgb(data, encoding, *pixels.shape[:2], step, False), pixels)
