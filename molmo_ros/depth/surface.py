"""The depth of the surface a point lies on: the pointed pixel's own depth, denoised within its surface.

A window median returns the depth of whatever covers most of the window, so a point on a 2-pixel pole in
front of a wall got the wall's depth. Here the pointed pixel decides: its depth is the surface's, and the
window only denoises it, with the samples within the noise tolerance of that depth (3 sigma of the noise
model in `settings`, which grows with Z^2 as a stereo or structured-light camera's does). The samples
outside the tolerance say that the window straddles an edge, and by how much (`depth_step`).

The pointed pixel counts as a surface only when at least `depth_min_support` window samples (itself
included) agree with it; a lone value between an edge's two sides (a flying pixel) or a hole is not one.
Then, and only then, the nearest pixel within `depth_search_radius` that is a surface is used instead,
and the result says so (`fallback`); among equally near ones the nearest to the camera wins, since a
pointed object stands in front of its background.
"""

import math
from dataclasses import dataclass

import numpy as np

from molmo_ros.depth.images import DepthImage
from molmo_ros.depth.settings import DepthSettings

# Depths within this many standard deviations of the noise model are one surface: 3 sigma keeps 99.7 % of
# a surface's own samples (Gaussian noise) while a step of a few sigma already reads as an edge.
TOLERANCE_SIGMAS = 3.0


def noise_sigma(depth_m: float | np.ndarray, settings: DepthSettings) -> float | np.ndarray:
    """Standard deviation in metres of a depth measurement at `depth_m` (see DepthSettings)."""
    return settings.depth_noise + settings.depth_noise_quadratic * np.square(depth_m)


def surface_tolerance(depth_m: float | np.ndarray, settings: DepthSettings) -> float | np.ndarray:
    """How far in metres a depth may lie from `depth_m` and still be the same surface."""
    return TOLERANCE_SIGMAS * noise_sigma(depth_m, settings)


@dataclass(frozen=True)
class Surface:
    """The surface found for a point, in the depth image's pixels."""

    depth: float  # metres: the median of the supporting window samples
    support: int  # window samples within the tolerance of the seed pixel's depth (the seed included)
    depth_step: float  # metres from `depth` to the farthest valid window sample off the surface; 0 if none
    fallback: bool  # the pointed pixel was no surface: `row`, `column` is the nearest one found instead
    search_distance: float  # depth-image pixels from the point to the centre of the seed pixel
    row: int  # the seed pixel: the pointed one, or the one the fallback found
    column: int


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
        return _surface(found, False, 0.0, row, column, settings)
    radius = settings.depth_search_radius
    top, left = max(0, row - radius), max(0, column - radius)
    patch = depth_m[top : row + radius + 1, left : column + radius + 1]
    candidate_rows, candidate_columns = np.nonzero(_valid(patch, settings))
    distances = np.hypot(candidate_columns + left + 0.5 - x, candidate_rows + top + 0.5 - y)
    depths = patch[candidate_rows, candidate_columns]
    for index in np.lexsort((depths, distances)):  # nearest first; equally near: nearest to the camera
        seed_row, seed_column = int(candidate_rows[index] + top), int(candidate_columns[index] + left)
        if (seed_row, seed_column) == (row, column):
            continue
        found = _surface_at(depth_m, seed_row, seed_column, settings)
        if found is not None:
            return _surface(found, True, float(distances[index]), seed_row, seed_column, settings)
    return None


def window_bounds(row: int, column: int, side: int, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the side x side window centred on a pixel, clipped to the image;
    an even side puts the extra row and column after the pixel."""
    before = (side - 1) // 2
    rows, columns = shape
    top, left = max(0, row - before), max(0, column - before)
    return top, min(rows, row - before + side), left, min(columns, column - before + side)


def _surface_at(
    depth_m: np.ndarray | DepthImage, row: int, column: int, settings: DepthSettings
) -> tuple[np.ndarray, np.ndarray] | None:
    """(the window's valid depths, which of them agree with the pixel's) when the pixel is a surface."""
    own = float(depth_m[row : row + 1, column : column + 1][0, 0])
    if not settings.min_depth <= own <= settings.max_depth:  # NaN (no depth) compares False
        return None
    top, bottom, left, right = window_bounds(row, column, settings.depth_window, depth_m.shape)
    window = depth_m[top:bottom, left:right]
    samples = window[_valid(window, settings)]
    agree = np.abs(samples - own) <= surface_tolerance(own, settings)
    if int(agree.sum()) < settings.depth_min_support:
        return None
    return samples, agree


def _surface(
    found: tuple[np.ndarray, np.ndarray],
    fallback: bool,
    distance: float,
    row: int,
    column: int,
    settings: DepthSettings,
) -> Surface:
    samples, agree = found
    supporting = np.sort(samples[agree])  # the median, without np.median's overhead on a few values
    depth = float(supporting[(len(supporting) - 1) // 2] + supporting[len(supporting) // 2]) / 2
    off = samples[~agree]
    step = float(np.abs(off - depth).max()) if off.size else 0.0
    return Surface(depth, int(agree.sum()), step, fallback, distance, row, column)


def _valid(depths: np.ndarray, settings: DepthSettings) -> np.ndarray:
    with np.errstate(invalid="ignore"):  # NaN compares False, which is what "no depth" needs
        return (depths >= settings.min_depth) & (depths <= settings.max_depth)
