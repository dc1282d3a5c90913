"""Points, their labels and the query drawn onto a frame, for people to see what the model pointed at.

Pure (numpy + Pillow, no ROS): the node's /molmo/debug_image and `molmo-point --output` draw the same
picture. Markers scale with the frame so they stay visible on 1080p and on thumbnails.
"""

import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import PIL.Image
from PIL import ImageDraw, ImageFont

POINT_FILL = (255, 40, 40)
OUTLINE = (255, 255, 255)
TEXT_FILL = (255, 255, 255)
TEXT_STROKE = (0, 0, 0)
# marker radius in pixels: 1/80 of the shorter side, at least this
MIN_RADIUS = 3
MIN_FONT_SIZE = 10


class LabelledPoint(Protocol):
    """x = column, y = row in molmo_ros's continuous pixel coordinates (geometry.py), and a label."""

    @property
    def x(self) -> float: ...

    @property
    def y(self) -> float: ...

    @property
    def label(self) -> str: ...


def draw_points(rgb: np.ndarray, points: Sequence[LabelledPoint], title: str = "") -> np.ndarray:
    """A new HxWx3 uint8 RGB copy of `rgb` with a ringed dot and a label per point, and `title` top left.

    A point without a label is numbered from 1 in the order given.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB array, got shape {rgb.shape} of {rgb.dtype}")
    image = PIL.Image.fromarray(rgb)  # a copy: the caller's frame is never drawn on
    draw = ImageDraw.Draw(image)
    radius = max(MIN_RADIUS, round(min(image.size) / 80))
    font = ImageFont.load_default(size=max(MIN_FONT_SIZE, radius * 3))
    stroke = max(1, radius // 3)
    for number, point in enumerate(points, start=1):
        # centred on the pixel under the point (geometry.py); Pillow addresses pixels by their index
        x, y = math.floor(point.x), math.floor(point.y)
        draw.ellipse(
            (x - radius, y - radius, x + radius, y + radius), fill=POINT_FILL, outline=OUTLINE, width=stroke
        )
        draw.text(
            (x + radius + 2, y - radius),
            point.label or str(number),
            fill=TEXT_FILL,
            font=font,
            stroke_width=2,
            stroke_fill=TEXT_STROKE,
        )
    if title:
        draw.text((radius, radius), title, fill=TEXT_FILL, font=font, stroke_width=2, stroke_fill=TEXT_STROKE)
    return np.asarray(image)
