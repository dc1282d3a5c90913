"""What the ROS layer costs on top of the model: prints figures, asserts nothing.

    $MOLMO_ROS_VENV/bin/python bench/node_overhead.py [--calls 200] [--stream-seconds 10]

The pointer node runs in its own process, as its program runs it (lifecycle node on rclpy's stock
single-threaded executor), and a camera streams at 30 Hz from a third process. Each row is one fresh
node and camera:

- colour only, 640x480 and 1920x1080 rgb8, with a zero-cost backend that answers at once: every
  millisecond measured is node, DDS and conversion cost;
- colour + depth at 1920x1080: the camera also publishes a 16UC1 depth image and a CameraInfo with the
  colour frame's stamp and frame_id, the node has cameras.camera.depth_topic set, and each answer's one
  point is lifted to 3D;
- colour + depth at 1920x1080 with 8 points per answer, and the same with target_frame set to a static
  camera pose: each point's surface depth, normal and approach pose, and their transform;
- engine.backend openai against a local OpenAI-compatible server double (its own process, 127.0.0.1,
  answering at once with a Molmo2 point): the cost of the HTTP hop beside the in-process backend. The
  frames are random noise, the worst case for the JPEG the backend sends.

Before the node rows it times the answer path itself in this process (`pointing_outcome`, as the node's
worker runs it), at 1920x1080 with 1 and 8 points on the demo camera's synthetic scene read from a 16UC1
buffer: without depth, with the surface depth only (normal_radius 0), with normals, and with normals and a
static target frame. `--cases` picks node rows by label (substring); `--answer-path-only` skips them.

For each it prints the service round trip and the node overhead (round trip minus the answer's
model_seconds) as p50/p95, the CPU the node process spends just taking the stream, and how many frames
the node took of those the camera sent. DDS stays on this machine in a random domain; the shipped Fast
DDS profile is used unless --no-profile.
"""

import argparse
import importlib.util
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from molmo_ros.backends.interface import BackendAnswer, GenerationControl

REPO_ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CAMERA_HZ = 30.0
CAMERA_NAME = "camera"  # the node's default camera: it listens on /camera/image_raw and /camera/camera_info
IMAGE_TOPIC = f"/{CAMERA_NAME}/image_raw"
CAMERA_INFO_TOPIC = f"/{CAMERA_NAME}/camera_info"
DEPTH_TOPIC = f"/{CAMERA_NAME}/depth/image_raw"
OPTICAL_FRAME = "camera_optical_frame"
FOCAL_PX = 1000.0  # a pinhole lens without distortion; only the lifting arithmetic depends on it
WARM_UP_CALLS = 10  # first answers not counted: DDS discovery, first frame, first imports
CALLS_DEADLINE_S = 180.0  # give up collecting calls after this long (figures then say how many were made)
CALL_TIMEOUT_S = 10.0
NO_FRAME_RETRY_S = 0.05  # pause after an unsuccessful answer (no frame has arrived yet)
NODE_START_TIMEOUT_S = 60.0
CHILD_EXIT_TIMEOUT_S = 20.0
# Zero-cost answers: one point in the middle of the frame, or eight spread over it (Molmo 0924 markup,
# percent of the frame).
ZERO_COST_ANSWER = '<point x="50.0" y="50.0" alt="thing">thing</point>'
EIGHT_POINTS = [
    (20.0, 30.0),
    (35.0, 60.0),
    (50.0, 50.0),
    (62.0, 40.0),
    (75.0, 70.0),
    (30.0, 80.0),
    (85.0, 25.0),
    (55.0, 90.0),
]
EIGHT_POINTS_ANSWER = (
    "<points "
    + " ".join(f'x{index}="{x:.1f}" y{index}="{y:.1f}"' for index, (x, y) in enumerate(EIGHT_POINTS, start=1))
    + ' alt="thing">thing</points>'
)
TARGET_FRAME = "base_link"  # the static pose's parent frame in the target-frame row
STATIC_POSE = ([0.3, 0.0, 1.2], [-0.5, 0.5, -0.5, 0.5])  # a camera 1.2 m up, looking along base x
ANSWER_PATH_REPEATS = 300
# What the OpenAI double answers: one Molmo2 point in the middle of the frame (per-mille).
MOLMO2_ANSWER = '<points coords="1 1 500 500">thing</points>'
# The frame the model saw goes over HTTP as the backend sends it by default (JPEG, not downscaled).
OPENAI_DOUBLE_PATH = REPO_ROOT / "test" / "doubles" / "openai_server.py"
COUNT_LABELS = ("colour frames sent:", "depth frames sent:", "colour frames taken:", "depth frames taken:")


class ZeroCostBackend:
    """A `PointingBackend` that answers at once with fixed points: the node's own cost is all that is left."""

    name = "zero-cost"
    max_images = 1
    max_concurrent_calls = 1

    def __init__(self, answer: str = ZERO_COST_ANSWER) -> None:
        self.answer = answer

    def generate(
        self,
        images: Sequence[np.ndarray],
        prompts: Sequence[str],
        control: GenerationControl | None = None,
    ) -> BackendAnswer:
        return BackendAnswer(texts=[self.answer] * len(prompts))

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class Case:
    """One row: a fresh node and camera."""

    label: str
    width: int
    height: int
    depth: bool = False
    openai: bool = False
    eight_points: bool = False
    target_frame: bool = False


CASES = (
    Case("colour 640x480", 640, 480),
    Case("colour 1920x1080", 1920, 1080),
    Case("colour+depth 1920x1080", 1920, 1080, depth=True),
    Case("colour+depth 1080p 8 points", 1920, 1080, depth=True, eight_points=True),
    Case("+target frame 8 points", 1920, 1080, depth=True, eight_points=True, target_frame=True),
    Case("openai double 640x480", 640, 480, openai=True),
    Case("openai double 1920x1080", 1920, 1080, openai=True),
)


def serve(depth: bool, openai_url: str | None, eight_points: bool, target_frame: bool) -> None:
    """Child process: the real pointer node, run as its program runs it, counting the frames it takes."""
    from rclpy.parameter import Parameter

    from molmo_ros.depth.pairing import DepthFrame
    from molmo_ros.nodes.pointer import PointerNode
    from molmo_ros.nodes.runner import run_node
    from molmo_ros.pointing.frames import LatestFrames

    class CountingFrames(LatestFrames):
        """Counts depth frames too (LatestFrames counts colour frames in `sequence`)."""

        depth_taken = 0

        def put_depth(self, camera: str, depth: DepthFrame) -> None:
            self.depth_taken += 1
            super().put_depth(camera, depth)

    class CountingPointerNode(PointerNode):
        def __init__(self, **options: object) -> None:
            super().__init__(**options)
            self._counted = False

        def on_configure(self, state):
            result = super().on_configure(state)
            if self.pointing is not None:  # the service owns the frames; count them from the start
                self.pointing.frames = CountingFrames()
            return result

        def shut_down(self) -> None:
            # Before the pointing service stops: stopping forgets the frames and their count.
            if not self._counted and self.pointing is not None:
                self._counted = True
                frames = self.pointing.frames
                print(f"colour frames taken: {frames.sequence(CAMERA_NAME)}", flush=True)
                print(f"depth frames taken: {frames.depth_taken}", flush=True)
            super().shut_down()

    overrides = []
    if depth:
        overrides.append(Parameter(f"cameras.{CAMERA_NAME}.depth_topic", value=DEPTH_TOPIC))
    if target_frame:
        translation, rotation = STATIC_POSE
        overrides += [
            Parameter("target_frame", value=TARGET_FRAME),
            Parameter(f"cameras.{CAMERA_NAME}.pose_parent_frame", value=TARGET_FRAME),
            Parameter(f"cameras.{CAMERA_NAME}.pose_translation", value=translation),
            Parameter(f"cameras.{CAMERA_NAME}.pose_rotation", value=rotation),
        ]
    if openai_url:
        overrides += [Parameter("engine.backend", value="openai"), Parameter("engine.url", value=openai_url)]
    answer = EIGHT_POINTS_ANSWER if eight_points else ZERO_COST_ANSWER
    backend_factory = None if openai_url else (lambda settings: ZeroCostBackend(answer))
    run_node(
        "pointer",
        lambda: CountingPointerNode(backend_factory=backend_factory, parameter_overrides=overrides),
        (),
    )


def camera(width: int, height: int, depth: bool) -> None:
    """Child process: a 30 Hz rgb8 camera (with depth and CameraInfo when asked), as a driver in its own
    process would be, until SIGTERM. Depth and CameraInfo carry the colour frame's stamp and frame_id
    (long: building the three messages is most of it)."""
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from rclpy.signals import SignalHandlerOptions
    from sensor_msgs.msg import CameraInfo, Image
    from std_msgs.msg import Header

    from molmo_ros.image_conversion import rgb_to_raw

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)  # rclpy's handler would end DDS mid-publish
    node = rclpy.create_node("overhead_bench_camera")
    colour_publisher = node.create_publisher(Image, IMAGE_TOPIC, qos_profile_sensor_data)
    rgb = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    data, step = rgb_to_raw(rgb)
    header = Header(frame_id=OPTICAL_FRAME)
    colour = Image(height=height, width=width, encoding="rgb8", step=step, data=data, header=header)
    messages = [(colour_publisher, colour)]
    if depth:
        depth_image = bench_depth_mm(width, height)
        depth_message = Image(
            height=height,
            width=width,
            encoding="16UC1",
            step=width * depth_image.itemsize,
            data=depth_image.tobytes(),
            header=header,
        )
        cx, cy = width / 2, height / 2
        info = CameraInfo(
            header=header,
            width=width,
            height=height,
            distortion_model="plumb_bob",
            d=[0.0] * 5,
            k=[FOCAL_PX, 0.0, cx, 0.0, FOCAL_PX, cy, 0.0, 0.0, 1.0],
            r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
            p=[FOCAL_PX, 0.0, cx, 0.0, 0.0, FOCAL_PX, cy, 0.0, 0.0, 0.0, 1.0, 0.0],
        )
        messages += [
            (node.create_publisher(Image, DEPTH_TOPIC, qos_profile_sensor_data), depth_message),
            (node.create_publisher(CameraInfo, CAMERA_INFO_TOPIC, qos_profile_sensor_data), info),
        ]
    sent = 0
    next_time = time.monotonic()
    while not stop.is_set():
        stamp = node.get_clock().now().to_msg()
        for publisher, message in messages:
            message.header.stamp = stamp
            publisher.publish(message)
        # Counted once the node subscribes: frames sent before it exists are not the node's loss.
        sent += colour_publisher.get_subscription_count() > 0
        next_time += 1 / CAMERA_HZ
        time.sleep(max(0.0, next_time - time.monotonic()))
    print(f"colour frames sent: {sent}", flush=True)
    print(f"depth frames sent: {sent if depth else 0}", flush=True)
    node.destroy_node()
    rclpy.try_shutdown()


def bench_depth_mm(width: int, height: int) -> np.ndarray:
    """The demo camera's synthetic scene (wall, floor, boxes, a thin pole, a tilted board) in millimetres:
    a mix of planes, edges and thin parts for the normals to work on. Lifted with this bench's pinhole
    camera rather than the demo's, its planes stay planes (only their tilt changes)."""
    from molmo_ros.nodes.image_folder_publisher import synthetic_depth_mm

    return synthetic_depth_mm(width, height)


def no_tf2() -> None:
    """The answer path is timed with the static pose alone, as where tf2_ros is not installed."""
    raise ImportError("the bench times static camera poses only")


def answer_path(width: int = 1920, height: int = 1080) -> None:
    """Times `pointing_outcome` in this process on a 16UC1 depth buffer, as the node's worker runs it."""
    from dataclasses import replace

    from molmo_ros.depth.camera import CameraModel
    from molmo_ros.depth.images import read_depth
    from molmo_ros.depth.pairing import PairedDepth
    from molmo_ros.depth.settings import DepthSettings
    from molmo_ros.pointing.answer import ViewInput, pointing_outcome
    from molmo_ros.pointing.outcomes import View
    from molmo_ros.pointing.settings import CameraSettings, PointingSettings
    from molmo_ros.pointing.target_frame import target_frame

    buffer = bench_depth_mm(width, height).astype("<u2").tobytes()
    model = CameraModel.pinhole(width, height, FOCAL_PX, FOCAL_PX, width / 2, height / 2)
    translation, rotation = STATIC_POSE
    camera = CameraSettings(
        name=CAMERA_NAME, pose_parent_frame=TARGET_FRAME, pose_translation=translation, pose_rotation=rotation
    )
    settings = PointingSettings(cameras=(CAMERA_NAME,), target_frame=TARGET_FRAME)
    static = target_frame(settings, {CAMERA_NAME: camera}, load_tf2=no_tf2)
    view = View(CAMERA_NAME, 1, OPTICAL_FRAME, width, height)
    defaults = DepthSettings()
    variants = [
        ("no depth", None, defaults, None),
        ("surface depth only", True, replace(defaults, normal_radius=0), None),
        ("+ normals", True, defaults, None),
        ("+ normals + target frame", True, defaults, static),
    ]
    print(f"answer path in this process, {width}x{height}, {ANSWER_PATH_REPEATS} answers each (ms):")
    print(f"{'variant':<26} {'1 point p50 / p95':>18} {'8 points p50 / p95':>19}")
    for label, with_depth, depth_settings, target in variants:
        cells = []
        for text in (ZERO_COST_ANSWER, EIGHT_POINTS_ANSWER):
            times = []
            for _ in range(ANSWER_PATH_REPEATS):
                # a new DepthImage per answer, as each depth message is decoded once for its answer
                depth = PairedDepth(read_depth(buffer, "16UC1", height, width, width * 2, False), model, 1)
                started = time.perf_counter()
                pointing_outcome(
                    query="thing",
                    prompt="Point to the thing",
                    text=text,
                    inputs=[ViewInput(view, depth if with_depth else None)],
                    depth_settings=depth_settings,
                    require_depth=False,
                    model_seconds=0.0,
                    frame_age_seconds=0.0,
                    target=target,
                )
                times.append((time.perf_counter() - started) * 1000)
            cells.append(f"{statistics.median(times):.3f} / {percentile(times, 0.95):.3f}")
        print(f"{label:<26} {cells[0]:>18} {cells[1]:>19}")
    print()


def openai_double(lifetime_s: float) -> None:
    """Child process: the OpenAI-compatible server double on 127.0.0.1, until SIGTERM; prints its URL.

    It is a test double (test/doubles/), not a product feature; bench/ and test/ are not packages, so it
    is imported by its path.
    """
    spec = importlib.util.spec_from_file_location("openai_server_double", OPENAI_DOUBLE_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with module.OpenAIServerDouble(answers=[MOLMO2_ANSWER], lifetime_s=lifetime_s) as server:
        print(f"url: {server.url}", flush=True)
        stop.wait()
        print(f"requests answered: {len(server.requests)}", flush=True)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def _count(output: str, label: str) -> int:
    return int(output.rsplit(label, 1)[1].split()[0]) if label in output else -1


@dataclass(frozen=True)
class Figures:
    calls: int
    round_trip_ms: list[float]
    overhead_ms: list[float]
    model_ms: list[float]
    lifted: int  # answers whose point got a valid 3D position
    stream_cpu_percent: float
    counts: dict[str, int]

    def p50(self, values: list[float]) -> float:
        return statistics.median(values)

    def p95(self, values: list[float]) -> float:
        return percentile(values, 0.95)


def measure(case: Case, calls: int, stream_seconds: float, env: dict[str, str]) -> Figures:
    """One case: start the node, camera (and server) processes, time the calls, stop them, read their
    counts (long: the processes' lifetimes are one try/finally)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from molmo_ros.srv import Point

    def child(*args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, __file__, *args], env=env, stdout=subprocess.PIPE, text=True)

    children = []
    serve_args = ["--serve"] + (["--depth"] if case.depth else [])
    serve_args += (["--eight-points"] if case.eight_points else []) + (
        ["--target-frame"] if case.target_frame else []
    )
    if case.openai:
        double = child("--openai-double", str(CALLS_DEADLINE_S + stream_seconds + NODE_START_TIMEOUT_S * 2))
        children.append(double)
        announced = double.stdout.readline()
        if "url:" not in announced:
            raise RuntimeError(f"the OpenAI server double ({OPENAI_DOUBLE_PATH}) did not start; see above")
        url = announced.split("url:", 1)[1].strip()
        serve_args += ["--openai-url", url]
    node = child(*serve_args)
    stream = child("--camera", str(case.width), str(case.height), *(["--depth"] if case.depth else []))
    children += [node, stream]
    rclpy.init()
    client_node = rclpy.create_node("overhead_bench")
    client = client_node.create_client(Point, "/molmo/point")
    executor = SingleThreadedExecutor()
    executor.add_node(client_node)
    round_trips, overheads, model_times = [], [], []
    lifted = 0
    warm_up = WARM_UP_CALLS
    counts = {}
    try:
        if not client.wait_for_service(timeout_sec=NODE_START_TIMEOUT_S):
            raise RuntimeError("the pointer node did not come up")
        deadline = time.monotonic() + CALLS_DEADLINE_S
        while len(round_trips) < calls and time.monotonic() < deadline:
            started = time.perf_counter()
            future = client.call_async(Point.Request(query="thing"))
            executor.spin_until_future_complete(future, timeout_sec=CALL_TIMEOUT_S)
            elapsed = time.perf_counter() - started
            response = future.result()
            if response is None or not response.success:
                time.sleep(NO_FRAME_RETRY_S)
                continue
            if warm_up:
                warm_up -= 1
                continue
            model_seconds = response.result.model_seconds
            round_trips.append(elapsed * 1000)
            overheads.append((elapsed - model_seconds) * 1000)
            model_times.append(model_seconds * 1000)
            lifted += any(response.result.depth_valid)
        before = cpu_seconds(node.pid)
        time.sleep(stream_seconds)
        cpu = (cpu_seconds(node.pid) - before) / stream_seconds * 100
    finally:
        output = ""
        for process in reversed(children):  # the camera ends first, so every frame sent could be taken
            process.terminate()
            output += process.communicate(timeout=CHILD_EXIT_TIMEOUT_S)[0]
        counts = {label: _count(output, label) for label in COUNT_LABELS}
        client_node.destroy_node()
        rclpy.try_shutdown()
    if not round_trips:
        raise RuntimeError(f"no successful call for {case.label}: did any frame reach the node?")
    return Figures(len(round_trips), round_trips, overheads, model_times, lifted, cpu, counts)


def _frames(figures: Figures, kind: str) -> str:
    taken, sent = figures.counts[f"{kind} frames taken:"], figures.counts[f"{kind} frames sent:"]
    if sent <= 0:
        return "-"
    return f"{taken}/{sent} ({100 * taken / sent:.1f} %)"


def _pair(figures: Figures, values: list[float]) -> str:
    return f"{figures.p50(values):.2f} / {figures.p95(values):.2f}"


def report(results: dict[Case, Figures]) -> None:
    print(
        f"{'case':<24} {'calls':>5} {'round trip':>15} {'node overhead':>15} {'backend time':>15} "
        f"{'node CPU':>8} {'colour frames':>20} {'depth frames':>20} {'3D':>7}"
    )
    print(f"{'':<24} {'':>5} {'p50 / p95 ms':>15} {'p50 / p95 ms':>15} {'p50 / p95 ms':>15} {'% core':>8}")
    for case, f in results.items():
        lifted = f"{f.lifted}/{f.calls}" if case.depth else "-"
        print(
            f"{case.label:<24} {f.calls:>5} {_pair(f, f.round_trip_ms):>15} {_pair(f, f.overhead_ms):>15} "
            f"{_pair(f, f.model_ms):>15} {f.stream_cpu_percent:>8.0f} {_frames(f, 'colour'):>20} "
            f"{_frames(f, 'depth'):>20} {lifted:>7}"
        )
    print(
        "round trip: Point service call to answer, seen by a client in this process; node overhead: round "
        "trip minus\nthe answer's model_seconds (time inside the backend's generate); node CPU: the node "
        "process while it\nonly takes the 30 Hz stream (no calls); frames taken/sent: counted in the node / "
        "in the camera\n(from when the node subscribed); 3D: answers whose point was lifted to a valid 3D "
        "position."
    )
    by_label = {case.label: figures for case, figures in results.items()}
    if {"colour 1920x1080", "colour+depth 1920x1080"} <= set(by_label):
        _depth_summary(by_label)
    if {"colour+depth 1920x1080", "colour+depth 1080p 8 points"} <= set(by_label):
        one, eight = by_label["colour+depth 1920x1080"], by_label["colour+depth 1080p 8 points"]
        line = (
            f"8 points instead of 1 (surface depth, normal, approach pose each): overhead p50 "
            f"{eight.p50(eight.overhead_ms):.2f} ms vs {one.p50(one.overhead_ms):.2f} ms"
        )
        if "+target frame 8 points" in by_label:
            framed = by_label["+target frame 8 points"]
            line += f"; with a static target frame {framed.p50(framed.overhead_ms):.2f} ms"
        print(line)
    if all(
        f"{kind} {size}" in by_label
        for kind in ("colour", "openai double")
        for size in ("640x480", "1920x1080")
    ):
        _http_summary(by_label)


def _depth_summary(by_label: dict[str, Figures]) -> None:
    colour, depth = by_label["colour 1920x1080"], by_label["colour+depth 1920x1080"]
    print()
    print(
        f"1080p colour only (issue 10: no worse than 1.25 / 6.2 ms p50 / p95 as measured 2026-11-22, frames "
        f"taken >= 98 %): "
        f"overhead {_pair(colour, colour.overhead_ms)} ms, round trip {_pair(colour, colour.round_trip_ms)} "
        f"ms, colour frames {_frames(colour, 'colour')}"
    )
    print(
        f"1080p depth added (issue 7: <= 2 ms p50 above colour only): overhead p50 "
        f"{depth.p50(depth.overhead_ms):.2f} ms vs {colour.p50(colour.overhead_ms):.2f} ms colour only, "
        f"+{depth.p50(depth.overhead_ms) - colour.p50(colour.overhead_ms):.2f} ms "
        f"(p95 {depth.p95(depth.overhead_ms):.2f} vs {colour.p95(colour.overhead_ms):.2f} ms)"
    )


def _http_summary(by_label: dict[str, Figures]) -> None:
    print(
        "HTTP hop: the frames are random noise, the worst case for JPEG (a camera image encodes smaller and "
        "faster);\nbackend time = JPEG encoding, base64, HTTP to the double on 127.0.0.1 and its JSON reply."
    )
    for size in ("640x480", "1920x1080"):
        local, remote = by_label[f"colour {size}"], by_label[f"openai double {size}"]
        print(
            f"HTTP hop at {size} (issue 9): round trip p50 / p95 {_pair(remote, remote.round_trip_ms)} ms "
            f"with the openai backend vs {_pair(local, local.round_trip_ms)} ms in process: "
            f"+{remote.p50(remote.round_trip_ms) - local.p50(local.round_trip_ms):.2f} ms p50, "
            f"+{remote.p95(remote.round_trip_ms) - local.p95(local.round_trip_ms):.2f} ms p95 "
            f"(backend time p50 {remote.p50(remote.model_ms):.2f} ms)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--depth", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--openai-url", help=argparse.SUPPRESS)
    parser.add_argument("--camera", nargs=2, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--openai-double", type=float, metavar="LIFETIME_S", help=argparse.SUPPRESS)
    parser.add_argument("--calls", type=int, default=200, help="counted calls per case")
    parser.add_argument("--stream-seconds", type=float, default=10.0, help="how long node CPU is sampled")
    parser.add_argument("--no-profile", action="store_true", help="leave Fast DDS at its defaults")
    parser.add_argument("--eight-points", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--target-frame", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--cases", nargs="*", help="node rows to run, by a part of their label (default: all)"
    )
    parser.add_argument(
        "--answer-path-only", action="store_true", help="only time the answer path in process"
    )
    args = parser.parse_args()
    if args.serve:
        serve(args.depth, args.openai_url, args.eight_points, args.target_frame)
        return
    if args.camera:
        camera(*args.camera, args.depth)
        return
    if args.openai_double:
        openai_double(args.openai_double)
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
        f"node overhead: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start, "
        f"{args.calls} calls per case after {WARM_UP_CALLS} warm-up calls, camera at {CAMERA_HZ:.0f} Hz "
        f"in its own process,\nROS_DOMAIN_ID {env['ROS_DOMAIN_ID']} on localhost, Fast DDS profile: "
        f"{env.get('FASTDDS_DEFAULT_PROFILES_FILE', 'none')}"
    )
    answer_path()
    if args.answer_path_only:
        return
    chosen = [case for case in CASES if not args.cases or any(part in case.label for part in args.cases)]
    results = {case: measure(case, args.calls, args.stream_seconds, env) for case in chosen}
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    report(results)


if __name__ == "__main__":
    main()
