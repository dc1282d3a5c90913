"""A test double for ROS 2's tf2_ros, which has no wheel on PyPI: tests put it in sys.modules as tf2_ros.

Its Buffer answers lookups from a table the test fills (and records each call: frames, stamp, timeout);
its TransformListener records that it was made and unregistered. It checks how molmo_ros calls tf2 and
converts its answers, not tf2 itself: a real buffer, listener and /tf traffic are not exercised here.
"""

from geometry_msgs.msg import TransformStamped


class TransformException(Exception):  # noqa: N818 (tf2_ros's own names)
    pass


class LookupException(TransformException):
    pass


class Buffer:
    def __init__(self, cache_time: object = None, node: object = None) -> None:
        self.node = node
        self.transforms: dict[tuple[str, str], TransformStamped] = {}
        self.calls: list[tuple[str, str, int, int]] = []  # target, source, stamp ns, timeout ns

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
