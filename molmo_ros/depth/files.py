"""Depth and camera files: a depth image saved by a driver, and the calibration YAML of camera_calibration.

A depth PNG holds 16-bit millimetres (what RealSense and most drivers save), a .npy float metres; 0 and
non-finite values mean "no depth". The calibration YAML is what ROS's camera_calibration writes.
"""

import sys
from pathlib import Path

import cv2
import numpy as np
import yaml

from molmo_ros.depth.camera import CameraModel
from molmo_ros.depth.errors import DepthError
from molmo_ros.depth.images import read_depth

IS_BIGENDIAN = sys.byteorder == "big"


def read_depth_file(path: Path) -> np.ndarray:
    """HxW float32 metres, NaN where there is no depth, from a 16-bit PNG (mm) or a .npy (m)."""
    suffix = path.suffix.lower()
    if suffix not in (".png", ".npy"):
        raise DepthError(f"depth file {path} must be a 16-bit .png (millimetres) or a .npy (metres)")
    if not path.is_file():
        raise DepthError(f"depth file not found: {path}")
    if suffix == ".png":
        values = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if values is None:
            raise DepthError(f"cannot read {path} as a PNG image")
        if values.dtype != np.uint16 or values.ndim != 2:
            raise DepthError(
                f"depth PNG {path} must be single-channel 16-bit (millimetres); it holds "
                f"{1 if values.ndim == 2 else values.shape[2]} channel(s) of {values.dtype}"
            )
        encoding = "16UC1"
    else:
        try:
            values = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise DepthError(f"cannot read {path} as a .npy array: {error}") from error
        if values.ndim != 2 or values.dtype.kind != "f":
            raise DepthError(
                f"depth .npy {path} must be a 2D float array of metres; it holds {values.dtype} of shape "
                f"{values.shape} (save millimetres as a 16-bit PNG instead)"
            )
        values = values.astype(np.float32)
        encoding = "32FC1"
    values = np.ascontiguousarray(values)
    height, width = values.shape
    try:
        return read_depth(values, encoding, height, width, values.strides[0], IS_BIGENDIAN).metres()
    except DepthError as error:
        raise DepthError(f"{path}: {error}") from error


def read_camera_info(path: Path) -> CameraModel:
    """The camera of a camera_calibration YAML file (image_width, camera_matrix, projection_matrix, ...)."""
    try:
        with path.open() as file:
            calibration = yaml.safe_load(file)
    except FileNotFoundError as error:
        raise DepthError(f"camera info file not found: {path}") from error
    except (OSError, yaml.YAMLError) as error:
        raise DepthError(f"cannot read {path} as YAML: {error}") from error
    if not isinstance(calibration, dict):
        raise DepthError(f"{path} is not a camera calibration YAML (a mapping with image_width, ...)")

    def entry(key: str) -> object:
        if key not in calibration:
            raise DepthError(f"{path} has no {key}; camera_calibration writes it")
        return calibration[key]

    def matrix(key: str) -> list[float]:
        value = entry(key)
        data = value.get("data") if isinstance(value, dict) else None
        if not isinstance(data, list):
            raise DepthError(f"{path}: {key} must be a mapping with a data list")
        return data

    def size(key: str) -> int:
        value = entry(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise DepthError(f"{path}: {key} must be a whole number of pixels, not {value!r}")
        return value

    width, height = size("image_width"), size("image_height")
    coefficients = matrix("distortion_coefficients") if "distortion_coefficients" in calibration else []
    k, p = matrix("camera_matrix"), matrix("projection_matrix")
    try:
        return CameraModel.from_camera_info(
            width, height, str(calibration.get("distortion_model", "")), coefficients, k, p
        )
    except (TypeError, ValueError) as error:  # a DepthError, or data that are not numbers
        raise DepthError(f"{path}: {error}") from error
