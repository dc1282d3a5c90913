"""Quaternion arithmetic written out for the tests, independent of the code under test: the Hamilton
product, rotating a vector by a unit quaternion, and the quaternion of an axis and angle. Quaternions are
(x, y, z, w), as geometry_msgs orders them; `rotate` also takes a geometry_msgs Quaternion."""

import math

import numpy as np


def hamilton(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The quaternion product a b, both (x, y, z, w)."""
    (ax, ay, az, aw), (bx, by, bz, bw) = a, b
    return np.array(
        [
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
            aw * bw - ax * bx - ay * by - az * bz,
        ]
    )


def rotate(quaternion, vector) -> np.ndarray:
    """q v q* for a unit quaternion q (an (x, y, z, w) sequence or a geometry_msgs Quaternion)."""
    if hasattr(quaternion, "w"):
        quaternion = (quaternion.x, quaternion.y, quaternion.z, quaternion.w)
    q = np.asarray(quaternion, dtype=np.float64)
    return hamilton(hamilton(q, np.append(vector, 0.0)), q * np.array([-1, -1, -1, 1]))[:3]


def axis_angle_quaternion(axis, angle: float) -> np.ndarray:
    """The unit quaternion of a turn by `angle` radians about `axis`."""
    axis = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    return np.append(axis * math.sin(angle / 2), math.cos(angle / 2))
