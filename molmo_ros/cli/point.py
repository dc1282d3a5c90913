"""`molmo-point`: ask MolmoE about one image file from a shell, without ROS.

    molmo-point --image kitchen.jpg --query "red mug" --output annotated.png
    molmo-point ask --image kitchen.jpg --prompt "How many mugs are there?" --format json
    molmo-point caption --image kitchen.jpg

Exit codes: 0 answered, 2 bad usage or unreadable image, 3 weights not found, 1 any other engine
error. A missing checkpoint is reported as such; no points are ever made up.
"""

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import PIL.Image
from PIL import ImageDraw, ImageFont

from molmo_ros.engine.defaults import DEFAULT_REVISION, MODEL_ENV_VAR, default_model
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

TASKS = ("point", "ask", "caption", "ocr")
EXIT_OK, EXIT_ENGINE_ERROR, EXIT_USAGE, EXIT_NO_WEIGHTS = 0, 1, 2, 3


class UsageError(Exception):
    """Something the user must change in the command line or the input file."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="molmo-point",
        description="Point at things in an image, or ask about it, with MolmoE-1B.",
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
    parser.add_argument(
        "--model",
        default=default_model(),
        help=f"Hugging Face id or checkpoint directory (default: ${MODEL_ENV_VAR} or %(default)s)",
    )
    parser.add_argument(
        "--revision", default=DEFAULT_REVISION, help="commit of a hub model (default: %(default)s)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument(
        "--dtype", default="auto", help="auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16, float16"
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=200, help="longest answer in tokens (default: 200)"
    )
    parser.add_argument(
        "--cache-dir",
        help="where converted weights are kept (default: $MOLMO_CACHE_DIR or ~/.cache/molmo_ros)",
    )
    parser.add_argument(
        "--no-weights-cache",
        action="store_true",
        help="convert the checkpoint at every start instead of keeping a converted copy",
    )
    parser.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    parser.add_argument("--output", type=Path, help="write the image with the points drawn on it (PNG)")
    return parser


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


def draw_points(image: PIL.Image.Image, points: Sequence[PixelPoint]) -> PIL.Image.Image:
    """A copy of `image` with a ringed dot and a label at each point, sized to stay visible on big frames."""
    annotated = image.convert("RGB")
    draw = ImageDraw.Draw(annotated)
    radius = max(3, round(min(annotated.size) / 80))
    font = ImageFont.load_default(size=max(10, radius * 3))
    for number, point in enumerate(points, start=1):
        box = (point.x - radius, point.y - radius, point.x + radius, point.y + radius)
        draw.ellipse(box, fill=(255, 40, 40), outline=(255, 255, 255), width=max(1, radius // 3))
        label = point.label or str(number)
        draw.text(
            (point.x + radius + 2, point.y - radius),
            label,
            fill=(255, 255, 255),
            font=font,
            stroke_width=2,
            stroke_fill=(0, 0, 0),
        )
    return annotated


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
        return _run(task, prompt, pixels, args)
    except UsageError as error:
        print(f"molmo-point: {error}", file=sys.stderr)
        return EXIT_USAGE


def _run(task: str, prompt: str, pixels: np.ndarray, args: argparse.Namespace) -> int:
    from molmo_ros.backends.settings import BackendSettings
    from molmo_ros.engine.engine import MolmoEngine

    try:
        settings = BackendSettings(
            model=args.model,
            revision=args.revision,
            device=args.device,
            dtype=args.dtype,
            max_new_tokens=args.max_new_tokens,
            cache_dir=args.cache_dir or "",
        )
    except ValueError as error:
        raise UsageError(str(error)) from error
    try:
        engine = MolmoEngine.load(settings, cache_weights=not args.no_weights_cache)
        result = engine.generate(pixels, [prompt])
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
    if args.output is not None:
        try:
            draw_points(PIL.Image.fromarray(pixels), located.inside).save(args.output, format="PNG")
        except OSError as error:
            raise UsageError(f"cannot write {args.output}: {error}") from error

    timings = {**asdict(result.timings), "total_s": result.timings.total_s}
    if args.format == "json":
        report = {
            "task": task,
            "prompt": prompt,
            "answer": answer,
            "texts": result.texts,
            "points": [_point_dict(point) for point in located.inside],
            "dropped_points": [_point_dict(point) for point in located.outside],
            "malformed": parsed.malformed,
            "problems": list(parsed.problems),
            "image": {"path": str(args.image), "width": width, "height": height},
            "output": None if args.output is None else str(args.output),
            "timings": timings,
            "model": engine.model_name,
            "device": str(engine.device),
            "dtype": str(engine.dtype).removeprefix("torch."),
        }
        print(json.dumps(report, indent=2))
        return EXIT_OK

    print(answer)
    if located.inside:
        print(f"{len(located.inside)} point(s) in pixels (x, y) of the {width}x{height} image:")
        for number, point in enumerate(located.inside, start=1):
            print(f"  {number}. {point.x:.1f} {point.y:.1f}" + (f"  {point.label}" if point.label else ""))
    elif task == "point" and not located.outside:
        print("no points in the answer")
    if located.outside:
        print(f"{len(located.outside)} point(s) in the answer lie outside the image and were dropped")
    if parsed.malformed:
        print("the answer was not well formed: " + "; ".join(parsed.problems))
    print(
        f"[{engine.model_name} on {engine.device}, {str(engine.dtype).removeprefix('torch.')}; "
        f"{timings['total_s']:.2f} s, {result.timings.new_tokens} tokens]",
        file=sys.stderr,
    )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
