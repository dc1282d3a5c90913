"""Proof of life: the real node, as its own process through its console entry point, with the tiny MolmoE.

No GPU and no real weights: the tiny seeded-random checkpoint runs on the CPU, so its answer is
random text and zero points is the expected result. What is checked is the whole path: params
file, engine loading, DDS frame in, service answer with the model's raw text, result topic.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rclpy
from ros_helpers import Spinner, TestClient, assert_the_model_answers, point_once_ready, wait_until

REPO_ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def start(command: list[str], **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        command, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def exit_of(process: subprocess.Popen, timeout: float) -> tuple[int, str]:
    """Waits for a process that must end by itself."""
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output


def interrupt(process: subprocess.Popen) -> tuple[int, str]:
    """Ctrl-C, as a user stops the node."""
    process.send_signal(signal.SIGINT)
    return exit_of(process, 30)


@pytest.fixture
def ros():
    rclpy.init()
    yield
    rclpy.try_shutdown()


@pytest.mark.parametrize("quantization", ["none", "int8"])
def test_console_entry_point_with_params_file_and_tiny_model(ros, tiny_model_dir, quantization, tmp_path):
    node = start(
        [
            str(BIN / "pointer"),
            "--ros-args",
            "--params-file",
            str(REPO_ROOT / "config" / "pointer.yaml"),
            "-p",
            f"engine.model:={tiny_model_dir}",
            "-p",
            "engine.device:=cpu",
            "-p",
            "engine.max_new_tokens:=8",
            "-p",
            f"engine.quantization:={quantization}",
            "-p",
            f"engine.cache_dir:={tmp_path}",
        ]
    )
    user = TestClient()
    spinner = Spinner(user)
    try:
        rgb = np.random.default_rng(3).integers(0, 255, (96, 128, 3), dtype=np.uint8)
        response, sent = point_once_ready(user, rgb)
        assert response.success, response.message
        result = response.result
        assert result.raw_text.strip(), "the model's raw text comes back"
        assert result.prompt == "Point to the red mug"
        assert result.header.stamp in [frame.header.stamp for frame in sent]
        assert result.header.frame_id == "camera_optical_frame"
        assert (result.image_width, result.image_height) == (128, 96)
        assert result.model_seconds > 0
        assert wait_until(lambda: any(r.raw_text == result.raw_text for r in user.received()))
    finally:
        spinner.close()
        user.destroy_node()
        code, output = interrupt(node)
    assert code == 0, output
    assert "active: molmoe backend ready" in output
    int8_entries = [path for path in tmp_path.iterdir() if "-int8-" in path.name]
    assert len(int8_entries) == (quantization == "int8"), "int8 weights load through their own cache entry"


def test_console_entry_point_with_the_tiny_molmo2_backend(ros, tiny_molmo2_dir):
    """Proof of life of the molmo2 backend in the real node program: the tiny random Molmo2 (hub layout)."""
    node = start(
        [
            str(BIN / "pointer"),
            "--ros-args",
            "-p",
            "engine.backend:=molmo2",
            "-p",
            f"engine.model:={tiny_molmo2_dir}",
            "-p",
            "engine.device:=cpu",
            "-p",
            "engine.max_new_tokens:=8",
        ]
    )
    user = TestClient()
    spinner = Spinner(user)
    try:
        rgb = np.random.default_rng(5).integers(0, 255, (60, 80, 3), dtype=np.uint8)
        assert_the_model_answers(user, rgb)
    finally:
        spinner.close()
        user.destroy_node()
        code, output = interrupt(node)
    assert code == 0, output
    assert "active: molmo2 backend ready" in output


def test_missing_weights_stop_the_node_with_what_to_set(tmp_path):
    missing = tmp_path / "no-such-checkpoint"
    code, output = exit_of(start([str(BIN / "pointer"), "--ros-args", "-p", f"engine.model:={missing}"]), 60)
    assert code == 1
    assert str(missing) in output and "engine.model" in output and "MOLMO_MODEL" in output
    assert "Traceback" not in output

    offline = start([str(BIN / "pointer")], HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), MOLMO_MODEL="")
    code, output = exit_of(offline, 60)
    assert code == 1 and "allenai/MolmoE-1B-0924" in output and "offline" in output.lower()


def test_demo_runs_the_whole_product_with_the_tiny_model(tiny_model_dir):
    code, output = exit_of(
        start(
            [str(BIN / "molmo-demo"), "--model", str(tiny_model_dir), "--device", "cpu", "--query", "red mug"]
        ),
        180,
    )
    assert code == 0, output
    assert "model answer:" in output and "Point to the red mug" in output
    assert "frame: camera_optical_frame" in output


def test_demo_without_weights_says_so_and_shows_no_points(tmp_path):
    code, output = exit_of(
        start(
            [str(BIN / "molmo-demo"), "--timeout", "120"],
            HF_HUB_OFFLINE="1",
            HF_HOME=str(tmp_path / "hf"),
            MOLMO_MODEL="",
        ),
        180,
    )
    assert code == 3, output
    assert "allenai/MolmoE-1B-0924" in output and "MOLMO_MODEL" in output
    assert "(pixels)" not in output


@pytest.mark.parametrize(
    "parameter, fragment",
    [
        ("max_frame_age:=-1.0", "max_frame_age"),
        ("queue_size:=0", "queue_size"),
        ("cameras.camera.topic:=/bad topic", "topic"),
        ("qos:=fast", "qos"),
    ],
)
def test_bad_parameters_stop_the_node_before_the_model_loads(parameter, fragment):
    code, output = exit_of(start([str(BIN / "pointer"), "--ros-args", "-p", parameter]), 60)
    assert code == 1 and "cannot start" in output and fragment in output, output
    assert "Traceback" not in output and "loading" not in output, "checked before any model load"


def test_int8_with_the_openai_backend_stops_the_node_saying_the_server_quantizes():
    command = [
        str(BIN / "pointer"),
        "--ros-args",
        "-p",
        "engine.backend:=openai",
        "-p",
        "engine.quantization:=int8",
    ]
    code, output = exit_of(start(command), 60)
    assert code == 1 and "cannot start" in output and "quantizes them itself" in output, output
    assert "Traceback" not in output
