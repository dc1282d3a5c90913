"""The surface normal at a pointed surface: a robust plane fit over the lifted neighbourhood.

The neighbourhood is the (2 normal_radius + 1)-pixel square around the surface's seed pixel, each valid
pixel lifted to 3D along its own ray. A depth camera errs along its line of sight, not across it, so the
plane is a least-squares regression of the distance along the line of sight to the seed (t) on the two
coordinates across it (u, v): t = a + b u + c v, whose normal is (b, c, -1) in that frame, always facing
the camera. The fit starts from the points whose depth is within the noise tolerance of the surface's
depth (so a background behind an edge never takes part), then keeps every neighbourhood point within the
tolerance of the plane along the line of sight and fits again, until the inliers stop changing. A tilted
surface thus grows beyond the depth band it started from, and a step edge stays out.

No normal is better than a made-up one, so the fit is refused, with the reason, when:
- fewer than normal_min_points points are on the surface (too small);
- the points are too thin to orient: the normal's expected error exceeds normal_max_error. That error is
  the standard error of the worse of the two slopes, the depth noise over the points' spread across the
  line of sight in its narrower direction and over the square root of their count; the noise is the
  model's (DepthSettings) or the fit's own RMS residual, whichever is larger. A line of pixels (a 1-pixel
  pole) has no spread across, so no orientation;
- the surface bends at the point: split at the point along either direction across the line of sight,
  the planes of the two sides differ by more than normal_max_error plus three times what their noise
  explains (a ridge, a crease or the corner between two faces, where one plane would average the faces);
- the pointed surface point lies off the plane by more than the tolerance (an edge).
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
    """t = t0 + slopes . ((u, v) - (u0, v0)) in the line-of-sight frame (see the module's docstring)."""

    centroid: np.ndarray  # (u0, v0, t0)
    slopes: np.ndarray  # (b, c): metres along the line of sight per metre across it
    across: float  # spread (standard deviation) of the points across the line of sight, narrower way
    residual: float  # RMS of the points' distances from the plane along the line of sight
    count: int

    def along_sight(self, coordinates: np.ndarray) -> np.ndarray:
        """Distances of (u, v, t) rows from the plane along the line of sight."""
        centred = coordinates - self.centroid
        return centred[..., 2] - centred[..., :2] @ self.slopes

    def error_deg(self, sigma: float) -> float:
        """Expected normal error for depth noise `sigma`: the standard error of the worse slope."""
        return _expected_error_deg(sigma, self.across, self.count)


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
    frame = _sight_frame(seed)
    coordinates, seed_coordinates = points @ frame, seed @ frame
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
        plane = _fit(coordinates[inliers])
        refit = np.abs(plane.along_sight(coordinates)) <= tolerance
        if np.array_equal(refit, inliers):
            break
        inliers = refit
    checked = _checked(plane, coordinates[inliers], seed_coordinates, surface, camera, scale, settings)
    if checked is not None:
        return checked
    normal = frame @ np.array([plane.slopes[0], plane.slopes[1], -1.0])  # (b, c, -1): towards the camera
    normal /= np.linalg.norm(normal)
    normal = tuple(float(value) + 0.0 for value in normal)  # + 0.0: no -0.0 in what is printed
    return SurfaceNormal(normal, plane.residual, plane.count)


def _sight_frame(seed: np.ndarray) -> np.ndarray:
    """Columns: across the line of sight to `seed` (image-right and image-down made perpendicular to
    it), then along it; points @ frame gives their (u, v, t)."""
    sx, sy, sz = seed / math.sqrt(float(seed @ seed))
    # image-right minus its part along the sight, normalised; then sight x that (written out: np.cross is
    # slow on single vectors)
    ux, uy, uz = 1.0 - sx * sx, -sx * sy, -sx * sz
    norm = math.sqrt(ux * ux + uy * uy + uz * uz)
    ux, uy, uz = ux / norm, uy / norm, uz / norm
    return np.array([[ux, sy * uz - sz * uy, sx], [uy, sz * ux - sx * uz, sy], [uz, sx * uy - sy * ux, sz]])


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


def _fit(coordinates: np.ndarray) -> _Plane:
    """The least-squares plane of (u, v, t) rows (at least 3; the slopes are 0 when they lie on a line,
    which `across` = 0 then says)."""
    count = len(coordinates)
    centroid = coordinates.sum(axis=0) / count
    centred = coordinates - centroid
    slopes, across = _slopes((centred.T @ centred / count)[np.newaxis])
    residuals = centred[:, 2] - centred[:, :2] @ slopes[0]
    return _Plane(
        centroid, slopes[0], float(across[0]), math.sqrt(float(residuals @ residuals) / count), count
    )


def _slopes(covariances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For k 3x3 covariances of (u, v, t): the k regression slopes of t on (u, v), and the k spreads
    across in the narrower direction (the square root of the smaller eigenvalue of the (u, v) block);
    slopes 0 and spread 0 where the points lie on a line."""
    uu, uv, vv = covariances[:, 0, 0], covariances[:, 0, 1], covariances[:, 1, 1]
    ut, vt = covariances[:, 0, 2], covariances[:, 1, 2]
    determinant = uu * vv - uv * uv
    smaller = 0.5 * (uu + vv) - np.sqrt(0.25 * (uu - vv) ** 2 + uv * uv)
    line = (smaller <= 0.0) | (determinant <= 0.0)
    safe = np.where(line, 1.0, determinant)
    slopes = np.stack([vv * ut - uv * vt, uu * vt - uv * ut], axis=1) / safe[:, np.newaxis]
    return np.where(line[:, np.newaxis], 0.0, slopes), np.sqrt(np.where(line, 0.0, smaller))


def _expected_error_deg(sigma: float, across: float, count: float) -> float:
    return math.degrees(math.atan2(sigma, across * math.sqrt(count)))


def _checked(
    plane: _Plane,
    coordinates: np.ndarray,
    seed: np.ndarray,
    surface: Surface,
    camera: CameraModel,
    scale: tuple[float, float],
    settings: DepthSettings,
) -> SurfaceNormal | None:
    """Why the plane cannot be trusted (see the module's docstring); None when it can."""
    sigma = max(float(noise_sigma(surface.depth, settings)), plane.residual)
    expected_error = plane.error_deg(sigma)
    if expected_error > settings.normal_max_error:
        pixel_m = surface.depth / (0.5 * (camera.fx * scale[0] + camera.fy * scale[1]))
        return SurfaceNormal(
            None,
            plane.residual,
            plane.count,
            f"the surface is too thin or too noisy here to orient: its points spread "
            f"{plane.across / pixel_m:.1f} pixels across with {sigma * 1000:.1f} mm of "
            f"depth noise, which would tilt a normal by about {expected_error:.0f} degrees "
            f"(normal_max_error is {settings.normal_max_error:g})",
        )
    bend, allowed = _bend(coordinates, seed, sigma, settings.normal_max_error)
    if bend > allowed:
        return SurfaceNormal(
            None,
            plane.residual,
            plane.count,
            f"the surface bends at the point: the planes on its two sides differ by {bend:.0f} degrees, more "
            f"than the {allowed:.0f} that noise and normal_max_error allow (a ridge, a crease or a corner "
            "between faces)",
        )
    off = abs(float(plane.along_sight(seed)))
    if off > surface_tolerance(surface.depth, settings):
        return SurfaceNormal(
            None,
            plane.residual,
            plane.count,
            f"the point is on an edge: it lies {off * 1000:.1f} mm off the plane of the surface around it",
        )
    return None


def _bend(coordinates: np.ndarray, seed: np.ndarray, sigma: float, max_error: float) -> tuple[float, float]:
    """The largest angle between the planes of the two sides of the point (split across u and across
    v), and the largest such angle allowed: max_error plus BEND_NOISE_SIGMAS times the angle the two
    sides' noise explains. A split with a side of fewer than MIN_SIDE_POINTS is skipped; (0, 0) when both
    are (the point is at the rim of its surface, which has no second side to compare)."""
    offsets = coordinates - seed  # small numbers, so the moments below lose no precision
    ahead = (offsets[:, :2] > 0).T.astype(np.float64)  # 2 x N: the side ahead along u, along v
    # the four sides' covariances from their first and second moments; the sides behind are the rest
    sums = ahead @ offsets
    seconds = (ahead[:, :, np.newaxis] * offsets).transpose(0, 2, 1) @ offsets
    counts = np.concatenate([ahead.sum(axis=1), len(offsets) - ahead.sum(axis=1)])
    usable = np.minimum(counts[:2], counts[2:]) >= MIN_SIDE_POINTS
    if not usable.any():
        return 0.0, 0.0
    counts = np.maximum(counts, 1.0)
    means = np.concatenate([sums, offsets.sum(axis=0) - sums]) / counts[:, np.newaxis]
    seconds = np.concatenate([seconds, offsets.T @ offsets - seconds]) / counts[:, np.newaxis, np.newaxis]
    slopes, across = _slopes(seconds - means[:, :, np.newaxis] * means[:, np.newaxis, :])
    normals = np.concatenate([slopes, -np.ones((4, 1))], axis=1)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    errors = np.degrees(np.arctan2(sigma, across * np.sqrt(counts)))
    worst_bend, worst_allowed = 0.0, 0.0
    for split in (0, 1):
        if not usable[split]:
            continue
        bend = math.degrees(math.acos(min(1.0, float(normals[split] @ normals[split + 2]))))
        allowed = max_error + BEND_NOISE_SIGMAS * math.hypot(errors[split], errors[split + 2])
        if bend - allowed > worst_bend - worst_allowed:
            worst_bend, worst_allowed = bend, allowed
    return worst_bend, worst_allowed
