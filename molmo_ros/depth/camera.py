"""The colour camera's model, built from the fields of a sensor_msgs/CameraInfo: the one camera type of
molmo_ros (the node converts CameraInfo messages, the CLI calibration files and intrinsics, into it).

Undistortion follows image_geometry: OpenCV undistortPoints with K, D and P= for plumb_bob and
rational_polynomial, cv2.fisheye.undistortPoints for equidistant; no distortion is the pinhole model.
CameraInfo's R is not applied: it rotates into a stereo pair's rectified frame, and the points are wanted
in the camera's own optical frame. Likewise P's Tx, Ty (the baseline of a stereo pair's second camera) are
not applied.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from molmo_ros.depth.errors import DepthError

DISTORTION_MODELS = ("plumb_bob", "rational_polynomial", "equidistant")
# How many coefficients OpenCV's standard (non-fisheye) model accepts; the fisheye model takes exactly 4.
_STANDARD_COEFFICIENT_COUNTS = (4, 5, 8, 12, 14)
_FISHEYE_COEFFICIENT_COUNT = 4

# OpenCV stops undistorting a point after 5 fixed-point iterations by default, which leaves 0.06-0.12 px
# of error near the corners of a strongly distorted lens (k1 = -0.3); 100 iterations or a step below
# 1e-12 brings the projectPoints round trip to 1e-12 px at the same cost for mild lenses.
UNDISTORT_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-12)


@dataclass(frozen=True, eq=False)
class CameraModel:
    """What of a sensor_msgs/CameraInfo turns a pixel into a ray; build it with from_camera_info."""

    width: int
    height: int
    distortion_model: str  # "" when there is no distortion to undo
    d: np.ndarray  # float64 coefficients; empty when there is no distortion
    k: np.ndarray  # 3x3
    p: np.ndarray  # 3x4

    @classmethod
    def from_camera_info(
        cls,
        width: int,
        height: int,
        distortion_model: str,
        d: Sequence[float],
        k: Sequence[float],
        p: Sequence[float],
    ) -> "CameraModel":
        """From CameraInfo's width, height, distortion_model, d, k (9, row-major) and p (12, row-major)."""
        if width <= 0 or height <= 0:
            raise DepthError(
                f"CameraInfo size is {width}x{height}; it must be the colour image's size "
                "(a calibrated camera driver fills width and height)"
            )
        k_matrix = _matrix(k, (3, 3), "K")
        p_matrix = _matrix(p, (3, 4), "P")
        coefficients = np.asarray(d, dtype=np.float64).reshape(-1)
        if not np.all(np.isfinite(coefficients)):
            raise DepthError(f"CameraInfo D holds non-finite values: {coefficients.tolist()}")
        if not np.any(coefficients):
            return cls(width, height, "", np.zeros(0), k_matrix, p_matrix)
        if distortion_model not in DISTORTION_MODELS:
            raise DepthError(
                f"CameraInfo distortion_model {distortion_model!r} is not supported; use one of "
                f"{', '.join(DISTORTION_MODELS)}, or rectify the image and publish D as zeros"
            )
        counts = (
            (_FISHEYE_COEFFICIENT_COUNT,)
            if distortion_model == "equidistant"
            else _STANDARD_COEFFICIENT_COUNTS
        )
        if coefficients.size not in counts:
            raise DepthError(
                f"CameraInfo D has {coefficients.size} coefficients, but {distortion_model} takes "
                f"{' or '.join(map(str, counts))}"
            )
        if k_matrix[0, 0] <= 0 or k_matrix[1, 1] <= 0:
            raise DepthError(
                f"CameraInfo K has focal lengths fx={k_matrix[0, 0]:g}, fy={k_matrix[1, 1]:g}; undistortion "
                "needs positive ones (the camera needs a calibration)"
            )
        return cls(width, height, distortion_model, coefficients, k_matrix, p_matrix)

    @classmethod
    def pinhole(cls, width: int, height: int, fx: float, fy: float, cx: float, cy: float) -> "CameraModel":
        """A camera without distortion; cx, cy in CameraInfo's convention (centre of pixel 0 at 0)."""
        k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
        p = [fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
        return cls.from_camera_info(width, height, "", [], k, p)

    @property
    def fx(self) -> float:
        return float(self.p[0, 0])

    @property
    def fy(self) -> float:
        return float(self.p[1, 1])

    @property
    def cx(self) -> float:
        return float(self.p[0, 2])

    @property
    def cy(self) -> float:
        return float(self.p[1, 2])

    def check_image_size(self, width: int, height: int) -> None:
        """Raises DepthError unless this CameraInfo describes an image of width x height."""
        if (self.width, self.height) != (width, height):
            raise DepthError(
                f"CameraInfo is for {self.width}x{self.height} images but the colour image is "
                f"{width}x{height}; use the camera_info topic published beside this image topic"
            )

    def rectify(self, points_px: np.ndarray) -> np.ndarray:
        """Nx2 undistorted pixels (OpenCV convention, P intrinsics) of Nx2 molmo_ros continuous points."""
        opencv = np.asarray(points_px, dtype=np.float64).reshape(-1, 1, 2) - 0.5
        if self.distortion_model == "":
            return opencv.reshape(-1, 2)
        if self.distortion_model == "equidistant":
            undistort = cv2.fisheye.undistortPoints
        else:
            undistort = cv2.undistortPoints
        undistorted = undistort(opencv, self.k, self.d, None, None, self.p[:, :3], UNDISTORT_CRITERIA)
        return undistorted.reshape(-1, 2)

    def pixel_rays(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The x and y components (as in `rays`) of the rays of continuous points (xs, ys), arrays of one
        shape."""
        xs, ys = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
        rectified = self.rectify(np.stack([xs.reshape(-1), ys.reshape(-1)], axis=1))
        x = (rectified[:, 0] - self.cx) / self.fx
        y = (rectified[:, 1] - self.cy) / self.fy
        return x.reshape(xs.shape), y.reshape(xs.shape)

    def rays(self, points_px: np.ndarray) -> np.ndarray:
        """Nx3 rays (x, y, 1) in the optical frame; a point at depth Z is Z times its ray."""
        points = np.asarray(points_px, dtype=np.float64).reshape(-1, 2)
        x, y = self.pixel_rays(points[:, 0], points[:, 1])
        return np.stack([x, y, np.ones_like(x)], axis=1)


def _matrix(values: Sequence[float], shape: tuple[int, int], name: str) -> np.ndarray:
    matrix = np.asarray(values, dtype=np.float64)
    if matrix.size != shape[0] * shape[1]:
        raise DepthError(f"CameraInfo {name} has {matrix.size} values; it needs {shape[0] * shape[1]}")
    matrix = matrix.reshape(shape)
    if not np.all(np.isfinite(matrix)):
        raise DepthError(f"CameraInfo {name} holds non-finite values: {matrix.reshape(-1).tolist()}")
    if not np.any(matrix):
        raise DepthError(
            f"CameraInfo {name} is all zeros: the camera is not calibrated (its driver needs a "
            "calibration file)"
        )
    if name == "P" and (matrix[0, 0] <= 0 or matrix[1, 1] <= 0):
        raise DepthError(
            f"CameraInfo P has focal lengths fx={matrix[0, 0]:g}, fy={matrix[1, 1]:g}; they must be positive"
        )
    return matrix
