"""The image checks every backend makes before any work, so bad input gets the same clear error everywhere."""

from collections.abc import Sequence

import numpy as np

from molmo_ros.backends.errors import InvalidImageError, UnsupportedRequestError


def check_images(images: Sequence[np.ndarray], max_images: int, backend: str) -> None:
    """Raises unless `images` holds 1 to `max_images` non-empty HxWx3 uint8 RGB arrays."""
    if len(images) == 0:
        raise InvalidImageError("no image given")
    if len(images) > max_images:
        raise UnsupportedRequestError(
            f"{len(images)} images in one request; the {backend} backend takes at most {max_images}"
        )
    for number, image in enumerate(images, start=1):
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.size == 0:
            shape = getattr(image, "shape", type(image).__name__)
            raise InvalidImageError(f"image {number}: expected an HxWx3 RGB array, got {shape}")
        if image.dtype != np.uint8:
            raise InvalidImageError(f"image {number}: expected uint8 pixels, got {image.dtype}")
