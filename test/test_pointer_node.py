"""The pointer node over real DDS (kept on this machine), with the scripted engine double as the model."""

import gc
import math
import time
import weakref

import numpy as np
import pytest
import rclpy
from action_msgs.msg import GoalStatus
from doubles.scripted_engine import ScriptedEngine, fixed_points_answer
from geometry_msgs.msg import PointStamped
from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.action import ActionClient
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from ros_helpers import (
    Spinner,
    TestClient,
    camera_info_message,
    depth_message,
    image_message,
    jpeg_message,
    publish_until,
    wait_until,
)
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import String
from visualization_msgs.msg import Marker, MarkerArray

from molmo_ros.action import Point as PointAction
from molmo_ros.nodes.pointer import PointerNode
from molmo_ros.srv import Ask, Point

SECOND = 1_000_000_000


@pytest.fixture(scope="module", autouse=True)
def ros():
    rclpy.init()
    yield
    rclpy.try_shutdown()


def value_image(value: int, width: int = 64, height: int = 48) -> np.ndarray:
    """An image whose pixels all equal `value`, so a test can tell which frame the model saw."""
    return np.full((height, width, 3), value, dtype=np.uint8)


class Rig:
    """A pointer node with two cameras (front raw with depth, wrist compressed) and the user's side."""

    def __init__(self, engine: ScriptedEngine, autostart: bool = True, **parameters: object) -> None:
        values = {
            "camera_names": ["front", "wrist"],
            "cameras.wrist.compressed": True,
            "cameras.front.depth_topic": "/front/depth/image_raw",
            "queue_size": 2,
            "max_frame_age": 5.0,
            "autostart": autostart,
        }
        values.update(parameters)
        self.engine = engine
        self.node = PointerNode(
            backend_factory=lambda settings: engine,
            parameter_overrides=[Parameter(k, value=v) for k, v in values.items()],
        )
        assert self.node.start()
        self.user = TestClient()
        self.front = self.user.create_publisher(Image, "/front/image_raw", qos_profile_sensor_data)
        self.front_depth = self.user.create_publisher(
            Image, "/front/depth/image_raw", qos_profile_sensor_data
        )
        self.front_info = self.user.create_publisher(
            CameraInfo, "/front/camera_info", qos_profile_sensor_data
        )
        self.wrist = self.user.create_publisher(
            CompressedImage, "/wrist/image_raw/compressed", qos_profile_sensor_data
        )
        self.standing = self.user.create_publisher(String, "/molmo/query", 10)
        self.spinner = Spinner(self.node, self.user)

    def now_ns(self) -> int:
        return self.node.get_clock().now().nanoseconds

    def send_front(self, value: int, stamp_ns: int | None = None, frame_id: str = "front_optical") -> int:
        """Publishes until the node holds this frame; returns its stamp."""
        stamp_ns = stamp_ns or self.now_ns()

        def arrived() -> bool:
            frame = self.node.pointing.frames.get("front")
            return frame is not None and frame.stamp_ns == stamp_ns

        assert publish_until(
            self.front, lambda: image_message(value_image(value), stamp_ns, frame_id), arrived
        )
        return stamp_ns

    def send_front_depth(self, metres: float, stamp_ns: int, frame_id: str = "front_optical") -> None:
        def arrived() -> bool:
            depth = self.node.pointing.frames.nearest_depth("front", stamp_ns)
            return depth is not None and depth.stamp_ns == stamp_ns

        assert publish_until(
            self.front_depth, lambda: depth_message(metres, 64, 48, stamp_ns, frame_id), arrived
        )

    def send_front_info(self, fx: float = 100.0, width: int = 64, height: int = 48) -> None:
        assert publish_until(
            self.front_info,
            lambda: camera_info_message(width, height, fx, "front_optical"),
            lambda: self.node.pointing.frames.camera_model("front") is not None,
        )

    def close(self) -> None:
        self.engine.release(100)  # a failed test may have left calls held
        self.spinner.close()
        self.node.destroy_node()
        self.user.destroy_node()


@pytest.fixture
def make_rig():
    rigs = []

    def make(engine: ScriptedEngine | None = None, **parameters: object) -> Rig:
        rig = Rig(engine or ScriptedEngine(), **parameters)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.close()


def mug_at(x: float, y: float) -> ScriptedEngine:
    return ScriptedEngine(answer=lambda prompt, image: fixed_points_answer([(x, y)], "mug"))


def test_point_answer_in_response_and_on_topic_with_the_source_header(make_rig):
    rig = make_rig(mug_at(50.0, 25.0))
    stamp_ns = rig.now_ns() - 200_000_000
    rig.send_front(10, stamp_ns=stamp_ns)

    response = rig.user.point("  red mug")

    assert response.success, response.message
    assert response.error_code == Point.Response.OK
    result = response.result
    assert (result.header.stamp.sec, result.header.stamp.nanosec) == divmod(stamp_ns, SECOND)
    assert result.header.frame_id == "front_optical" and result.camera == "front"
    assert result.prompt == "Point to the red mug" and result.query == "  red mug", "the query as given"
    assert [(p.x, p.y, p.z) for p in result.points] == [(32.0, 12.0, 0.0)]
    assert list(result.labels) == ["mug"]
    assert (result.image_width, result.image_height) == (64, 48)
    assert [view.camera for view in result.views] == ["front"] and list(result.point_views) == [0]
    assert result.frame_age_seconds >= 0.2 and result.model_seconds >= 0.0
    assert wait_until(lambda: len(rig.user.received()) == 1)
    published = rig.user.received()[0]
    assert published.header == result.header and list(published.points) == list(result.points)


def test_compressed_camera_and_two_cameras(make_rig):
    rig = make_rig()
    rig.send_front(10)
    stamp_ns = rig.now_ns()
    assert publish_until(
        rig.wrist,
        lambda: jpeg_message(value_image(200), stamp_ns, "wrist_optical"),
        lambda: rig.node.pointing.frames.get("wrist") is not None,
    )

    wrist = rig.user.point("cup", camera="wrist")
    front = rig.user.point("cup")

    assert (
        wrist.success and wrist.result.camera == "wrist" and wrist.result.header.frame_id == "wrist_optical"
    )
    assert abs(int(rig.engine.calls[0].image.mean()) - 200) <= 2, "JPEG-decoded wrist frame"
    assert front.success and front.result.camera == "front"
    assert int(rig.engine.calls[1].image[0, 0, 0]) == 10


def test_one_query_over_two_cameras_tags_each_point_with_its_camera(make_rig):
    answer = '<points coords="1 1 500 250;2 1 250 500" alt="cup">cup</points>'
    rig = make_rig(ScriptedEngine(answer=lambda prompt, image: answer, max_images=2))
    front_stamp = rig.send_front(10)
    wrist_stamp = rig.now_ns()
    assert publish_until(
        rig.wrist,
        lambda: jpeg_message(value_image(200, width=32, height=16), wrist_stamp, "wrist_optical"),
        lambda: rig.node.pointing.frames.get("wrist") is not None,
    )

    response = rig.user.call(Point.Request(query="cup", camera="*"))

    assert response.success, response.message
    result = response.result
    assert [(v.camera, v.header.frame_id) for v in result.views] == [
        ("front", "front_optical"),
        ("wrist", "wrist_optical"),
    ]
    assert [divmod(ns, SECOND) for ns in (front_stamp, wrist_stamp)] == [
        (v.header.stamp.sec, v.header.stamp.nanosec) for v in result.views
    ]
    assert [(v.image_width, v.image_height) for v in result.views] == [(64, 48), (32, 16)]
    assert list(result.point_views) == [0, 1]
    assert [(p.x, p.y) for p in result.points] == [(32.0, 12.0), (8.0, 8.0)]
    assert len(rig.engine.calls[0].images) == 2


def test_several_cameras_with_a_one_image_backend_are_refused_naming_the_backends_that_can(make_rig):
    rig = make_rig()
    rig.send_front(10)
    response = rig.user.call(Point.Request(query="cup", cameras=["front", "wrist"]))
    assert response.error_code == Point.Response.UNSUPPORTED and "molmo2" in response.message
    assert rig.engine.calls == []


def test_the_requests_own_image(make_rig):
    rig = make_rig()
    own = image_message(value_image(77, width=40, height=30), 123 * SECOND, "handheld", encoding="bgr8")
    response = rig.user.point("cup", image=own)
    assert response.success, response.message
    assert response.result.header.frame_id == "handheld" and response.result.header.stamp.sec == 123
    assert (response.result.image_width, response.result.image_height) == (40, 30)
    assert int(rig.engine.calls[0].image[0, 0, 0]) == 77


def test_colour_depth_and_camera_info_give_3d_points_target_and_markers(make_rig):
    rig = make_rig(mug_at(50.0, 25.0))
    markers: list[MarkerArray] = []
    targets: list[PointStamped] = []
    rig.user.create_subscription(MarkerArray, "/molmo/markers", markers.append, 10)
    rig.user.create_subscription(PointStamped, "/molmo/target", targets.append, 10)
    stamp_ns = rig.now_ns()
    rig.send_front_info(fx=100.0)
    rig.send_front_depth(2.0, stamp_ns - 40_000_000)  # 40 ms off: the nearer one is used
    rig.send_front_depth(3.0, stamp_ns - 10_000_000)
    rig.send_front_depth(4.0, stamp_ns + 200_000_000)  # beyond max_depth_skew
    rig.send_front(10, stamp_ns=stamp_ns)
    assert wait_until(lambda: rig.node.count_subscribers("/molmo/markers") and True)

    response = rig.user.point("mug")

    assert response.success, response.message
    result = response.result
    view = result.views[0]
    assert view.depth_status == "" and (view.depth_stamp.sec, view.depth_stamp.nanosec) == divmod(
        stamp_ns - 10_000_000, SECOND
    )
    assert list(result.depth_valid) == [True]
    # Pixel (32, 12) is OpenCV (31.5, 11.5); with cx = 31.5, cy = 23.5, fx = fy = 100 at 3 m:
    point = result.points_3d[0]
    assert (point.x, point.y, point.z) == pytest.approx((0.0, 3.0 * (11.5 - 23.5) / 100.0, 3.0), abs=1e-5)
    assert result.depth_step[0] == 0.0 and result.depth_support[0] == 25 and not result.depth_edge[0]
    assert wait_until(lambda: targets and markers)
    assert targets[0].header.frame_id == "front_optical" and targets[0].point.z == pytest.approx(3.0)
    kinds = [(m.action, m.type) for m in markers[-1].markers]
    assert kinds[0][0] == Marker.DELETEALL and (Marker.ADD, Marker.SPHERE) in kinds
    assert [m.text for m in markers[-1].markers if m.type == Marker.TEXT_VIEW_FACING] == ["mug"]


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("no depth frame near", "max_depth_skew"),
        ("unregistered", "depth_registered"),
        ("bad camera info", "CameraInfo"),
    ],
)
def test_unusable_depth_keeps_2d_points_with_a_reason_and_require_depth_refuses(make_rig, case, fragment):
    rig = make_rig(mug_at(50.0, 25.0))
    stamp_ns = rig.now_ns()
    rig.send_front_info(width=32 if case == "bad camera info" else 64)
    depth_stamp = stamp_ns - (SECOND if case == "no depth frame near" else 0)
    rig.send_front_depth(
        2.0, depth_stamp, frame_id="depth_optical" if case == "unregistered" else "front_optical"
    )
    rig.send_front(10, stamp_ns=stamp_ns)

    response = rig.user.point("mug")
    assert response.success and list(response.result.depth_valid) == [False]
    assert fragment in response.result.views[0].depth_status
    assert math.isnan(response.result.depth_step[0]) and response.result.depth_support[0] == 0

    demanding = rig.user.call(Point.Request(query="mug", require_depth=True))
    assert demanding.error_code == Point.Response.NO_DEPTH and fragment in demanding.message


def test_debug_image_is_drawn_only_while_someone_subscribes(make_rig, monkeypatch):
    rig = make_rig(mug_at(50.0, 25.0))
    rig.send_front(10)
    drawn = []
    import molmo_ros.nodes.outputs as outputs_module

    original = outputs_module.draw_points
    monkeypatch.setattr(outputs_module, "draw_points", lambda *a, **k: drawn.append(1) or original(*a, **k))
    assert rig.user.point("mug").success
    assert drawn == [], "nobody subscribes: nothing is drawn"

    images: list[Image] = []
    rig.user.create_subscription(Image, "/molmo/debug_image", images.append, 1)
    assert wait_until(lambda: rig.node.count_subscribers("/molmo/debug_image") > 0)
    assert rig.user.point("mug").success
    assert wait_until(lambda: images)
    image = images[0]
    assert (image.width, image.height, image.encoding) == (64, 48, "rgb8")
    assert image.header.frame_id == "front_optical"
    pixels = np.frombuffer(image.data, dtype=np.uint8).reshape(48, 64, 3)
    assert (pixels != 10).any(), "the point and its label are drawn over the frame"


def test_standing_query_streams_results_until_cleared(make_rig):
    rig = make_rig(ScriptedEngine(answer=lambda prompt, image: fixed_points_answer([(10.0, 10.0)])))
    rig.send_front(1)
    rig.standing.publish(String(data="cup"))
    assert wait_until(lambda: rig.node.pointing.standing_query == "cup")
    for value in range(2, 6):
        rig.send_front(value)
        time.sleep(0.05)
    assert wait_until(lambda: len(rig.user.received()) >= 3)
    results = rig.user.received()
    assert all(r.query == "cup" and r.camera == "front" and len(r.points) == 1 for r in results)
    arrived = rig.node.pointing.frames.sequence("front")
    assert len(results) <= arrived, "at most one answer per frame that arrived"

    rig.standing.publish(String(data=""))
    assert wait_until(lambda: rig.node.pointing.standing_query is None)
    time.sleep(0.2)
    count = len(rig.user.received())
    rig.send_front(99)
    time.sleep(0.3)
    assert len(rig.user.received()) == count


def test_standing_query_with_depth_publishes_targets(make_rig):
    rig = make_rig(mug_at(50.0, 25.0))
    targets: list[PointStamped] = []
    rig.user.create_subscription(PointStamped, "/molmo/target", targets.append, 10)
    rig.send_front_info()
    stamp_ns = rig.now_ns()
    rig.send_front_depth(1.5, stamp_ns)
    rig.send_front(3, stamp_ns=stamp_ns)
    rig.standing.publish(String(data="mug"))
    assert wait_until(lambda: targets)
    assert targets[0].point.z == pytest.approx(1.5) and targets[0].header.frame_id == "front_optical"
    assert rig.user.received()[0].depth_valid[0]


@pytest.mark.parametrize(
    "query, camera, code, fragment",
    [
        ("", "", Point.Response.INVALID_QUERY, "empty"),
        ("x" * 201, "", Point.Response.INVALID_QUERY, "limit is 200"),
        ("mug\x07", "", Point.Response.INVALID_QUERY, "not plain text"),
        ("cup", "rear", Point.Response.UNKNOWN_CAMERA, "front, wrist"),
        ("cup", "wrist", Point.Response.NO_FRAME, "wrist"),
    ],
)
def test_request_errors_each_have_their_own_message(make_rig, query, camera, code, fragment):
    rig = make_rig()
    rig.send_front(1)
    response = rig.user.point(query, camera=camera)
    assert not response.success and response.error_code == code and fragment in response.message
    assert rig.engine.calls == []


def test_stale_frame(make_rig):
    rig = make_rig(max_frame_age=0.5)
    rig.send_front(1, stamp_ns=rig.now_ns() - 3 * SECOND)
    response = rig.user.point("cup")
    assert response.error_code == Point.Response.STALE_FRAME and "max_frame_age" in response.message


def test_frame_stamped_in_the_future_is_a_clock_problem(make_rig):
    rig = make_rig(max_frame_age=2.0)
    rig.send_front(1, stamp_ns=rig.now_ns() + 100 * SECOND)
    response = rig.user.point("cup")
    assert response.error_code == Point.Response.FRAME_FROM_FUTURE
    assert "ahead of this node's clock" in response.message and rig.engine.calls == []


def test_corrupt_and_unsupported_images(make_rig):
    rig = make_rig()
    broken = image_message(value_image(1), rig.now_ns(), "front_optical")
    broken.data = bytes(broken.data[:100])
    assert publish_until(rig.front, lambda: broken, lambda: rig.node.pointing.frames.get("front") is not None)
    response = rig.user.point("cup")
    assert response.error_code == Point.Response.BAD_IMAGE and "camera 'front'" in response.message

    yuv = Image(height=2, width=2, encoding="yuv422", step=4, data=bytes(8))
    response = rig.user.point("cup", image=yuv)
    assert response.error_code == Point.Response.BAD_IMAGE and "yuv422" in response.message
    assert rig.engine.calls == []


def test_engine_failure_is_answered_and_the_node_keeps_working(make_rig):
    prompts = []

    def failing_once(prompt, image):
        prompts.append(prompt)
        if len(prompts) == 1:
            raise RuntimeError("CUDA out of memory on the test double")
        return "There are none."

    rig = make_rig(ScriptedEngine(answer=failing_once))
    rig.send_front(1)
    failed = rig.user.point("cup")
    assert failed.error_code == Point.Response.ENGINE_ERROR and "out of memory" in failed.message
    recovered = rig.user.point("cup")
    assert (
        recovered.success and recovered.result.raw_text == "There are none." and not recovered.result.points
    )


def test_a_failing_publish_still_answers_the_request_and_the_node_keeps_working(make_rig, monkeypatch):
    rig = make_rig(mug_at(50.0, 25.0))
    rig.send_front(1)
    outputs = rig.node._outputs

    def broken_publish(message) -> None:
        raise RuntimeError("publisher's context is invalid")

    monkeypatch.setattr(outputs._points, "publish", broken_publish)
    answered = rig.user.point("mug")
    assert answered.success and len(answered.result.points) == 1, "the answer still reaches its client"
    monkeypatch.undo()
    assert rig.user.point("mug").success


def test_frame_flood_while_busy_keeps_only_the_newest(make_rig):
    engine = ScriptedEngine(hold=True)
    rig = make_rig(engine)
    rig.send_front(0)
    assert rig.user.client.wait_for_service(timeout_sec=10)
    first = rig.user.client.call_async(Point.Request(query="cup"))
    assert engine.wait_started()
    second = rig.user.client.call_async(Point.Request(query="cup"))
    assert wait_until(lambda: rig.node.pointing.pending() == 1)
    for value in range(1, 120):
        rig.front.publish(image_message(value_image(value), rig.now_ns(), "front_optical"))
    last_stamp = rig.send_front(250)
    assert rig.node.pointing.frames.get("front").stamp_ns == last_stamp, "the store holds the newest frame"
    assert rig.node.pointing.pending() == 1, "frames never become queued work"
    engine.release(2)
    assert wait_until(lambda: first.done() and second.done())
    assert first.result().success and second.result().success
    assert int(engine.calls[1].image[0, 0, 0]) == 250, "the waiting request used the newest frame"


def test_concurrent_requests_beyond_the_queue_are_all_answered(make_rig):
    engine = ScriptedEngine(hold=True)
    rig = make_rig(engine, queue_size=2)
    rig.send_front(1)
    assert rig.user.client.wait_for_service(timeout_sec=10)
    futures = [rig.user.client.call_async(Point.Request(query="thing 0"))]
    assert engine.wait_started()
    futures += [rig.user.client.call_async(Point.Request(query=f"thing {i}")) for i in range(1, 8)]

    def busy() -> int:
        return sum(f.done() and f.result().error_code == Point.Response.BUSY for f in futures)

    assert wait_until(lambda: busy() == 5), f"{busy()} busy answers"
    engine.release(3)
    assert wait_until(lambda: all(f.done() for f in futures), timeout=20)
    codes = sorted(f.result().error_code for f in futures)
    assert codes == [Point.Response.OK] * 3 + [Point.Response.BUSY] * 5
    assert all("busy" in f.result().message for f in futures if not f.result().success)


def test_runtime_parameters_apply_to_the_next_request_and_the_rest_are_read_only(make_rig):
    rig = make_rig()
    rig.send_front(1)
    results = rig.node.set_parameters(
        [Parameter("prompt_template", value='pointing: Point to all occurrences of "{query}"')]
    )
    assert results[0].successful
    assert rig.user.point("cup").result.prompt == 'pointing: Point to all occurrences of "cup"'

    assert not rig.node.set_parameters([Parameter("prompt_template", value="Find it")])[0].successful
    assert rig.node.set_parameters([Parameter("max_query_length", value=3)])[0].successful
    assert rig.user.point("cup plate").error_code == Point.Response.INVALID_QUERY
    assert not rig.node.set_parameters([Parameter("max_query_length", value=0)])[0].successful, "range"

    for name, value in [
        ("queue_size", 8),
        ("camera_names", ["other"]),
        ("engine.model", "x"),
        ("qos", "reliable"),
    ]:
        assert not rig.node.set_parameters([Parameter(name, value=value)])[0].successful, name


def test_a_float_parameter_takes_an_integer(make_rig):
    rig = make_rig(max_frame_age=1)  # as a params file or launch argument writes it
    assert rig.node.pointing.settings.max_frame_age_s == 1.0
    result = rig.node.set_parameters([Parameter("max_frame_age", value=5)])[0]
    assert result.successful, result.reason
    assert rig.node.get_parameter("max_frame_age").value == 5.0
    assert rig.node.pointing.settings.max_frame_age_s == 5.0
    assert not rig.node.set_parameters([Parameter("max_frame_age", value="five")])[0].successful


def test_reliable_qos_on_request(make_rig):
    rig = make_rig(qos="reliable")
    reliable = rig.user.create_publisher(
        Image, "/front/image_raw", QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
    )
    stamp_ns = rig.now_ns()
    assert publish_until(
        reliable,
        lambda: image_message(value_image(9), stamp_ns, "front_optical"),
        lambda: rig.node.pointing.frames.get("front") is not None,
    )
    assert rig.user.point("cup").success
    subscription = next(s for s in rig.node.subscriptions if s.topic_name == "/front/image_raw")
    assert subscription.qos_profile.reliability == ReliabilityPolicy.RELIABLE


# --- the ask service ---------------------------------------------------------------------------------------


def test_ask_answers_free_text_about_the_newest_frame(make_rig):
    rig = make_rig(ScriptedEngine(answer=lambda prompt, image: f"answer to {prompt}"))
    stamp_ns = rig.send_front(5)
    client = rig.user.create_client(Ask, "/molmo/ask")
    response = rig.user.call(Ask.Request(prompt="Describe this image."), client=client)
    assert response.success and response.error_code == Ask.Response.OK, response.message
    assert response.text == "answer to Describe this image."
    assert response.header.frame_id == "front_optical" and response.camera == "front"
    assert (response.header.stamp.sec, response.header.stamp.nanosec) == divmod(stamp_ns, SECOND)
    assert rig.engine.calls[0].prompts == ["Describe this image."], "the prompt is sent as given"

    empty = rig.user.call(Ask.Request(prompt=" "), client=client)
    assert empty.error_code == Ask.Response.INVALID_QUERY and "prompt is empty" in empty.message
    unknown = rig.user.call(Ask.Request(prompt="What is this?", camera="rear"), client=client)
    assert unknown.error_code == Ask.Response.UNKNOWN_CAMERA


# --- lifecycle ---------------------------------------------------------------------------------------------


class LifecycleClient:
    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.change = rig.user.create_client(ChangeState, "/molmo/pointer/change_state")
        self.get = rig.user.create_client(GetState, "/molmo/pointer/get_state")

    def state(self) -> int:
        return self.rig.user.call(GetState.Request(), client=self.get).current_state.id

    def transition(self, transition_id: int) -> bool:
        request = ChangeState.Request(transition=Transition(id=transition_id))
        return self.rig.user.call(request, client=self.change, timeout=30).success


def test_lifecycle_transitions_over_dds_and_requests_while_inactive(make_rig):
    engine = ScriptedEngine()
    rig = make_rig(engine, autostart=False)
    lifecycle = LifecycleClient(rig)
    assert lifecycle.state() == State.PRIMARY_STATE_UNCONFIGURED
    assert not rig.user.client.wait_for_service(timeout_sec=0.5), "no service before configure"

    assert lifecycle.transition(Transition.TRANSITION_CONFIGURE)
    assert lifecycle.state() == State.PRIMARY_STATE_INACTIVE
    inactive = rig.user.point("cup")
    assert inactive.error_code == Point.Response.NOT_ACTIVE and "not active" in inactive.message

    assert lifecycle.transition(Transition.TRANSITION_ACTIVATE)
    assert lifecycle.state() == State.PRIMARY_STATE_ACTIVE
    rig.send_front(4)
    assert rig.user.point("cup").success

    assert lifecycle.transition(Transition.TRANSITION_DEACTIVATE)
    assert engine.closed, "deactivate frees the model"
    assert rig.node.pointing.frames.get("front") is None, "frames are not taken while inactive"
    after = rig.user.point("cup")
    assert after.error_code == Point.Response.NOT_ACTIVE and "deactivated" in after.message

    assert lifecycle.transition(Transition.TRANSITION_CLEANUP)
    assert lifecycle.state() == State.PRIMARY_STATE_UNCONFIGURED
    assert lifecycle.transition(Transition.TRANSITION_CONFIGURE)
    assert lifecycle.transition(Transition.TRANSITION_ACTIVATE)
    rig.send_front(6)
    assert rig.user.point("cup").success, "configure and activate again after cleanup"


def test_bad_parameters_fail_the_configure_transition_with_the_reason(make_rig, capfd):
    rig = make_rig(autostart=False, prompt_template="Find it")
    lifecycle = LifecycleClient(rig)
    assert not lifecycle.transition(Transition.TRANSITION_CONFIGURE)
    assert lifecycle.state() == State.PRIMARY_STATE_UNCONFIGURED
    logged = capfd.readouterr().err
    assert "cannot configure" in logged and "{query}" in logged, logged
    fixed = rig.node.set_parameters([Parameter("prompt_template", value="Find the {query}")])[0]
    assert fixed.successful, fixed.reason
    assert lifecycle.transition(Transition.TRANSITION_CONFIGURE)
    assert lifecycle.transition(Transition.TRANSITION_ACTIVATE)
    rig.send_front(2)
    assert rig.user.point("cup").result.prompt == "Find the cup"


def test_deactivate_answers_the_running_and_the_waiting_requests(make_rig):
    engine = ScriptedEngine(hold=True)
    rig = make_rig(engine, queue_size=3)
    lifecycle = LifecycleClient(rig)
    rig.send_front(1)
    assert rig.user.client.wait_for_service(timeout_sec=10)
    running = rig.user.client.call_async(Point.Request(query="cup"))
    assert engine.wait_started()
    waiting = [rig.user.client.call_async(Point.Request(query=f"cup {i}")) for i in range(2)]
    assert wait_until(lambda: rig.node.pointing.pending() == 2)

    assert lifecycle.transition(Transition.TRANSITION_DEACTIVATE)

    assert wait_until(lambda: running.done() and all(f.done() for f in waiting))
    for future in [running, *waiting]:
        assert future.result().error_code == Point.Response.NOT_ACTIVE
        assert "deactivated" in future.result().message


# --- the action --------------------------------------------------------------------------------------------


class GoalRecorder:
    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.client = ActionClient(rig.user, PointAction, "/molmo/point_action")
        assert self.client.wait_for_server(timeout_sec=10)

    def send(self, query: str):
        feedback: list = []
        future = self.client.send_goal_async(PointAction.Goal(query=query), feedback_callback=feedback.append)
        assert wait_until(future.done)
        return future.result(), feedback

    @staticmethod
    def result(handle):
        future = handle.get_result_async()
        assert wait_until(future.done, timeout=20)
        return future.result()


def test_action_reports_queue_vision_and_decoding_then_the_result(make_rig):
    # A short answer: feedback is a keep-last-10 topic, so a long one could push the first stages out.
    engine = ScriptedEngine(hold=True, answer=lambda prompt, image: "none")
    rig = make_rig(engine)
    rig.send_front(1)
    goals = GoalRecorder(rig)
    blocker, _ = goals.send("first")
    assert blocker.accepted and engine.wait_started()
    handle, feedback = goals.send("cup")
    assert handle.accepted
    assert wait_until(lambda: feedback), "queued feedback"
    engine.release(2)
    # The client drops feedback that arrives after the result, so the feedback is awaited first.
    assert wait_until(lambda: len(feedback) == 6), [(m.feedback.stage, m.feedback.tokens) for m in feedback]
    outcome = goals.result(handle)
    assert outcome.status == GoalStatus.STATUS_SUCCEEDED
    assert outcome.result.success and outcome.result.result.raw_text == "none"
    stages = [
        (message.feedback.stage, message.feedback.queue_position, message.feedback.tokens)
        for message in feedback
    ]
    queued, vision, decoding = (
        PointAction.Feedback.QUEUED,
        PointAction.Feedback.VISION,
        PointAction.Feedback.DECODING,
    )
    assert stages == [(queued, 0, 0), (vision, 0, 0)] + [(decoding, 0, tokens) for tokens in range(1, 5)]


def test_cancelling_a_queued_goal_removes_it_at_once(make_rig):
    engine = ScriptedEngine(hold=True)
    rig = make_rig(engine)
    rig.send_front(1)
    goals = GoalRecorder(rig)
    blocker, _ = goals.send("first")
    assert engine.wait_started()
    queued, _ = goals.send("second")
    assert wait_until(lambda: rig.node.pointing.pending() == 1)
    cancel = queued.cancel_goal_async()
    assert wait_until(cancel.done)
    outcome = goals.result(queued)
    assert outcome.status == GoalStatus.STATUS_CANCELED
    assert outcome.result.error_code == PointAction.Result.CANCELED
    assert rig.node.pointing.pending() == 0 and len(engine.calls) == 1, "it never reached the model"
    engine.release()
    assert goals.result(blocker).status == GoalStatus.STATUS_SUCCEEDED


def test_cancelling_a_running_goal_stops_the_model(make_rig):
    engine = ScriptedEngine(hold=True)
    rig = make_rig(engine)
    rig.send_front(1)
    goals = GoalRecorder(rig)
    running, _ = goals.send("cup")
    assert engine.wait_started()
    assert wait_until(running.cancel_goal_async().done)
    outcome = goals.result(running)
    assert outcome.status == GoalStatus.STATUS_CANCELED
    assert outcome.result.error_code == PointAction.Result.CANCELED
    rig.node.set_parameters([Parameter("max_frame_age", value=5.0)])
    engine.hold = False
    assert rig.user.point("cup").success, "the model is free again"


def test_a_goal_beyond_the_queue_is_rejected_at_once(make_rig):
    engine = ScriptedEngine(hold=True)
    rig = make_rig(engine, queue_size=1)
    rig.send_front(1)
    goals = GoalRecorder(rig)
    goals.send("running")
    assert engine.wait_started()
    waiting, _ = goals.send("waiting")
    assert waiting.accepted and wait_until(lambda: rig.node.pointing.pending() == 1)
    rejected, _ = goals.send("one too many")
    assert not rejected.accepted
    engine.release(2)


def test_the_requests_own_image_with_its_depth_and_camera_info(make_rig):
    rig = make_rig(mug_at(50.0, 25.0))
    own = image_message(value_image(7), 5 * SECOND, "handheld")
    depth = depth_message(2.5, 64, 48, 5 * SECOND, "handheld")
    info = camera_info_message(64, 48, 100.0, "handheld")
    lifted = rig.user.call(Point.Request(query="mug", image=own, depth=depth, camera_info=info))
    assert lifted.success and list(lifted.result.depth_valid) == [True], lifted.message
    assert lifted.result.points_3d[0].z == pytest.approx(2.5)

    zero_info = rig.user.call(Point.Request(query="mug", image=own, depth=depth, camera_info=CameraInfo()))
    assert zero_info.success and list(zero_info.result.depth_valid) == [False]
    assert "CameraInfo" in zero_info.result.views[0].depth_status

    rig.send_front(3)
    no_image = rig.user.call(Point.Request(query="mug", depth=depth, camera_info=info))
    assert no_image.error_code == Point.Response.BAD_IMAGE and "no image" in no_image.message


def test_an_unexpected_error_while_loading_fails_activate_with_its_message(make_rig, capfd):
    rig = make_rig(autostart=False)

    def broken_backend(settings):
        raise RuntimeError("CUDA driver initialization failed")

    rig.node._backend_factory = broken_backend
    lifecycle = LifecycleClient(rig)
    assert lifecycle.transition(Transition.TRANSITION_CONFIGURE)
    assert not lifecycle.transition(Transition.TRANSITION_ACTIVATE)
    assert lifecycle.state() == State.PRIMARY_STATE_INACTIVE
    logged = capfd.readouterr().err
    assert "cannot activate: RuntimeError: CUDA driver initialization failed" in logged, logged
    assert rig.user.point("cup").error_code == Point.Response.NOT_ACTIVE, "still answered"


def test_deactivate_frees_a_model_whose_objects_refer_to_each_other():
    """At activate the node freezes what it loaded, out of the garbage collector's reach; deactivate must
    hand it back, or a model with reference cycles (as torch modules have) would never be freed."""
    loaded = []

    def load(settings: object) -> ScriptedEngine:
        engine = ScriptedEngine()
        engine.itself = engine
        loaded.append(weakref.ref(engine))
        return engine

    node = PointerNode(backend_factory=load)
    try:
        assert node.start()
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        gc.collect()
        assert loaded[0]() is None, "the model outlived deactivate"
    finally:
        node.destroy_node()
