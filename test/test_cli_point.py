"""`molmo-point` on a small generated PNG with the tiny model, its exit codes, and the point drawing."""

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from molmo_ros.cli import point as cli
from molmo_ros.engine.engine import StageTimings
from molmo_ros.geometry import PixelPoint

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
    assert report["device"] == "cpu" and report["dtype"] == "float32"
    assert str(tiny_model_dir) in report["model"]
    assert report["timings"]["total_s"] > 0 and 1 <= report["timings"]["new_tokens"] <= 4


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


def test_draw_points_marks_each_point_and_leaves_the_rest(tmp_path):
    image = PIL.Image.new("RGB", (200, 160), (0, 0, 0))
    points = [PixelPoint(x=40.0, y=50.0, label="mug"), PixelPoint(x=150.5, y=120.25, label="")]
    annotated = np.asarray(cli.draw_points(image, points))
    assert np.asarray(image).max() == 0  # the input is not drawn on
    for point in points:
        marker = annotated[round(point.y), round(point.x)]
        assert marker[0] > 200 and marker[1] < 100  # red dot centre
    assert annotated[5, 5].max() == 0 and annotated[150, 10].max() == 0  # far from every point


@dataclass(frozen=True)
class _Answer:
    texts: list[str]
    timings: StageTimings
    token_ids: list[list[int]]


class FakeAnsweringEngine:
    """Stands in for MolmoEngine with a fixed answer, so the pixel arithmetic can be checked exactly."""

    answer = (
        '<point x="25.0" y="50.0" alt="red mug">red mug</point> '
        '<point x="150.0" y="10.0" alt="far">far</point>'
    )
    device = "cpu"
    dtype = "torch.float32"
    model_name = "fake"

    @classmethod
    def load(cls, settings, **options) -> "FakeAnsweringEngine":
        return cls()

    def generate(self, image, prompts):
        return _Answer([self.answer], StageTimings(0.1, 0.2, 0.3, 0.4, 9, 10), [[1] * 9])


def test_known_answer_becomes_pixel_points_and_dropped_points(monkeypatch, png, tmp_path, capsys):
    import molmo_ros.engine

    monkeypatch.setattr(molmo_ros.engine.engine, "MolmoEngine", FakeAnsweringEngine)
    output = tmp_path / "known.png"
    code = cli.main(["--query", "red mug", "--image", str(png), "--format", "json", "--output", str(output)])
    assert code == cli.EXIT_OK
    report = json.loads(capsys.readouterr().out)
    # 25 % of 64 px and 50 % of 48 px; the second point (150 %) lies outside the image.
    assert report["points"] == [{"x": 16.0, "y": 24.0, "label": "red mug"}]
    assert report["dropped_points"] == [{"x": 96.0, "y": pytest.approx(4.8), "label": "far"}]
    assert report["timings"]["total_s"] == pytest.approx(1.0)
    original = np.asarray(PIL.Image.open(png).convert("RGB"))
    drawn = np.asarray(PIL.Image.open(output))
    assert not np.array_equal(drawn[24, 16], original[24, 16])


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
    import molmo_ros.engine

    class FakeOutsideEngine(FakeAnsweringEngine):
        answer = '<point x="150.0" y="10.0" alt="far">far</point>'

    monkeypatch.setattr(molmo_ros.engine.engine, "MolmoEngine", FakeOutsideEngine)
    assert cli.main(["--query", "far", "--image", str(png)]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "no points in the answer" not in out
    assert "1 point(s) in the answer lie outside the image and were dropped" in out
