"""The surface normal at a pointed surface: a robust plane fit over the lifted neighbourhood.

The neighbourhood is the (2 normal_radius + 1)-pixel square around the surface's seed pixel, each valid
pixel lifted to 3D along its own ray. The fit starts from the points whose depth is within the noise
tolerance of the surface's depth (so a background behind an edge never takes part), fits a least-squares
plane (the eigenvector of the smallest eigenvalue of their covariance), then keeps every neighbourhood
point within the tolerance of that plane and fits again, until the inliers stop changing. A tilted surface
thus grows beyond the depth band it started from, and a step edge stays out.

No normal is better than a made-up one, so the fit is refused, with the reason, when:
- fewer than normal_min_points points are on the surface (too small);
- the points are too thin to orient: the normal's expected error, the depth noise over the points' spread
  across their narrower in-plane direction and over the square root of their count (the standard error of
  a least-squares slope), exceeds normal_max_error; a line of pixels (a 1-pixel pole) has no spread;
- the points are not one plane: their RMS distance from it exceeds the depth noise at that depth (a
  crease, a corner between two faces, a curved or very noisy surface);
- the pointed surface point lies off the plane by more than the tolerance (an edge).
The normal is a unit vector in the optical frame, oriented towards the camera.
"""

import math
from dataclasses import dataclass

import numpy as np

from molmo_ros.depth.camera import CameraModel
from molmo_ros.depth.images import DepthImage
from molmo_ros.depth.settings import DepthSettings
from molmo_ros.depth.surface import Surface, noise_sigma, surface_tolerance

# Re-selections of the inliers after the first fit; on every scene of the tests the inliers settle after
# at most 3, and a set that still changes afterwards is left as the last fit had it.
MAX_REFITS = 5


@dataclass(frozen=True)
class SurfaceNormal:
    """The fitted normal, or why there is none."""

    normal: tuple[float, float, float] | None  # unit, optical frame, towards the camera
    residual: float  # RMS distance of the inliers from the plane, metres; NaN without a fit
    inliers: int  # neighbourhood points the plane was fitted to
    reason: str = ""  # empty when there is a normal


@dataclass(frozen=True)
class _Plane:
    centroid: np.ndarray
    normal: np.ndarray
    eigenvalues: np.ndarray  # ascending: along the normal, then the narrower and the wider in-plane direction


def surface_normal(
    depth_m: np.ndarray | DepthImage,
    camera: CameraModel,
    scale: tuple[float, float],
    surface: Surface,
    settings: DepthSettings,
) -> SurfaceNormal:
    """The normal of `surface` (found in `depth_m`, whose pixels are `scale` = (sx, sy) times the colour
    image's); `camera` is the colour camera."""
    if settings.normal_radius == 0:
        return SurfaceNormal(None, math.nan, 0, "normals are off (normal_radius is 0)")
    points, seed = _neighbourhood(depth_m, camera, scale, surface, settings)
    tolerance = float(surface_tolerance(surface.depth, settings))
    inliers = np.abs(points[:, 2] - surface.depth) <= tolerance
    plane = None
    for _ in range(MAX_REFITS + 1):
        count = int(inliers.sum())
        if count < settings.normal_min_points:
            return SurfaceNormal(
                None,
                math.nan,
                count,
                f"too few points on the surface around the point to fit a plane ({count}; "
                f"normal_min_points is {settings.normal_min_points})",
            )
        plane = _fit(points[inliers])
        refit = np.abs((points - plane.centroid) @ plane.normal) <= tolerance
        if np.array_equal(refit, inliers):
            break
        inliers = refit
    return _checked(plane, int(inliers.sum()), seed, surface, camera, scale, settings)


def _neighbourhood(
    depth_m: np.ndarray | DepthImage,
    camera: CameraModel,
    scale: tuple[float, float],
    surface: Surface,
    settings: DepthSettings,
) -> tuple[np.ndarray, np.ndarray]:
    """Nx3 points of the valid neighbourhood pixels, and the seed pixel's point at the surface depth."""
    radius = settings.normal_radius
    rows, columns = depth_m.shape
    top, left = max(0, surface.row - radius), max(0, surface.column - radius)
    bottom, right = min(rows, surface.row + radius + 1), min(columns, surface.column + radius + 1)
    patch = depth_m[top:bottom, left:right].astype(np.float64)
    with np.errstate(invalid="ignore"):
        valid = (patch >= settings.min_depth) & (patch <= settings.max_depth)
    # depth-image pixel centres as continuous points of the colour image, which the camera model is for
    ray_x, ray_y = camera.grid_rays(
        (np.arange(left, right) + 0.5) / scale[0], (np.arange(top, bottom) + 0.5) / scale[1]
    )
    depths = patch[valid]
    points = np.stack([ray_x[valid] * depths, ray_y[valid] * depths, depths], axis=1)
    seed_row, seed_column = surface.row - top, surface.column - left
    seed = np.array([ray_x[seed_row, seed_column], ray_y[seed_row, seed_column], 1.0]) * surface.depth
    return points, seed


def _fit(points: np.ndarray) -> _Plane:
    centroid = points.sum(axis=0) / len(points)
    centred = points - centroid
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred / len(points))
    return _Plane(centroid, eigenvectors[:, 0], np.maximum(eigenvalues, 0.0))


def _checked(
    plane: _Plane,
    count: int,
    seed: np.ndarray,
    surface: Surface,
    camera: CameraModel,
    scale: tuple[float, float],
    settings: DepthSettings,
) -> SurfaceNormal:
    """The plane's normal, or why it cannot be trusted (see the module's docstring)."""
    residual = math.sqrt(plane.eigenvalues[0])
    sigma = float(noise_sigma(surface.depth, settings))
    across = math.sqrt(plane.eigenvalues[1])  # spread of the points in their narrower in-plane direction
    expected_error = math.degrees(math.atan2(sigma, across * math.sqrt(count)))
    if expected_error > settings.normal_max_error:
        pixel_m = surface.depth / (0.5 * (camera.fx * scale[0] + camera.fy * scale[1]))
        return SurfaceNormal(
            None,
            residual,
            count,
            f"the surface is too thin here to orient: its points spread {across / pixel_m:.1f} pixels "
            f"across, so the depth noise would tilt a normal by about {expected_error:.0f} degrees "
            f"(normal_max_error is {settings.normal_max_error:g})",
        )
    if residual > sigma:
        return SurfaceNormal(
            None,
            residual,
            count,
            f"the surface around the point is not one plane (a crease, a corner or a curved surface): its "
            f"points lie {residual * 1000:.1f} mm RMS off the best plane, more than the "
            f"{sigma * 1000:.1f} mm depth noise at {surface.depth:.2f} m",
        )
    off = abs(float((seed - plane.centroid) @ plane.normal))
    if off > surface_tolerance(surface.depth, settings):
        return SurfaceNormal(
            None,
            residual,
            count,
            f"the point is on an edge: it lies {off * 1000:.1f} mm off the plane of the surface around it",
        )
    normal = -plane.normal if plane.normal @ seed > 0 else plane.normal  # towards the camera, at the origin
    return SurfaceNormal(tuple(float(value) + 0.0 for value in normal), residual, count)  # no -0.0
