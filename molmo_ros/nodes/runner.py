"""Running a node as a program: a plain message when it cannot start, and an orderly end on Ctrl-C or SIGTERM.

rclpy's own signal handler shuts the ROS context down at once, so requests that arrive after the signal
could never be answered and results published after it raise. Here the signal only asks the loop to
stop: the node answers every waiting and running request ("shutting down"), keeps answering new ones
the same way for a short grace period so their answers reach the clients, and only then leaves ROS.
A second signal ends the program at once.
"""

import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Protocol

import rclpy
from rclpy.exceptions import NameValidationException, ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

# Bad parameters or names: reported as "cannot start" with rclpy's message, not as a traceback.
CONFIGURATION_ERRORS = (ValueError, ParameterException, NameValidationException)
SPIN_PERIOD_S = 0.1  # how often the loop looks for a stop signal
SHUTDOWN_GRACE_S = 0.5  # answering "shutting down" after the signal, so clients hear it


class StartableNode(Protocol):
    def start(self) -> bool: ...

    def shut_down(self) -> None: ...


class _StopSignal:
    def __init__(self) -> None:
        self.requested = threading.Event()
        self.serving = False

    def __call__(self, signum: int, frame: object) -> None:
        if self.requested.is_set() or not self.serving:
            raise KeyboardInterrupt  # a second signal, or one during start-up (model loading): leave now
        self.requested.set()


def run_node(
    program: str,
    make_node: Callable[[], Node],
    startup_errors: tuple[type[Exception], ...],
    args: list[str] | None = None,
) -> int:
    """Spins the node until a signal; returns the process exit code (1 when it could not start).

    A node with `start()` (returning False when it cannot) and `shut_down()` gets both called.
    """
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop = _StopSignal()
    previous = {number: signal.signal(number, stop) for number in (signal.SIGINT, signal.SIGTERM)}
    executor = SingleThreadedExecutor()
    node = None
    try:
        node = make_node()
        executor.add_node(node)
        start = getattr(node, "start", None)
        if start is not None and not start():
            print(f"{program}: cannot start; see the messages above", file=sys.stderr)
            return 1
        stop.serving = True
        while not stop.requested.is_set():
            executor.spin_once(timeout_sec=SPIN_PERIOD_S)
        _drain(node, executor)
    except startup_errors as error:
        print(f"{program}: cannot start: {error}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        executor.shutdown()
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


def _drain(node: Node, executor: SingleThreadedExecutor) -> None:
    shut_down = getattr(node, "shut_down", None)
    if shut_down is not None:
        shut_down()
    deadline = time.monotonic() + SHUTDOWN_GRACE_S
    while time.monotonic() < deadline:
        executor.spin_once(timeout_sec=SPIN_PERIOD_S / 2)
