"""`molmo-demo`: the whole product in one command.

Starts the bundled image folder publisher and the pointer node as their own processes, asks the
node to point at something over its service, and prints the points, in pixels and, lifted with the
camera's synthetic registered depth image, in metres. DDS traffic stays on this machine unless the
caller already chose otherwise.
"""

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import rclpy
from rclpy.client import Client
from rclpy.node import Node

from molmo_ros.backends.settings import BACKENDS, BackendSettings
from molmo_ros.depth.transforms import no_negative_zeros
from molmo_ros.msg import PointingResult
from molmo_ros.nodes.dds_profile import PROFILE_VARIABLE, shipped_profile_path
from molmo_ros.nodes.image_folder_publisher import DEFAULT_DEPTH_TOPIC, SCENE
from molmo_ros.pointing.settings import camera_info_topic_beside
from molmo_ros.resources import share_dir
from molmo_ros.srv import Point

# The camera of config/pointer.yaml, its image topic, and where the bundled camera publishes depth
CAMERA = "camera"
CAMERA_TOPIC = "/camera/image_raw"

EXIT_NODE_FAILED = 3


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 101)))
    env.setdefault(PROFILE_VARIABLE, shipped_profile_path())
    return env


@dataclass
class _Child:
    """A node process; its output goes to a temporary file, since a pipe nobody reads during a long
    model load would fill up and block the node."""

    process: subprocess.Popen
    log: IO[str]

    def poll(self) -> int | None:
        return self.process.poll()


def _start(module: str, ros_args: list[str], env: dict[str, str]) -> _Child:
    log = tempfile.TemporaryFile(mode="w+")
    command = [sys.executable, "-m", module, "--ros-args", *ros_args]
    return _Child(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT), log)


def _stop(child: _Child) -> str:
    """Stops the child if it still runs and returns everything it printed."""
    if child.poll() is None:
        child.process.terminate()
    try:
        child.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        child.process.kill()
        child.process.wait()
    child.log.seek(0)
    return child.log.read()


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="molmo-demo", description=__doc__.splitlines()[0])
    parser.add_argument("--query", default="red mug", help="what to point at (default: %(default)s)")
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=BackendSettings.backend,
        help="molmoe (our engine), molmo2 (transformers' Molmo2) or openai (a server; see --url)",
    )
    parser.add_argument(
        "--url", default=BackendSettings.url, help="openai: the server's base URL (%(default)s)"
    )
    parser.add_argument(
        "--model",
        default="",
        help="model id or local checkpoint directory (default: $MOLMO_MODEL, else allenai/MolmoE-1B-0924)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument(
        "--images", type=Path, default=None, help="folder of images to publish (default: the bundled samples)"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the model to load")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    env = _environment()
    os.environ.update(env)
    config = share_dir() / "config" / "pointer.yaml"
    camera_args = ["-p", "rate:=5.0", "-p", f"topic:={CAMERA_TOPIC}"]
    camera_args += ["-p", f"folder:={args.images}"] if args.images else []
    pointer_args = [
        "--params-file",
        str(config),
        "-p",
        f"engine.backend:={args.backend}",
        "-p",
        f"engine.url:={args.url}",
        "-p",
        f"engine.device:={args.device}",
        "-p",
        f"cameras.{CAMERA}.depth_topic:={DEFAULT_DEPTH_TOPIC}",
        "-p",
        f"cameras.{CAMERA}.camera_info_topic:={camera_info_topic_beside(CAMERA_TOPIC)}",
    ]
    if args.model:
        pointer_args += ["-p", f"engine.model:={args.model}"]
    camera = _start("molmo_ros.nodes.image_folder_publisher", camera_args, env)
    pointer = _start("molmo_ros.nodes.pointer", pointer_args, env)
    try:
        return _query(args, pointer)
    finally:
        pointer_log = _stop(pointer)
        camera_log = _stop(camera)
        if os.environ.get("MOLMO_DEMO_VERBOSE"):
            print(f"--- pointer log ---\n{pointer_log}--- camera log ---\n{camera_log}", file=sys.stderr)


def _query(args: argparse.Namespace, pointer: _Child) -> int:
    rclpy.init()
    node = rclpy.create_node("molmo_demo_client")
    try:
        client = node.create_client(Point, "/molmo/point")
        print(
            f"waiting for /molmo/point (ROS_DOMAIN_ID={os.environ['ROS_DOMAIN_ID']}) "
            "while the model loads ..."
        )
        deadline = time.monotonic() + args.timeout
        while not client.wait_for_service(timeout_sec=0.5):
            if pointer.poll() is not None:
                print(f"the pointer node stopped before it was ready:\n{_stop(pointer)}", file=sys.stderr)
                return EXIT_NODE_FAILED
            if time.monotonic() > deadline:
                print(f"the pointer node was not ready after {args.timeout:g} s", file=sys.stderr)
                return EXIT_NODE_FAILED
        print(_describe_scene())
        response = _call(node, client, Point.Request(query=args.query), deadline, pointer)
        if response is None:
            if pointer.poll() is not None:
                print(f"the pointer node stopped before it answered:\n{_stop(pointer)}", file=sys.stderr)
            else:
                print("no answer from /molmo/point", file=sys.stderr)
            return EXIT_NODE_FAILED
        _print_response(args.query, response)
        return 0 if response.success else 1
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


# Answers that only mean "not ready yet": the node offers its service from configure on, loads the model
# on activate (frames are not taken meanwhile), and the first frames may have aged during the load.
NOT_READY_YET = (Point.Response.NO_FRAME, Point.Response.STALE_FRAME, Point.Response.NOT_ACTIVE)


def _call(
    node: Node, client: Client, request: Point.Request, deadline: float, pointer: _Child
) -> Point.Response | None:
    """Retries while the node is not ready yet; None when it stopped or the deadline passed."""
    while time.monotonic() < deadline and pointer.poll() is None:
        future = client.call_async(request)
        while not future.done() and time.monotonic() < deadline and pointer.poll() is None:
            rclpy.spin_until_future_complete(node, future, timeout_sec=0.5)
        response = future.result() if future.done() else None
        if response is not None and response.error_code not in NOT_READY_YET:
            return response
        time.sleep(0.2)
    return None


def _print_response(query: str, response: Point.Response) -> None:
    result = response.result
    if not response.success:
        print(f"query {query!r} failed: {response.message}")
        return
    print(f"query: {query!r}  prompt: {result.prompt!r}")
    print(
        f"frame: {result.header.frame_id} stamp {result.header.stamp.sec}.{result.header.stamp.nanosec:09d} "
        f"{result.image_width}x{result.image_height}, frame age {result.frame_age_seconds * 1000:.0f} ms, "
        f"model {result.model_seconds * 1000:.0f} ms"
    )
    print(f"model answer: {result.raw_text!r}")
    print(f"result: {response.message}")
    for point, label in zip(result.points, result.labels, strict=True):
        print(f"  {label}: x={point.x:.1f} y={point.y:.1f} (pixels)")
    _print_3d(result)


def _print_3d(result: PointingResult) -> None:
    """The points in metres where the node lifted them, with how far to trust them; otherwise why not."""
    if len(result.points_3d) != len(result.points):
        reasons = [view.depth_status for view in result.views if view.depth_status]
        print("no 3D points" + (f": {'; '.join(reasons)}" if reasons else " in the answer"))
        return
    frames = [view.header.frame_id for view in result.views] or [result.header.frame_id]
    for index, (point, valid, label) in enumerate(
        zip(result.points_3d, result.depth_valid, result.labels, strict=True)
    ):
        if not valid:
            print(f"  {label}: no valid depth at this point")
            continue
        frame = result.target_frame or frames[result.point_views[index]]
        step = result.depth_step[index]
        edge = f"edge: depth step {step:+.3f} m" if result.depth_edge[index] else "no edge"
        distance = result.depth_search_distance[index]
        fallback = (
            f", nearest surface {distance:.1f} px away (none at the pixel)"
            if result.depth_fallback[index]
            else ""
        )
        print(
            f"  {label}: x={point.x:.3f} y={point.y:.3f} z={point.z:.3f} m in {frame} "
            f"(support {result.depth_support[index]}, {edge}{fallback})"
        )
        if result.normal_valid[index]:
            normal = result.normals[index]
            x, y, z = no_negative_zeros([round(value, 3) for value in (normal.x, normal.y, normal.z)])
            error = result.normal_error[index]
            print(f"    surface normal ({x:.3f}, {y:.3f}, {z:.3f}), within {error:.1f} degrees (1 sigma)")
        else:
            print(f"    no normal: {result.normal_status[index]}")


def _describe_scene() -> str:
    """Where the synthetic depth's thin pole and tilted board are, so a user knows where to look."""
    pole, board = SCENE.pole, SCENE.board
    return (
        f"synthetic depth (not the picture): a wall at {SCENE.wall_z:g} m, the floor, boxes, a "
        f"{(pole.right - pole.left) * 1000:.0f} mm pole at {pole.z:g} m (x {pole.left:+.3f} m) and a board "
        f"tilted {board.tilt_deg:g} degrees at {board.z:g} m (x {board.x:+g}, y {board.y:+g} m)"
    )


if __name__ == "__main__":
    sys.exit(main())
