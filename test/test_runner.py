"""The node runner: plain messages when a node cannot start, and an orderly end on a signal."""

import os
import signal
import threading

import pytest
from rclpy.node import Node

from molmo_ros.nodes.runner import CONFIGURATION_ERRORS, run_node


class RecordingNode(Node):
    """A node with the runner's optional hooks, recording which were called."""

    def __init__(self, starts: bool = True) -> None:
        super().__init__("recording_node")
        self.starts = starts
        self.calls: list[str] = []
        self.signal_after_start: int | None = None

    def start(self) -> bool:
        self.calls.append("start")
        if self.signal_after_start is not None:
            # Once the node spins (a moment after start returns), the signal asks the runner to stop.
            threading.Timer(0.3, os.kill, (os.getpid(), self.signal_after_start)).start()
        return self.starts

    def shut_down(self) -> None:
        self.calls.append("shut_down")


def test_a_node_that_cannot_be_built_is_reported_without_a_traceback(capsys):
    def broken() -> Node:
        raise ValueError("parameter qos must be one of sensor_data, reliable")

    assert run_node("demo_program", broken, CONFIGURATION_ERRORS, []) == 1
    assert "demo_program: cannot start: parameter qos" in capsys.readouterr().err


def test_a_node_whose_start_fails_exits_with_1(capsys):
    node = None

    def make() -> Node:
        nonlocal node
        node = RecordingNode(starts=False)
        return node

    assert run_node("demo_program", make, CONFIGURATION_ERRORS, []) == 1
    assert node.calls == ["start"] and "cannot start" in capsys.readouterr().err


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_shuts_the_node_down_before_leaving_ros(signal_number):
    node = None
    before = signal.getsignal(signal_number)

    def make() -> Node:
        nonlocal node
        node = RecordingNode()
        node.signal_after_start = signal_number
        return node

    assert run_node("demo_program", make, CONFIGURATION_ERRORS, []) == 0
    assert node.calls == ["start", "shut_down"]
    assert signal.getsignal(signal_number) is before, "the previous handler is restored"
