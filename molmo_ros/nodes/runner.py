"""Running a node as a program: a plain message when it cannot start, a clean exit on Ctrl-C or SIGTERM."""

import sys
from collections.abc import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node


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
    try:
        executor = MultiThreadedExecutor(num_threads=threads(node))
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
