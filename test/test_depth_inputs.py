"""`molmo-point`'s depth and camera files: readers, their errors, and usage errors before any model loads."""

import json
import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import PIL.Image
import pytest

from molmo_ros.cli import point as cli
from molmo_ros.cli.depth_options import describe_lifted, lifted_to_json, parse_intrinsics
from molmo_ros.depth.errors import DepthError
from molmo_ros.depth.files import read_camera_info, read_depth_file
from molmo_ros.depth.lifting import LiftedPoint
from molmo_ros.depth.settings import DepthSettings
from molmo_ros.settings_fields import SettingRef

WIDTH, HEIGHT = 64, 48

# What ROS's camera_calibration writes (ost.yaml), for a 64x48 image
CAMERA_YAML = """\
image_width: 64
image_height: 48
camera_name: narrow_stereo
camera_matrix:
  rows: 3
  cols: 3
  data: [50.0, 0.0, 31.5, 0.0, 52.0, 23.5, 0.0, 0.0, 1.0]
distortion_model: plumb_bob
distortion_coefficients:
  rows: 1
  cols: 5
  data: [0.1, -0.05, 0.001, 0.001, 0.0]
rectification_matrix:
  rows: 3
  cols: 3
  data: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
projection_matrix:
  rows: 3
  cols: 4
  data: [49.0, 0.0, 31.0, 0.0, 0.0, 51.0, 23.0, 0.0, 0.0, 0.0, 1.0, 0.0]
"""


@pytest.fixture
def png(tmp_path) -> Path:
    path = tmp_path / "colour.png"
    PIL.Image.fromarray(np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)).save(path)
    return path


def write_png(path: Path, values: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), values)
    return path


# --- depth files ---


def test_png_depth_is_millimetres_with_zero_as_no_depth(tmp_path):
    millimetres = np.array([[0, 1500], [65535, 1]], dtype=np.uint16)
    depth = read_depth_file(write_png(tmp_path / "depth.png", millimetres))
    assert depth.dtype == np.float32
    np.testing.assert_allclose(depth, [[np.nan, 1.5], [65.535, 0.001]], rtol=1e-6)


def test_npy_depth_is_metres_with_zero_and_non_finite_as_no_depth(tmp_path):
    path = tmp_path / "depth.npy"
    np.save(path, np.array([[0.0, 1.25], [np.inf, np.nan]], dtype=np.float64))
    np.testing.assert_array_equal(
        read_depth_file(path), np.array([[np.nan, 1.25], [np.nan, np.nan]], np.float32)
    )


@pytest.mark.parametrize(
    "name, content, fragment",
    [
        ("depth.png", np.zeros((4, 4), np.uint8), "must be single-channel 16-bit"),
        ("depth.png", np.zeros((4, 4, 3), np.uint16), "holds 3 channel(s) of uint16"),
        ("depth.npy", np.zeros((4, 4), np.uint16), "must be a 2D float array of metres"),
        ("depth.npy", np.zeros((4, 4, 1), np.float32), "shape (4, 4, 1)"),
        ("depth.png", b"not a png", "cannot read"),
        ("depth.npy", b"not an array", "cannot read"),
        ("depth.tiff", b"", "must be a 16-bit .png (millimetres) or a .npy (metres)"),
    ],
    ids=["8-bit-png", "colour-png", "integer-npy", "3d-npy", "corrupt-png", "corrupt-npy", "tiff"],
)
def test_unusable_depth_files_say_what_they_must_be(tmp_path, name, content, fragment):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif name.endswith(".png"):
        write_png(path, content)
    else:
        np.save(path, content)
    with pytest.raises(DepthError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        read_depth_file(path)


def test_missing_depth_file_is_named(tmp_path):
    with pytest.raises(DepthError, match="depth file not found: .*nowhere.png"):
        read_depth_file(tmp_path / "nowhere.png")


# --- camera ---


def test_intrinsics_make_a_pinhole_camera_for_the_image():
    camera = parse_intrinsics("50, 52,31.5,23.5", WIDTH, HEIGHT)
    assert (camera.fx, camera.fy, camera.cx, camera.cy) == (50.0, 52.0, 31.5, 23.5)
    assert (camera.width, camera.height) == (WIDTH, HEIGHT) and camera.distortion_model == ""


@pytest.mark.parametrize("text", ["50,52,31.5", "50,52,31.5,x", "50,52,31.5,nan", "", "0,52,31.5,23.5"])
def test_bad_intrinsics_are_refused(text):
    with pytest.raises(DepthError, match="--intrinsics"):
        parse_intrinsics(text, WIDTH, HEIGHT)


def test_camera_calibration_yaml_gives_its_matrices(tmp_path):
    path = tmp_path / "camera.yaml"
    path.write_text(CAMERA_YAML)
    camera = read_camera_info(path)
    assert (camera.width, camera.height, camera.distortion_model) == (WIDTH, HEIGHT, "plumb_bob")
    assert camera.k[1, 1] == 52.0 and camera.d.tolist() == [0.1, -0.05, 0.001, 0.001, 0.0]
    assert (camera.fx, camera.fy, camera.cx, camera.cy) == (49.0, 51.0, 31.0, 23.0)  # from P


@pytest.mark.parametrize(
    "old, new, fragment",
    [
        ("image_width: 64\n", "", "has no image_width"),
        ("image_height: 48", "image_height: 48.5", "image_height must be a whole number of pixels"),
        ("projection_matrix:", "projection:", "has no projection_matrix"),
        (
            "[50.0, 0.0, 31.5, 0.0, 52.0, 23.5, 0.0, 0.0, 1.0]",
            "[0, 0, 0, 0, 0, 0, 0, 0, 0]",
            "K is all zeros",
        ),
        ("[50.0, 0.0, 31.5,", "[fifty, 0.0, 31.5,", "could not convert"),
        ("distortion_model: plumb_bob", "distortion_model: pinhole_plus", "'pinhole_plus' is not supported"),
        (
            "  data: [0.1, -0.05",
            "  values: [0.1, -0.05",
            "distortion_coefficients must be a mapping with a data",
        ),
        (CAMERA_YAML, "- just a list", "is not a camera calibration YAML"),
        (CAMERA_YAML, "key: [unclosed", "cannot read .* as YAML"),
    ],
    ids=[
        "no-width",
        "fractional-height",
        "no-p",
        "zero-k",
        "word",
        "model",
        "no-data",
        "list",
        "broken-yaml",
    ],
)
def test_bad_camera_yaml_names_the_file_and_the_problem(tmp_path, old, new, fragment):
    path = tmp_path / "camera.yaml"
    path.write_text(CAMERA_YAML.replace(old, new, 1))
    with pytest.raises(DepthError, match=fragment) as raised:
        read_camera_info(path)
    assert str(path) in str(raised.value)


# --- output ---


def test_lifted_points_become_json_safe_and_readable():
    lifted = [
        LiftedPoint(
            (0.1, -0.2, 1.5),
            1.5,
            18,
            -0.42,
            False,
            0.0,
            (-0.0001, 0.0, -1.0),
            0.0004,
            300,
            normal_error=0.31,
            normal_reason="",
        ),
        LiftedPoint(
            (0.1, 0.2, 2.0),
            2.0,
            3,
            0.0,
            True,
            2.5,
            normal_reason="too thin",
            normal_settings=(SettingRef(DepthSettings, "normal_max_error"),),
        ),
        LiftedPoint(None, math.nan, 0, math.nan, False, math.nan, reason="none"),
    ]
    report = lifted_to_json(lifted)
    assert report[0] == {
        "xyz": [0.1, -0.2, 1.5],
        "valid": True,
        "support": 18,
        "edge": True,
        "depth_step": -0.42,
        "fallback": False,
        "search_distance": 0.0,
        "normal": [-0.0001, 0.0, -1.0],
        "normal_error": 0.31,
        "normal_residual": 0.0004,
        "normal_inliers": 300,
        "normal_reason": "",
        "approach_pose": report[0]["approach_pose"],
        "reason": "",
    }
    # approach along +z (into the surface), x image-right: the identity rotation, to the normal's 1e-4 tilt
    assert report[0]["approach_pose"]["position"] == [0.1, -0.2, 1.5]
    assert report[0]["approach_pose"]["orientation_xyzw"] == pytest.approx([0.0, 0.0, 0.0, 1.0], abs=1e-4)
    assert report[1]["normal"] is None and report[1]["approach_pose"] is None and report[1]["fallback"]
    assert report[1]["normal_reason"] == "too thin (option --normal-max-error)" and report[1]["edge"] is False
    assert report[1]["search_distance"] == 2.5 and report[1]["normal_error"] is None
    assert report[2]["xyz"] is None and report[2]["depth_step"] is None and report[2]["reason"] == "none"
    assert json.loads(json.dumps(report)) == report, "JSON-safe: no NaN reaches the output"
    assert describe_lifted(lifted) == [
        "  1. x=0.100 y=-0.200 z=1.500 m (support 18, edge, depth step -0.420 m)",
        "     normal (0.000, 0.000, -1.000) within 0.3 degrees (1 sigma), fit RMS 0.4 mm over 300 points",
        "  2. x=0.100 y=0.200 z=2.000 m (support 3, no edge, the pointed pixel had no depth: nearest "
        "surface used, 2.5 px away)",
        "     no normal: too thin (option --normal-max-error)",
        "  3. no 3D: none",
    ]


# --- usage errors, before the model is loaded ---


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--depth", "{depth}"], "--depth needs the camera"),
        (["--intrinsics", "50,50,31.5,23.5"], "need --depth"),
        (["--depth", "{depth}", "--intrinsics", "50,50,31.5"], "--intrinsics must be four numbers"),
        (["--depth", "{small}", "--intrinsics", "50,50,31.5,23.5"], "another aspect ratio"),
        (["--depth", "{depth}", "--camera-info", "{yaml_640}"], "CameraInfo is for 640x48 images"),
        (["--depth", "{depth}", "--camera-info", "{missing}"], "camera info file not found"),
    ],
    ids=["no-camera", "no-depth", "bad-intrinsics", "aspect", "camera-size", "missing-yaml"],
)
def test_depth_usage_errors_exit_2_with_the_reason(png, tmp_path, capsys, extra, fragment):
    files = {
        "depth": write_png(tmp_path / "depth.png", np.full((HEIGHT, WIDTH), 1000, np.uint16)),
        "small": write_png(tmp_path / "small.png", np.full((HEIGHT, WIDTH // 2), 1000, np.uint16)),
        "yaml_640": tmp_path / "wide.yaml",
        "missing": tmp_path / "missing.yaml",
    }
    files["yaml_640"].write_text(CAMERA_YAML.replace("image_width: 64", "image_width: 640"))
    arguments = [part.format(**files) for part in extra]
    code = cli.main(
        ["--query", "mug", "--image", str(png), "--model", str(tmp_path / "no-model"), *arguments]
    )
    assert code == cli.EXIT_USAGE  # not 3 (weights not found): the depth inputs are checked first
    assert fragment in capsys.readouterr().err


def test_intrinsics_and_camera_info_together_are_refused(png, tmp_path):
    command = [sys.executable, "-m", "molmo_ros.cli.point", "--image", str(png), "--query", "mug"]
    completed = subprocess.run(
        [*command, "--intrinsics", "1,1,1,1", "--camera-info", "x.yaml"], capture_output=True, text=True
    )
    assert completed.returncode == cli.EXIT_USAGE
    assert "not allowed with argument" in completed.stderr
