"""Every request answered: bursts and shutdown over real DDS, with the node, the camera and each client in
its own process (the node is the real program with the scripted engine double as its model)."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TEST_DIR = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
MODEL_SECONDS = 0.05  # each scripted call: long enough for a burst to fill the queue


def spawn(command: list[str], **kwargs: object) -> subprocess.Popen:
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


@pytest.fixture
def camera():
    """The demo camera at 30 Hz, so every request finds a fresh frame."""
    process = spawn([str(BIN / "image_folder_publisher"), "--ros-args", "-p", "rate:=30.0"])
    yield process
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=30)


def start_node(model_seconds: float, queue_size: int) -> subprocess.Popen:
    return spawn(
        [
            sys.executable,
            str(TEST_DIR / "doubles" / "scripted_pointer.py"),
            str(model_seconds),
            "--ros-args",
            "-p",
            f"queue_size:={queue_size}",
            "-p",
            "max_frame_age:=5.0",
        ]
    )


def start_clients(count: int, requests: int, wait_s: float, name: str = "c") -> list[subprocess.Popen]:
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
            ],
            stdin=subprocess.PIPE,
        )
        for i in range(count)
    ]
    for client in clients:
        assert client.stdout.readline().strip() == "ready", "the client never found the service"
    return clients


def go(clients: list[subprocess.Popen]) -> list[dict]:
    for client in clients:
        client.stdin.write("go\n")
        client.stdin.flush()
    reports = []
    for client in clients:
        output, _ = client.communicate(timeout=120)
        reports.append(json.loads(output.strip().splitlines()[-1]))
    return reports


def wait_for_frames(camera: subprocess.Popen) -> None:
    time.sleep(1.0)  # discovery and the first frames
    assert camera.poll() is None, camera.communicate()[0]


def stop(node: subprocess.Popen) -> tuple[int, str]:
    node.send_signal(signal.SIGINT)
    output, _ = node.communicate(timeout=30)
    return node.returncode, output


@pytest.mark.parametrize("clients, requests", [(1, 100), (5, 20)], ids=["one-client", "five-processes"])
def test_a_burst_of_100_requests_is_answered_in_full(camera, clients, requests):
    node = start_node(MODEL_SECONDS, queue_size=4)
    try:
        processes = start_clients(clients, requests, wait_s=60)
        wait_for_frames(camera)
        reports = go(processes)
    finally:
        code, output = stop(node)
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
        wait_for_frames(camera)
        before[0].stdin.write("go\n")
        before[0].stdin.flush()
        time.sleep(0.5)  # one request runs, four wait, one is busy
        signalled = time.monotonic()
        node.send_signal(signal.SIGTERM)
        lines = []
        while not any("shutting down" in line for line in lines):  # the node has taken the signal
            lines.append(node.stdout.readline())
            assert lines[-1], "the node ended without saying it shuts down: " + "".join(lines)
        reports = go(after) + [json.loads(before[0].communicate(timeout=60)[0].strip().splitlines()[-1])]
        output = "".join(lines) + node.communicate(timeout=30)[0]
        exit_seconds = time.monotonic() - signalled
    finally:
        if node.poll() is None:
            node.kill()
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
    assert node.returncode == 0 and "Traceback" not in output and "RCLError" not in output, output
    assert exit_seconds < 5.0, "the running request is stopped, not waited for"
