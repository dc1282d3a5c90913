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
from dataclasses import dataclass

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


def unit_quaternion(values: Sequence[float], what: str = "quaternion") -> Quaternion:
    """(x, y, z, w) normalised; DepthError unless it has 4 finite values and a norm near 1."""
    quaternion = np.asarray(values, dtype=np.float64).reshape(-1)
    if quaternion.size != 4 or not np.all(np.isfinite(quaternion)):
        raise DepthError(f"{what} must be 4 finite numbers x, y, z, w, not {list(values)!r}")
    norm = float(np.linalg.norm(quaternion))
    if abs(norm - 1.0) > QUATERNION_NORM_TOLERANCE:
        raise DepthError(
            f"{what} {quaternion.tolist()} has norm {norm:.4g}; a rotation is a unit quaternion x, y, z, w "
            "(the identity is 0, 0, 0, 1)"
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


def matrix_to_quaternion(rotation: np.ndarray) -> Quaternion:
    """The unit quaternion (x, y, z, w), w >= 0, of a 3x3 rotation matrix (Shepperd's method: the
    largest of the four diagonal combinations is divided by, so no step loses precision)."""
    m = np.asarray(rotation, dtype=np.float64)
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    candidates = (trace, m[0, 0], m[1, 1], m[2, 2])
    largest = int(np.argmax(candidates))
    if largest == 0:
        s = 2.0 * math.sqrt(1.0 + trace)
        q = ((m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, s / 4)
    elif largest == 1:
        s = 2.0 * math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = (s / 4, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s, (m[2, 1] - m[1, 2]) / s)
    elif largest == 2:
        s = 2.0 * math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = ((m[0, 1] + m[1, 0]) / s, s / 4, (m[1, 2] + m[2, 1]) / s, (m[0, 2] - m[2, 0]) / s)
    else:
        s = 2.0 * math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = ((m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, s / 4, (m[1, 0] - m[0, 1]) / s)
    quaternion = np.asarray(q) / np.linalg.norm(q)
    if quaternion[3] < 0:
        quaternion = -quaternion
    return tuple(float(value) for value in quaternion)


@dataclass(frozen=True, eq=False)
class RigidTransform:
    """p_target = rotation @ p_source + translation (metres)."""

    rotation: np.ndarray  # 3x3
    translation: np.ndarray  # 3

    @classmethod
    def from_quaternion(cls, translation: Sequence[float], quaternion: Sequence[float]) -> "RigidTransform":
        vector = np.asarray(translation, dtype=np.float64).reshape(-1)
        if vector.size != 3 or not np.all(np.isfinite(vector)):
            raise DepthError(f"a translation must be 3 finite numbers x, y, z, not {list(translation)!r}")
        return cls(quaternion_to_matrix(unit_quaternion(quaternion)), vector)

    @classmethod
    def identity(cls) -> "RigidTransform":
        return cls(np.eye(3), np.zeros(3))

    @property
    def quaternion(self) -> Quaternion:
        return matrix_to_quaternion(self.rotation)

    def point(self, point: Sequence[float]) -> Vector:
        return tuple(float(value) for value in self.rotation @ np.asarray(point) + self.translation)

    def vector(self, vector: Sequence[float]) -> Vector:
        """A direction: rotated, not moved."""
        return tuple(float(value) for value in self.rotation @ np.asarray(vector))

    def pose(self, pose: Pose) -> Pose:
        rotation = self.rotation @ quaternion_to_matrix(pose.orientation)
        return Pose(self.point(pose.position), matrix_to_quaternion(rotation))

    def then(self, other: "RigidTransform") -> "RigidTransform":
        """This transform followed by `other` (other's target <- this source)."""
        return RigidTransform(
            other.rotation @ self.rotation, other.rotation @ self.translation + other.translation
        )

    def inverse(self) -> "RigidTransform":
        return RigidTransform(self.rotation.T, -self.rotation.T @ self.translation)


def approach_pose(position: Sequence[float], normal: Sequence[float]) -> Pose:
    """The approach pose of a surface point in the camera's optical frame (see the module's docstring)."""
    approach = -np.asarray(normal, dtype=np.float64)
    approach /= np.linalg.norm(approach)
    right, down = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    x_axis = right - (right @ approach) * approach
    if np.linalg.norm(x_axis) <= PARALLEL_LIMIT:  # then down is perpendicular to the approach
        x_axis = down - (down @ approach) * approach
    x_axis /= np.linalg.norm(x_axis)
    y_axis = np.cross(approach, x_axis)
    rotation = np.column_stack([x_axis, y_axis, approach])
    return Pose(tuple(float(value) for value in position), matrix_to_quaternion(rotation))
