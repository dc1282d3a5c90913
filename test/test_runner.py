"""The executor the node programs run on: each ready callback is submitted once, errors still surface."""

import threading
import time

import pytest
import rclpy
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image

from molmo_ros.nodes.runner import SubmitOnceExecutor


@pytest.fixture
def node():
    rclpy.init()
    node = Node("runner_test")
    yield node
    node.destroy_node()
    rclpy.try_shutdown()


def spin_for(executor: SubmitOnceExecutor, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.05)


def test_a_frame_stream_is_taken_without_flooding_the_thread_pool(node):
    """With rclpy 9.1's own MultiThreadedExecutor this stream left over 100 submissions pending."""
    received = []
    node.create_subscription(Image, "/runner_test/image", received.append, qos_profile_sensor_data)
    publisher = node.create_publisher(Image, "/runner_test/image", qos_profile_sensor_data)
    frame = Image(height=480, width=640, encoding="rgb8", step=3 * 640, data=bytes(3 * 640 * 480))
    stop = threading.Event()
    sent = []

    def stream() -> None:
        while not stop.is_set():
            publisher.publish(frame)
            sent.append(1)
            time.sleep(0.01)

    executor = SubmitOnceExecutor(num_threads=8)
    executor.add_node(node)
    streamer = threading.Thread(target=stream)
    streamer.start()
    most_pending = 0
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.05)
        most_pending = max(most_pending, len(executor._futures))
    stop.set()
    streamer.join()
    executor.shutdown()
    assert most_pending <= 8, f"{most_pending} submissions pending at once"
    assert len(received) > 20, f"only {len(received)} of {len(sent)} frames taken"


def test_a_callback_exception_stops_spinning_as_in_rclpy(node):
    def fail() -> None:
        raise RuntimeError("callback bug")

    node.create_timer(0.01, fail)
    executor = SubmitOnceExecutor(num_threads=2)
    executor.add_node(node)
    with pytest.raises(RuntimeError, match="callback bug"):
        spin_for(executor, 2.0)
    executor.shutdown()
