"""The `pointer` node: camera frames and queries in over ROS, points out on /molmo/points.

A managed (lifecycle) node, thin by design: it turns messages into `PointingService` calls and
outcomes back into messages. configure reads the parameters and creates the interfaces, activate loads
the model, deactivate frees it, cleanup removes the interfaces. Service and action callbacks are
coroutines that await the worker's answer, so no executor thread is ever parked while the model runs
and one stock single-threaded executor serves everything.
"""

import gc
import sys
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace
from typing import Any

from action_msgs.msg import GoalStatus
from rcl_interfaces.msg import SetParametersResult
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.action.server import ServerGoalHandle
from rclpy.callback_groups import CallbackGroup, ReentrantCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
)
from rclpy.service import Service
from rclpy.task import Future as RclpyFuture
from rclpy.validate_topic_name import validate_topic_name
from sensor_msgs.msg import CameraInfo as CameraInfoMsg
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String

from molmo_ros.action import Point as PointAction
from molmo_ros.backends.api_key import check_api_key
from molmo_ros.backends.errors import BackendError
from molmo_ros.backends.interface import PointingBackend, Stage
from molmo_ros.backends.settings import BackendSettings
from molmo_ros.depth.settings import DepthSettings
from molmo_ros.nodes import messages
from molmo_ros.nodes.image_messages import camera_model, depth_frame, frame_from_compressed, frame_from_image
from molmo_ros.nodes.outputs import AnswerOutputs, PublishedAnswer
from molmo_ros.nodes.parameters import (
    SETTINGS,
    NodeSettings,
    camera_prefix,
    declare_setting_parameters,
    float_parameter_names,
    read_settings,
    runtime_specs,
    setting_value,
    to_float_parameters,
    with_parameter_names,
)
from molmo_ros.nodes.runner import CONFIGURATION_ERRORS, run_node
from molmo_ros.nodes.tf2_transforms import Tf2Transforms
from molmo_ros.nodes.throttled_log import ThrottledErrorLog
from molmo_ros.pointing.errors import ErrorCode, PointingError
from molmo_ros.pointing.outcomes import AskOutcome, PointingOutcome
from molmo_ros.pointing.requests import PointingRequest
from molmo_ros.pointing.service import PointingService, Ticket, checked_settings
from molmo_ros.pointing.settings import CameraSettings, PointingSettings
from molmo_ros.pointing.target_frame import target_frame
from molmo_ros.srv import Ask, Point

# Requests a burst may bring before the node has answered any: a service reader with a shorter queue
# silently drops the rest (KEEP_LAST overwrites). KEEP_ALL never drops; every request is taken at
# once by the executor and answered (BUSY beyond queue_size), so the queue stays short in practice.
REQUEST_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_ALL,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)


class PointerNode(LifecycleNode):
    """Runs Molmo pointing on the newest camera frames; see README for topics and parameters.

    `backend_factory` builds the model at activate (tests pass a test double); by default the backend
    named by the engine.* parameters.
    """

    def __init__(
        self, backend_factory: Callable[[BackendSettings], PointingBackend] | None = None, **node_options: Any
    ) -> None:
        node_options.setdefault("namespace", "molmo")
        super().__init__("pointer", **node_options)
        self._backend_factory = backend_factory or _load_backend
        self.pointing: PointingService | None = None
        self._ros_entities: list[Any] = []
        self._goal_tickets: dict[bytes, Ticket] = {}
        self._action: ActionServer | None = None
        self._tf2: Tf2Transforms | None = None
        for settings_class, prefix in SETTINGS:
            declare_setting_parameters(self, settings_class, prefix)
        self._runtime = runtime_specs(PointingSettings)
        float_names = float_parameter_names(*SETTINGS)
        self.add_pre_set_parameters_callback(lambda parameters: to_float_parameters(parameters, float_names))
        self.add_on_set_parameters_callback(self._check_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)
        self._log_error = ThrottledErrorLog(self.get_logger())

    # --- lifecycle ----------------------------------------------------------------------------------------

    def start(self) -> bool:
        """With autostart, configure and activate now (what `ros2 launch` users expect); else wait for a
        lifecycle manager. False when a transition failed (its reason was logged)."""
        if not self.get_parameter("autostart").value:
            self.get_logger().info(
                "unconfigured: waiting for a lifecycle manager (parameter autostart is false)"
            )
            return True
        return (
            self.trigger_configure() == TransitionCallbackReturn.SUCCESS
            and self.trigger_activate() == TransitionCallbackReturn.SUCCESS
        )

    def _read_parameters(self) -> PointingService:
        """All settings from the parameters, in the service they configure; ValueError (or rclpy's own)
        with the reason when one is bad. The node keeps only its own and the engine's settings."""
        self.node_settings = read_settings(self, NodeSettings)
        settings = read_settings(self, PointingSettings)
        self.cameras = {}
        for name in settings.cameras:
            declare_setting_parameters(self, CameraSettings, camera_prefix(name))
            self.cameras[name] = read_settings(self, CameraSettings, camera_prefix(name), name=name)
        for camera in self.cameras.values():
            for topic in (camera.image_topic(), camera.info_topic(), camera.depth_topic):
                if topic:
                    validate_topic_name(topic)
        self.engine_settings = read_settings(self, BackendSettings, "engine.")
        check_api_key(self.engine_settings)
        depth_settings = read_settings(self, DepthSettings)
        target = target_frame(settings, self.cameras, self._load_tf2)
        return PointingService(
            settings,
            self._now_ns,
            self._publish_standing_outcome,
            self._log_error,
            cameras=self.cameras,
            depth_settings=depth_settings,
            target=target,
        )

    def _load_tf2(self) -> Tf2Transforms:
        """tf2 for the cameras without a static pose; ImportError where tf2_ros is not installed."""
        self._tf2 = Tf2Transforms(self)
        return self._tf2

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Reads and checks the parameters, then creates the subscriptions, publishers, services and the
        action; the model is loaded on activate. Bad parameters fail the transition with the reason."""
        try:
            pointing = self._read_parameters()
        except CONFIGURATION_ERRORS as error:
            self.get_logger().error(f"cannot configure: {with_parameter_names(error)}")
            return TransitionCallbackReturn.FAILURE
        except Exception as error:  # rclpy would turn it into ERROR without a word
            self.get_logger().error(f"cannot configure: {type(error).__name__}: {error}")
            return TransitionCallbackReturn.FAILURE
        self.pointing = pointing
        self._create_interfaces()
        settings = pointing.settings
        self.get_logger().info(
            f"configured: cameras {', '.join(settings.cameras)} (default "
            f"{settings.camera_for_default}), service {self.resolve_service_name('point')}, results on "
            f"{self._outputs.results_topic}"
        )
        return super().on_configure(state)

    def _create_interfaces(self) -> None:
        """The publishers, the camera subscriptions, the services and the action, all in one reentrant
        group: a request awaiting the model must not keep the next request or a frame from being taken
        (a mutually exclusive group would hold its callbacks until the awaiting coroutine ends)."""
        qos = QoSProfile(
            depth=1,
            reliability=ReliabilityPolicy.RELIABLE
            if self.node_settings.qos == "reliable"
            else ReliabilityPolicy.BEST_EFFORT,
            durability=DurabilityPolicy.VOLATILE,
        )
        self._outputs = AnswerOutputs(self)
        group = ReentrantCallbackGroup()
        entities = [
            self.create_subscription(String, "query", self._on_standing_query, 10, callback_group=group),
            self.create_service(
                Point, "point", self._on_point, qos_profile=REQUEST_QOS, callback_group=group
            ),
            self.create_service(Ask, "ask", self._on_ask, qos_profile=REQUEST_QOS, callback_group=group),
        ]
        for camera in self.cameras.values():
            entities += self._subscribe_camera(camera, qos, group)
        self._action = ActionServer(
            self,
            PointAction,
            "point_action",
            execute_callback=self._execute_point_goal,
            goal_callback=self._accept_goal,
            cancel_callback=self._cancel_goal,
            goal_service_qos_profile=REQUEST_QOS,
            result_service_qos_profile=REQUEST_QOS,
            cancel_service_qos_profile=REQUEST_QOS,
            callback_group=group,
        )
        self._ros_entities = entities

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Loads the model (weights and GPU memory); cameras are taken and requests answered from now on."""
        settings = self.engine_settings
        self.get_logger().info(
            f"loading the {settings.backend} backend ({settings.model or 'default model'})"
        )
        try:
            backend = self._backend_factory(settings)
        except (BackendError, ValueError) as error:
            self.get_logger().error(f"cannot activate: {with_parameter_names(error)}")
            return TransitionCallbackReturn.FAILURE
        except Exception as error:  # a missing library, a CUDA that cannot start: said, never swallowed
            self.get_logger().error(f"cannot activate: {type(error).__name__}: {error}")
            return TransitionCallbackReturn.FAILURE
        self.pointing.activate(backend)
        # Everything loaded so far (modules, the model: 414k objects with the tiny MolmoE) lives until
        # deactivate. Left to the collector, each full collection walks it all while holding the GIL:
        # 235 ms of CPU, 1.2 s under CPU contention, with no frame taken (bench/frames_under_load.py).
        # Collected first, so no garbage (say a failed earlier load's) is pinned until deactivate. The
        # freeze is process-wide: with several pointer nodes in one process, the first to deactivate
        # unfreezes the others' models too (correct, only slower collections again).
        gc.collect()
        gc.freeze()
        self.get_logger().info(f"active: {backend.name} backend ready")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Answers every waiting and running request NOT_ACTIVE, then frees the model."""
        self._release_backend(self.pointing.deactivate())
        self.get_logger().info("inactive: the model was freed")
        return super().on_deactivate(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """After an error the node goes back to unconfigured: remove what configure created, so the next
        configure starts clean."""
        self._destroy_interfaces()
        return super().on_error(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._destroy_interfaces()
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.shut_down()
        return super().on_shutdown(state)

    def shut_down(self) -> None:
        """Answers every waiting and running request NOT_ACTIVE ("shutting down") and frees the model;
        requests arriving afterwards get the same answer while the node still spins."""
        if self.pointing is not None and self.pointing.active:
            self.get_logger().info("shutting down: every waiting and new request is answered NOT_ACTIVE")
        if self.pointing is not None:
            self._release_backend(self.pointing.stop())

    def destroy_node(self) -> None:
        self.shut_down()
        super().destroy_node()

    def _release_backend(self, backend: PointingBackend | None) -> None:
        if backend is None:
            return
        gc.unfreeze()  # the model's reference cycles must be collectable again to be freed
        try:
            backend.close()
        except Exception as error:  # freeing must not stop a transition
            self.get_logger().warning(f"freeing the model failed: {type(error).__name__}: {error}")

    def _destroy_interfaces(self) -> None:
        if self.pointing is not None:
            self.shut_down()
            self.pointing = None
        if self._action is None:
            return  # not configured
        for entity in self._ros_entities:
            if isinstance(entity, Service):
                self.destroy_service(entity)
            else:
                self.destroy_subscription(entity)
        self._ros_entities = []
        self._action.destroy()
        self._action = None
        self._outputs.destroy()
        if self._tf2 is not None:
            self._tf2.close()
            self._tf2 = None

    # --- parameters ---------------------------------------------------------------------------------------

    def _runtime_changes(self, parameters: list[Parameter]) -> dict[str, object]:
        return {
            self._runtime[p.name].field_name: setting_value(self._runtime[p.name], p.value)
            for p in parameters
            if p.name in self._runtime
        }

    def _check_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        """Validates a change without applying it (read-only parameters are refused by rclpy itself)."""
        try:
            changes = self._runtime_changes(parameters)
            if self.pointing is None:  # not configured yet: the other parameters are checked at configure
                read_settings(self, PointingSettings, **changes)
            else:
                checked_settings(self.pointing.settings, **changes)
        except ValueError as error:
            return SetParametersResult(successful=False, reason=with_parameter_names(error))
        return SetParametersResult(successful=True)

    def _apply_parameters(self, parameters: list[Parameter]) -> None:
        changes = self._runtime_changes(parameters)
        if changes and self.pointing is not None:
            self.pointing.apply_settings(replace(self.pointing.settings, **changes))

    # --- cameras ------------------------------------------------------------------------------------------

    def _subscribe_camera(self, camera: CameraSettings, qos: QoSProfile, group: CallbackGroup) -> list[Any]:
        message_type, to_frame = (
            (CompressedImage, frame_from_compressed) if camera.compressed else (Image, frame_from_image)
        )

        pointing = self.pointing

        def on_frame(message: Image | CompressedImage) -> None:
            pointing.put_frame(to_frame(message, camera.name, self._now_ns()))

        def on_camera_info(message: CameraInfoMsg) -> None:
            pointing.put_camera_model(camera.name, camera_model(message))

        def on_depth(message: Image) -> None:
            pointing.put_depth(camera.name, depth_frame(message, camera.depth_scale))

        subscriptions = [
            self.create_subscription(message_type, camera.image_topic(), on_frame, qos, callback_group=group),
            self.create_subscription(
                CameraInfoMsg, camera.info_topic(), on_camera_info, qos, callback_group=group
            ),
        ]
        if camera.depth_topic:
            subscriptions.append(
                self.create_subscription(Image, camera.depth_topic, on_depth, qos, callback_group=group)
            )
        topics = ", ".join(s.topic_name for s in subscriptions)
        self.get_logger().info(f"camera {camera.name}: {topics} ({self.node_settings.qos})")
        return subscriptions

    def _on_standing_query(self, message: String) -> None:
        if self.pointing is None:
            return
        try:
            self.pointing.set_standing_query(message.data)
        except PointingError as error:
            self._log_error(error)
            return
        query = self.pointing.standing_query
        self.get_logger().info(f"standing query set: {query!r}" if query else "standing query cleared")

    # --- requests -----------------------------------------------------------------------------------------

    async def _on_point(self, request: Point.Request, response: Point.Response) -> Point.Response:
        return await self._point(request, response, None)

    async def _point(
        self,
        request: Point.Request | PointAction.Goal,
        response: Point.Response | PointAction.Result,
        goal: ServerGoalHandle | None,
    ) -> Point.Response | PointAction.Result:
        response.result.query = request.query
        response.result.camera = request.camera
        try:
            pointing_request = self._pointing_request(request)
        except PointingError as error:
            return _failed(response, error)
        on_progress = None if goal is None else (lambda stage, count: _publish_feedback(goal, stage, count))
        ticket = self.pointing.submit(pointing_request, on_progress)
        published = PublishedAnswer(self._outputs)
        ticket.future.add_done_callback(published)  # before _answer_of's, so it has run when that resumes
        if goal is not None:
            self._goal_tickets[bytes(goal.goal_id.uuid)] = ticket
        try:
            await self._answer_of(ticket.future)
        except PointingError as error:
            return _failed(response, error)
        finally:
            if goal is not None:
                self._goal_tickets.pop(bytes(goal.goal_id.uuid), None)
        if published.result is None:  # the answer must still go out
            return _failed(response, _unconvertible(published.error))
        response.result = published.result
        response.message = published.summary
        response.success = True
        response.error_code = Point.Response.OK
        return response

    async def _on_ask(self, request: Ask.Request, response: Ask.Response) -> Ask.Response:
        response.camera = request.camera
        if self.pointing is None:
            return _failed(response, _not_configured())
        image = frame_from_image(request.image, "", self._now_ns()) if len(request.image.data) else None
        pointing_request = PointingRequest(query=request.prompt, camera=request.camera, image=image, ask=True)
        ticket = self.pointing.submit(pointing_request)
        try:
            outcome: AskOutcome = await self._answer_of(ticket.future)
        except PointingError as error:
            return _failed(response, error)
        try:
            response.header = messages.view_header(outcome.view)
        except Exception as error:  # the answer must still go out
            return _failed(response, _unconvertible(error))
        response.success = True
        response.error_code = Ask.Response.OK
        response.camera = outcome.view.camera
        response.text = outcome.text
        response.model_seconds = outcome.model_seconds
        return response

    def _pointing_request(self, request: Point.Request | PointAction.Goal) -> PointingRequest:
        if self.pointing is None:
            raise _not_configured()
        now_ns = self._now_ns()
        image = frame_from_image(request.image, "", now_ns) if len(request.image.data) else None
        depth = None
        model = None
        if len(request.depth.data):
            if image is None:
                raise PointingError(
                    ErrorCode.BAD_IMAGE,
                    "the request carries a depth image but no image: its depth goes with its own image "
                    "(a camera's depth comes from its depth topic)",
                )
            # An unusable CameraInfo (all zeros, wrong size) is reported with the points, with its reason.
            depth = depth_frame(request.depth, None)
            model = camera_model(request.camera_info)
        return PointingRequest(
            query=request.query,
            camera=request.camera,
            cameras=tuple(request.cameras),
            image=image,
            depth=depth,
            camera_model=model,
            require_depth=request.require_depth,
        )

    async def _answer_of(self, future: Future) -> PointingOutcome | AskOutcome:
        """Awaits the worker's answer without holding an executor thread: the worker resolves `future`
        on its own thread, which resolves an rclpy future and wakes the executor to resume this task."""
        executor = self.executor
        resumed: RclpyFuture = RclpyFuture(executor=executor)

        def on_done(_: Future) -> None:
            resumed.set_result(None)
            if executor is not None:
                executor.wake()

        future.add_done_callback(on_done)
        await resumed
        return future.result()

    def _accept_goal(self, goal: PointAction.Goal) -> GoalResponse:
        """A goal beyond the queue, or for an inactive node, is rejected at once."""
        if self.pointing is None or not self.pointing.active:
            self.get_logger().warning("point goal rejected: the node is not active")
            return GoalResponse.REJECT
        if not self.pointing.has_room():
            self.get_logger().warning("point goal rejected: the queue is full (parameter queue_size)")
            return GoalResponse.REJECT
        return GoalResponse.ACCEPT

    def _cancel_goal(self, goal: ServerGoalHandle) -> CancelResponse:
        """A waiting goal is removed at once; a running one stops at the model's next decode step."""
        ticket = self._goal_tickets.get(bytes(goal.goal_id.uuid))
        if ticket is not None and self.pointing is not None:
            self.pointing.cancel(ticket)
        return CancelResponse.ACCEPT

    async def _execute_point_goal(self, goal: ServerGoalHandle) -> PointAction.Result:
        result = PointAction.Result()
        if goal.is_cancel_requested:
            goal.canceled()
            return _failed(
                result, PointingError(ErrorCode.CANCELED, "the goal was cancelled before it started")
            )
        result = await self._point(goal.request, result, goal)
        if result.error_code == PointAction.Result.CANCELED and goal.is_cancel_requested:
            goal.canceled()
        elif result.success:
            goal.succeed()
        else:
            goal.abort()
        return result

    # --- outcomes -----------------------------------------------------------------------------------------

    def _publish_standing_outcome(self, outcome: PointingOutcome) -> None:
        """Called on a worker thread for every answer to the standing query."""
        self._outputs.publish(outcome)

    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds


def _publish_feedback(goal: ServerGoalHandle, stage: Stage, count: int) -> None:
    feedback = PointAction.Feedback(stage=int(stage))
    if stage is Stage.QUEUED:
        feedback.queue_position = count
    elif stage is Stage.DECODING:
        feedback.tokens = count
    if goal.status in (GoalStatus.STATUS_ACCEPTED, GoalStatus.STATUS_EXECUTING, GoalStatus.STATUS_CANCELING):
        goal.publish_feedback(feedback)


def _failed(response: Any, error: PointingError) -> Any:
    response.success = False
    response.error_code = int(error.code)
    response.message = with_parameter_names(error)
    return response


def _unconvertible(error: Exception) -> PointingError:
    return PointingError(
        ErrorCode.ENGINE_ERROR,
        f"the answer could not be turned into a message: {type(error).__name__}: {error}",
    )


def _not_configured() -> PointingError:
    return PointingError(
        ErrorCode.NOT_ACTIVE, "the node is not configured (lifecycle: configure and activate it)"
    )


def _load_backend(settings: BackendSettings) -> PointingBackend:
    from molmo_ros.backends.factory import load_backend

    return load_backend(settings)


def main(args: list[str] | None = None) -> int:
    return run_node("pointer", PointerNode, (BackendError, *CONFIGURATION_ERRORS), args)


if __name__ == "__main__":
    sys.exit(main())
