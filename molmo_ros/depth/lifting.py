"""Pointed pixels to 3D points in the colour camera's optical frame.

Conventions:
- Points come in molmo_ros's continuous pixel coordinates (see geometry.py: pixel column c spans
  [c, c + 1)). OpenCV, CameraInfo and image_geometry put the centre of pixel 0 at 0, so a point x is
  OpenCV coordinate x - 0.5 before undistortion and projection (`CameraModel.rectify`).
- The result is in the colour camera's optical frame (x right, y down, z forward, metres). Z is the depth
  value, the distance along the optical axis (not the range), as depth_image_proc reads it:
  X = (u - cx) Z / fx, Y = (v - cy) Z / fy, with (u, v) the undistorted pixel and fx, fy, cx, cy from P.
- The depth image is registered to the colour image (same field of view, same pixel grid up to a scale),
  so depth is sampled at the pointed pixel itself, not at its undistorted position.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from molmo_ros.depth.camera import CameraModel
from molmo_ros.depth.errors import DepthError
from molmo_ros.depth.images import DepthImage
from molmo_ros.depth.settings import DepthSettings

# A depth image may differ from the colour image's aspect ratio by this many depth pixels (rounding of
# a downscale to whole pixels: 1280x720 to 427x240 is off by 0.19 rows); more is another field of view.
ASPECT_TOLERANCE_PX = 1.0


@dataclass(frozen=True)
class LiftedPoint:
    """One pointed pixel in 3D, or why it has no 3D position."""

    xyz: tuple[float, float, float] | None  # metres in the colour camera's optical frame; None if invalid
    depth: float  # Z in metres that was used; NaN when invalid
    spread: float  # median absolute deviation (metres) of the valid depths around the depth used; NaN if none
    search_distance: float  # depth-image pixels from the point to the depth used; 0 when the window had some
    reason: str = ""  # empty when valid

    @property
    def valid(self) -> bool:
        return self.xyz is not None


def check_depth_geometry(
    image_size: tuple[int, int], depth_shape: tuple[int, ...], camera: CameraModel
) -> None:
    """Raises DepthError unless the CameraInfo and the depth image's shape fit a width x height image.

    lift_points checks this itself; it is public so that input files can be checked before a model runs.
    """
    width, height = image_size
    camera.check_image_size(width, height)
    if len(depth_shape) != 2 or 0 in depth_shape:
        raise DepthError(f"depth image must be a non-empty HxW array, got shape {tuple(depth_shape)}")
    depth_height, depth_width = depth_shape
    if abs(height * depth_width / width - depth_height) > ASPECT_TOLERANCE_PX:
        raise DepthError(
            f"depth image is {depth_width}x{depth_height} but the colour image is {width}x{height}: another "
            "aspect ratio, so they do not cover the same field of view; use a depth image registered "
            "(aligned) to the colour image"
        )


def lift_points(
    points_px: Sequence[tuple[float, float]] | np.ndarray,
    image_size: tuple[int, int],
    depth_m: np.ndarray | DepthImage,
    camera: CameraModel,
    settings: DepthSettings,
) -> list[LiftedPoint]:
    """Each point (x, y) of a width x height colour image, lifted with a registered depth image in metres.

    Raises DepthError when the whole depth frame or CameraInfo cannot be used (wrong CameraInfo size,
    another aspect ratio); a point without valid depth near it is returned invalid, with its reason.
    """
    check_depth_geometry(image_size, depth_m.shape, camera)
    width, height = image_size
    scale_x, scale_y = depth_m.shape[1] / width, depth_m.shape[0] / height
    points = np.asarray(points_px, dtype=np.float64).reshape(-1, 2)
    if points.size == 0:
        return []
    rays = camera.rays(points)
    lifted = []
    for (x, y), ray in zip(points, rays, strict=True):
        depth, spread, distance = _sample_depth(depth_m, x * scale_x, y * scale_y, settings)
        if math.isnan(depth):
            reason = (
                f"no valid depth within {settings.depth_search_radius} depth-image pixels of the point "
                f"(holes, or depths outside {settings.min_depth:g}-{settings.max_depth:g} m)"
            )
            lifted.append(LiftedPoint(None, math.nan, math.nan, math.nan, reason))
            continue
        xyz = (float(ray[0] * depth), float(ray[1] * depth), depth)
        lifted.append(LiftedPoint(xyz, depth, spread, distance))
    return lifted


def _sample_depth(
    depth_m: np.ndarray | DepthImage, x: float, y: float, settings: DepthSettings
) -> tuple[float, float, float]:
    """(depth, spread, search distance) at depth-image point (x, y); NaN depth when none is valid."""
    rows, columns = depth_m.shape
    column = min(int(math.floor(x)), columns - 1)  # x == width lies on the last column's right edge
    row = min(int(math.floor(y)), rows - 1)
    window = _window_values(depth_m, x, y, settings)
    if window.size:
        median = float(np.median(window))
        return median, _median_absolute_deviation(window, median), 0.0
    radius = settings.depth_search_radius
    top, left = max(0, row - radius), max(0, column - radius)
    patch = depth_m[top : row + radius + 1, left : column + radius + 1]
    valid = _valid(patch, settings)
    if not valid.any():
        return math.nan, math.nan, math.nan
    found_rows, found_columns = np.nonzero(valid)
    # the valid pixel whose centre is nearest the point; equally near ones give their median
    distances = np.hypot(found_columns + left + 0.5 - x, found_rows + top + 0.5 - y)
    nearest = distances.min()
    ties = distances == nearest
    depth = float(np.median(patch[found_rows[ties], found_columns[ties]]))
    # spread of the window around the depth that was found, so a planner still sees an edge there
    centre_x = float(found_columns[ties][0] + left + 0.5)
    centre_y = float(found_rows[ties][0] + top + 0.5)
    around = _window_values(depth_m, centre_x, centre_y, settings)
    return depth, _median_absolute_deviation(around, float(np.median(around))), float(nearest)


def _window_values(
    depth_m: np.ndarray | DepthImage, x: float, y: float, settings: DepthSettings
) -> np.ndarray:
    """Valid depths of the depth_window-sided window centred nearest (x, y), clipped to the image."""
    side = settings.depth_window
    left = math.floor(x - (side - 1) / 2)
    top = math.floor(y - (side - 1) / 2)
    rows, columns = depth_m.shape
    left = min(left, columns - 1)  # keep at least the edge pixel for a point on the right or bottom edge
    top = min(top, rows - 1)
    window = depth_m[max(0, top) : max(0, top + side), max(0, left) : max(0, left + side)]
    return window[_valid(window, settings)]


def _valid(depths: np.ndarray, settings: DepthSettings) -> np.ndarray:
    with np.errstate(invalid="ignore"):  # NaN compares False, which is what "no depth" needs
        return (depths >= settings.min_depth) & (depths <= settings.max_depth)


def _median_absolute_deviation(values: np.ndarray, median: float) -> float:
    return float(np.median(np.abs(values - median)))
