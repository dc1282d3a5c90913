"""The pointer node over real DDS (kept on this machine), with the scripted engine in place of the model."""

import time

import numpy as np
import pytest
import rclpy
from doubles.scripted_engine import ScriptedEngine, fixed_points_answer
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from ros_helpers import Spinner, TestClient, image_message, jpeg_message, publish_until, wait_until
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String

from molmo_ros.nodes.pointer import PointerNode
from molmo_ros.srv import Point


@pytest.fixture(scope="module", autouse=True)
def ros():
    rclpy.init()
    yield
    rclpy.try_shutdown()


def value_image(value: int, width: int = 64, height: int = 48) -> np.ndarray:
    """An image whose pixels all equal `value`, so a test can tell which frame the model saw."""
    return np.full((height, width, 3), value, dtype=np.uint8)


class Rig:
    """A pointer node with two cameras (front raw, wrist compressed) and the user's side."""

    def __init__(self, engine: ScriptedEngine, **parameters: object) -> None:
        values = {
            "camera_names": ["front", "wrist"],
            "cameras.wrist.compressed": True,
            "queue_size": 2,
            "max_frame_age": 5.0,
        }
        values.update(parameters)
        self.engine = engine
        self.node = PointerNode(
            engine=engine, parameter_overrides=[Parameter(k, value=v) for k, v in values.items()]
        )
        self.user = TestClient()
        self.front = self.user.create_publisher(Image, "/front/image_raw", qos_profile_sensor_data)
        self.wrist = self.user.create_publisher(
            CompressedImage, "/wrist/image_raw/compressed", qos_profile_sensor_data
        )
        self.standing = self.user.create_publisher(String, "/molmo/query", 10)
        self.spinner = Spinner(self.node, self.user, threads=self.node.executor_threads + 2)

    def now_ns(self) -> int:
        return self.node.get_clock().now().nanoseconds

    def send_front(self, value: int, stamp_ns: int | None = None, frame_id: str = "front_optical") -> int:
        """Publishes until the node holds this frame; returns its stamp."""
        stamp_ns = stamp_ns or self.now_ns()

        def arrived() -> bool:
            frame = self.node.frames.get("front")
            return frame is not None and frame.stamp_ns == stamp_ns

        assert publish_until(
            self.front, lambda: image_message(value_image(value), stamp_ns, frame_id), arrived
        )
        return stamp_ns

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


def test_point_answer_in_response_and_on_topic_with_the_source_header(make_rig):
    rig = make_rig(ScriptedEngine(answer=lambda prompt, image: fixed_points_answer([(50.0, 25.0)], "mug")))
    stamp_ns = rig.now_ns() - 200_000_000
    rig.send_front(10, stamp_ns=stamp_ns)

    response = rig.user.point("red mug")

    assert response.success, response.message
    assert response.error_code == Point.Response.OK
    result = response.result
    assert (result.header.stamp.sec, result.header.stamp.nanosec) == divmod(stamp_ns, 1_000_000_000)
    assert result.header.frame_id == "front_optical" and result.camera == "front"
    assert result.prompt == "Point to the red mug" and result.query == "red mug"
    assert [(p.x, p.y, p.z) for p in result.points] == [(32.0, 12.0, 0.0)]
    assert list(result.labels) == ["mug"]
    assert (result.image_width, result.image_height) == (64, 48)
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
        lambda: rig.node.frames.get("wrist") is not None,
    )

    wrist = rig.user.point("cup", camera="wrist")
    front = rig.user.point("cup")

    assert (
        wrist.success and wrist.result.camera == "wrist" and wrist.result.header.frame_id == "wrist_optical"
    )
    assert abs(int(rig.engine.calls[0].image.mean()) - 200) <= 2, "JPEG-decoded wrist frame"
    assert front.success and front.result.camera == "front"
    assert int(rig.engine.calls[1].image[0, 0, 0]) == 10


def test_the_requests_own_image(make_rig):
    rig = make_rig()
    own = image_message(value_image(77, width=40, height=30), 123_000_000_000, "handheld", encoding="bgr8")
    response = rig.user.point("cup", image=own)
    assert response.success, response.message
    assert response.result.header.frame_id == "handheld" and response.result.header.stamp.sec == 123
    assert (response.result.image_width, response.result.image_height) == (40, 30)
    assert int(rig.engine.calls[0].image[0, 0, 0]) == 77


def test_standing_query_streams_results_until_cleared(make_rig):
    rig = make_rig(ScriptedEngine(answer=lambda prompt, image: fixed_points_answer([(10.0, 10.0)])))
    rig.send_front(1)
    rig.standing.publish(String(data="cup"))
    assert wait_until(lambda: rig.node.service.standing_query == "cup")
    for value in range(2, 6):
        rig.send_front(value)
        time.sleep(0.05)
    assert wait_until(lambda: len(rig.user.received()) >= 3)
    results = rig.user.received()
    assert all(r.query == "cup" and r.camera == "front" and len(r.points) == 1 for r in results)
    assert len(results) <= rig.node.frames.sequence("front"), "at most one answer per frame that arrived"

    rig.standing.publish(String(data=""))
    assert wait_until(lambda: rig.node.service.standing_query is None)
    time.sleep(0.2)
    count = len(rig.user.received())
    rig.send_front(99)
    time.sleep(0.3)
    assert len(rig.user.received()) == count


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
    rig.send_front(1, stamp_ns=rig.now_ns() - 3_000_000_000)
    response = rig.user.point("cup")
    assert response.error_code == Point.Response.STALE_FRAME and "max_frame_age" in response.message


def test_corrupt_and_unsupported_images(make_rig):
    rig = make_rig()
    broken = image_message(value_image(1), rig.now_ns(), "front_optical")
    broken.data = bytes(broken.data[:100])
    assert publish_until(rig.front, lambda: broken, lambda: rig.node.frames.get("front") is not None)
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
        recovered.success
        and recovered.result.raw_text == "There are none."
        and len(recovered.result.points) == 0
    )


def test_frame_flood_while_busy_keeps_only_the_newest(make_rig):
    engine = ScriptedEngine(hold=True)
    rig = make_rig(engine)
    rig.send_front(0)
    assert rig.user.client.wait_for_service(timeout_sec=10)
    first = rig.user.client.call_async(Point.Request(query="cup"))
    assert engine.wait_started()
    second = rig.user.client.call_async(Point.Request(query="cup"))
    assert wait_until(lambda: rig.node.service.pending() == 1)
    for value in range(1, 120):
        rig.front.publish(image_message(value_image(value), rig.now_ns(), "front_optical"))
    last_stamp = rig.send_front(250)
    assert rig.node.frames.get("front").stamp_ns == last_stamp, "the store holds the newest frame"
    assert rig.node.service.pending() == 1, "frames never become queued work"
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


def test_reliable_qos_on_request(make_rig):
    rig = make_rig(qos="reliable")
    reliable = rig.user.create_publisher(
        Image, "/front/image_raw", QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
    )
    stamp_ns = rig.now_ns()
    assert publish_until(
        reliable,
        lambda: image_message(value_image(9), stamp_ns, "front_optical"),
        lambda: rig.node.frames.get("front") is not None,
    )
    assert rig.user.point("cup").success
    subscription = next(s for s in rig.node.subscriptions if s.topic_name == "/front/image_raw")
    assert subscription.qos_profile.reliability == ReliabilityPolicy.RELIABLE
