"""Transforms from tf2, behind the pointing layer's `TransformSource`.

tf2_ros comes with every ROS 2 install but has no wheel on PyPI, so it is imported only when
target_frame is set: where it is missing, the static camera poses serve alone, or configure fails with
what to set instead. CI runs without it; this module is exercised there only against a stand-in for
tf2_ros (see test/doubles/tf2_ros.py), which checks the calls and conversions, not tf2 itself.
"""

from typing import Any

import numpy as np
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.time import Time

from molmo_ros.depth.errors import DepthError
from molmo_ros.depth.transforms import RigidTransform
from molmo_ros.pointing.outcomes import View
from molmo_ros.pointing.target_frame import TransformUnavailable


class Tf2Transforms:
    """A tf2 buffer filled by a listener on `node` (its executor delivers /tf and /tf_static)."""

    def __init__(self, node: Node) -> None:
        import tf2_ros  # a ROS 2 install's; ImportError here tells configure that tf2 is unavailable

        self._tf2, self._node = tf2_ros, node
        self._buffer: Any = tf2_ros.Buffer(node=node)
        self._listener: Any = tf2_ros.TransformListener(self._buffer, node)

    def lookup(self, target: str, view: View, timeout_s: float) -> RigidTransform:
        """Blocks the calling (worker) thread up to `timeout_s` while the node's executor fills the
        buffer; a frame stamped 0 takes the newest transform, as tf2 does for Time()."""
        try:
            stamped = self._buffer.lookup_transform(
                target, view.frame_id, Time(nanoseconds=view.stamp_ns), Duration(seconds=timeout_s)
            )
        except self._tf2.TransformException as error:
            raise TransformUnavailable(f"tf2: {type(error).__name__}: {error}") from error
        translation, rotation = stamped.transform.translation, stamped.transform.rotation
        quaternion = np.array([rotation.x, rotation.y, rotation.z, rotation.w], dtype=np.float64)
        # tf2 takes quaternions whose squared norm is within 1e-2 of 1 (more than a parameter file's
        # rounding, which RigidTransform allows): it has accepted this one, so it is normalised here
        norm = float(np.linalg.norm(quaternion))
        try:
            return RigidTransform.from_quaternion(
                (translation.x, translation.y, translation.z), quaternion / norm if norm > 0 else quaternion
            )
        except DepthError as error:
            raise TransformUnavailable(f"tf2 gave an unusable transform: {error}") from error

    def close(self) -> None:
        """Stops listening and removes what the buffer added to the node (lifecycle cleanup): the
        listener's subscriptions, the buffer's tf2_frames service and its clock jump callback, so that
        configuring again does not add a second of each."""
        self._listener.unregister()
        service = getattr(self._buffer, "srv", None)  # made only when the buffer is given the node
        if service is not None:
            self._node.destroy_service(service)
        jump_handle = getattr(self._buffer, "jump_handle", None)  # tf2_ros of Jazzy and later
        if jump_handle is not None:
            jump_handle.unregister()
