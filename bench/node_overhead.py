"""What the ROS layer costs on top of the model: prints figures, asserts nothing.

    .venv/bin/python bench/node_overhead.py [--calls 200] [--stream-seconds 10]

The pointer node runs in its own process with a zero-cost engine (it answers at once), so every
millisecond measured is node, DDS and conversion cost. For 640x480 and 1920x1080 rgb8 frames
streamed at 30 Hz by a camera in a third process it prints the service round trip and the node
overhead (round trip minus the engine's time) as p50/p95, then the CPU the node process spends
just taking the stream, and how many frames it took of those sent.
DDS stays on this machine; the shipped Fast DDS profile is used unless --no-profile.
"""

import argparse
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ZeroCostAnswer:
    texts: list[str]


class ZeroCostEngine:
    """Answers at once with one point, so the node's own cost is all that is left."""

    def generate(self, image: np.ndarray, prompts: Sequence[str]) -> ZeroCostAnswer:
        return ZeroCostAnswer(texts=['<point x="50.0" y="50.0" alt="thing">thing</point>'] * len(prompts))


def serve() -> None:
    """Child process: the real pointer node, run as its program runs it, with the zero-cost engine."""
    from molmo_ros.nodes.pointer import PointerNode
    from molmo_ros.nodes.runner import run_node

    class CountingPointerNode(PointerNode):
        def destroy_node(self) -> None:
            print(f"frames received: {self.frames.sequence('camera')}", flush=True)
            super().destroy_node()

    run_node(
        "pointer",
        lambda: CountingPointerNode(engine=ZeroCostEngine()),
        (),
        threads=lambda n: n.executor_threads,
    )


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def camera(width: int, height: int) -> None:
    """Child process: a 30 Hz rgb8 camera, as a driver in its own process would be, until SIGTERM."""
    import signal

    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from molmo_ros.image_conversion import rgb_to_raw

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    rclpy.init()
    node = rclpy.create_node("overhead_bench_camera")
    publisher = node.create_publisher(Image, "/camera/image_raw", qos_profile_sensor_data)
    rgb = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    data, step = rgb_to_raw(rgb)
    message = Image(
        height=height, width=width, encoding="rgb8", step=step, data=data, header=Header(frame_id="cam")
    )
    sent = 0
    next_time = time.monotonic()
    while not stop.is_set():
        message.header.stamp = node.get_clock().now().to_msg()
        publisher.publish(message)
        sent += 1
        next_time += 1 / 30
        time.sleep(max(0.0, next_time - time.monotonic()))
    print(f"frames sent: {sent}", flush=True)
    node.destroy_node()
    rclpy.try_shutdown()


def _count(output: str, label: str) -> int:
    return int(output.rsplit(label, 1)[1].split()[0]) if label in output else -1


def measure(
    width: int, height: int, calls: int, stream_seconds: float, env: dict[str, str]
) -> dict[str, object]:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from molmo_ros.srv import Point

    def child(*args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, __file__, *args], env=env, stdout=subprocess.PIPE, text=True)

    node = child("--serve")
    stream = child("--camera", str(width), str(height))
    rclpy.init()
    client_node = rclpy.create_node("overhead_bench")
    client = client_node.create_client(Point, "/molmo/point")
    executor = SingleThreadedExecutor()
    executor.add_node(client_node)
    round_trips, overheads = [], []
    try:
        if not client.wait_for_service(timeout_sec=60):
            raise RuntimeError("the pointer node did not come up")
        warm_up = 10
        deadline = time.monotonic() + 120
        while len(round_trips) < calls and time.monotonic() < deadline:
            started = time.perf_counter()
            future = client.call_async(Point.Request(query="thing"))
            executor.spin_until_future_complete(future, timeout_sec=10)
            elapsed = time.perf_counter() - started
            response = future.result()
            if response is None or not response.success:
                time.sleep(0.05)  # no frame has arrived yet
                continue
            if warm_up:
                warm_up -= 1
                continue
            round_trips.append(elapsed * 1000)
            overheads.append((elapsed - response.result.model_seconds) * 1000)
        before = cpu_seconds(node.pid)
        time.sleep(stream_seconds)
        cpu = (cpu_seconds(node.pid) - before) / stream_seconds * 100
    finally:
        for process in (stream, node):
            process.terminate()
        sent = _count(stream.communicate(timeout=20)[0], "frames sent:")
        taken = _count(node.communicate(timeout=20)[0], "frames received:")
        client_node.destroy_node()
        rclpy.try_shutdown()
    if not round_trips:
        raise RuntimeError(f"no successful call at {width}x{height}: did any frame reach the node?")
    return {
        "calls": len(round_trips),
        "rt_p50": statistics.median(round_trips),
        "rt_p95": percentile(round_trips, 0.95),
        "ov_p50": statistics.median(overheads),
        "ov_p95": percentile(overheads, 0.95),
        "stream_cpu_percent": cpu,
        "frames": f"{taken}/{sent}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--camera", nargs=2, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--stream-seconds", type=float, default=10.0)
    parser.add_argument("--no-profile", action="store_true", help="leave Fast DDS at its defaults")
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    if args.camera:
        camera(*args.camera)
        return
    env = dict(
        os.environ,
        ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
        ROS_DOMAIN_ID=os.environ.get("ROS_DOMAIN_ID", str(random.randint(1, 101))),
    )
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    if not args.no_profile:
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(REPO_ROOT / "config" / "fastdds_large_images.xml")
    os.environ.update(env)
    print(
        f"node overhead, zero-cost engine, {os.cpu_count()} CPUs, "
        f"Fast DDS profile: {env.get('FASTDDS_DEFAULT_PROFILES_FILE', 'none')}"
    )
    print(
        f"{'frame':>10} {'calls':>5} {'round trip p50/p95 ms':>22} {'overhead p50/p95 ms':>20} "
        f"{'30 Hz stream CPU':>17} {'frames taken/sent':>18}"
    )
    for width, height in ((640, 480), (1920, 1080)):
        r = measure(width, height, args.calls, args.stream_seconds, env)
        print(
            f"{width}x{height:<5} {r['calls']:>5} {r['rt_p50']:>10.2f} / {r['rt_p95']:<9.2f} "
            f"{r['ov_p50']:>9.2f} / {r['ov_p95']:<8.2f} {r['stream_cpu_percent']:>13.0f} %  {r['frames']:>18}"
        )


if __name__ == "__main__":
    main()
