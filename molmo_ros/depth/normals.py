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

The points of an answer are fitted together, as arrays of k neighbourhoods of M pixels each, and every
fit is one matrix product of the chosen points' weights with their moments (1, u, v, t, uu, uv, vv, ut,
vt, about the seed), so an answer costs a fixed number of numpy calls whatever its number of points.
"""

import math
from collections.abc import Sequence
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
    residual: float  # RMS distance of the inliers from the plane along the line of sight (m); NaN if none
    inliers: int  # neighbourhood points the plane was fitted to
    reason: str = ""  # empty when there is a normal


@dataclass(frozen=True)
class _Neighbourhoods:
    """k neighbourhoods of M = (2 normal_radius + 1)^2 pixels, each in its own line-of-sight frame, with
    the seed pixel's point (at its surface's depth) as the origin."""

    features: np.ndarray  # k x M x 9: 1, u, v, t, uu, uv, vv, ut, vt of each pixel's point; 0 without depth
    depths: np.ndarray  # k x M: each pixel's depth (Z); NaN where it has none
    valid: np.ndarray  # k x M
    frames: np.ndarray  # k x 3 x 3: columns u, v, t in the optical frame

    def sight(self, index: int) -> np.ndarray:
        """k x M: the u (0), v (1) or t (2) of every point."""
        return self.features[..., 1 + index]


@dataclass(frozen=True)
class _Planes:
    """Planes t = t0 + slopes . ((u, v) - (u0, v0)), each fitted by least squares along the line of
    sight to some of its neighbourhood's points; any leading shape (k, or k x sides)."""

    means: np.ndarray  # ... x 3: (u0, v0, t0)
    slopes: np.ndarray  # ... x 2: metres along the line of sight per metre across it
    across: np.ndarray  # ...: spread (standard deviation) of the points across the sight, the narrower way
    counts: np.ndarray  # ...

    @classmethod
    def from_moments(cls, moments: np.ndarray) -> "_Planes":
        """From the sums of the features (... x 9) over the points fitted."""
        counts = moments[..., 0]
        averages = moments / np.maximum(counts, 1.0)[..., np.newaxis]
        mu, mv, mt = averages[..., 1], averages[..., 2], averages[..., 3]
        slopes, across = _slopes(
            averages[..., 4] - mu * mu,
            averages[..., 5] - mu * mv,
            averages[..., 6] - mv * mv,
            averages[..., 7] - mu * mt,
            averages[..., 8] - mv * mt,
        )
        return cls(averages[..., 1:4], slopes, across, counts)

    def along_sight(self, near: _Neighbourhoods) -> np.ndarray:
        """k x M distances of the points from their (k) planes, along the line of sight."""
        u0, v0, t0 = (self.means[:, axis, np.newaxis] for axis in range(3))
        b, c = self.slopes[:, 0, np.newaxis], self.slopes[:, 1, np.newaxis]
        return near.sight(2) - t0 - b * (near.sight(0) - u0) - c * (near.sight(1) - v0)


def surface_normals(
    depth_m: np.ndarray | DepthImage,
    camera: CameraModel,
    scale: tuple[float, float],
    surfaces: Sequence[Surface],
    settings: DepthSettings,
) -> list[SurfaceNormal]:
    """The normal of each of `surfaces` (found in `depth_m`, whose pixels are `scale` = (sx, sy) times the
    colour image's), or why it has none; `camera` is the colour camera."""
    if settings.normal_radius == 0:
        return [SurfaceNormal(None, math.nan, 0, "normals are off (normal_radius is 0)") for _ in surfaces]
    if not surfaces:
        return []
    near = _neighbourhoods(depth_m, camera, scale, surfaces, settings)
    depths = np.array([surface.depth for surface in surfaces])
    tolerances = surface_tolerance(depths, settings)[:, np.newaxis]
    with np.errstate(invalid="ignore"):  # NaN depths (no depth) are never within the band
        chosen = near.valid & (np.abs(near.depths - depths[:, np.newaxis]) <= tolerances)
    too_few = np.zeros(len(surfaces), dtype=bool)
    for _ in range(MAX_REFITS + 1):
        too_few |= chosen.sum(axis=1) < settings.normal_min_points
        planes = _fit(near, chosen)
        refit = near.valid & (np.abs(planes.along_sight(near)) <= tolerances)
        refit[too_few] = chosen[too_few]  # too few points: refused as it stands
        if np.array_equal(refit, chosen):
            break
        chosen = refit
    else:
        planes = _fit(near, chosen)
    distances = planes.along_sight(near)
    residuals = np.sqrt(np.sum(chosen * distances * distances, axis=1) / np.maximum(planes.counts, 1))
    sigmas = np.maximum(noise_sigma(depths, settings), residuals)
    bends, allowed = _bends(near, chosen, sigmas, settings.normal_max_error)
    u0, v0, t0 = planes.means[:, 0], planes.means[:, 1], planes.means[:, 2]
    off = np.abs(planes.slopes[:, 0] * u0 + planes.slopes[:, 1] * v0 - t0)  # the seed is the origin
    normals = (
        near.frames @ np.concatenate([planes.slopes, -np.ones((len(surfaces), 1))], axis=1)[..., np.newaxis]
    )
    normals = normals[..., 0] / np.linalg.norm(normals[..., 0], axis=1, keepdims=True)
    checks = _Checks(planes, residuals, sigmas, too_few, bends, allowed, off, tolerances[:, 0], normals)
    return [checks.verdict(index, surfaces[index], camera, scale, settings) for index in range(len(surfaces))]


@dataclass(frozen=True)
class _Checks:
    """What the fits of an answer's neighbourhoods say, point by point (see the module's docstring)."""

    planes: _Planes
    residuals: np.ndarray
    sigmas: np.ndarray  # the depth noise taken for each: the model's or its residual, the larger
    too_few: np.ndarray
    bends: np.ndarray
    allowed: np.ndarray
    off: np.ndarray  # each seed's distance from its plane along the line of sight
    tolerances: np.ndarray
    normals: np.ndarray  # k x 3, optical frame, towards the camera

    def verdict(
        self,
        index: int,
        surface: Surface,
        camera: CameraModel,
        scale: tuple[float, float],
        settings: DepthSettings,
    ) -> SurfaceNormal:
        """Point `index`'s normal, or the first reason it has none."""
        count, residual = int(self.planes.counts[index]), float(self.residuals[index])
        if self.too_few[index]:
            return SurfaceNormal(
                None,
                math.nan,
                count,
                f"too few points on the surface around the point to fit a plane ({count}; "
                f"normal_min_points is {settings.normal_min_points})",
            )
        sigma, across = float(self.sigmas[index]), float(self.planes.across[index])
        expected_error = _expected_error_deg(sigma, across, count)
        if expected_error > settings.normal_max_error:
            pixel_m = surface.depth / (0.5 * (camera.fx * scale[0] + camera.fy * scale[1]))
            return SurfaceNormal(
                None,
                residual,
                count,
                f"the surface is too thin or too noisy here to orient: its points spread "
                f"{across / pixel_m:.1f} pixels across with {sigma * 1000:.1f} mm of depth noise, which "
                f"would tilt a normal by about {expected_error:.0f} degrees (normal_max_error is "
                f"{settings.normal_max_error:g})",
            )
        if self.bends[index] > self.allowed[index]:
            return SurfaceNormal(
                None,
                residual,
                count,
                f"the surface bends at the point: the planes on its two sides differ by "
                f"{self.bends[index]:.0f} degrees, more than the {self.allowed[index]:.0f} that noise and "
                "normal_max_error allow (a ridge, a crease or a corner between faces)",
            )
        if self.off[index] > self.tolerances[index]:
            return SurfaceNormal(
                None,
                residual,
                count,
                f"the point is on an edge: it lies {self.off[index] * 1000:.1f} mm off the plane of the "
                "surface around it",
            )
        normal = tuple(float(value) + 0.0 for value in self.normals[index])  # + 0.0: no -0.0 printed
        return SurfaceNormal(normal, residual, count)


def _neighbourhoods(
    depth_m: np.ndarray | DepthImage,
    camera: CameraModel,
    scale: tuple[float, float],
    surfaces: Sequence[Surface],
    settings: DepthSettings,
) -> _Neighbourhoods:
    """The (2 normal_radius + 1)-pixel squares centred on the surfaces' seed pixels (NaN beyond the
    image), each valid pixel lifted along its own ray."""
    radius = settings.normal_radius
    side = 2 * radius + 1
    rows, columns = depth_m.shape
    patches = np.full((len(surfaces), side, side), np.nan)
    for index, surface in enumerate(surfaces):
        top, left = max(0, surface.row - radius), max(0, surface.column - radius)
        bottom, right = min(rows, surface.row + radius + 1), min(columns, surface.column + radius + 1)
        first_row, first_column = top - surface.row + radius, left - surface.column + radius
        patches[index, first_row : first_row + bottom - top, first_column : first_column + right - left] = (
            depth_m[top:bottom, left:right]
        )
    with np.errstate(invalid="ignore"):
        valid = (patches >= settings.min_depth) & (patches <= settings.max_depth)
    steps = np.arange(side) - radius + 0.5  # pixel centres relative to the seed pixel's corner
    seed_rows = np.array([surface.row for surface in surfaces])[:, np.newaxis]
    seed_columns = np.array([surface.column for surface in surfaces])[:, np.newaxis]
    # depth-image pixel centres as continuous points of the colour image, which the camera model is for
    ray_x, ray_y = camera.grid_rays((seed_columns + steps) / scale[0], (seed_rows + steps) / scale[1])
    points = np.stack([ray_x * patches, ray_y * patches, patches], axis=-1).reshape(len(surfaces), -1, 3)
    valid = valid.reshape(len(surfaces), -1)
    seed_rays = np.stack(
        [
            np.broadcast_to(ray_x, patches.shape)[:, radius, radius],
            np.broadcast_to(ray_y, patches.shape)[:, radius, radius],
        ],
        axis=1,
    )
    seeds = np.concatenate([seed_rays, np.ones((len(surfaces), 1))], axis=1)
    seeds *= np.array([surface.depth for surface in surfaces])[:, np.newaxis]
    frames = _sight_frames(seeds)
    u, v, t = np.moveaxis((points - seeds[:, np.newaxis]) @ frames, -1, 0)
    features = np.stack([np.ones_like(u), u, v, t, u * u, u * v, v * v, u * t, v * t], axis=-1)
    features[~valid] = 0.0  # no depth: no weight in any sum, and no NaN to spread through a product
    return _Neighbourhoods(features, patches.reshape(len(surfaces), -1), valid, frames)


def _sight_frames(seeds: np.ndarray) -> np.ndarray:
    """k x 3 x 3: columns across the line of sight to each seed (image-right and image-down made
    perpendicular to it), then along it; points @ frame gives their (u, v, t)."""
    sight = seeds / np.linalg.norm(seeds, axis=1, keepdims=True)
    right = np.array([1.0, 0.0, 0.0]) - sight[:, :1] * sight
    right /= np.linalg.norm(right, axis=1, keepdims=True)
    return np.stack([right, np.cross(sight, right), sight], axis=2)


def _fit(near: _Neighbourhoods, chosen: np.ndarray) -> _Planes:
    """The least-squares planes of the chosen (k x M) points of each neighbourhood."""
    return _Planes.from_moments((chosen.astype(np.float64)[:, np.newaxis, :] @ near.features)[:, 0])


def _slopes(
    uu: np.ndarray, uv: np.ndarray, vv: np.ndarray, ut: np.ndarray, vt: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """From the (co)variances of u, v and t: the regression slopes of t on (u, v) (... x 2), and the
    spread across in the narrower direction (the square root of the smaller eigenvalue of the (u, v)
    covariance); slopes and spread 0 where the points lie on a line."""
    determinant = uu * vv - uv * uv
    smaller = 0.5 * (uu + vv) - np.sqrt(0.25 * (uu - vv) ** 2 + uv * uv)
    line = (smaller <= 0.0) | (determinant <= 0.0)
    safe = np.where(line, 1.0, determinant)
    slopes = np.stack([vv * ut - uv * vt, uu * vt - uv * ut], axis=-1) / safe[..., np.newaxis]
    return np.where(line[..., np.newaxis], 0.0, slopes), np.sqrt(np.where(line, 0.0, smaller))


def _expected_error_deg(sigma: float | np.ndarray, across: float | np.ndarray, count: float | np.ndarray):
    """The standard error of the worse slope, as an angle: noise over spread across over sqrt(count)."""
    return np.degrees(np.arctan2(sigma, across * np.sqrt(count)))


def _bends(
    near: _Neighbourhoods, chosen: np.ndarray, sigmas: np.ndarray, max_error: float
) -> tuple[np.ndarray, np.ndarray]:
    """For each neighbourhood: the larger angle between the planes of the two sides of its seed (split
    across u and across v), and the angle allowed there: max_error plus BEND_NOISE_SIGMAS times what the
    two sides' noise explains. A split with a side of fewer than MIN_SIDE_POINTS is skipped; (0, 0) when
    both are (the point is at the rim of its surface, which has no second side to compare)."""
    ahead_u, ahead_v = near.sight(0) > 0, near.sight(1) > 0
    sides = np.stack([ahead_u, ~ahead_u, ahead_v, ~ahead_v], axis=1) & chosen[:, np.newaxis]  # k x 4 x M
    planes = _Planes.from_moments(sides.astype(np.float64) @ near.features)  # k x 4 planes
    normals = np.concatenate([planes.slopes, -np.ones(planes.slopes.shape[:-1] + (1,))], axis=-1)
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    cosines = np.abs(np.sum(normals[:, ::2] * normals[:, 1::2], axis=-1))  # k x 2: ahead with behind
    bends = np.degrees(np.arccos(np.minimum(1.0, cosines)))
    errors = _expected_error_deg(sigmas[:, np.newaxis], planes.across, planes.counts)
    allowed = max_error + BEND_NOISE_SIGMAS * np.hypot(errors[:, ::2], errors[:, 1::2])
    usable = np.minimum(planes.counts[:, ::2], planes.counts[:, 1::2]) >= MIN_SIDE_POINTS
    worst = np.argmax(np.where(usable, bends - allowed, -np.inf), axis=1)
    rows = np.arange(len(worst))
    some = usable.any(axis=1)
    return np.where(some, bends[rows, worst], 0.0), np.where(some, allowed[rows, worst], 0.0)
