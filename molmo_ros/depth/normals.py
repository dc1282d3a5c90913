"""The surface normal at a pointed surface: a robust plane fit over the lifted neighbourhood.

The neighbourhood is a grid of (2 normal_radius + 1)^2 depth-image pixels centred on the surface's seed
pixel, spaced so that it spans at least normal_size metres at the surface's depth (adjacent pixels where
that is already wider), each valid pixel lifted to 3D along its own ray. A fixed size in metres is what
a fixed accuracy needs: a plane's slope is known to the depth noise over the neighbourhood's width, and a
fixed width in pixels shrinks in metres with a longer focal length or a nearer surface; the fixed number
of samples keeps the cost the same at any range.

A depth camera errs along its line of sight, not across it, so the plane is a least-squares regression of
the distance along the line of sight to the seed (t) on the two coordinates across it (u, v):
t = a + b u + c v, whose normal is (b, c, -1) in that frame, always facing the camera. The fit starts from
the points whose depth is within the noise tolerance of the surface's depth (so a background behind an
edge never takes part), then keeps every neighbourhood point within the tolerance of the plane along the
line of sight and fits again, until the inliers stop changing. A tilted surface thus grows beyond the
depth band it started from, and a step edge stays out.

Each normal comes with its expected error (`SurfaceNormal.error`, degrees): the standard error of the
worse of the two slopes, the depth noise over the points' spread across the line of sight in its
narrower direction and over the square root of their count; the noise is the model's (DepthSettings) or
the fit's own RMS residual, whichever is larger.

No normal is better than a made-up one, so the fit is refused, with the reason, when:
- fewer than the normal_min_points setting's points are on the surface (too small);
- the points are too thin to orient: the expected error exceeds the normal_max_error setting. A line of
  pixels (a 1-pixel pole) has no spread across, so no orientation;
- the surface bends at the point: split at the point along either direction across the line of sight,
  the planes of the two sides differ by more than the normal_max_bend setting plus three times what their
  noise explains (a sharp ridge, a crease or the corner between two faces, where one plane would average
  faces). A smooth curved surface bends too, over the neighbourhood's width (a mug 8 cm across by about 18
  degrees over 2.5 cm), and there the plane's normal, the average, is the normal at the point;
- the pointed surface point lies off the plane by more than the tolerance (an edge).
Reasons refer to settings by `SettingRef` (`SurfaceNormal.settings`); the node and the CLI name them.

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
from molmo_ros.depth.surface import (
    Plane,
    Surface,
    judged_against_planes,
    noise_sigma,
    usable_depths,
    window_offsets,
)
from molmo_ros.depth.transforms import no_negative_zeros
from molmo_ros.settings_fields import SettingRef

# Depths within this many noise sigmas of the plane (or, for the first fit, of the surface's depth) are
# fitted: 99.7 % of a surface's own samples, while a step of a few sigma stays out.
TOLERANCE_SIGMAS = 3.0
# Re-selections of the inliers after the first fit; on every scene of the tests the inliers settle after
# at most 3, and a set that still changes afterwards is left as the last fit had it.
MAX_REFITS = 5
# Three standard errors: what noise alone leaves between the two sides' planes in all but 0.3 % of cases.
BEND_NOISE_SIGMAS = 3.0
MIN_SIDE_POINTS = 3  # a side with fewer points has no plane of its own (the point is at the surface's rim)
NORMAL_RADIUS = SettingRef(DepthSettings, "normal_radius")
NORMAL_MIN_POINTS = SettingRef(DepthSettings, "normal_min_points")
NORMAL_MAX_ERROR = SettingRef(DepthSettings, "normal_max_error")
NORMAL_MAX_BEND = SettingRef(DepthSettings, "normal_max_bend")


@dataclass(frozen=True)
class SurfaceNormal:
    """The fitted normal, or why there is none."""

    normal: tuple[float, float, float] | None  # unit, optical frame, towards the camera
    residual: float  # RMS distance of the inliers from the plane along the line of sight (m); NaN if none
    inliers: int  # neighbourhood points the plane was fitted to
    error: float = math.nan  # expected error of the normal, degrees (1 sigma of the worse tilt); NaN if none
    reason: str = ""  # empty when there is a normal
    settings: tuple[SettingRef, ...] = ()  # the settings `reason` is about
    plane: Plane | None = None  # the fitted plane, where there is a normal
    # Where there is a plane: the surface's depth window judged against it (surface.judged_against_planes):
    # the samples on it, and the signed step to the farthest off it (0: no edge)
    window_support: int = 0
    window_step: float = 0.0


@dataclass(frozen=True)
class _Neighbourhoods:
    """k neighbourhoods of M pixels, each in its own line-of-sight frame, with the seed pixel's point (at
    its surface's depth) as the origin: the (2 normal_radius + 1)^2 pixels of the grid, then the
    depth_window^2 pixels of the dense window around the seed."""

    features: (
        np.ndarray
    )  # k x M x 9: 1, u, v, t, uu, uv, vv, ut, vt of each pixel's point; 0 where not fitted
    depths: np.ndarray  # k x M: each pixel's depth (Z); NaN where it has none
    valid: np.ndarray  # k x M: the pixels with a depth that may be fitted (a window pixel also on the grid
    # is fitted as the grid's)
    window: np.ndarray  # k x depth_window^2: the dense window's pixels with a depth
    seeds: np.ndarray  # k x 3: the seed pixels' points, optical frame
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
        return [SurfaceNormal(None, math.nan, 0, reason="normals are off", settings=(NORMAL_RADIUS,))] * len(
            surfaces
        )
    if not surfaces:
        return []
    depths = np.array([surface.depth for surface in surfaces])
    near = _neighbourhoods(depth_m, camera, scale, surfaces, depths, settings)
    tolerances = TOLERANCE_SIGMAS * noise_sigma(depths, settings)[:, np.newaxis]
    # NaN depths (no depth) are never within the band; with the dense window: on a steep surface the band
    # is a thin strip across the grid, and the window's part of it still spreads both ways
    band = near.valid & (np.abs(near.depths - depths[:, np.newaxis]) <= tolerances)
    planes, chosen, too_few = _settled_fit(near, band, tolerances, settings.normal_min_points)
    distances = planes.along_sight(near)
    residuals = np.sqrt(np.sum(chosen * distances * distances, axis=1) / np.maximum(planes.counts, 1))
    # the window's samples from the plane, along the line of sight to depth (Z): the sight's z component
    window = judged_against_planes(
        distances[:, -near.window.shape[1] :] * near.frames[:, 2, 2, np.newaxis],
        near.window,
        depths,
        settings,
    )
    sigmas = np.maximum(noise_sigma(depths, settings), residuals)
    bends, allowed = _bends(near, chosen, sigmas, settings.normal_max_bend)
    u0, v0, t0 = planes.means[:, 0], planes.means[:, 1], planes.means[:, 2]
    off = np.abs(planes.slopes[:, 0] * u0 + planes.slopes[:, 1] * v0 - t0)  # the seed is the origin
    normals = (
        near.frames @ np.concatenate([planes.slopes, -np.ones((len(surfaces), 1))], axis=1)[..., np.newaxis]
    )
    normals = normals[..., 0] / np.linalg.norm(normals[..., 0], axis=1, keepdims=True)
    # the plane passes through the inliers' mean; n . p there is the plane's offset
    through = near.seeds + (near.frames @ planes.means[..., np.newaxis])[..., 0]
    offsets = np.sum(normals * through, axis=1)
    checks = _Checks(
        planes,
        residuals,
        _expected_error_deg(sigmas, planes.across, planes.counts),
        sigmas,
        too_few,
        bends,
        allowed,
        off,
        tolerances[:, 0],
        normals,
        offsets,
        offsets * depths / np.sum(normals * near.seeds, axis=1),  # along the seeds' rays: seed / depth
        window,
    )
    focal = 0.5 * (camera.fx * scale[0] + camera.fy * scale[1])
    return [checks.verdict(index, surfaces[index].depth / focal, settings) for index in range(len(surfaces))]


@dataclass(frozen=True)
class _Checks:
    """What the fits of an answer's neighbourhoods say, point by point (see the module's docstring)."""

    planes: _Planes
    residuals: np.ndarray
    errors: np.ndarray  # expected error of each normal, degrees
    sigmas: np.ndarray  # the depth noise taken for each: the model's or its residual, the larger
    too_few: np.ndarray
    bends: np.ndarray
    allowed: np.ndarray
    off: np.ndarray  # each seed's distance from its plane along the line of sight
    tolerances: np.ndarray
    normals: np.ndarray  # k x 3, optical frame, towards the camera
    offsets: np.ndarray  # k: n . p of the planes' points
    seed_depths: np.ndarray  # k: Z of each plane along its seed pixel's ray
    window: tuple[np.ndarray, np.ndarray]  # k supports and steps: see SurfaceNormal.window_support

    def verdict(self, index: int, pixel_m: float, settings: DepthSettings) -> SurfaceNormal:
        """Point `index`'s normal, or the first reason it has none; `pixel_m` is the width of a depth
        pixel at the surface's depth (for saying how thin a surface is)."""
        count, residual = int(self.planes.counts[index]), float(self.residuals[index])

        def refused(reason: str, *about: SettingRef) -> SurfaceNormal:
            return SurfaceNormal(None, residual, count, reason=reason, settings=about)

        if self.too_few[index]:
            return SurfaceNormal(
                None,
                math.nan,
                count,
                reason=f"too few points on the surface around the point to fit a plane ({count}; at least "
                f"{settings.normal_min_points} are needed)",
                settings=(NORMAL_MIN_POINTS,),
            )
        error = float(self.errors[index])
        if error > settings.normal_max_error:
            across, sigma = float(self.planes.across[index]), float(self.sigmas[index])
            return refused(
                f"the surface is too thin or too noisy here to orient: its points spread "
                f"{across / pixel_m:.1f} pixels across with {sigma * 1000:.1f} mm of depth noise, "
                f"which would tilt a normal by about {error:.0f} degrees, more than the "
                f"{settings.normal_max_error:g} allowed",
                NORMAL_MAX_ERROR,
            )
        if self.bends[index] > self.allowed[index]:
            return refused(
                f"the surface bends at the point: the planes on its two sides differ by "
                f"{self.bends[index]:.0f} degrees, more than the {self.allowed[index]:.0f} that noise and "
                "the largest bend allow (a ridge, a crease or a corner between faces)",
                NORMAL_MAX_BEND,
            )
        if self.off[index] > self.tolerances[index]:
            return refused(
                f"the point is on an edge: it lies {self.off[index] * 1000:.1f} mm off the plane of "
                "the surface around it"
            )
        normal = no_negative_zeros(self.normals[index])
        plane = Plane(normal, float(self.offsets[index]), float(self.seed_depths[index]))
        support, step = int(self.window[0][index]), float(self.window[1][index])
        return SurfaceNormal(
            normal, residual, count, error, plane=plane, window_support=support, window_step=step
        )


def _neighbourhoods(
    depth_m: np.ndarray | DepthImage,
    camera: CameraModel,
    scale: tuple[float, float],
    surfaces: Sequence[Surface],
    depths: np.ndarray,
    settings: DepthSettings,
) -> _Neighbourhoods:
    """The sampling grids centred on the surfaces' seed pixels (see the module's docstring), and the
    dense depth windows around them, each valid pixel lifted along its own ray, in one gather; `depths`
    are the surfaces' depths."""
    count, side = len(surfaces), 2 * settings.normal_radius + 1
    focal = np.array([camera.fx * scale[0], camera.fy * scale[1]])
    # pixels between neighbouring samples, so that the grid spans normal_size from its first pixel's outer
    # edge to its last's; 1 where adjacent pixels already span more
    spacing = np.maximum(1.0, (settings.normal_size * focal / depths[:, np.newaxis] - 1.0) / (side - 1))
    steps = np.arange(side) - settings.normal_radius
    seed_pixels = np.array([(surface.column, surface.row) for surface in surfaces])  # k x 2
    grid = seed_pixels[:, :, np.newaxis] + np.rint(steps * spacing[:, :, np.newaxis]).astype(np.int64)
    window = seed_pixels[:, :, np.newaxis] + window_offsets(settings.depth_window)
    # every pixel of both, k x M: the grid's row by row, then the window's
    size = settings.depth_window
    columns = np.concatenate([np.tile(grid[:, 0], (1, side)), np.tile(window[:, 0], (1, size))], axis=1)
    rows = np.concatenate(
        [np.repeat(grid[:, 1], side, axis=1), np.repeat(window[:, 1], size, axis=1)], axis=1
    )
    height, width = depth_m.shape
    inside = (rows >= 0) & (rows < height) & (columns >= 0) & (columns < width)
    gathered = depth_m[np.clip(rows, 0, height - 1), np.clip(columns, 0, width - 1)]
    patches = np.where(inside, np.asarray(gathered, dtype=np.float64), np.nan)
    valid = usable_depths(patches, settings)
    # depth-image pixel centres as continuous points of the colour image, which the camera model is for
    ray_x, ray_y = camera.pixel_rays((columns + 0.5) / scale[0], (rows + 0.5) / scale[1])
    centre = settings.normal_radius * (side + 1)  # the grid's middle sample, row by row: the seed pixel
    seeds = np.stack([ray_x[:, centre], ray_y[:, centre], np.ones(count)], axis=1) * depths[:, np.newaxis]
    frames = _sight_frames(seeds)
    seeds_along = np.einsum("ki,kij->kj", seeds, frames)  # the seeds' own (u, v, t)
    # each point Z (ray_x, ray_y, 1), less its seed, along each axis of its frame; 0 without depth, so that
    # no NaN spreads through a product (the points fitted are chosen by weights, see _fit)
    z = np.where(valid, patches, 0.0)
    sight = np.stack([ray_x * z, ray_y * z, z], axis=-1) @ frames - seeds_along[:, np.newaxis]
    u, v, t = np.moveaxis(np.where(valid[..., np.newaxis], sight, 0.0), -1, 0)
    features = np.stack([valid.astype(np.float64), u, v, t, u * u, u * v, v * v, u * t, v * t], axis=-1)
    # a window pixel on the grid too (all of them where the grid's pixels are adjacent) is fitted once
    on_grid = [
        (grid[:, axis, :, np.newaxis] == window[:, axis, np.newaxis, :]).any(axis=1) for axis in (0, 1)
    ]
    fitted = valid.copy()
    fitted[:, side * side :] &= ~(on_grid[1][:, :, np.newaxis] & on_grid[0][:, np.newaxis, :]).reshape(
        count, -1
    )
    return _Neighbourhoods(features, patches, fitted, valid[:, side * side :], seeds, frames)


def _sight_frames(seeds: np.ndarray) -> np.ndarray:
    """k x 3 x 3: columns across the line of sight to each seed (image-right and image-down made
    perpendicular to it), then along it; points @ frame gives their (u, v, t)."""
    sight = seeds / np.linalg.norm(seeds, axis=1, keepdims=True)
    right = np.array([1.0, 0.0, 0.0]) - sight[:, :1] * sight
    right /= np.linalg.norm(right, axis=1, keepdims=True)
    (sx, sy, sz), (rx, ry, rz) = sight.T, right.T
    down = np.stack([sy * rz - sz * ry, sz * rx - sx * rz, sx * ry - sy * rx], axis=1)  # sight x right
    return np.stack([right, down, sight], axis=2)


def _settled_fit(
    near: _Neighbourhoods, chosen: np.ndarray, tolerances: np.ndarray, min_points: int
) -> tuple[_Planes, np.ndarray, np.ndarray]:
    """Fits the chosen points, takes every point within the tolerance of the plane and fits again until
    the set settles (or MAX_REFITS): the planes, the points fitted, and which had too few to fit (those
    are left as they were)."""
    too_few = np.zeros(len(chosen), dtype=bool)
    for _ in range(MAX_REFITS + 1):
        too_few |= chosen.sum(axis=1) < min_points
        planes = _fit(near, chosen)
        refit = near.valid & (np.abs(planes.along_sight(near)) <= tolerances)
        refit[too_few] = chosen[too_few]
        if np.array_equal(refit, chosen):
            return planes, chosen, too_few
        chosen = refit
    return _fit(near, chosen), chosen, too_few


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
    near: _Neighbourhoods, chosen: np.ndarray, sigmas: np.ndarray, max_bend: float
) -> tuple[np.ndarray, np.ndarray]:
    """For each neighbourhood: the larger angle between the planes of the two sides of its seed (split
    across u and across v), and the angle allowed there: max_bend plus BEND_NOISE_SIGMAS times what the
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
    allowed = max_bend + BEND_NOISE_SIGMAS * np.hypot(errors[:, ::2], errors[:, 1::2])
    usable = np.minimum(planes.counts[:, ::2], planes.counts[:, 1::2]) >= MIN_SIDE_POINTS
    worst = np.argmax(np.where(usable, bends - allowed, -np.inf), axis=1)
    rows = np.arange(len(worst))
    some = usable.any(axis=1)
    return np.where(some, bends[rows, worst], 0.0), np.where(some, allowed[rows, worst], 0.0)
