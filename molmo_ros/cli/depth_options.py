"""`molmo-point --depth`: the depth options, read and checked before the model is loaded, and 3D output.

molmo-point --image rgb.png --depth depth.png --intrinsics 615,615,319.5,239.5 --query mug --format json
molmo-point --image rgb.png --depth depth.npy --camera-info camera.yaml --query mug
"""

import argparse
import math
from pathlib import Path

from molmo_ros.cli.settings_options import add_setting_options, with_option_names
from molmo_ros.depth.camera import CameraModel
from molmo_ros.depth.errors import DepthError
from molmo_ros.depth.files import read_camera_info, read_depth_file
from molmo_ros.depth.lifting import LiftedPoint, check_depth_geometry
from molmo_ros.depth.pairing import PairedDepth
from molmo_ros.depth.settings import DepthSettings
from molmo_ros.depth.transforms import approach_pose, no_negative_zeros
from molmo_ros.settings_fields import RefersToSettings


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
    lifting = parser.add_argument_group(
        "depth lifting", "how points are lifted with --depth (the node's depth parameters)"
    )
    add_setting_options(lifting, DepthSettings)


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
    """JSON-safe 3D points, with how far to trust them and the surface normal and approach pose: metres
    in the camera's optical frame; null where there is none (and the reason)."""

    def number(value: float) -> float | None:
        return None if math.isnan(value) else value

    def approach(point: LiftedPoint) -> dict[str, list[float]] | None:
        if point.xyz is None or point.normal is None:
            return None
        pose = approach_pose(point.xyz, point.normal)
        return {"position": list(pose.position), "orientation_xyzw": list(pose.orientation)}

    return [
        {
            "xyz": None if point.xyz is None else list(point.xyz),
            "valid": point.valid,
            "support": point.support,
            "edge": point.edge,
            "depth_step": number(point.depth_step),
            "fallback": point.fallback,
            "search_distance": number(point.search_distance),
            "normal": None if point.normal is None else list(point.normal),
            "normal_error": number(point.normal_error),
            "normal_residual": number(point.normal_residual),
            "normal_inliers": point.normal_inliers,
            "normal_reason": normal_reason(point),
            "approach_pose": approach(point),
            "reason": point.reason,
        }
        for point in lifted
    ]


def normal_reason(point: LiftedPoint) -> str:
    """Why the point has no normal, naming the options it is about; empty when it has one."""
    return with_option_names(RefersToSettings(point.normal_reason, point.normal_settings))


def describe_lifted(lifted: list[LiftedPoint]) -> list[str]:
    """Two lines per point for the text output: where, and how far to trust it."""
    lines = []
    for number, point in enumerate(lifted, start=1):
        if point.xyz is None:
            lines.append(f"  {number}. no 3D: {point.reason}")
            continue
        x, y, z = point.xyz
        edge = f"edge, depth step {point.depth_step:+.3f} m" if point.edge else "no edge"
        found = (
            f", the pointed pixel had no depth: nearest surface used, {point.search_distance:.1f} px away"
            if point.fallback
            else ""
        )
        lines.append(f"  {number}. x={x:.3f} y={y:.3f} z={z:.3f} m (support {point.support}, {edge}{found})")
        if point.normal is None:
            lines.append(f"     no normal: {normal_reason(point)}")
            continue
        nx, ny, nz = no_negative_zeros([round(value, 3) for value in point.normal])
        lines.append(
            f"     normal ({nx:.3f}, {ny:.3f}, {nz:.3f}) within {point.normal_error:.1f} degrees (1 sigma), "
            f"fit RMS {point.normal_residual * 1000:.1f} mm over {point.normal_inliers} points"
        )
    return lines
