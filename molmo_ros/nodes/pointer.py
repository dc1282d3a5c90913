"""The `pointer` node: camera frames and queries in over ROS, points out on /molmo/points.

Thin by design: it turns messages into `PointingService` calls and outcomes back into messages.
"""

import sys
import threading
import time
from collections.abc import Callable, Sequence

from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point as PointMsg
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.validate_topic_name import validate_topic_name
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header, String

from molmo_ros.engine.errors import EngineError
from molmo_ros.msg import PointingResult
from molmo_ros.nodes.image_messages import frame_from_compressed, frame_from_image
from molmo_ros.nodes.runner import CONFIGURATION_ERRORS, run_node
from molmo_ros.pointing.frames import Frame, LatestFrames
from molmo_ros.pointing.service import (
    ErrorCode,
    PointingEngine,
    PointingError,
    PointingOutcome,
    PointingRequest,
    PointingService,
    PointingSettings,
)
from molmo_ros.prompts import POINT_ALL_TEMPLATE, POINT_TEMPLATE, QUERY_PLACEHOLDER
from molmo_ros.srv import Point

QOS_CHOICES = ("sensor_data", "reliable")
# Parameters that may change while the node runs -> the PointingSettings field they set.
RUNTIME_PARAMETERS = {
    "prompt_template": "prompt_template",
    "max_query_length": "max_query_length",
    "max_frame_age": "max_frame_age_s",
}
ERROR_LOG_INTERVAL_S = 5.0


def _described(description: str, **constraints: object) -> ParameterDescriptor:
    return ParameterDescriptor(description=description, **constraints)


class _ThrottledErrorLog:
    """Logs each kind of error at most once per interval, with how many were held back meanwhile."""

    def __init__(self, node: Node, interval_s: float = ERROR_LOG_INTERVAL_S) -> None:
        self._node = node
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._last: dict[ErrorCode, float] = {}
        self._held_back: dict[ErrorCode, int] = {}

    def __call__(self, error: PointingError) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(error.code, -self._interval_s) < self._interval_s:
                self._held_back[error.code] = self._held_back.get(error.code, 0) + 1
                return
            self._last[error.code] = now
            held_back = self._held_back.pop(error.code, 0)
        suffix = f" ({held_back} more like this in the last {self._interval_s:g} s)" if held_back else ""
        self._node.get_logger().warning(f"{error.code.name}: {error}{suffix}")


class PointerNode(Node):
    """Runs MolmoE pointing on the newest camera frames; see README for topics and parameters."""

    def __init__(self, engine: PointingEngine | None = None, **node_options: object) -> None:
        node_options.setdefault("namespace", "molmo")
        super().__init__("pointer", **node_options)
        # rclpy destroys a node whose constructor failed (weights missing, bad parameter) at shutdown,
        # so destroy_node must cope with a node that never got its service.
        self._pointing: PointingService | None = None
        camera_names = self._declare_cameras()
        settings = PointingSettings(
            cameras=tuple(camera_names),
            default_camera=self._default_camera(camera_names),
            prompt_template=self._declare(
                "prompt_template",
                POINT_TEMPLATE,
                _described(
                    f"Prompt sent to the model; {QUERY_PLACEHOLDER} is replaced by the query. "
                    f"'{POINT_TEMPLATE}' points at one thing; '{POINT_ALL_TEMPLATE}' points at every one."
                ),
            ),
            max_query_length=self._declare(
                "max_query_length",
                200,
                _described(
                    "Longest accepted query, in characters.",
                    integer_range=[IntegerRange(from_value=1, to_value=2000, step=1)],
                ),
            ),
            max_frame_age_s=self._declare(
                "max_frame_age",
                2.0,
                _described(
                    "Refuse frames older than this many seconds when the model starts (0 disables).",
                    floating_point_range=[FloatingPointRange(from_value=0.0, to_value=3600.0, step=0.0)],
                ),
            ),
            queue_size=self._declare(
                "queue_size",
                4,
                _described(
                    "Requests that may wait while the model is busy; more are answered 'busy'.",
                    integer_range=[IntegerRange(from_value=1, to_value=64, step=1)],
                ),
            ),
        )
        camera_topics = self._declare_camera_topics(camera_names)
        engine_settings = self._declare_engine_parameters()
        self.frames = LatestFrames()
        self._log_error = _ThrottledErrorLog(self)
        self._points_publisher = self.create_publisher(PointingResult, "points", 10)
        if engine is None:
            engine = self._load_engine(engine_settings)
        self._pointing = PointingService(
            engine, self.frames, settings, self._now_ns, self._publish_outcome, self._log_error
        )
        self._camera_group = MutuallyExclusiveCallbackGroup()
        self._request_group = ReentrantCallbackGroup()
        self._subscribe_cameras(camera_topics)
        self.create_subscription(
            String, "query", self._on_standing_query, 10, callback_group=self._camera_group
        )
        self.service.start()
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.create_service(Point, "point", self._on_point, callback_group=self._request_group)
        self.get_logger().info(
            f"ready: cameras {', '.join(camera_names)} (default {settings.default_camera}), "
            f"service {self.resolve_service_name('point')}, results on {self._points_publisher.topic_name}"
        )

    @property
    def executor_threads(self) -> int:
        """Enough threads that waiting requests never starve frame callbacks or 'busy' answers."""
        return self.service.settings.queue_size + 4

    @property
    def service(self) -> PointingService:
        assert self._pointing is not None, "the node was not fully constructed"
        return self._pointing

    def destroy_node(self) -> None:
        if self._pointing is not None:
            self._pointing.stop()
        super().destroy_node()

    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        """prompt_template, max_query_length and max_frame_age apply from the next request on."""
        changes = {RUNTIME_PARAMETERS[p.name]: p.value for p in parameters if p.name in RUNTIME_PARAMETERS}
        try:
            if changes:
                self.service.update_settings(**changes)
        except ValueError as error:
            return SetParametersResult(successful=False, reason=str(error))
        return SetParametersResult(successful=True)

    def _declare(self, name: str, default: object, descriptor: ParameterDescriptor) -> object:
        descriptor.read_only = name not in RUNTIME_PARAMETERS
        return self.declare_parameter(name, default, descriptor).value

    def _declare_cameras(self) -> list[str]:
        names = self._declare(
            "camera_names",
            ["camera"],
            _described(
                "Names of the cameras to listen to; each has cameras.<name>.topic and "
                "cameras.<name>.compressed.",
            ),
        )
        if not names or len(set(names)) != len(names) or not all(names):
            raise ValueError(f"parameter camera_names must list distinct, non-empty names: {names!r}")
        self._camera_qos = self._declare(
            "qos",
            "sensor_data",
            _described(
                f"QoS of the camera subscriptions: one of {', '.join(QOS_CHOICES)}. Depth is always 1: "
                "only the newest frame matters.",
                additional_constraints=f"one of {', '.join(QOS_CHOICES)}",
            ),
        )
        if self._camera_qos not in QOS_CHOICES:
            raise ValueError(f"parameter qos must be one of {QOS_CHOICES}, not {self._camera_qos!r}")
        return list(names)

    def _default_camera(self, camera_names: Sequence[str]) -> str:
        default = self._declare(
            "default_camera",
            "",
            _described("Camera used when a request names none; empty means the first of camera_names."),
        )
        return default or camera_names[0]  # PointingSettings refuses a name not in camera_names

    def _declare_engine_parameters(self) -> dict[str, object]:
        return {
            "model": self._declare(
                "engine.model",
                "",
                _described(
                    "Hugging Face model id or local checkpoint directory; empty means $MOLMO_MODEL, "
                    "else allenai/MolmoE-1B-0924.",
                ),
            ),
            "revision": self._declare(
                "engine.revision",
                "",
                _described("Commit of the model id to use; empty means the pinned default."),
            ),
            "device": self._declare(
                "engine.device",
                "auto",
                _described("auto (CUDA if present, else CPU), cpu, cuda or cuda:N."),
            ),
            "dtype": self._declare(
                "engine.dtype",
                "auto",
                _described("auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16 or float16."),
            ),
            "max_new_tokens": self._declare(
                "engine.max_new_tokens",
                200,
                _described(
                    "Longest answer, in tokens.",
                    integer_range=[IntegerRange(from_value=1, to_value=4096, step=1)],
                ),
            ),
            "cache_dir": self._declare(
                "engine.cache_dir",
                "",
                _described(
                    "Where the one-time bfloat16 conversion of the checkpoint is kept; "
                    "empty means the default.",
                ),
            ),
        }

    def _load_engine(self, parameters: dict[str, object]) -> PointingEngine:
        from molmo_ros.backends.settings import BackendSettings
        from molmo_ros.engine.defaults import default_model
        from molmo_ros.engine.engine import MolmoEngine

        model = parameters["model"] or default_model()
        settings_kwargs = {key: value for key, value in parameters.items() if value != "" and key != "model"}
        settings = BackendSettings(model=model, **settings_kwargs)
        self.get_logger().info(f"loading {model} (device {settings.device}, dtype {settings.dtype})")
        engine = MolmoEngine.load(settings)
        self.get_logger().info(f"model loaded on {engine.device} as {engine.dtype}")
        return engine

    def _declare_camera_topics(self, camera_names: Sequence[str]) -> list[tuple[str, str, bool]]:
        """(name, topic, compressed) per camera, checked before the model loads: a typo fails fast."""
        cameras = []
        for name in camera_names:
            compressed = self._declare(
                f"cameras.{name}.compressed",
                False,
                _described(
                    f"Whether camera {name} publishes sensor_msgs/CompressedImage (decoded with OpenCV)."
                ),
            )
            topic = self._declare(
                f"cameras.{name}.topic",
                "",
                _described(
                    f"Image topic of camera {name}; empty means /{name}/image_raw "
                    "(/compressed appended for compressed images)."
                ),
            )
            topic = topic or f"/{name}/image_raw" + ("/compressed" if compressed else "")
            validate_topic_name(topic)
            cameras.append((name, topic, compressed))
        return cameras

    def _subscribe_cameras(self, cameras: Sequence[tuple[str, str, bool]]) -> None:
        # Depth 1: only the newest frame matters, and older ones would each be taken and converted.
        reliability = (
            ReliabilityPolicy.RELIABLE if self._camera_qos == "reliable" else ReliabilityPolicy.BEST_EFFORT
        )
        qos = QoSProfile(depth=1, reliability=reliability, durability=DurabilityPolicy.VOLATILE)
        for name, topic, compressed in cameras:
            message_type, to_frame = (
                (CompressedImage, frame_from_compressed) if compressed else (Image, frame_from_image)
            )
            subscription = self.create_subscription(
                message_type,
                topic,
                self._frame_callback(name, to_frame),
                qos,
                callback_group=self._camera_group,
            )
            self.get_logger().info(
                f"camera {name}: {subscription.topic_name} "
                f"({'compressed' if compressed else 'raw'}, {self._camera_qos})"
            )

    def _frame_callback(
        self, camera: str, to_frame: Callable[[Image | CompressedImage, str, int], Frame]
    ) -> Callable[[Image | CompressedImage], None]:
        def on_frame(message: Image | CompressedImage) -> None:
            self.frames.put(to_frame(message, camera, self._now_ns()))
            self.service.frame_arrived()

        return on_frame

    def _on_standing_query(self, message: String) -> None:
        try:
            self.service.set_standing_query(message.data)
        except PointingError as error:
            self._log_error(error)
            return
        query = self.service.standing_query
        self.get_logger().info(f"standing query set: {query!r}" if query else "standing query cleared")

    def _on_point(self, request: Point.Request, response: Point.Response) -> Point.Response:
        image = None
        if len(request.image.data) > 0:
            image = frame_from_image(request.image, "", self._now_ns())
        future = self.service.submit(PointingRequest(query=request.query, camera=request.camera, image=image))
        try:
            outcome = future.result()
        except PointingError as error:
            response.success = False
            response.error_code = getattr(Point.Response, error.code.name)
            response.message = str(error)
            response.result.query = request.query
            response.result.camera = request.camera
            return response
        response.success = True
        response.error_code = Point.Response.OK
        response.message = _summary(outcome)
        response.result = _result_message(outcome)
        return response

    def _publish_outcome(self, outcome: PointingOutcome) -> None:
        self._points_publisher.publish(_result_message(outcome))

    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds


def _summary(outcome: PointingOutcome) -> str:
    parts = [f"{len(outcome.points)} point(s)"]
    if outcome.points_outside_image:
        parts.append(f"{outcome.points_outside_image} outside the image dropped")
    if outcome.answer_malformed:
        parts.append("answer malformed: " + "; ".join(outcome.parse_problems))
    return ", ".join(parts)


def _result_message(outcome: PointingOutcome) -> PointingResult:
    seconds, nanoseconds = divmod(outcome.stamp_ns, 1_000_000_000)
    return PointingResult(
        header=Header(stamp=Time(sec=seconds, nanosec=nanoseconds), frame_id=outcome.frame_id),
        camera=outcome.camera,
        query=outcome.query,
        prompt=outcome.prompt,
        points=[PointMsg(x=float(point.x), y=float(point.y), z=0.0) for point in outcome.points],
        labels=[point.label for point in outcome.points],
        image_width=outcome.image_width,
        image_height=outcome.image_height,
        raw_text=outcome.raw_text,
        answer_malformed=outcome.answer_malformed,
        points_outside_image=outcome.points_outside_image,
        model_seconds=outcome.model_seconds,
        frame_age_seconds=outcome.frame_age_seconds,
    )


def main(args: list[str] | None = None) -> int:
    return run_node(
        "pointer",
        PointerNode,
        (EngineError, *CONFIGURATION_ERRORS),
        args,
        threads=lambda node: node.executor_threads,
    )


if __name__ == "__main__":
    sys.exit(main())
