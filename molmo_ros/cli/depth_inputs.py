"""Depth and camera files for `molmo-point --depth`, read and checked before the model is loaded.

    molmo-point --image rgb.png --depth depth.png --intrinsics 615,615,319.5,239.5 --query mug --format json
    molmo-point --image rgb.png --depth depth.npy --camera-info camera.yaml --query mug

A depth PNG holds 16-bit millimetres (what RealSense and most drivers save), a .npy float metres; 0 and
non-finite values mean "no depth". --camera-info reads the YAML that ROS's camera_calibration writes.
"""

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml

from molmo_ros.depth import (
    CameraModel,
    DepthError,
    DepthSettings,
    LiftedPoint,
    check_depth_geometry,
    depth_to_metres,
    lift_points,
)
from molmo_ros.geometry import PixelPoint

IS_BIGENDIAN = sys.byteorder == "big"


class DepthInputError(ValueError):
    """A depth or camera file, or a combination of options, that cannot be used; says how to fix it."""


@dataclass(frozen=True)
class DepthInput:
    """A depth image in metres registered to the colour image, and the colour camera's model."""

    depth_m: np.ndarray
    camera: CameraModel
    image_size: tuple[int, int]  # width, height of the colour image

    def lift(self, points: Sequence[PixelPoint], settings: DepthSettings | None = None) -> list[LiftedPoint]:
        return lift_points(
            [(point.x, point.y) for point in points],
            self.image_size,
            self.depth_m,
            self.camera,
            settings or DepthSettings(),
        )


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


def load_depth_input(args: argparse.Namespace, width: int, height: int) -> DepthInput | None:
    """The depth input the options ask for, checked against the colour image's size; None without --depth."""
    has_camera = args.intrinsics is not None or args.camera_info is not None
    if args.depth is None:
        if has_camera:
            raise DepthInputError(
                "--intrinsics and --camera-info need --depth (a depth image to lift points with)"
            )
        return None
    if not has_camera:
        raise DepthInputError("--depth needs the camera: --intrinsics FX,FY,CX,CY or --camera-info FILE")
    depth_m = read_depth_file(args.depth)
    if args.intrinsics is not None:
        camera = parse_intrinsics(args.intrinsics, width, height)
    else:
        camera = read_camera_info(args.camera_info)
    try:
        check_depth_geometry((width, height), depth_m.shape, camera)
    except DepthError as error:
        raise DepthInputError(f"{args.depth} with the image: {error}") from error
    return DepthInput(depth_m, camera, (width, height))


def read_depth_file(path: Path) -> np.ndarray:
    """HxW float32 metres, NaN where there is no depth, from a 16-bit PNG (mm) or a .npy (m)."""
    suffix = path.suffix.lower()
    if suffix not in (".png", ".npy"):
        raise DepthInputError(f"depth file {path} must be a 16-bit .png (millimetres) or a .npy (metres)")
    if not path.is_file():
        raise DepthInputError(f"depth file not found: {path}")
    if suffix == ".png":
        values = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if values is None:
            raise DepthInputError(f"cannot read {path} as a PNG image")
        if values.dtype != np.uint16 or values.ndim != 2:
            raise DepthInputError(
                f"depth PNG {path} must be single-channel 16-bit (millimetres); it holds "
                f"{1 if values.ndim == 2 else values.shape[2]} channel(s) of {values.dtype}"
            )
        encoding = "16UC1"
    else:
        try:
            values = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise DepthInputError(f"cannot read {path} as a .npy array: {error}") from error
        if values.ndim != 2 or values.dtype.kind != "f":
            raise DepthInputError(
                f"depth .npy {path} must be a 2D float array of metres; it holds {values.dtype} of shape "
                f"{values.shape} (save millimetres as a 16-bit PNG instead)"
            )
        values = values.astype(np.float32)
        encoding = "32FC1"
    values = np.ascontiguousarray(values)
    height, width = values.shape
    try:
        return depth_to_metres(values, encoding, height, width, values.strides[0], IS_BIGENDIAN)
    except DepthError as error:
        raise DepthInputError(f"{path}: {error}") from error


def parse_intrinsics(text: str, width: int, height: int) -> CameraModel:
    """A distortion-free camera from 'fx,fy,cx,cy' (pixels) for a width x height image."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4 or not all(math.isfinite(value) for value in values):
        raise DepthInputError(f"--intrinsics must be four numbers fx,fy,cx,cy in pixels, not {text!r}")
    fx, fy, cx, cy = values
    try:
        return CameraModel.pinhole(width, height, fx, fy, cx, cy)
    except DepthError as error:
        raise DepthInputError(f"--intrinsics {text}: {error}") from error


def read_camera_info(path: Path) -> CameraModel:
    """The camera of a camera_calibration YAML file (image_width, camera_matrix, projection_matrix, ...)."""
    try:
        with path.open() as file:
            calibration = yaml.safe_load(file)
    except FileNotFoundError as error:
        raise DepthInputError(f"camera info file not found: {path}") from error
    except (OSError, yaml.YAMLError) as error:
        raise DepthInputError(f"cannot read {path} as YAML: {error}") from error
    if not isinstance(calibration, dict):
        raise DepthInputError(f"{path} is not a camera calibration YAML (a mapping with image_width, ...)")

    def entry(key: str) -> object:
        if key not in calibration:
            raise DepthInputError(f"{path} has no {key}; camera_calibration writes it, or use --intrinsics")
        return calibration[key]

    def matrix(key: str) -> list[float]:
        value = entry(key)
        data = value.get("data") if isinstance(value, dict) else None
        if not isinstance(data, list):
            raise DepthInputError(f"{path}: {key} must be a mapping with a data list")
        return data

    def size(key: str) -> int:
        value = entry(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise DepthInputError(f"{path}: {key} must be a whole number of pixels, not {value!r}")
        return value

    width, height = size("image_width"), size("image_height")
    coefficients = matrix("distortion_coefficients") if "distortion_coefficients" in calibration else []
    k, p = matrix("camera_matrix"), matrix("projection_matrix")
    try:
        return CameraModel.from_camera_info(
            width, height, str(calibration.get("distortion_model", "")), coefficients, k, p
        )
    except (TypeError, ValueError) as error:  # a DepthError, or data that are not numbers
        raise DepthInputError(f"{path}: {error}") from error


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
