"""Transforms from tf2, behind the pointing layer's `TransformSource`.

tf2_ros comes with every ROS 2 install but has no wheel on PyPI, so it is imported only when a camera
needs it (target_frame set, no static pose): where it is missing, configure fails with what to set
instead. CI runs without it; this module is exercised there only against a stand-in for tf2_ros (see
test/doubles/tf2_ros.py), which checks the calls and conversions, not tf2 itself.
"""

from typing import Any

from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.time import Time

from molmo_ros.depth.transforms import RigidTransform
from molmo_ros.pointing.outcomes import View
from molmo_ros.pointing.target_frame import TransformUnavailable


class Tf2Transforms:
    """A tf2 buffer filled by a listener on `node` (its executor delivers /tf and /tf_static)."""

    def __init__(self, node: Node) -> None:
        import tf2_ros  # a ROS 2 install's; ImportError here tells configure that tf2 is unavailable

        self._tf2 = tf2_ros
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
        return RigidTransform.from_quaternion(
            (translation.x, translation.y, translation.z), (rotation.x, rotation.y, rotation.z, rotation.w)
        )

    def close(self) -> None:
        """Stops listening (lifecycle cleanup): the listener's subscriptions go with it."""
        self._listener.unregister()
