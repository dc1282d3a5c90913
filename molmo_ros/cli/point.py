"""`molmo-point`: ask a Molmo model about one image file from a shell, without ROS.

    molmo-point --image kitchen.jpg --query "red mug" --output annotated.png
    molmo-point ask --image kitchen.jpg --prompt "How many mugs are there?" --format json
    molmo-point caption --image kitchen.jpg
    molmo-point --backend molmo2 --model allenai/Molmo2-4B --image kitchen.jpg --query "red mug"
    molmo-point --backend openai --url http://gpu-server:8000/v1 --image kitchen.jpg --query "red mug"

Every backend (`--backend molmoe|molmo2|openai`) and its options are the node's `engine.*` parameters,
generated from `BackendSettings`, so the defaults are written once.

Exit codes: 0 answered, 2 bad usage or unreadable image, 3 weights not found, 1 any other engine
error. A missing checkpoint is reported as such; no points are ever made up.
"""

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import PIL.Image

from molmo_ros.backends.api_key import check_api_key
from molmo_ros.backends.errors import BackendError, WeightsNotFoundError
from molmo_ros.backends.interface import GenerationControl
from molmo_ros.backends.settings import BackendSettings
from molmo_ros.cli.depth_options import add_depth_arguments, describe_lifted, lifted_to_json, load_depth_input
from molmo_ros.cli.settings_options import add_setting_options, settings_from_options, with_option_names
from molmo_ros.depth.errors import DepthError
from molmo_ros.depth.lifting import LiftedPoint
from molmo_ros.depth.pairing import PairedDepth
from molmo_ros.depth.settings import DepthSettings
from molmo_ros.drawing import LabelledPoint, draw_points, normal_in_image
from molmo_ros.pointing.answer import ViewInput, ask_model, pointing_outcome
from molmo_ros.pointing.errors import ErrorCode, PointingError
from molmo_ros.pointing.outcomes import PointingOutcome, View
from molmo_ros.prompts import (
    CAPTION_PROMPT,
    OCR_PROMPT,
    POINT_ALL_TEMPLATE,
    POINT_TEMPLATE,
    make_point_prompt,
)

TASKS = ("point", "ask", "caption", "ocr")
EXIT_OK, EXIT_ENGINE_ERROR, EXIT_USAGE, EXIT_NO_WEIGHTS = 0, 1, 2, 3


class UsageError(Exception):
    """Something the user must change in the command line or the input file."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="molmo-point",
        description="Point at things in an image, or ask about it, with MolmoE-1B, Molmo2 or a Molmo server.",
        epilog="Exit codes: 0 ok, 1 engine error, 2 usage or image error, 3 weights not found.",
    )
    parser.add_argument(
        "task_positional",
        nargs="?",
        choices=TASKS,
        metavar="TASK",
        help="point (default), ask, caption or ocr",
    )
    parser.add_argument("--task", choices=TASKS, help="same as the positional TASK")
    parser.add_argument("--image", required=True, type=Path, help="image file (PNG, JPEG, ...)")
    parser.add_argument("--query", help="point: what to point at, e.g. 'red mug'")
    parser.add_argument(
        "--prompt", help="ask: the question; other tasks: a full prompt replacing the default"
    )
    parser.add_argument("--all", action="store_true", help=f"point: use {POINT_ALL_TEMPLATE!r}")
    add_engine_arguments(parser)
    parser.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    parser.add_argument("--output", type=Path, help="write the image with the points drawn on it (PNG)")
    add_depth_arguments(parser)
    return parser


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per `engine.*` setting (--backend, --model, --url, ...) with its default and description."""
    group = parser.add_argument_group(
        "engine", "which model answers, and how (the node's engine.* parameters)"
    )
    add_setting_options(group, BackendSettings)


def backend_settings(args: argparse.Namespace) -> BackendSettings:
    try:
        settings = settings_from_options(BackendSettings, args)
        check_api_key(settings)
        return settings
    except ValueError as error:
        raise UsageError(with_option_names(error)) from error


def depth_settings(args: argparse.Namespace) -> DepthSettings:
    try:
        return settings_from_options(DepthSettings, args)
    except ValueError as error:
        raise UsageError(with_option_names(error)) from error


def choose_task(args: argparse.Namespace) -> str:
    if args.task and args.task_positional and args.task != args.task_positional:
        raise UsageError(f"two different tasks given: {args.task_positional!r} and --task {args.task!r}")
    return args.task or args.task_positional or "point"


def build_prompt(task: str, args: argparse.Namespace) -> str:
    """The prompt for a task; --prompt always wins, as in the original predict script."""
    if args.prompt is not None:
        if not args.prompt.strip():
            raise UsageError("--prompt is empty")
        return args.prompt
    if task == "point":
        if not args.query:
            raise UsageError("point needs --query (what to point at) or a full --prompt")
        try:
            return make_point_prompt(POINT_ALL_TEMPLATE if args.all else POINT_TEMPLATE, args.query)
        except ValueError as error:
            raise UsageError(with_option_names(error)) from error
    if task == "ask":
        raise UsageError("ask needs --prompt (the question)")
    return CAPTION_PROMPT if task == "caption" else OCR_PROMPT


def read_image(path: Path) -> np.ndarray:
    """HxWx3 uint8 RGB; EXIF orientation is not applied, as in the reference (points match stored pixels)."""
    try:
        with PIL.Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except FileNotFoundError as error:
        raise UsageError(f"image file not found: {path}") from error
    except (OSError, ValueError) as error:  # PIL.UnidentifiedImageError is an OSError
        raise UsageError(f"cannot read {path} as an image: {error}") from error


def describe_backend(backend: object, settings: BackendSettings) -> dict[str, str | None]:
    """What answered: the backend's name, and its model, device and dtype where it has them."""
    dtype = getattr(backend, "dtype", None)
    device = getattr(backend, "device", None)
    return {
        "name": settings.backend,
        "model": getattr(backend, "model_name", None) or settings.model or None,
        "url": settings.url if settings.backend == "openai" else None,
        "device": None if device is None else str(device),
        "dtype": None if dtype is None else str(dtype).removeprefix("torch."),
    }


def _point_dict(point: LabelledPoint) -> dict[str, object]:
    return {"x": point.x, "y": point.y, "label": point.label}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_request:  # argparse: --help (0) or a usage error (2)
        return int(exit_request.code or 0)
    try:
        task = choose_task(args)
        prompt = build_prompt(task, args)
        pixels = read_image(args.image)
        inputs = (pixels, load_depth_input(args, pixels.shape[1], pixels.shape[0]), depth_settings(args))
        settings = backend_settings(args)
        answer, about, timings = _ask(settings, pixels, prompt)
        outcome = _outcome(args.query or prompt, prompt, answer, inputs, timings["answer_s"])
        _write_drawing(args, outcome, pixels)
    except (UsageError, DepthError) as error:
        print(f"molmo-point: {error}", file=sys.stderr)
        return EXIT_USAGE
    except WeightsNotFoundError as error:
        print(f"molmo-point: {with_option_names(error)}", file=sys.stderr)
        return EXIT_NO_WEIGHTS
    except PointingError as error:
        if error.code is ErrorCode.BAD_IMAGE:
            print(f"molmo-point: {args.image}: {with_option_names(error)}", file=sys.stderr)
            return EXIT_USAGE
        print(f"molmo-point: {with_option_names(error)}", file=sys.stderr)
        return EXIT_ENGINE_ERROR
    except BackendError as error:
        print(f"molmo-point: {type(error).__name__}: {with_option_names(error)}", file=sys.stderr)
        return EXIT_ENGINE_ERROR
    report = _report(task, prompt, answer, outcome, args, timings, about, with_depth=inputs[1] is not None)
    if args.format == "json":
        print(json.dumps(report, indent=2))
    else:
        _print_text(task, outcome, report)
    return EXIT_OK


def _ask(
    settings: BackendSettings, pixels: np.ndarray, prompt: str
) -> tuple[str, dict[str, str | None], dict[str, float]]:
    """The model's answer, what answered, and how long loading and answering took."""
    from molmo_ros.backends.factory import load_backend

    started = time.perf_counter()
    backend = load_backend(settings)
    about = describe_backend(backend, settings)
    loaded = time.perf_counter()
    try:
        answer = ask_model(backend, [pixels], prompt, GenerationControl())
    finally:
        backend.close()
    return answer, about, {"load_s": loaded - started, "answer_s": time.perf_counter() - loaded}


def _outcome(
    query: str,
    prompt: str,
    answer: str,
    inputs: tuple[np.ndarray, PairedDepth | None, DepthSettings],
    seconds: float,
) -> PointingOutcome:
    """The answer's points in the image's pixels, lifted with --depth and the depth options: the node's own
    answer path."""
    pixels, depth, lifting = inputs
    height, width = pixels.shape[:2]
    view = View(camera="", stamp_ns=0, frame_id="", width=width, height=height)
    return pointing_outcome(
        query=query,
        prompt=prompt,
        text=answer,
        inputs=[ViewInput(view, depth)],
        depth_settings=lifting,
        require_depth=False,
        model_seconds=seconds,
        frame_age_seconds=0.0,
        images=[pixels],
    )


def _write_drawing(args: argparse.Namespace, outcome: PointingOutcome, pixels: np.ndarray) -> None:
    if args.output is None:
        return
    try:
        normals = [normal_in_image(point.depth) for point in outcome.points]
        drawn = draw_points(pixels, outcome.points, outcome.query, normals)
        PIL.Image.fromarray(drawn).save(args.output, format="PNG")
    except OSError as error:
        raise UsageError(f"cannot write {args.output}: {error}") from error


def _report(
    task: str,
    prompt: str,
    answer: str,
    outcome: PointingOutcome,
    args: argparse.Namespace,
    timings: dict[str, float],
    about: dict[str, str | None],
    with_depth: bool,
) -> dict[str, object]:
    """Everything the JSON output holds (the text output says the same in words)."""
    return {
        "task": task,
        "prompt": prompt,
        "answer": answer,
        "texts": [answer],
        "points": [_point_dict(point) for point in outcome.points],
        "points_3d": lifted_to_json(_lifted(outcome)) if with_depth else None,
        "dropped_points": [_point_dict(point) for point in outcome.outside_points],
        "malformed": outcome.answer_malformed,
        "problems": list(outcome.parse_problems),
        "image": {"path": str(args.image), "width": outcome.view.width, "height": outcome.view.height},
        "output": None if args.output is None else str(args.output),
        "timings": timings,
        "backend": about,
    }


def _lifted(outcome: PointingOutcome) -> list[LiftedPoint]:
    """Every point lifted: --depth was checked against the image before the model ran, so a view
    with depth never loses it here."""
    lifted = [point.depth for point in outcome.points]
    assert all(point is not None for point in lifted), outcome.view.depth
    return lifted


def _print_text(task: str, outcome: PointingOutcome, report: dict) -> None:
    print(outcome.raw_text)
    view = outcome.view
    if outcome.points:
        print(f"{len(outcome.points)} point(s) in pixels (x, y) of the {view.width}x{view.height} image:")
        for number, point in enumerate(outcome.points, start=1):
            print(f"  {number}. {point.x:.1f} {point.y:.1f}" + (f"  {point.label}" if point.label else ""))
        if report["points_3d"] is not None:
            print("in metres, in the camera's optical frame (x right, y down, z forward):")
            print("\n".join(describe_lifted(_lifted(outcome))))
    elif task == "point" and not outcome.outside_points:
        print("no points in the answer")
    if outcome.outside_points:
        print(f"{len(outcome.outside_points)} point(s) in the answer lie outside the image and were dropped")
    if outcome.answer_malformed:
        print("the answer was not well formed: " + "; ".join(outcome.parse_problems))
    about, timings = report["backend"], report["timings"]
    where = ", ".join(str(value) for key, value in about.items() if key != "name" and value is not None)
    took = f"loaded in {timings['load_s']:.2f} s, answered in {timings['answer_s']:.2f} s"
    print(f"[{about['name']}: {where}; {took}]", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
