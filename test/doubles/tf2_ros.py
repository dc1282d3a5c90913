"""A test double for ROS 2's tf2_ros, which has no wheel on PyPI: tests put it in sys.modules as tf2_ros.

Its Buffer answers lookups from a table the test fills (and records each call: frames, stamp, timeout);
given a node, it adds to it what tf2_ros's Buffer adds (Jazzy): a "tf2_frames" service (here of a type
rcl_interfaces has, tf2_msgs having no wheel) and a clock jump callback. Its TransformListener records
that it was made and unregistered. It checks how molmo_ros calls tf2 and converts its answers, not tf2
itself: a real buffer, listener and /tf traffic are not exercised here.
"""

from geometry_msgs.msg import TransformStamped
from rcl_interfaces.srv import ListParameters
from rclpy.clock import JumpThreshold
from rclpy.duration import Duration


class TransformException(Exception):  # noqa: N818 (tf2_ros's own names)
    pass


class LookupException(TransformException):
    pass


class RecordedJumpHandle:
    """rclpy's JumpHandle, recording whether it was unregistered."""

    def __init__(self, handle: object) -> None:
        self.handle, self.unregistered = handle, False

    def unregister(self) -> None:
        self.handle.unregister()
        self.unregistered = True


class Buffer:
    def __init__(self, cache_time: object = None, node: object = None) -> None:
        self.node = node
        self.transforms: dict[tuple[str, str], TransformStamped] = {}
        self.calls: list[tuple[str, str, int, int]] = []  # target, source, stamp ns, timeout ns
        if node is not None:
            self.srv = node.create_service(ListParameters, "tf2_frames", lambda request, response: response)
            threshold = JumpThreshold(
                min_forward=None, min_backward=Duration(seconds=-1), on_clock_change=True
            )
            self.jump_handle = RecordedJumpHandle(
                node.get_clock().create_jump_callback(threshold, post_callback=lambda jump: None)
            )

    def lookup_transform(self, target_frame: str, source_frame: str, time, timeout) -> TransformStamped:
        self.calls.append((target_frame, source_frame, time.nanoseconds, timeout.nanoseconds))
        if (target_frame, source_frame) not in self.transforms:
            raise LookupException(
                f'"{source_frame}" passed to lookupTransform argument source_frame does not exist.'
            )
        return self.transforms[(target_frame, source_frame)]


class TransformListener:
    made: list["TransformListener"] = []

    def __init__(self, buffer: Buffer, node: object, **options: object) -> None:
        self.buffer, self.node, self.unregistered = buffer, node, False
        TransformListener.made.append(self)

    def unregister(self) -> None:
        self.unregistered = True
