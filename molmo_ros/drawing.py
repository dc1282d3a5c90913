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
NORMAL_FILL = (60, 160, 255)
ARROW_RADII = 8  # a normal seen edge-on is drawn this many marker radii long
ARROW_HEAD_PX = 6
ARROW_HEAD_ANGLE = math.radians(30)


class LabelledPoint(Protocol):
    """x = column, y = row in molmo_ros's continuous pixel coordinates (geometry.py), and a label."""

    @property
    def x(self) -> float: ...

    @property
    def y(self) -> float: ...

    @property
    def label(self) -> str: ...


class SurfacePoint(Protocol):
    """A 3D point in a camera's optical frame (x right, y down, z forward) and its surface normal."""

    @property
    def xyz(self) -> tuple[float, float, float] | None: ...

    @property
    def normal(self) -> tuple[float, float, float] | None: ...


def normal_in_image(point: SurfacePoint | None) -> tuple[float, float] | None:
    """The surface normal as the camera sees it at its point: (dx, dy) in image pixels' directions, as
    long as the normal's part across the line of sight (0 facing the camera, 1 seen edge-on); None
    without a normal. It is the derivative of the pinhole projection along the normal, up to the focal
    length, which is the same for both axes within a calibration's error."""
    if point is None or point.xyz is None or point.normal is None:
        return None
    (x, y, z), (nx, ny, nz) = point.xyz, point.normal
    return (nx - x / z * nz, ny - y / z * nz)


def draw_points(
    rgb: np.ndarray,
    points: Sequence[LabelledPoint],
    title: str = "",
    normals: Sequence[tuple[float, float] | None] = (),
) -> np.ndarray:
    """A new HxWx3 uint8 RGB copy of `rgb` with a ringed dot and a label per point, and `title` top left;
    `normals` (one per point, see normal_in_image) adds an arrow along each point's surface normal.

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
        normal = normals[number - 1] if number <= len(normals) else None
        if normal is not None:
            _arrow(draw, (x, y), normal, ARROW_RADII * radius, stroke)
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


def _arrow(
    draw: ImageDraw.ImageDraw,
    start: tuple[int, int],
    direction: tuple[float, float],
    length: float,
    width: int,
) -> None:
    """A line from `start` along `direction` (scaled by `length`) with a two-stroke head at its tip."""
    dx, dy = direction[0] * length, direction[1] * length
    tip = (start[0] + dx, start[1] + dy)
    draw.line((start, tip), fill=NORMAL_FILL, width=width)
    size = math.hypot(dx, dy)
    if size < 1:
        return
    back_x, back_y = -dx / size * ARROW_HEAD_PX, -dy / size * ARROW_HEAD_PX
    for turn in (-ARROW_HEAD_ANGLE, ARROW_HEAD_ANGLE):
        cos, sin = math.cos(turn), math.sin(turn)
        head = (tip[0] + cos * back_x - sin * back_y, tip[1] + sin * back_x + cos * back_y)
        draw.line((tip, head), fill=NORMAL_FILL, width=width)
