"""Running a node as a program: a plain message when it cannot start, a clean exit on Ctrl-C or SIGTERM."""

import sys
import threading
import time
from collections.abc import Callable

import rclpy
from rclpy.exceptions import NameValidationException, ParameterException
from rclpy.executors import (
    ConditionReachedException,
    ExternalShutdownException,
    MultiThreadedExecutor,
    ShutdownException,
    SingleThreadedExecutor,
    TimeoutException,
)
from rclpy.node import Node
from rclpy.task import Task


class SubmitOnceExecutor(MultiThreadedExecutor):
    """A MultiThreadedExecutor that hands each ready callback to its thread pool once.

    rclpy 9.1 (the Kilted wheels) offers a task again on every wake-up until a pool thread has
    started it, and submits it again each time (ros2/rclpy#1452, fixed upstream in rclpy 10.0.4).
    With 30 Hz full-HD frames the pool then fills with thousands of empty submissions: measured
    here, the node used 90 % of a core and dropped most frames. Here a task still waiting for a
    pool thread is skipped, and the GIL is given up so that thread can start it; it leaves the
    queued set only after it ran, when rclpy no longer offers it.
    """

    def __init__(self, num_threads: int) -> None:
        super().__init__(num_threads=num_threads)
        self._queued: set[Task] = set()
        self._queued_lock = threading.Lock()

    def _spin_once_impl(
        self, timeout_sec: float | None = None, wait_condition: Callable[[], bool] = lambda: False
    ) -> None:
        try:
            handler, _, _ = self.wait_for_ready_callbacks(timeout_sec, None, wait_condition)
        except (ExternalShutdownException, ShutdownException, TimeoutException, ConditionReachedException):
            return
        with self._queued_lock:
            already_queued = handler in self._queued
            self._queued.add(handler)
        if already_queued:
            time.sleep(0)
            return
        self._executor.submit(self._run, handler)
        self._futures.append(handler)
        for task in list(self._futures):
            if task.done():
                self._futures.remove(task)
                task.result()  # a callback's exception stops spin(), as in rclpy

    def _run(self, handler: Task) -> None:
        try:
            handler()
        finally:
            with self._queued_lock:
                self._queued.discard(handler)


# Bad parameters or names: reported as "cannot start" with rclpy's message, not as a traceback.
CONFIGURATION_ERRORS = (ValueError, ParameterException, NameValidationException)


def run_node(
    program: str,
    make_node: Callable[[], Node],
    startup_errors: tuple[type[Exception], ...],
    args: list[str] | None = None,
    threads: Callable[[Node], int] = lambda node: 1,
) -> int:
    """Spins the node until shutdown; returns the process exit code (1 when it could not start)."""
    rclpy.init(args=args)
    try:
        node = make_node()
    except startup_errors as error:
        print(f"{program}: cannot start: {error}", file=sys.stderr)
        rclpy.try_shutdown()
        return 1
    count = threads(node)
    executor = SubmitOnceExecutor(num_threads=count) if count > 1 else SingleThreadedExecutor()
    try:
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
