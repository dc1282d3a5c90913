"""Does deactivate give the model's memory back? Prints figures, asserts nothing.

    $MOLMO_ROS_VENV/bin/python bench/deactivate_memory.py                 # CPU, 1 LLM layer (3.5 GiB fp32)
    $MOLMO_ROS_VENV/bin/python bench/deactivate_memory.py --device cuda   # on a GPU: nvidia-smi figures too

It writes a random MolmoE checkpoint with the released model's widths (config and tensor shapes from
real_config.json, vision encoder and embeddings in full) but only --llm-layers of its 16 LLM layers, so
the weights are a few GB: big enough to see, small enough for a laptop. The tokenizer files come from the
tiny reference model (same vocabulary). Then it starts the real pointer node program in its own process
with autostart false and drives it through configure, activate, deactivate, activate, deactivate (more
pairs with --cycles) and cleanup with the lifecycle_msgs ChangeState service over DDS (this machine
only, a random domain). Unless --no-request, each activation also answers one Point request about a
small image, so the engine's per-frame caches exist when it is freed.

After each transition it reads the node process's /proc/PID/status: VmRSS is its resident memory,
RssAnon the part the heap holds, RssFile the part mapped from files (shared libraries, and the
memory-mapped `.bin` shards: in float32 on CPU the loaded tensors keep using those pages where no
conversion was needed, so much of the model counts as file-backed). On CUDA it adds the GPU memory
nvidia-smi reports for the node process (and for the whole GPU, which is all nvidia-smi shows when the
process lives in another PID namespace); the CUDA context itself stays until the process ends.
The checkpoint and the weights cache are deleted at the end, also after an error or Ctrl-C.
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench.load import default_reference_dir, write_checkpoint  # noqa: E402

MIB = 2**20
KIB_PER_MIB = 1024
SHARD_BYTES = 2 * 10**9
LLM_LAYERS = 1
# The reference tiny model's files other than its config and weights: tokenizer and preprocessor settings.
FILES_NOT_COPIED = ("config.json", "model.safetensors")
STATUS_FIELDS = ("VmRSS", "RssAnon", "RssFile")
SETTLE_S = 1.0  # after a transition, before reading memory: the node logs and its workers end
TRANSITION_TIMEOUT_S = 600.0  # activate loads the weights: minutes on a slow disk
REQUEST_TIMEOUT_S = 600.0  # the first CPU answer with full-width vision encoder
REQUEST_IMAGE_SIDE = 224  # small, so the CPU answer takes seconds
REQUEST_MAX_NEW_TOKENS = 4
NODE_NAME = "/molmo/pointer"  # the lifecycle services are under the node's name
POINT_SERVICE = "/molmo/point"
DOMAIN_IDS = (1, 101)  # ROS_DOMAIN_ID range the tests use too
TEXT_COLUMNS = 3  # after, ok, state
CYCLES = 2  # activate + deactivate pairs


@dataclass(frozen=True)
class Reading:
    step: str
    ok: bool
    state: str  # the node's lifecycle state afterwards, as get_state reports it
    seconds: float
    status_kib: dict[str, int]
    gpu_process_mib: int | None
    gpu_total_mib: int | None


def checkpoint_shapes(reference_dir: Path, llm_layers: int) -> tuple[dict, dict[str, tuple[int, ...]]]:
    """The released config with fewer LLM layers, and the reference tensor shapes of that model."""
    from molmo_ros.backends.molmoe.config import MolmoConfig
    from molmo_ros.backends.molmoe.key_mapping import expected_reference_shapes

    config = json.loads((reference_dir / "real_config.json").read_text())
    config["n_layers"] = llm_layers
    return config, expected_reference_shapes(MolmoConfig.from_dict(config))


def copy_tokenizer_files(reference_dir: Path, checkpoint_dir: Path) -> None:
    for file in (reference_dir / "tiny").iterdir():
        if file.is_file() and file.name not in FILES_NOT_COPIED:
            shutil.copy(file, checkpoint_dir / file.name)


def status_kib(pid: int) -> dict[str, int]:
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name in STATUS_FIELDS:
                values[name] = int(rest.split()[0])
    return values


def nvidia_smi(query: str, kind: str) -> list[list[str]]:
    """Rows of `nvidia-smi --query-<kind>=<query>`; empty when nvidia-smi is missing or fails."""
    try:
        completed = subprocess.run(
            ["nvidia-smi", f"--query-{kind}={query}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    if completed.returncode != 0:
        return []
    return [
        [cell.strip() for cell in line.split(",")] for line in completed.stdout.splitlines() if line.strip()
    ]


def gpu_memory_mib(pid: int) -> tuple[int | None, int | None]:
    """(MiB nvidia-smi lists for this process, MiB used on all GPUs); None where it has no figure."""
    process = None
    for row in nvidia_smi("pid,used_memory", "compute-apps"):
        if len(row) == 2 and row[0] == str(pid) and row[1].isdigit():
            process = (process or 0) + int(row[1])
    used = [int(row[0]) for row in nvidia_smi("memory.used", "gpu") if row and row[0].isdigit()]
    return process, (sum(used) if used else None)


def is_cuda(device: str) -> bool:
    return device.startswith("cuda")


def node_command(checkpoint_dir: Path, cache_dir: Path, device: str) -> list[str]:
    parameters = {
        "autostart": "false",
        "engine.backend": "molmoe",
        "engine.model": str(checkpoint_dir),
        "engine.device": device,
        "engine.cache_dir": str(cache_dir),
        "engine.max_new_tokens": str(REQUEST_MAX_NEW_TOKENS),
    }
    command = [sys.executable, "-m", "molmo_ros.nodes.pointer", "--ros-args"]
    for name, value in parameters.items():
        command += ["-p", f"{name}:={value}"]
    return command


class LifecycleDriver:
    """A client node that changes the pointer node's lifecycle state and sends Point requests over DDS."""

    def __init__(self) -> None:
        import rclpy
        from lifecycle_msgs.srv import ChangeState, GetState

        from molmo_ros.srv import Point

        rclpy.init()
        self._rclpy = rclpy
        self.node = rclpy.create_node("deactivate_memory_bench")
        self.change = self.node.create_client(ChangeState, f"{NODE_NAME}/change_state")
        self.get = self.node.create_client(GetState, f"{NODE_NAME}/get_state")
        self.point = self.node.create_client(Point, POINT_SERVICE)

    def call(self, client, request, timeout: float):  # noqa: ANN001, ANN201 (any rclpy client and request)
        if not client.wait_for_service(timeout_sec=timeout):
            raise SystemExit(f"{client.srv_name} did not appear within {timeout:.0f} s")
        future = client.call_async(request)
        self._rclpy.spin_until_future_complete(self.node, future, timeout_sec=timeout)
        if not future.done():
            raise SystemExit(f"{client.srv_name} did not answer within {timeout:.0f} s")
        return future.result()

    def transition(self, label: str) -> bool:
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState

        transition_id = getattr(Transition, f"TRANSITION_{label.upper()}")
        request = ChangeState.Request(transition=Transition(id=transition_id))
        return self.call(self.change, request, TRANSITION_TIMEOUT_S).success

    def state(self) -> str:
        from lifecycle_msgs.srv import GetState

        return self.call(self.get, GetState.Request(), TRANSITION_TIMEOUT_S).current_state.label

    def point_once(self) -> str:
        import numpy as np

        from molmo_ros.image_conversion import rgb_to_raw
        from molmo_ros.srv import Point

        image = np.random.default_rng(0).integers(
            0, 256, (REQUEST_IMAGE_SIDE, REQUEST_IMAGE_SIDE, 3), np.uint8
        )
        request = Point.Request(query="the red mug")
        request.image.height, request.image.width = image.shape[:2]
        request.image.encoding = "rgb8"
        request.image.data, request.image.step = rgb_to_raw(image, "rgb8")
        response = self.call(self.point, request, REQUEST_TIMEOUT_S)
        return "answered" if response.success else f"failed: {response.message}"

    def close(self) -> None:
        self.node.destroy_node()
        self._rclpy.shutdown()


def measure(
    driver: LifecycleDriver, node_pid: int, step: str, ok: bool, seconds: float, gpu: bool
) -> Reading:
    time.sleep(SETTLE_S)
    process_mib, total_mib = gpu_memory_mib(node_pid) if gpu else (None, None)
    return Reading(step, ok, driver.state(), seconds, status_kib(node_pid), process_mib, total_mib)


def print_table(readings: list[Reading], gpu: bool) -> None:
    """Text columns left-aligned, figures right-aligned; memory in MiB."""
    titles = ["after", "ok", "state", "took s", "VmRSS MiB", "RssAnon MiB", "RssFile MiB"]
    if gpu:
        titles += ["GPU proc MiB", "GPU used MiB"]
    rows = []
    for reading in readings:
        row = [reading.step, "yes" if reading.ok else "NO", reading.state, f"{reading.seconds:.1f}"]
        row += [f"{reading.status_kib.get(field, 0) / KIB_PER_MIB:.0f}" for field in STATUS_FIELDS]
        if gpu:
            row += [
                "-" if mib is None else str(mib) for mib in (reading.gpu_process_mib, reading.gpu_total_mib)
            ]
        rows.append(row)
    widths = [max(len(cells[i]) for cells in [titles, *rows]) + 2 for i in range(len(titles))]
    for cells in [titles, *rows]:
        print(
            "".join(
                cell.ljust(width) if i < TEXT_COLUMNS else cell.rjust(width)
                for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
            )
        )


def run(
    checkpoint_dir: Path, cache_dir: Path, device: str, request: bool, cycles: int, log_file: Path
) -> list[Reading]:
    # This checkout's code, whatever the venv has installed (the generated messages come from the venv).
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    with open(log_file, "w") as log:
        node = subprocess.Popen(
            node_command(checkpoint_dir, cache_dir, device), stdout=log, stderr=log, env=env
        )
    driver = LifecycleDriver()
    gpu = is_cuda(device)
    try:
        readings = [measure(driver, node.pid, "start", True, 0.0, gpu)]
        for step in ("configure", *("activate", "deactivate") * cycles, "cleanup"):
            started = time.perf_counter()
            ok = driver.transition(step)
            seconds = time.perf_counter() - started
            if node.poll() is not None:
                raise SystemExit(
                    f"the node exited ({node.returncode}) at {step}:\n{log_file.read_text()[-4000:]}"
                )
            readings.append(measure(driver, node.pid, step, ok, seconds, gpu))
            if step == "activate" and ok and request:
                started = time.perf_counter()
                answer = driver.point_once()
                seconds = time.perf_counter() - started
                readings.append(measure(driver, node.pid, "point", answer == "answered", seconds, gpu))
                if answer != "answered":
                    print(f"the Point request {answer}")
        return readings
    finally:
        driver.close()
        node.terminate()
        try:
            node.wait(timeout=30)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reference-dir", type=Path, default=default_reference_dir())
    parser.add_argument(
        "--llm-layers", type=int, default=LLM_LAYERS, help="LLM layers of the 16 (each ~1.6 GB fp32)"
    )
    parser.add_argument("--cycles", type=int, default=CYCLES, help="activate + deactivate pairs")
    parser.add_argument("--device", default="cpu", help="engine.device for the node: cpu or cuda[:N]")
    parser.add_argument(
        "--no-request", dest="request", action="store_false", help="no Point request when active"
    )
    parser.add_argument(
        "--workdir", type=Path, help="where the temporary directory goes (default: system tmp)"
    )
    args = parser.parse_args()

    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ["ROS_DOMAIN_ID"] = str(random.randint(*DOMAIN_IDS))
    config, shapes = checkpoint_shapes(args.reference_dir, args.llm_layers)
    workdir = Path(tempfile.mkdtemp(prefix="molmo_deactivate_bench-", dir=args.workdir))
    try:
        checkpoint_dir = workdir / "checkpoint"
        started = time.perf_counter()
        written = write_checkpoint(checkpoint_dir, config, shapes, SHARD_BYTES)
        copy_tokenizer_files(args.reference_dir, checkpoint_dir)
        print(
            f"random checkpoint: real widths, {args.llm_layers} LLM layer(s), {len(shapes)} tensors, "
            f"{written / MIB:.0f} MiB fp32, written in {time.perf_counter() - started:.1f} s"
        )
        log_file = workdir / "node.log"
        readings = run(checkpoint_dir, workdir / "cache", args.device, args.request, args.cycles, log_file)
        print(
            f"node process memory after each step (engine.device {args.device}, ROS_DOMAIN_ID "
            f"{os.environ['ROS_DOMAIN_ID']}):"
        )
        print_table(readings, gpu=is_cuda(args.device))
        if not all(reading.ok for reading in readings):
            print("a step failed; the node's log:\n" + log_file.read_text()[-4000:])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        print(f"removed {workdir}")


if __name__ == "__main__":
    main()
