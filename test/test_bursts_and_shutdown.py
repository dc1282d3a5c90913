"""Every request answered: bursts and shutdown over real DDS, with the node, the camera and each client in
its own process (the node is the real program with the scripted engine double as its model)."""

import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from doubles.scripted_pointer import FIRST_FRAME
from doubles.timed_camera import LONGEST_INTERVAL

TEST_DIR = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
MODEL_SECONDS = 0.05  # each scripted call: long enough for a burst to fill the queue
FIRST_FRAME_TIMEOUT_S = 60.0  # start-up and discovery, on a loaded machine too; a bound, not a measure
# Other programs competing for the CPU, and the frame age limit under that load: thirty frame periods of a
# 30 Hz camera. Measured on a 2-core machine (already loaded by other jobs) with this test: before the fix
# (camera without the Fast DDS profile, node without gc.freeze) 4 of 4 runs got 110-208 STALE_FRAME
# answers, the answers with points having frames up to 1.0 s old; after it, 4 of 4 runs got none, the
# oldest frame 0.12-0.19 s old (bench/frames_under_load.py measures the causes one by one).
BUSY_PROCESSES_PER_CORE = 4
LOADED_MAX_FRAME_AGE_S = 1.0


def spawn(command: list[str], **kwargs: object) -> subprocess.Popen:
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


@pytest.fixture
def camera():
    """The demo camera at 30 Hz, so every request finds a fresh frame."""
    process = spawn([str(BIN / "image_folder_publisher"), "--ros-args", "-p", "rate:=30.0"])
    yield process
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=30)


@pytest.fixture
def timed_camera():
    """The same camera, which says at exit how long it went without publishing at most."""
    process = spawn(
        [sys.executable, str(TEST_DIR / "doubles" / "timed_camera.py"), "--ros-args", "-p", "rate:=30.0"]
    )
    yield process
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)


def longest_publish_interval_s(camera: subprocess.Popen) -> float:
    camera.send_signal(signal.SIGINT)
    output, _ = camera.communicate(timeout=30)
    line = next(line for line in output.splitlines() if line.startswith(LONGEST_INTERVAL))
    return float(line.removeprefix(LONGEST_INTERVAL))


@pytest.fixture
def image_viewer():
    """Another program watching the camera, as on a robot: a second subscriber to its frames."""
    process = spawn([sys.executable, str(TEST_DIR / "doubles" / "image_viewer.py")])
    yield process
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=30)


@pytest.fixture
def cpu_load():
    """Other programs competing for every core the tests may use, at the same priority as the nodes."""
    busy = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(BUSY_PROCESSES_PER_CORE * len(os.sched_getaffinity(0)))
    ]
    yield len(busy)
    for process in busy:
        process.kill()
    for process in busy:
        process.wait()


class NodeProcess:
    """The scripted pointer program, its output read on a thread so a test can wait for a line with a
    deadline and still have all of it at the end."""

    def __init__(self, command: list[str]) -> None:
        self.process = spawn(command)
        self._lines: list[str] = []
        self._ended = False
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            with self._changed:
                self._lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def wait_for(self, text: str, timeout_s: float) -> bool:
        """Whether the node printed a line containing `text` within `timeout_s`."""

        def seen() -> bool:
            return any(text in line for line in self._lines)

        with self._changed:
            self._changed.wait_for(lambda: seen() or self._ended, timeout_s)
            return seen()

    def output(self) -> str:
        """Everything the node printed, once it has ended."""
        self.process.wait(timeout=30)
        self._reader.join(timeout=30)
        with self._changed:
            return "".join(self._lines)

    def stop(self) -> tuple[int, str]:
        """SIGINT; SIGKILL if the node has not ended within 30 s, so it is never left running (its exit code
        then says so, and the caller's assertion shows its output)."""
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return self.process.returncode, self.output()


def start_node(model_seconds: float, queue_size: int, max_frame_age: float = 5.0) -> NodeProcess:
    return NodeProcess(
        [
            sys.executable,
            str(TEST_DIR / "doubles" / "scripted_pointer.py"),
            str(model_seconds),
            "--ros-args",
            "-p",
            f"queue_size:={queue_size}",
            "-p",
            f"max_frame_age:={max_frame_age}",
        ]
    )


def start_clients(
    count: int, requests: int, wait_s: float, name: str = "c", bursts: int = 1
) -> list[subprocess.Popen]:
    """Client processes, each with its own node name, as ROS expects: clients sharing a name lose answers."""
    clients = [
        spawn(
            [
                sys.executable,
                str(TEST_DIR / "doubles" / "burst_client.py"),
                str(requests),
                str(wait_s),
                f"{name}{i}",
                "keep_all",  # the client QoS the README recommends to clients that burst
                str(bursts),
            ],
            stdin=subprocess.PIPE,
        )
        for i in range(count)
    ]
    for client in clients:
        assert client.stdout.readline().strip() == "ready", "the client never found the service"
    return clients


def report_of(client: subprocess.Popen, timeout: float) -> dict:
    """The client's report, its last line. A client still running `timeout` seconds later is killed: once,
    in a clean-clone CI run, one hung in its rclpy teardown after it had reported, its server (the node)
    having just exited, and what it reported is what the tests are about. One that never reported fails
    the test."""
    try:
        output, _ = client.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        client.kill()
        output, _ = client.communicate()
    last_line = (output.strip().splitlines() or [""])[-1]
    assert last_line.startswith("{"), f"the client never reported; its output: {output!r}"
    return json.loads(last_line)


def go(clients: list[subprocess.Popen]) -> list[dict]:
    for client in clients:
        client.stdin.write("go\n")
        client.stdin.flush()
    return [report_of(client, timeout=120) for client in clients]


def wait_for_a_frame(node: NodeProcess, camera: subprocess.Popen) -> None:
    """Requests sent before the node holds a frame would be answered NO_FRAME."""
    assert node.wait_for(FIRST_FRAME, FIRST_FRAME_TIMEOUT_S), "the node never received a camera frame"
    assert camera.poll() is None, camera.communicate()[0]


@pytest.mark.parametrize("clients, requests", [(1, 100), (5, 20)], ids=["one-client", "five-processes"])
def test_a_burst_of_100_requests_is_answered_in_full(camera, clients, requests):
    node = start_node(MODEL_SECONDS, queue_size=4)
    try:
        processes = start_clients(clients, requests, wait_s=60)
        wait_for_a_frame(node, camera)
        reports = go(processes)
    finally:
        code, output = node.stop()
    total = {"sent": 0, "unanswered": 0}
    for report in reports:
        total["sent"] += report["sent"]
        total["unanswered"] += report["unanswered"]
        for name, count in report["codes"].items():
            total[name] = total.get(name, 0) + count
    taken, answered = node_counts(output)
    print(f"burst {clients}x{requests}: {total}; node took {taken} and answered {answered}")  # with -s
    assert code == 0 and "Traceback" not in output, output
    # Every request reached the node and the node answered every one (each client's probe call included),
    # and every answer reached its client.
    assert taken == answered == total["sent"] + clients, (taken, answered, total)
    assert total["unanswered"] == 0, total
    assert total.get("OK", 0) + total.get("BUSY", 0) == total["sent"], "every answer is OK or BUSY"
    assert total["OK"] >= 5, "the running request and the queue are answered with points"
    assert all("queue_size" in message for report in reports for message in report["messages"])


def node_counts(output: str) -> tuple[int, int]:
    line = next(line for line in output.splitlines() if line.startswith("point requests taken:"))
    taken, answered = (int(part.split(":")[1]) for part in line.split(","))
    return taken, answered


def test_shutdown_answers_every_waiting_and_new_request_and_exits_promptly(camera):
    node = start_node(model_seconds=2.0, queue_size=4)
    try:
        before = start_clients(1, 6, wait_s=30, name="before")
        after = start_clients(1, 5, wait_s=30, name="after")
        wait_for_a_frame(node, camera)
        before[0].stdin.write("go\n")
        before[0].stdin.flush()
        time.sleep(0.5)  # one request runs, four wait, one is busy
        signalled = time.monotonic()
        node.process.send_signal(signal.SIGTERM)
        # The node has taken the signal once it says so.
        assert node.wait_for("shutting down", 30), "the node never said it shuts down: " + node.output()
        reports = go(after) + [report_of(before[0], timeout=60)]
        node.process.wait(timeout=30)
        exit_seconds = time.monotonic() - signalled
        output = node.output()
    finally:
        if node.process.poll() is None:
            node.process.kill()
    late, early = reports
    print(f"shutdown: before the signal {early}, after it {late}, exit after {exit_seconds:.2f} s")
    # One runs and four wait (or, if the six arrive before the worker takes the first, four wait): those
    # are stopped with NOT_ACTIVE; the rest were BUSY before the signal.
    assert early["unanswered"] == 0 and set(early["codes"]) <= {"NOT_ACTIVE", "BUSY"}, early
    assert early["codes"]["NOT_ACTIVE"] >= 4, early
    assert late["unanswered"] == 0 and late["codes"] == {"NOT_ACTIVE": 5}, late
    assert all(
        "shutting down" in message
        for message in early["messages"] + late["messages"]
        if "queue" not in message
    )
    assert node.process.returncode == 0 and "Traceback" not in output and "RCLError" not in output, output
    assert exit_seconds < 5.0, "the running request is stopped, not waited for"


def test_bursts_find_fresh_frames_while_other_processes_load_every_core(cpu_load, timed_camera, image_viewer):
    """Ten bursts of 100 while busy processes compete for every core, as in issue 13, and another program
    watches the camera: no request finds the newest frame older than max_frame_age while the camera
    publishes at 30 Hz. Under this load the camera's frames were lost on their way for up to seconds
    before it loaded the shipped Fast DDS profile, and the node took no frame during a full garbage
    collection (up to 1.2 s) before it froze what it had loaded."""
    node = start_node(MODEL_SECONDS, queue_size=4, max_frame_age=LOADED_MAX_FRAME_AGE_S)
    try:
        client = start_clients(1, 100, wait_s=60, bursts=10)
        wait_for_a_frame(node, timed_camera)
        report = go(client)[0]
    finally:
        code, output = node.stop()
    assert timed_camera.poll() is None, "the camera must publish throughout: " + timed_camera.communicate()[0]
    longest_s = longest_publish_interval_s(timed_camera)
    ages = sorted(report.pop("frame_ages_s"))
    print(  # with -s: how fresh the frames were under this load
        f"{cpu_load} busy processes: {report['codes']}; frame age of the answers with points: median "
        f"{statistics.median(ages):.3f} s, max {ages[-1]:.3f} s (n={len(ages)}); the camera's longest "
        f"interval between publishes {longest_s:.3f} s"
    )
    assert code == 0 and "Traceback" not in output, output
    assert report["unanswered"] == 0, report
    # A camera that itself went half the limit without publishing (the whole machine stalled) did not
    # keep its frames coming: a stale answer then says nothing about the node.
    if "STALE_FRAME" in report["codes"] and longest_s > LOADED_MAX_FRAME_AGE_S / 2:
        pytest.skip(f"the camera process itself stalled for {longest_s:.1f} s: frames did not keep coming")
    assert "STALE_FRAME" not in report["codes"], report["messages"]
    assert set(report["codes"]) == {"OK", "BUSY"}, report
