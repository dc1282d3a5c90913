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
from molmo_ros.backends.settings import BackendSettings
from molmo_ros.cli.depth_inputs import (
    DepthInput,
    DepthInputError,
    add_depth_arguments,
    describe_lifted,
    lifted_to_json,
    load_depth_input,
)
from molmo_ros.drawing import draw_points
from molmo_ros.engine.errors import EngineError, InvalidImageError, WeightsNotFoundError
from molmo_ros.geometry import PixelPoint, to_pixels
from molmo_ros.parsing import parse_answer
from molmo_ros.prompts import (
    CAPTION_PROMPT,
    OCR_PROMPT,
    POINT_ALL_TEMPLATE,
    POINT_TEMPLATE,
    make_point_prompt,
)
from molmo_ros.settings_fields import setting_specs

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
    for spec in setting_specs(BackendSettings):
        group.add_argument(
            "--" + spec.field_name.replace("_", "-"),
            dest=spec.field_name,
            type=type(spec.default),
            default=spec.default,
            choices=spec.info.choices or None,
            help=f"{spec.info.description} (default: {spec.default!r})",
        )


def backend_settings(args: argparse.Namespace) -> BackendSettings:
    try:
        settings = BackendSettings(
            **{spec.field_name: getattr(args, spec.field_name) for spec in setting_specs(BackendSettings)}
        )
        check_api_key(settings)
        return settings
    except ValueError as error:
        raise UsageError(str(error)) from error


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
            raise UsageError(str(error)) from error
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


def _point_dict(point: PixelPoint) -> dict[str, object]:
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
        depth = load_depth_input(args, pixels.shape[1], pixels.shape[0])
        return _run(task, prompt, pixels, args, depth)
    except (UsageError, DepthInputError) as error:
        print(f"molmo-point: {error}", file=sys.stderr)
        return EXIT_USAGE


def _run(
    task: str, prompt: str, pixels: np.ndarray, args: argparse.Namespace, depth: DepthInput | None
) -> int:
    from molmo_ros.backends.factory import load_backend

    settings = backend_settings(args)
    try:
        started = time.perf_counter()
        backend = load_backend(settings)
        about = describe_backend(backend, settings)
        loaded = time.perf_counter()
        try:
            result = backend.generate([pixels], [prompt])
        finally:
            backend.close()
        answered = time.perf_counter()
    except WeightsNotFoundError as error:
        print(f"molmo-point: {error}", file=sys.stderr)
        return EXIT_NO_WEIGHTS
    except InvalidImageError as error:
        raise UsageError(f"the model cannot use {args.image}: {error}") from error
    except EngineError as error:
        print(f"molmo-point: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_ENGINE_ERROR

    answer = result.texts[0]
    height, width = pixels.shape[:2]
    parsed = parse_answer(answer)
    located = to_pixels(parsed.points, width, height)
    lifted = None if depth is None else depth.lift(located.inside)
    if args.output is not None:
        try:
            title = args.query or prompt
            PIL.Image.fromarray(draw_points(pixels, located.inside, title)).save(args.output, format="PNG")
        except OSError as error:
            raise UsageError(f"cannot write {args.output}: {error}") from error

    timings = {"load_s": loaded - started, "answer_s": answered - loaded}
    if args.format == "json":
        report = {
            "task": task,
            "prompt": prompt,
            "answer": answer,
            "texts": result.texts,
            "points": [_point_dict(point) for point in located.inside],
            "points_3d": None if lifted is None else lifted_to_json(lifted),
            "dropped_points": [_point_dict(point) for point in located.outside],
            "malformed": parsed.malformed,
            "problems": list(parsed.problems),
            "image": {"path": str(args.image), "width": width, "height": height},
            "output": None if args.output is None else str(args.output),
            "timings": timings,
            "backend": about,
        }
        print(json.dumps(report, indent=2))
        return EXIT_OK

    print(answer)
    if located.inside:
        print(f"{len(located.inside)} point(s) in pixels (x, y) of the {width}x{height} image:")
        for number, point in enumerate(located.inside, start=1):
            print(f"  {number}. {point.x:.1f} {point.y:.1f}" + (f"  {point.label}" if point.label else ""))
        if lifted is not None:
            print("in metres, in the camera's optical frame (x right, y down, z forward):")
            print("\n".join(describe_lifted(lifted)))
    elif task == "point" and not located.outside:
        print("no points in the answer")
    if located.outside:
        print(f"{len(located.outside)} point(s) in the answer lie outside the image and were dropped")
    if parsed.malformed:
        print("the answer was not well formed: " + "; ".join(parsed.problems))
    where = ", ".join(str(value) for key, value in about.items() if key != "name" and value is not None)
    took = f"loaded in {timings['load_s']:.2f} s, answered in {timings['answer_s']:.2f} s"
    print(f"[{about['name']}: {where}; {took}]", file=sys.stderr)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
