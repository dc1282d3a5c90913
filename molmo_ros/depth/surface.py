"""The depth of the surface a point lies on: the pointed pixel's own depth, denoised within its surface.

A window median returns the depth of whatever covers most of the window, so a point on a 2-pixel pole in
front of a wall got the wall's depth. Here the pointed pixel decides which surface it is on: the window
samples near its depth (within EDGE_SIGMAS of the noise model in `settings`, which grows with Z^2 as a
stereo or structured-light camera's does) are its surface. The pointed pixel is itself a noisy sample, so
that band is then re-centred on its median, and every window sample is judged against that centre: those
within EDGE_SIGMAS of it support the depth (their median), the others are off the surface. The window
straddles an edge only when at least MIN_EDGE_SAMPLES are off, and `depth_step` says by how much, from
the same centre.

On a steep surface the window's own depths spread over more than the noise, and a centre depth would
read the slope as an edge; so where a plane was fitted around the point (`normals`), the window is judged
against that plane instead (`judged_against_planes`): each sample by its distance from the plane along
the line of sight, in depth (Z).

The pointed pixel counts as a surface only when at least `depth_min_support` window samples (itself
included) agree with it; a lone value between an edge's two sides (a flying pixel) or a hole is not one.
Then, and only then, the nearest pixel within `depth_search_radius` that is a surface is used instead,
and the result says so (`fallback`); among equally near ones the nearest to the camera wins, since a
pointed object stands in front of its background.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from molmo_ros.depth.images import DepthImage
from molmo_ros.depth.settings import DepthSettings

# A window sample is off the surface when it lies more than this many noise sigmas from it. The 24 other
# samples of a 5x5 window on one flat surface, measured from the median of its band (itself about
# sigma / 4 from the truth), each exceed 4 sigma with probability 2 (1 - Phi(3.9)) = 1e-4: one of them
# in 0.25 % of windows, two in 3e-6. At 3 sigma from the seed pixel's own noisy depth a third of the
# windows on a flat wall read as edges (the difference of two samples spreads sigma sqrt(2), and the
# worst of 24 was taken).
EDGE_SIGMAS = 4.0
# Off-surface samples an edge needs: a single one is as likely noise (above) or a lone flying pixel; a
# real step puts a whole row or column of the window on its other side.
MIN_EDGE_SAMPLES = 2


def noise_sigma(depth_m: float | np.ndarray, settings: DepthSettings) -> float | np.ndarray:
    """Standard deviation in metres of a depth measurement at `depth_m` (see DepthSettings)."""
    return settings.depth_noise + settings.depth_noise_quadratic * np.square(depth_m)


def usable_depths(depths: float | np.ndarray, settings: DepthSettings) -> bool | np.ndarray:
    """Where `depths` (an array, or one depth) hold a depth the settings accept: within [min_depth,
    max_depth]; NaN (no depth) never is, as NaN compares False."""
    return (depths >= settings.min_depth) & (depths <= settings.max_depth)


def window_offsets(side: int) -> np.ndarray:
    """Pixel offsets of a side x side window from its centre pixel; an even side puts the extra row and
    column after it."""
    return np.arange(side) - (side - 1) // 2


def window_bounds(row: int, column: int, side: int, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the side x side window centred on a pixel (see `window_offsets`),
    clipped to the image: slicing one window costs less than gathering it."""
    before = (side - 1) // 2
    rows, columns = shape
    top, left = max(0, row - before), max(0, column - before)
    return top, min(rows, row - before + side), left, min(columns, column - before + side)


@dataclass(frozen=True)
class Surface:
    """The surface found for a point, in the depth image's pixels."""

    depth: float  # metres: the median of the supporting window samples
    support: int  # window samples on the surface (the seed included)
    # Metres of depth (Z) from the surface to the off-surface window sample farthest from it:
    # positive when that sample lies behind the surface (the point is on the near side of an edge), negative
    # when in front (the far side); 0 when fewer than MIN_EDGE_SAMPLES are off (no edge).
    depth_step: float
    fallback: bool  # the pointed pixel was no surface: `row`, `column` is the nearest one found instead
    search_distance: float  # depth-image pixels from the point to the centre of the seed pixel
    row: int  # the seed pixel: the pointed one, or the one the fallback found
    column: int


@dataclass(frozen=True)
class Plane:
    """A plane fitted around a surface point, in the colour camera's optical frame: n . p = offset."""

    normal: tuple[float, float, float]  # unit, towards the camera
    offset: float  # metres; negative (the camera, at the origin, is on the side the normal faces)
    seed_depth: float  # Z where the ray through the centre of the surface's seed pixel meets the plane

    def depth_at(self, ray: Sequence[float]) -> float:
        """Z where a ray (x, y, 1) meets the plane; NaN where it runs along it or meets it behind the
        camera. Plain floats: numpy's per-call cost is most of the work on one three-vector."""
        nx, ny, nz = self.normal
        along = nx * float(ray[0]) + ny * float(ray[1]) + nz * float(ray[2])
        depth = self.offset / along if along != 0.0 else math.nan
        return depth if depth > 0 else math.nan


def pointed_surface(
    depth_m: np.ndarray | DepthImage, x: float, y: float, settings: DepthSettings
) -> Surface | None:
    """The surface under depth-image point (x, y) (continuous coordinates), or None when neither the
    pointed pixel nor any pixel within depth_search_radius is one."""
    rows, columns = depth_m.shape
    column = min(int(math.floor(x)), columns - 1)  # x == width lies on the last column's right edge
    row = min(int(math.floor(y)), rows - 1)
    found = _surface_at(depth_m, row, column, settings)
    if found is not None:
        return found
    radius = settings.depth_search_radius
    top, left = max(0, row - radius), max(0, column - radius)
    patch = depth_m[top : row + radius + 1, left : column + radius + 1]
    candidate_rows, candidate_columns = np.nonzero(usable_depths(patch, settings))
    distances = np.hypot(candidate_columns + left + 0.5 - x, candidate_rows + top + 0.5 - y)
    depths = patch[candidate_rows, candidate_columns]
    for index in np.lexsort((depths, distances)):  # nearest first; equally near: nearest to the camera
        seed_row, seed_column = int(candidate_rows[index] + top), int(candidate_columns[index] + left)
        if (seed_row, seed_column) == (row, column):
            continue
        found = _surface_at(depth_m, seed_row, seed_column, settings, float(distances[index]))
        if found is not None:
            return found
    return None


def _surface_at(
    depth_m: np.ndarray | DepthImage,
    row: int,
    column: int,
    settings: DepthSettings,
    fallback_distance: float = 0.0,
) -> Surface | None:
    """The surface of the window around a pixel, when the pixel is a surface (see the module docstring);
    found `fallback_distance` depth pixels from the point (0: the pointed pixel itself)."""
    own = float(depth_m[row : row + 1, column : column + 1][0, 0])
    if not usable_depths(own, settings):
        return None
    top, bottom, left, right = window_bounds(row, column, settings.depth_window, depth_m.shape)
    window = depth_m[top:bottom, left:right]
    samples = window[usable_depths(window, settings)]
    band = np.abs(samples - own) <= EDGE_SIGMAS * _sigma(own, settings)
    if int(band.sum()) < settings.depth_min_support:
        return None
    depth = _median(samples[band])
    agree = np.abs(samples - depth) <= EDGE_SIGMAS * _sigma(depth, settings)
    if (agree ^ band).any():  # re-centring moved a sample in or out: the median of the new set
        depth = _median(samples[agree])
    step = _step(samples[~agree] - depth)
    return Surface(depth, int(agree.sum()), step, fallback_distance > 0, fallback_distance, row, column)


def judged_against_planes(
    offsets: np.ndarray, usable: np.ndarray, depths: np.ndarray, settings: DepthSettings
) -> tuple[np.ndarray, np.ndarray]:
    """The support and step (see Surface) of k surfaces judged against the planes fitted around them:
    `offsets` (k x n) are their windows' samples' depths less the plane's along the same rays, `usable`
    (k x n) which samples have a depth, `depths` (k) the surfaces' depths."""
    usable_offsets = np.where(usable, offsets, 0.0)
    away = usable & (np.abs(usable_offsets) > EDGE_SIGMAS * noise_sigma(depths, settings)[:, np.newaxis])
    farthest = np.take_along_axis(
        usable_offsets, np.argmax(np.where(away, np.abs(usable_offsets), -1.0), axis=1)[:, np.newaxis], axis=1
    )[:, 0]
    steps = np.where(away.sum(axis=1) >= MIN_EDGE_SAMPLES, farthest, 0.0)
    return (usable & ~away).sum(axis=1), steps


def _sigma(depth: float, settings: DepthSettings) -> float:
    """noise_sigma of one depth, in plain floats (numpy's per-call cost is most of the work on one)."""
    return settings.depth_noise + settings.depth_noise_quadratic * depth * depth


def _median(values: np.ndarray) -> float:
    """The median, without np.median's overhead on a few values."""
    ordered = np.sort(values)
    return float(ordered[(len(ordered) - 1) // 2] + ordered[len(ordered) // 2]) / 2


def _step(off: np.ndarray) -> float:
    """The signed distance (see Surface.depth_step) of the off-surface sample farthest from the surface,
    or 0 when too few are off for an edge."""
    if off.size < MIN_EDGE_SAMPLES:
        return 0.0
    return float(off[np.argmax(np.abs(off))])
