"""bench/gpu_check.sh, the parts a CPU can check: arguments, the report's layout (dry run), the output
folder, and the clear stop without CUDA. Its measuring steps have never run on a GPU."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "bench" / "gpu_check.sh"
STEPS = 7  # the CUDA-only tests, then six bench/engine.py runs


def run(*args: str, **env: str) -> subprocess.CompletedProcess:
    venv = str(Path(sys.executable).parent.parent)
    environment = {**os.environ, "MOLMO_ROS_VENV": venv, **env}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env=environment, timeout=120
    )


def test_dry_run_writes_the_report_header_and_every_step(tmp_path):
    completed = run("--dry-run", str(tmp_path))
    assert completed.returncode == 0, completed.stderr
    report = (tmp_path / "gpu_check.txt").read_text()
    assert report.startswith("# molmo_ros GPU check, ") and "dry run" in report
    steps = [line for line in report.splitlines() if line.startswith("## ")]
    commands = [line for line in report.splitlines() if line.startswith("$ ")]
    assert len(steps) == len(commands) == STEPS
    assert "-k cuda" in commands[0] and "test/test_quantization.py" in commands[0]
    benches = commands[1:]
    assert all("bench/engine.py --full-random" in command for command in benches)
    assert sum("--quantization int8" in command for command in benches) == 3
    assert sum("--quantization none" in command for command in benches) == 3
    assert sum("--experts batched_mm" in command for command in benches) == 2
    assert sum("--no-cuda-graphs" in command for command in benches) == 2


def test_the_report_goes_to_OUT_when_no_folder_is_given(tmp_path):
    assert run("--dry-run", OUT=str(tmp_path)).returncode == 0
    assert (tmp_path / "gpu_check.txt").is_file()


@pytest.mark.parametrize("args", [["--fast"], ["one", "two"]], ids=["unknown-option", "two-folders"])
def test_bad_arguments_exit_2_with_the_usage(args, tmp_path):
    completed = run(*args, OUT=str(tmp_path))
    assert completed.returncode == 2 and "usage: bench/gpu_check.sh" in completed.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the stop on a machine without CUDA")
def test_without_cuda_it_stops_at_once_with_exit_3_and_says_so(tmp_path):
    completed = run(str(tmp_path))
    assert completed.returncode == 3
    assert "no CUDA GPU" in completed.stderr
    report = (tmp_path / "gpu_check.txt").read_text()
    assert "error: no CUDA GPU" in report and "## " not in report, "nothing was run"
