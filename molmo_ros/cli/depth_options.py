"""`molmo-point --depth`: the depth options, read and checked before the model is loaded, and 3D output.

    molmo-point --image rgb.png --depth depth.png --intrinsics 615,615,319.5,239.5 --query mug --format json
    molmo-point --image rgb.png --depth depth.npy --camera-info camera.yaml --query mug
"""

import argparse
import math
from pathlib import Path

from molmo_ros.depth.camera import CameraModel
from molmo_ros.depth.errors import DepthError
from molmo_ros.depth.files import read_camera_info, read_depth_file
from molmo_ros.depth.lifting import LiftedPoint, check_depth_geometry
from molmo_ros.depth.pairing import PairedDepth


def add_depth_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--depth",
        type=Path,
        help="depth image registered to --image: 16-bit PNG in millimetres or .npy in metres; the output "
        "then has 3D points (needs --intrinsics or --camera-info)",
    )
    camera = parser.add_mutually_exclusive_group()
    camera.add_argument(
        "--intrinsics",
        metavar="FX,FY,CX,CY",
        help="pinhole intrinsics of --image in pixels, as in CameraInfo (the top-left pixel's centre is 0,0)",
    )
    camera.add_argument(
        "--camera-info",
        type=Path,
        metavar="FILE",
        help="camera calibration YAML of --image (camera_calibration)",
    )


def load_depth_input(args: argparse.Namespace, width: int, height: int) -> PairedDepth | None:
    """The depth the options ask for, checked against the colour image's size; None without --depth.
    Raises DepthError with what to change."""
    has_camera = args.intrinsics is not None or args.camera_info is not None
    if args.depth is None:
        if has_camera:
            raise DepthError(
                "--intrinsics and --camera-info need --depth (a depth image to lift points with)"
            )
        return None
    if not has_camera:
        raise DepthError("--depth needs the camera: --intrinsics FX,FY,CX,CY or --camera-info FILE")
    depth_m = read_depth_file(args.depth)
    camera: CameraModel
    if args.intrinsics is not None:
        camera = parse_intrinsics(args.intrinsics, width, height)
    else:
        camera = read_camera_info(args.camera_info)
    try:
        check_depth_geometry((width, height), depth_m.shape, camera)
    except DepthError as error:
        raise DepthError(f"{args.depth} with the image: {error}") from error
    return PairedDepth(depth_m, camera, stamp_ns=None)


def parse_intrinsics(text: str, width: int, height: int) -> CameraModel:
    """A distortion-free camera from 'fx,fy,cx,cy' (pixels) for a width x height image."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4 or not all(math.isfinite(value) for value in values):
        raise DepthError(f"--intrinsics must be four numbers fx,fy,cx,cy in pixels, not {text!r}")
    fx, fy, cx, cy = values
    try:
        return CameraModel.pinhole(width, height, fx, fy, cx, cy)
    except DepthError as error:
        raise DepthError(f"--intrinsics {text}: {error}") from error


def lifted_to_json(lifted: list[LiftedPoint]) -> list[dict[str, object]]:
    """JSON-safe 3D points: metres in the camera's optical frame; null where there is no depth."""

    def number(value: float) -> float | None:
        return None if math.isnan(value) else value

    return [
        {
            "xyz": None if point.xyz is None else list(point.xyz),
            "valid": point.valid,
            "spread": number(point.spread),
            "reason": point.reason,
        }
        for point in lifted
    ]


def describe_lifted(lifted: list[LiftedPoint]) -> list[str]:
    """One line per point for the text output."""
    lines = []
    for number, point in enumerate(lifted, start=1):
        if point.xyz is None:
            lines.append(f"  {number}. no 3D: {point.reason}")
        else:
            x, y, z = point.xyz
            lines.append(f"  {number}. x={x:.3f} y={y:.3f} z={z:.3f} m (spread {point.spread:.3f} m)")
    return lines
