"""The surface normal at a pointed surface: a robust plane fit over the lifted neighbourhood.

The neighbourhood is the (2 normal_radius + 1)-pixel square around the surface's seed pixel, each valid
pixel lifted to 3D along its own ray. The fit starts from the points whose depth is within the noise
tolerance of the surface's depth (so a background behind an edge never takes part), fits a least-squares
plane (the eigenvector of the smallest eigenvalue of their covariance), then keeps every neighbourhood
point within the tolerance of that plane and fits again, until the inliers stop changing. A tilted surface
thus grows beyond the depth band it started from, and a step edge stays out.

No normal is better than a made-up one, so the fit is refused, with the reason, when:
- fewer than normal_min_points points are on the surface (too small);
- the points are too thin to orient: the normal's expected error exceeds normal_max_error. That error is
  the standard error of a least-squares slope, the depth noise over the points' spread across their
  narrower in-plane direction and over the square root of their count; the noise is the model's
  (DepthSettings) or the fit's own RMS residual, whichever is larger. A line of pixels (a 1-pixel pole)
  has no spread across, so no orientation;
- the surface bends at the point: split at the point along either in-plane axis, the planes of the two
  sides differ by more than normal_max_error plus three times what their noise explains (a ridge, a
  crease or the corner between two faces, where a single plane's normal would be an average of faces);
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
# Three standard errors: what noise alone leaves between the two sides' planes in all but 0.3 % of cases.
BEND_NOISE_SIGMAS = 3.0
MIN_SIDE_POINTS = 3  # a side with fewer points has no plane of its own (the point is at the surface's rim)


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
    axes: np.ndarray  # columns: the normal, then the narrower and the wider in-plane direction
    variances: np.ndarray  # of the points along those axes
    count: int

    @property
    def normal(self) -> np.ndarray:
        return self.axes[:, 0]

    def error_deg(self, sigma: float) -> float:
        """Expected normal error for depth noise `sigma`: the standard error of the worse of its slopes."""
        return math.degrees(math.atan2(sigma, math.sqrt(self.variances[1] * self.count)))


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
    return _checked(plane, points[inliers], seed, surface, camera, scale, settings)


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
    variances, axes = np.linalg.eigh(centred.T @ centred / len(points))
    return _Plane(centroid, axes, np.maximum(variances, 0.0), len(points))


def _checked(
    plane: _Plane,
    points: np.ndarray,
    seed: np.ndarray,
    surface: Surface,
    camera: CameraModel,
    scale: tuple[float, float],
    settings: DepthSettings,
) -> SurfaceNormal:
    """The plane's normal, or why it cannot be trusted (see the module's docstring)."""
    residual = math.sqrt(plane.variances[0])
    sigma = max(float(noise_sigma(surface.depth, settings)), residual)
    expected_error = plane.error_deg(sigma)
    if expected_error > settings.normal_max_error:
        pixel_m = surface.depth / (0.5 * (camera.fx * scale[0] + camera.fy * scale[1]))
        return SurfaceNormal(
            None,
            residual,
            plane.count,
            f"the surface is too thin here to orient: its points spread "
            f"{math.sqrt(plane.variances[1]) / pixel_m:.1f} pixels across, so the depth noise would tilt "
            f"a normal by about {expected_error:.0f} degrees (normal_max_error is "
            f"{settings.normal_max_error:g})",
        )
    bend, allowed = _bend(plane, points, seed, sigma, settings.normal_max_error)
    if bend > allowed:
        return SurfaceNormal(
            None,
            residual,
            plane.count,
            f"the surface bends at the point: the planes on its two sides differ by {bend:.0f} degrees, more "
            f"than the {allowed:.0f} that noise and normal_max_error allow (a ridge, a crease or a corner "
            "between faces)",
        )
    off = abs(float((seed - plane.centroid) @ plane.normal))
    if off > surface_tolerance(surface.depth, settings):
        return SurfaceNormal(
            None,
            residual,
            plane.count,
            f"the point is on an edge: it lies {off * 1000:.1f} mm off the plane of the surface around it",
        )
    normal = -plane.normal if plane.normal @ seed > 0 else plane.normal  # towards the camera, at the origin
    return SurfaceNormal(tuple(float(value) + 0.0 for value in normal), residual, plane.count)  # no -0.0


def _bend(
    plane: _Plane, points: np.ndarray, seed: np.ndarray, sigma: float, max_error: float
) -> tuple[float, float]:
    """The largest angle between the planes of the two sides of the point (split along each in-plane
    axis), and the largest such angle allowed: max_error plus BEND_NOISE_SIGMAS times the angle the two
    sides' noise explains. A split with a side of fewer than MIN_SIDE_POINTS is skipped; (0, 0) when both
    are (the point is at the rim of its surface, which has no second side to compare)."""
    offsets = points - seed  # small numbers, so the moments below lose no precision
    ahead = (offsets @ plane.axes[:, 1:] > 0).T.astype(np.float64)  # 2 x N: the side ahead along each axis
    # the four sides' covariances from their first and second moments; the sides behind are the rest
    sums = ahead @ offsets
    seconds = (ahead[:, :, np.newaxis] * offsets).transpose(0, 2, 1) @ offsets
    counts = np.concatenate([ahead.sum(axis=1), len(points) - ahead.sum(axis=1)])
    usable = np.minimum(counts[:2], counts[2:]) >= MIN_SIDE_POINTS
    if not usable.any():
        return 0.0, 0.0
    counts = np.maximum(counts, 1.0)
    means = np.concatenate([sums, offsets.sum(axis=0) - sums]) / counts[:, np.newaxis]
    seconds = np.concatenate([seconds, offsets.T @ offsets - seconds]) / counts[:, np.newaxis, np.newaxis]
    variances, axes = np.linalg.eigh(seconds - means[:, :, np.newaxis] * means[:, np.newaxis, :])
    errors = np.degrees(np.arctan2(sigma, np.sqrt(np.maximum(variances[:, 1], 0.0) * counts)))
    bends = np.degrees(np.arccos(np.minimum(1.0, np.abs(np.sum(axes[:2, :, 0] * axes[2:, :, 0], axis=1)))))
    allowed = max_error + BEND_NOISE_SIGMAS * np.hypot(errors[:2], errors[2:])
    worst = int(np.argmax(np.where(usable, bends - allowed, -np.inf)))
    return float(bends[worst]), float(allowed[worst])
