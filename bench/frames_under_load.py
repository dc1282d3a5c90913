"""Do frames keep reaching the node while other programs load every core? Prints figures, asserts nothing.

    $MOLMO_ROS_VENV/bin/python bench/frames_under_load.py [--runs 3] [--busy-per-core 4] [--bursts 10]

Each run starts, in their own processes: busy loops (--busy-per-core per core, at the nodes' priority),
the bundled camera at 30 Hz (640x480 rgb8 with depth and CameraInfo, as the tests use it), a viewer that
also subscribes to the camera (a second reader, as rviz or a recorder would be), the pointer node with
the scripted engine double of the tests (0.05 s per call, and as many Python objects as the node holds
with a model loaded), and a client that sends --bursts bursts of 100 Point calls, each when the last is
answered. max_frame_age is the default, 2 s.

Cases (each --runs times): the camera with Fast DDS's defaults (512 KB shared-memory segment) or with the
shipped profile (what image_folder_publisher now loads itself); the node with what it loaded frozen at
activate (as shipped) or left to the garbage collector (as before: the bench's node unfreezes it).

Last, in this process, the CPU time of one full garbage collection with a MolmoE model loaded (--model,
default the tiny reference model), with and without the freeze: what the node stalls for, stretched by
the CPU share it gets under load.

Per case it prints the STALE_FRAME answers, the age of the frames of the answers with points, the share
of the camera's frames the node and the viewer took while the bursts ran, the longest time the node and
the viewer went without a frame, the node's longest full garbage collection after activate (wall time,
and CPU time in brackets), and the camera's longest interval between publishes (a stalled camera, not a
lost frame). DDS stays on this machine in a random domain.
"""

import argparse
import gc
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench.load import default_reference_dir  # noqa: E402

TEST_DIR = REPO_ROOT / "test"
CAMERA_HZ = 30.0
MODEL_SECONDS = 0.05  # as in test_bursts_and_shutdown.py
REQUESTS_PER_BURST = 100
CHILD_EXIT_TIMEOUT_S = 30.0
FIRST_FRAME_TIMEOUT_S = 60.0
# A participant profile that changes nothing: the camera keeps Fast DDS's defaults, without the XML
# parser's error line that an empty FASTDDS_DEFAULT_PROFILES_FILE prints.
FAST_DDS_DEFAULTS = """<?xml version="1.0" encoding="UTF-8"?>
<dds xmlns="http://www.eprosima.com"><profiles>
  <participant profile_name="fast_dds_defaults" is_default_profile="true"><rtps/></participant>
</profiles></dds>
"""


@dataclass(frozen=True)
class Case:
    label: str
    camera_profile: bool
    frozen: bool


CASES = (
    Case("camera: Fast DDS defaults; node: collector walks the model (before)", False, False),
    Case("camera: Fast DDS defaults; node: frozen", False, True),
    Case("camera: shipped profile;   node: collector walks the model", True, False),
    Case("camera: shipped profile;   node: frozen (after)", True, True),
)


# --- child processes --------------------------------------------------------------------------------------


def _dump_at_exit(log: str, events: list) -> None:
    Path(log).write_text(json.dumps(events))


def node_role(log: str, frozen: bool) -> int:
    """The pointer node program with the scripted engine double; logs each frame taken (arrival and stamp,
    ns) and each full collection after activate (start, end, CPU ns)."""
    sys.path.insert(0, str(TEST_DIR))
    from doubles.scripted_engine import ScriptedEngine, fixed_points_answer
    from doubles.scripted_pointer import MODEL_OBJECTS, CountingPointerNode

    from molmo_ros.nodes.runner import CONFIGURATION_ERRORS, run_node

    events: list = []
    started: dict[str, int] = {}

    def on_collection(phase: str, info: dict) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            started.update(wall=time.time_ns(), cpu=time.thread_time_ns())
        elif started:
            events.append(["gc", started["wall"], time.time_ns(), time.thread_time_ns() - started["cpu"]])

    class LoggingNode(CountingPointerNode):
        def on_configure(self, state):
            result = super().on_configure(state)
            if self.pointing is not None:
                put_frame = self.pointing.put_frame

                def logged(frame) -> None:
                    events.append(["frame", time.time_ns(), frame.stamp_ns])
                    put_frame(frame)

                self.pointing.put_frame = logged
            return result

        def on_activate(self, state):
            result = super().on_activate(state)
            if not frozen:
                gc.unfreeze()  # as before: every full collection walks all that was loaded
            gc.callbacks.append(on_collection)
            return result

        def destroy_node(self) -> None:
            _dump_at_exit(log, events)
            super().destroy_node()

    engine = ScriptedEngine(lambda prompt, image: fixed_points_answer([(50.0, 50.0)]), delay_s=MODEL_SECONDS)

    def load_model(settings: object) -> ScriptedEngine:
        engine.weights = [[index] for index in range(MODEL_OBJECTS)]  # built at activate, as a model loads
        return engine

    return run_node("pointer", lambda: LoggingNode(backend_factory=load_model), CONFIGURATION_ERRORS, [])


def camera_role(log: str) -> int:
    """The bundled camera, as its main runs it, logging when each publish started (ns)."""
    from molmo_ros.nodes import image_folder_publisher
    from molmo_ros.nodes.dds_profile import large_image_profile
    from molmo_ros.nodes.runner import CONFIGURATION_ERRORS, run_node

    events: list = []

    class LoggingCamera(image_folder_publisher.ImageFolderPublisher):
        def _publish(self) -> None:
            events.append(time.time_ns())
            super()._publish()

        def destroy_node(self) -> None:
            _dump_at_exit(log, events)
            super().destroy_node()

    args = ["--ros-args", "-p", f"rate:={CAMERA_HZ}"]
    with large_image_profile():
        return run_node("image_folder_publisher", LoggingCamera, CONFIGURATION_ERRORS, args)


def viewer_role(log: str) -> int:
    """A second subscriber to the camera (sensor-data QoS), logging each frame's arrival (ns)."""
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from rclpy.signals import SignalHandlerOptions
    from sensor_msgs.msg import Image

    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    stop: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: stop.append(signum))
    node = rclpy.create_node("viewer")
    events: list = []
    node.create_subscription(
        Image, "/camera/image_raw", lambda message: events.append(time.time_ns()), qos_profile_sensor_data
    )
    while not stop:
        rclpy.spin_once(node, timeout_sec=0.1)
    _dump_at_exit(log, events)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


# --- one run ------------------------------------------------------------------------------------------------


@dataclass
class Run:
    codes: dict[str, int]
    ages_s: list[float]
    node_share: float
    viewer_share: float
    node_gap_s: float
    viewer_gap_s: float
    collections: list[tuple[float, float]]  # (wall s, CPU s) of full collections after activate
    camera_gap_s: float
    load: float


def longest_gap_s(times_ns: list[int], start_ns: int, end_ns: int) -> float:
    """Longest time within [start, end] without an event, counting from the last event before start."""
    before = [t for t in times_ns if t < start_ns]
    points = before[-1:] + [t for t in times_ns if start_ns <= t <= end_ns] + [end_ns]
    return max(((b - a) / 1e9 for a, b in zip(points, points[1:], strict=False)), default=0.0)


def measure(case: Case, busy: int, bursts: int, env: dict[str, str], workdir: Path) -> Run:
    """One run of `case`: starts every process, sends the bursts, stops everything, reads the logs."""
    load = os.getloadavg()[0]
    logs = {role: str(workdir / f"{role}.json") for role in ("node", "camera", "viewer")}
    camera_env = dict(env)
    if not case.camera_profile:
        camera_env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(workdir / "fast_dds_defaults.xml")

    def child(args: list[str], child_env: dict[str, str] = env, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(args, env=child_env, stdout=subprocess.PIPE, text=True, **kwargs)

    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    processes = []
    try:
        me = [sys.executable, __file__, "--role"]
        camera = child([*me, "camera", logs["camera"]], camera_env)
        viewer = child([*me, "viewer", logs["viewer"]])
        node = child([*me, "node", logs["node"], str(int(case.frozen))])
        client_args = [str(REQUESTS_PER_BURST), "60", "b", "keep_all", str(bursts)]
        client_program = [sys.executable, str(TEST_DIR / "doubles" / "burst_client.py")]
        client = child([*client_program, *client_args], stdin=subprocess.PIPE)
        processes = [client, node, viewer, camera]
        if client.stdout.readline().strip() != "ready":
            raise RuntimeError("the client never found the node's service")
        _wait_for_first_frame(node)
        start_ns = time.time_ns()
        client.stdin.write("go\n")
        client.stdin.flush()
        report = json.loads(client.communicate(timeout=600)[0].strip().splitlines()[-1])
        end_ns = time.time_ns()
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
                process.communicate(timeout=CHILD_EXIT_TIMEOUT_S)
        for hog in hogs:
            hog.kill()
            hog.wait()
    node_events = json.loads(Path(logs["node"]).read_text())
    frames = [event[1] for event in node_events if event[0] == "frame"]
    viewed = json.loads(Path(logs["viewer"]).read_text())
    published = json.loads(Path(logs["camera"]).read_text())
    sent = sum(start_ns <= t <= end_ns for t in published) or 1
    return Run(
        codes=report["codes"],
        ages_s=report["frame_ages_s"],
        node_share=sum(start_ns <= t <= end_ns for t in frames) / sent,
        viewer_share=sum(start_ns <= t <= end_ns for t in viewed) / sent,
        node_gap_s=longest_gap_s(frames, start_ns, end_ns),
        viewer_gap_s=longest_gap_s(viewed, start_ns, end_ns),
        collections=[((e[2] - e[1]) / 1e9, e[3] / 1e9) for e in node_events if e[0] == "gc"],
        camera_gap_s=longest_gap_s(published, published[0], published[-1]),
        load=load,
    )


def _wait_for_first_frame(node: subprocess.Popen) -> None:
    sys.path.insert(0, str(TEST_DIR))
    from doubles.scripted_pointer import FIRST_FRAME

    deadline = time.monotonic() + FIRST_FRAME_TIMEOUT_S
    while time.monotonic() < deadline:
        line = node.stdout.readline()
        if not line:
            break
        if FIRST_FRAME in line:
            return
    raise RuntimeError("the node never received a camera frame")


def collection_cost(model: Path) -> str:
    """CPU time of one full garbage collection in a process that holds `model` loaded on the CPU (after one
    answer, so its caches exist): left to the collector, and frozen as the node now does at activate."""
    import numpy as np

    from molmo_ros.backends.factory import load_backend
    from molmo_ros.backends.settings import BackendSettings

    backend = load_backend(BackendSettings(model=str(model), device="cpu", max_new_tokens=8))
    backend.generate([np.zeros((480, 640, 3), np.uint8)], ["Point to the mug"])
    objects = len(gc.get_objects())

    def collection_ms() -> float:
        started = time.thread_time()
        gc.collect()
        return (time.thread_time() - started) * 1000

    walked = statistics.median(collection_ms() for _ in range(3))
    gc.freeze()
    frozen = statistics.median(collection_ms() for _ in range(3))
    gc.unfreeze()
    backend.close()
    return (
        f"one full collection with {model.name} loaded ({objects} tracked objects): {walked:.0f} ms CPU "
        f"left to the collector, {frozen:.1f} ms frozen (median of 3)"
    )


# --- report -------------------------------------------------------------------------------------------------


@dataclass
class Totals:
    runs: list[Run] = field(default_factory=list)

    def line(self, label: str) -> str:
        runs = self.runs
        stale = sum(run.codes.get("STALE_FRAME", 0) for run in runs)
        sent = sum(sum(run.codes.values()) for run in runs)
        ages = sorted(age for run in runs for age in run.ages_s)
        worst_gc = max((c for run in runs for c in run.collections), default=(0.0, 0.0))

        def pct(values: list[float], q: float) -> float:
            return values[min(len(values) - 1, round(q * (len(values) - 1)))] if values else float("nan")

        def span(values: list[float]) -> str:
            return f"{min(values):.2f}-{max(values):.2f}"

        return (
            f"{label}\n"
            f"  STALE_FRAME {stale} of {sent} answers (in {sum('STALE_FRAME' in r.codes for r in runs)} of "
            f"{len(runs)} runs); frame age of answers with points p50 {pct(ages, 0.5) * 1000:.0f} ms, "
            f"p95 {pct(ages, 0.95) * 1000:.0f} ms, max {pct(ages, 1.0) * 1000:.0f} ms (n={len(ages)})\n"
            f"  frames taken per camera frame: node {span([r.node_share for r in runs])}, viewer "
            f"{span([r.viewer_share for r in runs])}; longest without a frame: node "
            f"{span([r.node_gap_s for r in runs])} s, viewer {span([r.viewer_gap_s for r in runs])} s\n"
            f"  node's longest full collection after activate {worst_gc[0] * 1000:.0f} ms "
            f"({worst_gc[1] * 1000:.0f} ms CPU); camera's longest interval between publishes "
            f"{span([r.camera_gap_s for r in runs])} s; load average at start {span([r.load for r in runs])}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per case (default %(default)s)")
    parser.add_argument("--busy-per-core", type=int, default=4, help="busy processes per core (%(default)s)")
    parser.add_argument("--bursts", type=int, default=10, help="bursts of 100 calls per run (%(default)s)")
    parser.add_argument(
        "--model",
        type=Path,
        default=default_reference_dir() / "tiny",
        help="MolmoE checkpoint for the collection cost (default: the tiny reference model)",
    )
    parser.add_argument("--role", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        role, log, *rest = args.role
        roles = {"node": lambda: node_role(log, rest == ["1"]), "camera": lambda: camera_role(log)}
        sys.exit(roles.get(role, lambda: viewer_role(log))())
    cores = len(os.sched_getaffinity(0))
    busy = args.busy_per_core * cores
    domain = str(random.randint(1, 101))
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_DOMAIN_ID=domain)
    print(
        f"{cores} cores, {busy} busy processes, load average {os.getloadavg()[0]:.1f} before; "
        f"{args.runs} runs per case of {args.bursts} bursts of {REQUESTS_PER_BURST}; ROS_DOMAIN_ID "
        f"{env['ROS_DOMAIN_ID']}",
        flush=True,
    )
    totals = {case: Totals() for case in CASES}
    with tempfile.TemporaryDirectory() as directory:
        workdir = Path(directory)
        (workdir / "fast_dds_defaults.xml").write_text(FAST_DDS_DEFAULTS)
        for _ in range(args.runs):  # cases interleaved, so a change in the machine's load hits them alike
            for case in CASES:
                totals[case].runs.append(measure(case, busy, args.bursts, env, workdir))
    for case in CASES:
        print(totals[case].line(case.label), flush=True)
    print(collection_cost(args.model), flush=True)


if __name__ == "__main__":
    main()
