"""`molmo-point` on a small generated PNG with the tiny model, its exit codes, and the point drawing."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from doubles.openai_server import OpenAIServerDouble

from molmo_ros.backends import factory
from molmo_ros.backends.interface import BackendAnswer
from molmo_ros.backends.settings import BackendSettings
from molmo_ros.cli import point as cli
from molmo_ros.settings_fields import setting_specs

WIDTH, HEIGHT = 64, 48


@pytest.fixture(scope="module")
def png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("images") / "gradient.png"
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    pixels = np.stack([x * 4, y * 5, (x + y) * 2], axis=-1).astype(np.uint8)
    PIL.Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def tiny_args(tiny_model_dir, png) -> list[str]:
    return ["--image", str(png), "--model", str(tiny_model_dir), "--device", "cpu", "--max-new-tokens", "4"]


@pytest.mark.parametrize(
    "task_args",
    [
        ["--query", "red mug"],
        ["point", "--query", "red mug", "--all"],
        ["ask", "--prompt", "What colour is the sky?"],
        ["caption"],
        ["--task", "ocr"],
    ],
    ids=["point-default", "point-all", "ask", "caption", "ocr"],
)
def test_every_task_runs_on_the_tiny_model(task_args, tiny_args, capsys):
    assert cli.main(task_args + tiny_args) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert out.strip()


def test_json_output_reports_answer_points_timings_and_model(tiny_args, tiny_model_dir, png, capsys):
    assert cli.main(["--query", "red mug", "--format", "json", *tiny_args]) == cli.EXIT_OK
    report = json.loads(capsys.readouterr().out)
    assert report["task"] == "point" and report["prompt"] == "Point to the red mug"
    assert report["texts"] == [report["answer"]]
    assert isinstance(report["points"], list) and isinstance(report["dropped_points"], list)
    assert isinstance(report["malformed"], bool)
    assert report["image"] == {"path": str(png), "width": WIDTH, "height": HEIGHT}
    assert report["backend"]["name"] == "molmoe"
    assert report["timings"]["load_s"] > 0 and report["timings"]["answer_s"] > 0


def test_output_writes_a_png_of_the_input_size(tiny_args, tmp_path):
    output = tmp_path / "annotated.png"
    assert cli.main(["--query", "red mug", "--output", str(output), *tiny_args]) == cli.EXIT_OK
    with PIL.Image.open(output) as written:
        assert written.format == "PNG" and written.size == (WIDTH, HEIGHT)


def test_missing_model_directory_exits_3_with_the_fix(png, tmp_path, capsys):
    missing = tmp_path / "nowhere"
    code = cli.main(["--query", "mug", "--image", str(png), "--model", str(missing), "--device", "cpu"])
    assert code == cli.EXIT_NO_WEIGHTS
    captured = capsys.readouterr()
    assert captured.out == ""  # no made-up points
    assert str(missing) in captured.err and "--model" in captured.err


@pytest.mark.parametrize(
    "args",
    [
        ["point"],  # no query
        ["ask"],  # no question
        ["ask", "--task", "caption", "--prompt", "x"],  # two different tasks
        ["--query", "mug", "--dtype", "int8"],
        ["--query", "mug", "--bogus-flag"],
    ],
    ids=["point-without-query", "ask-without-prompt", "two-tasks", "bad-dtype", "unknown-flag"],
)
def test_usage_errors_exit_2(args, tiny_args, capsys):
    assert cli.main(args + tiny_args) == cli.EXIT_USAGE
    assert capsys.readouterr().err


def test_unreadable_or_missing_image_exits_2(tiny_model_dir, tmp_path, capsys):
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    for image in (not_an_image, tmp_path / "missing.png"):
        code = cli.main(["--query", "mug", "--image", str(image), "--model", str(tiny_model_dir)])
        assert code == cli.EXIT_USAGE
        assert str(image) in capsys.readouterr().err


class FakeAnsweringBackend:
    """Stands in for a loaded backend with a fixed answer, so the pixel arithmetic can be checked exactly."""

    name = "fake"
    max_images = 1
    max_concurrent_calls = 1
    answer = (
        '<point x="25.0" y="50.0" alt="red mug">red mug</point> '
        '<point x="150.0" y="10.0" alt="far">far</point>'
    )
    model_name = "fake"

    def __init__(self) -> None:
        self.closed = False

    def generate(self, images, prompts, control=None):
        return BackendAnswer(texts=[self.answer] * len(prompts))

    def close(self) -> None:
        self.closed = True


def use_backend(monkeypatch, backend_class) -> list:
    """Makes the factory hand out `backend_class()`; returns the list of backends it made."""
    made = []

    def load_backend(settings):
        made.append(backend_class())
        return made[-1]

    monkeypatch.setattr(factory, "load_backend", load_backend)
    return made


def test_known_answer_becomes_pixel_points_and_dropped_points(monkeypatch, png, tmp_path, capsys):
    made = use_backend(monkeypatch, FakeAnsweringBackend)
    output = tmp_path / "known.png"
    code = cli.main(["--query", "red mug", "--image", str(png), "--format", "json", "--output", str(output)])
    assert code == cli.EXIT_OK
    report = json.loads(capsys.readouterr().out)
    # 25 % of 64 px and 50 % of 48 px; the second point (150 %) lies outside the image.
    assert report["points"] == [{"x": 16.0, "y": 24.0, "label": "red mug"}]
    assert report["dropped_points"] == [{"x": 96.0, "y": pytest.approx(4.8), "label": "far"}]
    assert report["timings"]["load_s"] >= 0 and report["timings"]["answer_s"] >= 0
    assert made[0].closed
    original = np.asarray(PIL.Image.open(png).convert("RGB"))
    drawn = np.asarray(PIL.Image.open(output))
    assert not np.array_equal(drawn[24, 16], original[24, 16])


def wall_arguments(png: Path, tmp_path: Path) -> list[str]:
    """molmo-point's arguments for `png` with a depth image of a flat wall 1.5 m away and intrinsics."""
    import cv2

    depth = tmp_path / "depth.png"
    cv2.imwrite(str(depth), np.full((HEIGHT, WIDTH), 1500, dtype=np.uint16))
    return [
        "--query",
        "red mug",
        "--image",
        str(png),
        "--depth",
        str(depth),
        "--intrinsics",
        "50,50,31.5,23.5",
    ]


def test_depth_and_intrinsics_add_3d_points_to_the_json(monkeypatch, png, tmp_path, capsys):
    use_backend(monkeypatch, FakeAnsweringBackend)
    arguments = wall_arguments(png, tmp_path)
    assert cli.main([*arguments, "--format", "json"]) == cli.EXIT_OK
    report = json.loads(capsys.readouterr().out)
    # the point (16.0, 24.0) is OpenCV pixel (15.5, 23.5): X = (15.5 - 31.5) * 1.5 / 50, Y = 0
    (lifted,) = report["points_3d"]
    assert lifted["valid"] and lifted["reason"] == ""
    assert lifted["xyz"] == pytest.approx([-0.48, 0.0, 1.5], rel=1e-6)
    # a flat wall: the whole 5x5 window supports the depth, no edge, the normal faces the camera
    assert lifted["support"] == 25 and lifted["edge"] is False and lifted["depth_step"] == 0.0
    assert lifted["fallback"] is False and lifted["search_distance"] == 0.0 and lifted["normal_reason"] == ""
    # 1 mm + 3.8 mm x 1.5^2 of modelled noise over a 21-pixel grid 0.63 m wide: a fraction of a degree
    assert 0 < lifted["normal_error"] < 1.0
    assert lifted["normal"] == pytest.approx([0.0, 0.0, -1.0], abs=1e-12)
    assert lifted["approach_pose"]["orientation_xyzw"] == pytest.approx([0.0, 0.0, 0.0, 1.0], abs=1e-12)
    assert cli.main(arguments) == cli.EXIT_OK
    text = capsys.readouterr().out
    assert "1. x=-0.480 y=0.000 z=1.500 m (support 25, no edge)" in text
    assert "normal (0.000, 0.000, -1.000)" in text


def test_the_depth_settings_are_options_and_their_errors_name_them(monkeypatch, png, tmp_path, capsys):
    use_backend(monkeypatch, FakeAnsweringBackend)
    arguments = wall_arguments(png, tmp_path)
    assert cli.main([*arguments, "--format", "json", "--normal-radius", "0"]) == cli.EXIT_OK
    (lifted,) = json.loads(capsys.readouterr().out)["points_3d"]
    assert lifted["normal"] is None and lifted["normal_reason"] == "normals are off (option --normal-radius)"
    assert cli.main([*arguments, "--min-depth", "2", "--max-depth", "1"]) == cli.EXIT_USAGE
    error = capsys.readouterr().err
    assert "the nearest depth (2 m) must be less than the farthest (1 m)" in error
    assert "(option --min-depth, --max-depth)" in error
    assert cli.main([*arguments, "--max-depth-skew", "1"]) == cli.EXIT_USAGE, "files have no stamps to pair"


def test_help_and_usage_errors_do_not_import_torch():
    """--help and bad arguments must answer at once, not after loading torch and transformers."""
    code = (
        "import sys; from molmo_ros.cli import point; "
        "assert point.main(['--help']) == 0; assert point.main(['--bogus']) == 2; "
        "heavy = {'torch', 'transformers'} & set(sys.modules); assert not heavy, heavy"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], cwd=Path(cli.__file__).parents[2], capture_output=True, text=True
    )
    assert completed.returncode == 0, completed.stderr


def test_all_points_outside_the_image_are_reported_once_as_dropped(monkeypatch, png, capsys):
    class FakeOutsideBackend(FakeAnsweringBackend):
        answer = '<point x="150.0" y="10.0" alt="far">far</point>'

    use_backend(monkeypatch, FakeOutsideBackend)
    assert cli.main(["--query", "far", "--image", str(png)]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "no points in the answer" not in out
    assert "1 point(s) in the answer lie outside the image and were dropped" in out


# --- the molmo2 and openai backends, and the engine options ---------------------------------------------


def test_engine_options_are_the_backend_settings_with_their_defaults():
    args = cli.build_parser().parse_args(["--image", "x.png"])
    assert cli.backend_settings(args) == BackendSettings()
    flags = {action.dest: action.option_strings for action in cli.build_parser()._actions}
    for spec in setting_specs(BackendSettings):
        assert flags[spec.field_name] == ["--" + spec.field_name.replace("_", "-")]


def test_molmo2_backend_answers_on_the_tiny_model(tiny_molmo2_dir, png, capsys):
    arguments = ["--backend", "molmo2", "--model", str(tiny_molmo2_dir), "--device", "cpu"]
    code = cli.main(
        [*arguments, "--max-new-tokens", "4", "--query", "mug", "--image", str(png), "--format", "json"]
    )
    assert code == cli.EXIT_OK
    report = json.loads(capsys.readouterr().out)
    assert report["backend"] == {
        "name": "molmo2",
        "model": str(tiny_molmo2_dir),
        "url": None,
        "device": "cpu",
        "dtype": "float32",
    }
    assert report["texts"] == [report["answer"]] and isinstance(report["malformed"], bool)


def test_molmo2_missing_model_exits_3_with_the_fix(png, tmp_path, capsys):
    missing = tmp_path / "nowhere"
    code = cli.main(["--backend", "molmo2", "--model", str(missing), "--query", "mug", "--image", str(png)])
    assert code == cli.EXIT_NO_WEIGHTS
    captured = capsys.readouterr()
    assert captured.out == "" and str(missing) in captured.err and "(option --model)" in captured.err


def test_openai_backend_points_in_the_original_pixels(png, capsys):
    answer = '<points coords="1 1 250 500">red mug</points>'
    with OpenAIServerDouble(answers=[answer]) as server:
        arguments = [
            "--backend",
            "openai",
            "--url",
            server.url,
            "--model",
            "served",
            "--max-image-side",
            "32",
        ]
        code = cli.main([*arguments, "--query", "red mug", "--image", str(png), "--format", "json"])
    assert code == cli.EXIT_OK
    report = json.loads(capsys.readouterr().out)
    assert report["points"] == [{"x": 16.0, "y": 24.0, "label": "red mug"}]  # 25 % of 64, 50 % of 48
    assert report["backend"]["name"] == "openai" and report["backend"]["url"] == server.url
    (request,) = server.requests
    assert request.texts() == ["Point to the red mug"] and request.body["model"] == "served"
    assert request.image_urls()[0].startswith("data:image/jpeg;base64,")


def test_openai_server_errors_exit_1_naming_the_url(png, capsys):
    with OpenAIServerDouble() as server:
        server.misbehave("error", times=2)
        code = cli.main(
            [
                "--backend",
                "openai",
                "--url",
                server.url,
                "--max-retries",
                "1",
                "--query",
                "m",
                "--image",
                str(png),
            ]
        )
    assert code == cli.EXIT_ENGINE_ERROR
    captured = capsys.readouterr()
    assert captured.out == "" and "the model server failed" in captured.err and server.url in captured.err


@pytest.mark.parametrize(
    "args",
    [
        ["--backend", "nope"],
        ["--max-in-flight", "0"],
        ["--image-format", "gif"],
        ["--request-timeout", "fast"],
    ],
    ids=["unknown-backend", "in-flight-below-range", "unknown-image-format", "not-a-number"],
)
def test_bad_engine_options_exit_2(args, png, capsys):
    assert cli.main(["--query", "mug", "--image", str(png), *args]) == cli.EXIT_USAGE
    assert capsys.readouterr().err
