"""Where every pointing answer goes: the results topic, the target point and pose, the markers and the debug
image.

Answers are published on the worker thread that answered (a request's done callback, the standing query's
callback), never on the executor: drawing the debug image and building markers take milliseconds at 1080p,
and the executor is what takes the camera frames.
"""

from concurrent.futures import Future
from dataclasses import dataclass

from geometry_msgs.msg import PointStamped, PoseStamped
from rclpy.lifecycle import LifecycleNode
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from visualization_msgs.msg import MarkerArray

from molmo_ros.drawing import draw_points, normal_in_image
from molmo_ros.image_conversion import rgb_to_raw
from molmo_ros.msg import PointingResult
from molmo_ros.nodes import messages
from molmo_ros.pointing.outcomes import PointingOutcome

RESULTS_DEPTH = 10
MARKER_NAMESPACE = "molmo"


class AnswerOutputs:
    """The lifecycle publishers of the answers (they publish only while the node is active)."""

    def __init__(self, node: LifecycleNode) -> None:
        self._node = node
        self._points = node.create_lifecycle_publisher(PointingResult, "points", RESULTS_DEPTH)
        self._target = node.create_lifecycle_publisher(PointStamped, "target", RESULTS_DEPTH)
        self._target_pose = node.create_lifecycle_publisher(PoseStamped, "target_pose", RESULTS_DEPTH)
        self._markers = node.create_lifecycle_publisher(MarkerArray, "markers", RESULTS_DEPTH)
        self._debug_image = node.create_lifecycle_publisher(Image, "debug_image", 1)

    @property
    def results_topic(self) -> str:
        return self._points.topic_name

    def publish(self, outcome: PointingOutcome) -> PointingResult:
        """The answer's result message, published with its target, pose, markers and debug image. A
        message that cannot be built raises; a publish that fails (a node shutting down) is logged."""
        result = messages.result_message(outcome)
        try:
            self._points.publish(result)
            target, pose = messages.first_target(outcome), messages.first_target_pose(outcome)
            if target is not None:
                self._target.publish(target)
            if pose is not None:
                self._target_pose.publish(pose)
            if self._markers.get_subscription_count() > 0:
                self._markers.publish(messages.markers(outcome, MARKER_NAMESPACE))
            if self._debug_image.get_subscription_count() > 0:
                self._debug_image.publish(debug_image(outcome))
        except Exception as error:
            self._node.get_logger().warning(f"publishing an answer failed: {type(error).__name__}: {error}")
        return result

    def destroy(self) -> None:
        for publisher in (self._points, self._target, self._target_pose, self._markers, self._debug_image):
            self._node.destroy_lifecycle_publisher(publisher)


@dataclass
class PublishedAnswer:
    """A request's answer, published when its future resolves (a done callback, so on the worker thread)
    and kept for the response: the result message is built once."""

    outputs: AnswerOutputs
    result: PointingResult | None = None
    summary: str = ""
    error: Exception | None = None  # the message could not be built; the response says so

    def __call__(self, future: Future) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        outcome = future.result()
        try:
            self.result = self.outputs.publish(outcome)
            self.summary = messages.summary(outcome)
        except Exception as error:
            self.error = error


def debug_image(outcome: PointingOutcome) -> Image:
    """The first frame the model saw, with its points, their labels, normals and the query drawn (rgb8)."""
    view = outcome.view
    points = [point for point in outcome.points if point.view == 0]
    normals = [normal_in_image(point.depth) for point in points]
    drawn = draw_points(outcome.images[0], points, outcome.query, normals)
    data, step = rgb_to_raw(drawn, "rgb8")
    return Image(
        header=Header(stamp=messages.stamp(view.stamp_ns), frame_id=view.frame_id),
        height=drawn.shape[0],
        width=drawn.shape[1],
        encoding="rgb8",
        step=step,
        data=data,
    )
