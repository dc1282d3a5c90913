"""Normalized answer points to pixels of the original frame.

Convention: continuous pixel coordinates with the origin at the top-left corner of the frame; pixel
(column c, row r) covers [c, c + 1) x [r, r + 1), so its centre is at (c + 0.5, r + 0.5). A Molmo point at
x percent is at x / 100 * width, so 50 % of a 640-pixel-wide frame is 320.0, the line between columns 319
and 320. This is the convention of Molmo's own demo code (percent / 100 * width) and keeps the scaling
exact for any frame size; the integer pixel under a point is floor(x), floor(y), with x == width (a point
on the right edge) belonging to the last column.

A point is inside when 0 <= x <= width and 0 <= y <= height, edges included. Points outside are returned
separately and never clamped: a point the model put outside the frame is not a point on its border.
"""

from collections.abc import Iterable
from dataclasses import dataclass

from molmo_ros.parsing import ParsedPoint


@dataclass(frozen=True)
class PixelPoint:
    """x = column, y = row, continuous pixel coordinates from the frame's top-left corner."""

    x: float
    y: float
    label: str


@dataclass(frozen=True)
class PixelPoints:
    inside: tuple[PixelPoint, ...]
    outside: tuple[PixelPoint, ...]


def to_pixels(points: Iterable[ParsedPoint], width: int, height: int) -> PixelPoints:
    if width <= 0 or height <= 0:
        raise ValueError(f"frame size must be positive, got width {width} and height {height}")
    inside: list[PixelPoint] = []
    outside: list[PixelPoint] = []
    for point in points:
        pixel = PixelPoint(x=point.x * width, y=point.y * height, label=point.label)
        is_inside = 0.0 <= pixel.x <= width and 0.0 <= pixel.y <= height
        (inside if is_inside else outside).append(pixel)
    return PixelPoints(inside=tuple(inside), outside=tuple(outside))
