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
from molmo_ros.depth.normals import SurfaceNormal, surface_normals
from molmo_ros.depth.settings import DepthSettings
from molmo_ros.depth.surface import Surface, pointed_surface
from molmo_ros.settings_fields import SettingRef

# A depth image may differ from the colour image's aspect ratio by this many depth pixels (rounding of
# a downscale to whole pixels: 1280x720 to 427x240 is off by 0.19 rows); more is another field of view.
ASPECT_TOLERANCE_PX = 1.0


@dataclass(frozen=True)
class LiftedPoint:
    """One pointed pixel in 3D with how far to trust it, or why it has no 3D position (see `surface` and
    `normals` for how each field is found)."""

    xyz: tuple[float, float, float] | None  # metres in the colour camera's optical frame; None if invalid
    depth: float  # Z in metres; NaN when invalid
    support: int  # depth-window samples on the pointed surface; 0 when invalid
    # Signed metres of depth (Z) from the surface to the farthest window sample off it:
    # positive behind (the point is on the near side of an edge), negative in front; 0 = no edge.
    depth_step: float
    fallback: bool  # the pointed pixel had no depth of its own: the nearest surface was used
    search_distance: float  # depth-image pixels from the point to the pixel whose surface was used
    normal: tuple[float, float, float] | None = None  # unit, optical frame, towards the camera
    normal_residual: float = math.nan  # RMS distance of the fitted points from the plane, metres
    normal_inliers: int = 0  # points the plane was fitted to
    normal_error: float = math.nan  # expected error of the normal, degrees (1 sigma); NaN without one
    normal_reason: str = ""  # why there is no normal; empty when there is one
    normal_settings: tuple[SettingRef, ...] = ()  # the settings normal_reason is about
    reason: str = ""  # why there is no 3D position; empty when valid

    @property
    def valid(self) -> bool:
        return self.xyz is not None

    @property
    def edge(self) -> bool:
        """The depth window straddles a depth discontinuity (enough valid samples are off the surface)."""
        return self.depth_step != 0


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
    """Each point (x, y) of a width x height colour image, lifted with a registered depth image in metres,
    with its surface normal where one can be fitted.

    Raises DepthError when the whole depth frame or CameraInfo cannot be used (wrong CameraInfo size,
    another aspect ratio); a point without valid depth near it is returned invalid, with its reason.
    """
    check_depth_geometry(image_size, depth_m.shape, camera)
    width, height = image_size
    scale = (depth_m.shape[1] / width, depth_m.shape[0] / height)
    points = np.asarray(points_px, dtype=np.float64).reshape(-1, 2)
    if points.size == 0:
        return []
    rays = camera.rays(points)
    surfaces = [pointed_surface(depth_m, x * scale[0], y * scale[1], settings) for x, y in points]
    found = [surface for surface in surfaces if surface is not None]
    normals = surface_normals(depth_m, camera, scale, found, settings)  # all at once: one fit per answer
    lifted = []
    fits = iter(zip(found, normals, strict=True))
    for ray, surface in zip(rays, surfaces, strict=True):
        if surface is None:
            reason = (
                f"no valid depth within {settings.depth_search_radius} depth-image pixels of the point "
                f"(holes, values fewer than {settings.depth_min_support} window depths agree with, or "
                f"depths outside {settings.min_depth:g}-{settings.max_depth:g} m)"
            )
            lifted.append(LiftedPoint(None, math.nan, 0, math.nan, False, math.nan, reason=reason))
        else:
            lifted.append(_lifted(ray, *next(fits)))
    return lifted


def _lifted(ray: np.ndarray, surface: Surface, normal: SurfaceNormal) -> LiftedPoint:
    """A point on `surface`, along its ray. Its depth is the surface's, which is the depth at the centre of
    the seed pixel, up to half a pixel (or the fallback's search distance) from the ray: where a plane was
    fitted, the plane's change of depth from that centre to the ray is added (on a plane tilted 30 degrees
    at 1 m, f = 600 px, that half pixel alone is 0.26 mm on average, at most 0.9). The plane's own depth
    along the ray would average more noise away on a true plane, but on a curved surface it lies 1-2 mm
    behind it (bench/normal_accuracy.py, positions)."""
    depth, support, step = surface.depth, surface.support, surface.depth_step
    if normal.plane is not None:  # the window judged against the plane (see surface.py)
        depth += normal.plane.depth_at(ray) - normal.plane.seed_depth
        support, step = normal.window_support, normal.window_step
    return LiftedPoint(
        xyz=(float(ray[0] * depth), float(ray[1] * depth), depth),
        depth=depth,
        support=support,
        depth_step=step,
        fallback=surface.fallback,
        search_distance=surface.search_distance,
        normal=normal.normal,
        normal_residual=normal.residual,
        normal_inliers=normal.inliers,
        normal_error=normal.error,
        normal_reason=normal.reason,
        normal_settings=normal.settings,
    )
