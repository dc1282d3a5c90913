"""Rigid transforms and the approach pose of a pointed surface.

Quaternions are (x, y, z, w), as geometry_msgs/Quaternion orders them. A transform maps points of a
source frame into a target frame, p_target = R p_source + t, which is also the pose of the source frame
in the target frame (what tf2 and a static transform publisher give for target <- source).

The approach pose of a surface point: its position, z axis the approach direction (along the negative
normal, into the surface), x axis the camera's image-right direction (+x of the optical frame) with its
component along z removed, and y = z x x. So the pose is fixed by the surface and the camera alone, and
it is the same physical pose in every frame it is expressed in. Only when the approach runs along the
image-right direction itself (within PARALLEL_LIMIT) is image-down (+y) used in its place.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from molmo_ros.depth.errors import DepthError

# A quaternion read from a parameter file may be rounded: 4 decimals leave its norm within about 1e-4 of
# 1, so within this it is normalised; farther off, it is a mistake (a missing component, Euler angles).
QUATERNION_NORM_TOLERANCE = 1e-3
# The approach is taken as parallel to image-right when what is left of image-right after removing
# its component along the approach is shorter than this (the x axis would then be rounding noise).
PARALLEL_LIMIT = 1e-6

Vector = tuple[float, float, float]
Quaternion = tuple[float, float, float, float]


@dataclass(frozen=True)
class Pose:
    """A position and an orientation (x, y, z, w) in some frame."""

    position: Vector
    orientation: Quaternion


def no_negative_zeros(values: Sequence[float] | np.ndarray) -> tuple[float, ...]:
    """Plain floats, with -0.0 made 0.0 (adding 0.0 does it), so that none is ever printed as "-0.0"."""
    return tuple(float(value) + 0.0 for value in values)


def unit_quaternion(values: Sequence[float]) -> Quaternion:
    """(x, y, z, w) normalised; DepthError unless it has 4 finite values and a norm near 1."""
    quaternion = np.asarray(values, dtype=np.float64).reshape(-1)
    if quaternion.size != 4 or not np.all(np.isfinite(quaternion)):
        raise DepthError(f"quaternion must be 4 finite numbers x, y, z, w, not {list(values)!r}")
    norm = float(np.linalg.norm(quaternion))
    if abs(norm - 1.0) > QUATERNION_NORM_TOLERANCE:
        raise DepthError(
            f"quaternion {quaternion.tolist()} has norm {norm:.4g}; a rotation is a unit quaternion x, y, z, "
            "w (the identity is 0, 0, 0, 1)"
        )
    return tuple(float(value) for value in quaternion / norm)


def quaternion_to_matrix(quaternion: Quaternion) -> np.ndarray:
    """The 3x3 rotation matrix of a unit quaternion (x, y, z, w)."""
    x, y, z, w = quaternion
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def matrix_to_quaternion(rotation: np.ndarray | Sequence[Sequence[float]]) -> Quaternion:
    """The unit quaternion (x, y, z, w), w >= 0, of a 3x3 rotation matrix (Shepperd's method: the
    largest of the four diagonal combinations is divided by, so no step loses precision)."""
    (m00, m01, m02), (m10, m11, m12), (m20, m21, m22) = (tuple(map(float, row)) for row in rotation)
    trace = m00 + m11 + m22
    largest = max(range(4), key=(trace, m00, m11, m22).__getitem__)
    if largest == 0:
        s = 2.0 * math.sqrt(1.0 + trace)
        q = ((m21 - m12) / s, (m02 - m20) / s, (m10 - m01) / s, s / 4)
    elif largest == 1:
        s = 2.0 * math.sqrt(1.0 + m00 - m11 - m22)
        q = (s / 4, (m01 + m10) / s, (m02 + m20) / s, (m21 - m12) / s)
    elif largest == 2:
        s = 2.0 * math.sqrt(1.0 + m11 - m00 - m22)
        q = ((m01 + m10) / s, s / 4, (m12 + m21) / s, (m02 - m20) / s)
    else:
        s = 2.0 * math.sqrt(1.0 + m22 - m00 - m11)
        q = ((m02 + m20) / s, (m12 + m21) / s, s / 4, (m10 - m01) / s)
    norm = math.sqrt(sum(value * value for value in q))
    sign = -1.0 if q[3] < 0 else 1.0
    return tuple(sign * value / norm for value in q)


@dataclass(frozen=True, eq=False)
class RigidTransform:
    """p_target = rotation @ p_source + translation (metres). Points, directions and poses are moved with
    plain floats: numpy's per-call cost is most of the work on three-vectors, and an answer moves a few."""

    rotation: np.ndarray  # 3x3
    translation: np.ndarray  # 3
    # the same in plain floats, and the rotation as a quaternion (x, y, z, w), made once
    _rows: tuple[Vector, Vector, Vector] = field(init=False, repr=False)
    _shift: Vector = field(init=False, repr=False)
    _turn: Quaternion = field(init=False, repr=False)

    def __post_init__(self) -> None:
        rows = tuple(tuple(float(value) for value in row) for row in self.rotation)
        object.__setattr__(self, "_rows", rows)
        object.__setattr__(self, "_shift", tuple(float(value) for value in self.translation))
        object.__setattr__(self, "_turn", matrix_to_quaternion(rows))

    @classmethod
    def from_quaternion(cls, translation: Sequence[float], quaternion: Sequence[float]) -> "RigidTransform":
        vector = np.asarray(translation, dtype=np.float64).reshape(-1)
        if vector.size != 3 or not np.all(np.isfinite(vector)):
            raise DepthError(f"a translation must be 3 finite numbers x, y, z, not {list(translation)!r}")
        return cls(quaternion_to_matrix(unit_quaternion(quaternion)), vector)

    @property
    def quaternion(self) -> Quaternion:
        return self._turn

    def point(self, point: Sequence[float]) -> Vector:
        x, y, z = self.vector(point)
        tx, ty, tz = self._shift
        return (x + tx, y + ty, z + tz)

    def vector(self, vector: Sequence[float]) -> Vector:
        """A direction: rotated, not moved."""
        x, y, z = (float(value) for value in vector)
        return tuple(r0 * x + r1 * y + r2 * z for r0, r1, r2 in self._rows)

    def pose(self, pose: Pose) -> Pose:
        """The pose moved: its orientation turned by this rotation (the Hamilton product of the two
        quaternions, w kept >= 0 as matrix_to_quaternion gives it)."""
        (ax, ay, az, aw), (bx, by, bz, bw) = self._turn, pose.orientation
        turned = (
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
            aw * bw - ax * bx - ay * by - az * bz,
        )
        norm = math.sqrt(sum(value * value for value in turned)) * (-1.0 if turned[3] < 0 else 1.0)
        return Pose(self.point(pose.position), tuple(value / norm for value in turned))


def approach_pose(position: Sequence[float], normal: Sequence[float]) -> Pose:
    """The approach pose of a surface point in the camera's optical frame (see the module's docstring).
    Written with plain floats: numpy's per-call cost is most of the work on three-vectors."""
    nx, ny, nz = (float(value) for value in normal)
    length = math.sqrt(nx * nx + ny * ny + nz * nz)
    zx, zy, zz = -nx / length, -ny / length, -nz / length  # the approach
    xx, xy, xz = 1.0 - zx * zx, -zx * zy, -zx * zz  # image-right minus its part along the approach
    if math.sqrt(xx * xx + xy * xy + xz * xz) <= PARALLEL_LIMIT:  # then image-down is perpendicular to it
        xx, xy, xz = -zy * zx, 1.0 - zy * zy, -zy * zz
    length = math.sqrt(xx * xx + xy * xy + xz * xz)
    xx, xy, xz = xx / length, xy / length, xz / length
    yx, yy, yz = zy * xz - zz * xy, zz * xx - zx * xz, zx * xy - zy * xx  # y = z x x
    rotation = ((xx, yx, zx), (xy, yy, zy), (xz, yz, zz))  # rows; the columns are the axes
    return Pose(tuple(float(value) for value in position), matrix_to_quaternion(rotation))
