"""Helpers for tests that exchange real DDS messages with a node in this process or another one."""

import threading
import time
from collections.abc import Callable

import numpy as np
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.publisher import Publisher
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header

from molmo_ros.image_conversion import rgb_to_raw
from molmo_ros.msg import PointingResult
from molmo_ros.nodes.messages import stamp
from molmo_ros.srv import Point


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def image_message(rgb: np.ndarray, stamp_ns: int, frame_id: str, encoding: str = "rgb8") -> Image:
    data, step = rgb_to_raw(rgb, encoding)
    return Image(
        header=Header(stamp=stamp(stamp_ns), frame_id=frame_id),
        height=rgb.shape[0],
        width=rgb.shape[1],
        encoding=encoding,
        is_bigendian=0,
        step=step,
        data=data,
    )


def depth_message(metres: float, width: int, height: int, stamp_ns: int, frame_id: str) -> Image:
    """A flat 16UC1 depth image (millimetres), as RealSense and most depth drivers publish it."""
    return depth_image_message(
        np.full((height, width), round(metres * 1000), dtype=np.uint16), stamp_ns, frame_id
    )


def depth_image_message(depth: np.ndarray, stamp_ns: int, frame_id: str) -> Image:
    """A 16UC1 depth image (millimetres) of any scene."""
    height, width = depth.shape
    depth = depth.astype(np.uint16)
    return Image(
        header=Header(stamp=stamp(stamp_ns), frame_id=frame_id),
        height=height,
        width=width,
        encoding="16UC1",
        is_bigendian=0,
        step=width * 2,
        data=depth.tobytes(),
    )


def camera_info_message(width: int, height: int, focal_px: float, frame_id: str) -> CameraInfo:
    """A pinhole camera without distortion, its principal point at the image centre."""
    cx, cy = (width - 1) / 2, (height - 1) / 2
    return CameraInfo(
        header=Header(frame_id=frame_id),
        width=width,
        height=height,
        distortion_model="plumb_bob",
        d=[0.0] * 5,
        k=[focal_px, 0.0, cx, 0.0, focal_px, cy, 0.0, 0.0, 1.0],
        p=[focal_px, 0.0, cx, 0.0, 0.0, focal_px, cy, 0.0, 0.0, 0.0, 1.0, 0.0],
    )


def jpeg_message(rgb: np.ndarray, stamp_ns: int, frame_id: str) -> CompressedImage:
    import cv2

    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 100])
    assert ok
    return CompressedImage(
        header=Header(stamp=stamp(stamp_ns), frame_id=frame_id), format="jpeg", data=jpeg.tobytes()
    )


class Spinner:
    """Spins nodes on a background executor until closed."""

    def __init__(self, *nodes: Node) -> None:
        self.executor = SingleThreadedExecutor()
        for node in nodes:
            self.executor.add_node(node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.executor.shutdown()
        self._thread.join(timeout=10)


class TestClient(Node):
    """The user's side: camera publishers, a Point client and a /molmo/points listener."""

    __test__ = False

    def __init__(self, namespace: str = "/molmo") -> None:
        super().__init__("test_client")
        self.client = self.create_client(Point, f"{namespace}/point")
        self.results: list[PointingResult] = []
        self._results_lock = threading.Lock()
        self.create_subscription(PointingResult, f"{namespace}/points", self._on_result, 50)

    def _on_result(self, message: PointingResult) -> None:
        with self._results_lock:
            self.results.append(message)

    def received(self) -> list[PointingResult]:
        with self._results_lock:
            return list(self.results)

    def call(self, request: object, timeout: float = 20.0, client: object | None = None) -> object:
        """Calls the Point service (or `client`'s) and waits for the answer."""
        client = client or self.client
        assert client.wait_for_service(timeout_sec=timeout), f"the service {client.srv_name} never appeared"
        future = client.call_async(request)
        done = threading.Event()
        future.add_done_callback(lambda _: done.set())
        assert done.wait(timeout), f"no answer from the service {client.srv_name}"
        return future.result()

    def point(
        self, query: str, camera: str = "", image: Image | None = None, timeout: float = 20.0
    ) -> Point.Response:
        return self.call(Point.Request(query=query, camera=camera, image=image or Image()), timeout)


def publish_until(
    publisher: Publisher,
    message_factory: Callable[[], object],
    condition: Callable[[], bool],
    timeout: float = 10.0,
) -> bool:
    """Publishes until the condition holds: discovery takes a moment, best effort may drop the first ones."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        publisher.publish(message_factory())
        if wait_until(condition, timeout=0.1):
            return True
    return False


# Answers that mean "not ready yet, send a fresh frame and ask again": the model may load for a while on a
# busy machine, and frames sent meanwhile are not taken (inactive) or grow older than max_frame_age.
WAITING_FOR_THE_NODE = (Point.Response.NO_FRAME, Point.Response.STALE_FRAME, Point.Response.NOT_ACTIVE)


def point_once_ready(user: TestClient, rgb: np.ndarray) -> tuple[object, list[Image]]:
    """Streams fresh frames of `rgb` and asks until the node is ready; returns the answer and the frames."""
    camera = user.create_publisher(Image, "/camera/image_raw", qos_profile_sensor_data)
    assert user.client.wait_for_service(timeout_sec=120), "the node never offered /molmo/point"
    sent, response = [], None

    def fresh_frame() -> Image:
        frame = image_message(rgb, user.get_clock().now().nanoseconds, "camera_optical_frame")
        sent.append(frame)
        return frame

    def answered() -> bool:
        nonlocal response
        response = user.point("red mug", timeout=120)
        return response.error_code not in WAITING_FOR_THE_NODE

    assert publish_until(camera, fresh_frame, answered, timeout=120)
    return response, sent


def assert_the_model_answers(user: TestClient, rgb: np.ndarray) -> None:
    """One Point call, once the node is ready, answered by the model: a success with the model's raw text,
    stamped with one of the frames sent."""
    response, sent = point_once_ready(user, rgb)
    assert response.success, response.message
    assert response.result.raw_text.strip(), "the model's raw text comes back"
    assert response.result.header.stamp in [frame.header.stamp for frame in sent]
