"""Pointed pixels to metric 3D points, from a registered depth image and the colour camera's CameraInfo.

Pure numpy + OpenCV, no ROS import: the node, the pointing service and the `molmo-point` CLI all lift
points the same way, and the arithmetic is tested without DDS. The node converts sensor_msgs/Image and
CameraInfo into the plain fields taken here.

Conventions:
- Points come in molmo_ros's continuous pixel coordinates (see geometry.py: pixel column c spans
  [c, c + 1)). OpenCV, CameraInfo and image_geometry put the centre of pixel 0 at 0, so a point x is
  OpenCV coordinate x - 0.5 before undistortion and projection.
- The result is in the colour camera's optical frame (x right, y down, z forward, metres). Z is the depth
  value, the distance along the optical axis (not the range), as depth_image_proc reads it:
  X = (u - cx) Z / fx, Y = (v - cy) Z / fy, with (u, v) the undistorted pixel and fx, fy, cx, cy from P.
- Undistortion follows image_geometry: OpenCV undistortPoints with K, D and P= for plumb_bob and
  rational_polynomial, cv2.fisheye.undistortPoints for equidistant; no distortion is the pinhole model.
  CameraInfo's R is not applied: it rotates into a stereo pair's rectified frame, and the points are wanted
  in the camera's own optical frame (the result's header.frame_id). Likewise P's Tx, Ty (the baseline of a
  stereo pair's second camera) are not applied.
- The depth image is registered to the colour image (same field of view, same pixel grid up to a scale),
  so depth is sampled at the pointed pixel itself, not at its undistorted position.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from molmo_ros.settings_fields import check_setting_bounds, setting

DISTORTION_MODELS = ("plumb_bob", "rational_polynomial", "equidistant")
# How many coefficients OpenCV's standard (non-fisheye) model accepts; the fisheye model takes exactly 4.
_STANDARD_COEFFICIENT_COUNTS = (4, 5, 8, 12, 14)
_FISHEYE_COEFFICIENT_COUNT = 4

# OpenCV stops undistorting a point after 5 fixed-point iterations by default, which leaves 0.06-0.12 px
# of error near the corners of a strongly distorted lens (k1 = -0.3); 100 iterations or a step below
# 1e-12 brings the projectPoints round trip to 1e-12 px at the same cost for mild lenses.
UNDISTORT_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-12)

DEPTH_ENCODINGS = ("16UC1", "mono16", "32FC1")
# metres per unit of integer depth: millimetres, as depth_image_proc reads uint16 depth
MILLIMETRES = 0.001
# A depth image may differ from the colour image's aspect ratio by this many depth pixels (rounding of
# a downscale to whole pixels: 1280x720 to 427x240 is off by 0.19 rows); more is another field of view.
ASPECT_TOLERANCE_PX = 1.0


class DepthError(ValueError):
    """Depth or camera geometry that cannot be used; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class DepthSettings:
    """How pointed pixels are lifted to 3D; the same for every camera."""

    depth_window: int = setting(
        5,
        "Side in depth-image pixels of the square window around a point whose valid depths are "
        "combined by their median (odd sizes are centred on the pixel under the point).",
        minimum=1,
        maximum=101,
    )
    min_depth: float = setting(
        0.1, "Depths nearer than this many metres are ignored (sensor noise).", minimum=0.0, maximum=1000.0
    )
    max_depth: float = setting(
        20.0,
        "Depths farther than this many metres are ignored (beyond the sensor's useful range).",
        minimum=0.0,
        maximum=1000.0,
    )
    depth_search_radius: int = setting(
        10,
        "When the window holds no valid depth, use the valid depth nearest the point among the pixels up "
        "to this many rows and columns (depth-image pixels) from it; 0 disables the search.",
        minimum=0,
        maximum=500,
    )
    max_depth_skew: float = setting(
        0.05,
        "Seconds the depth frame's stamp may differ from the colour frame's; the nearest within it is used.",
        minimum=0.0,
        maximum=10.0,
    )

    def __post_init__(self) -> None:
        check_setting_bounds(self)
        if not self.min_depth < self.max_depth:
            raise ValueError(
                f"min_depth ({self.min_depth:g} m) must be less than max_depth ({self.max_depth:g} m)"
            )


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

    def rays(self, points_px: np.ndarray) -> np.ndarray:
        """Nx3 rays (x, y, 1) in the optical frame; a point at depth Z is Z times its ray."""
        rectified = self.rectify(points_px)
        x = (rectified[:, 0] - self.cx) / self.fx
        y = (rectified[:, 1] - self.cy) / self.fy
        return np.stack([x, y, np.ones_like(x)], axis=1)


@dataclass(frozen=True)
class LiftedPoint:
    """One pointed pixel in 3D, or why it has no 3D position."""

    xyz: tuple[float, float, float] | None  # metres in the colour camera's optical frame; None if invalid
    depth: float  # Z in metres that was used; NaN when invalid
    spread: float  # median absolute deviation (metres) of the valid depths around the depth used; NaN if none
    search_distance: float  # depth-image pixels from the point to the depth used; 0 when the window had some
    reason: str = ""  # empty when valid

    @property
    def valid(self) -> bool:
        return self.xyz is not None


class DepthImage:
    """A depth image in its message's own buffer, converted to metres only where it is read.

    Converting a whole 1080p frame takes several milliseconds, and lifting a point reads a few small
    windows of it, so slicing (`image[top:bottom, left:right]`) converts just that slice (NaN where there
    is no depth). `read_depth` checks the image when it builds one.
    """

    def __init__(self, values: np.ndarray, metres_per_unit: float | None) -> None:
        self._values = values  # HxW, the message's own dtype and byte order
        self._metres_per_unit = metres_per_unit  # None: the values are metres already (float depth)

    @property
    def shape(self) -> tuple[int, int]:
        return self._values.shape

    def __getitem__(self, key: object) -> np.ndarray:
        values = self._values[key]
        metres = values.astype(np.float32)
        if self._metres_per_unit is None:
            metres[~np.isfinite(metres) | (metres == 0)] = np.nan
        else:
            metres *= np.float32(self._metres_per_unit)
            metres[values == 0] = np.nan
        return metres


def read_depth(
    data: bytes | bytearray | memoryview | np.ndarray,
    encoding: str,
    height: int,
    width: int,
    step: int,
    is_bigendian: bool,
    scale: float | None = None,
) -> DepthImage:
    """The depth image in the fields of a sensor_msgs/Image, checked, without converting it.

    16UC1 and mono16 are millimetres unless `scale` (metres per unit) says otherwise; 32FC1 is metres and
    ignores `scale`. 0, NaN and +-inf mean "no depth", as in depth_image_proc.
    """
    if encoding not in DEPTH_ENCODINGS:
        raise DepthError(
            f"depth encoding {encoding!r} is not supported; use {', '.join(DEPTH_ENCODINGS)} "
            "(16-bit in millimetres, or float in metres)"
        )
    if scale is not None and not (math.isfinite(scale) and scale > 0):
        raise DepthError(f"depth scale must be a positive number of metres per unit, not {scale!r}")
    is_float = encoding == "32FC1"
    pixel_bytes = 4 if is_float else 2
    if height <= 0 or width <= 0:
        raise DepthError(f"{encoding} depth image has no pixels: height {height}, width {width}")
    row_bytes = width * pixel_bytes
    if step < row_bytes or step % pixel_bytes:
        raise DepthError(
            f"{encoding} depth image step {step} does not fit width {width} x {pixel_bytes} bytes per "
            f"pixel = {row_bytes} (it must be at least that and a multiple of {pixel_bytes})"
        )
    if isinstance(data, np.ndarray):
        buffer = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    else:
        buffer = np.frombuffer(data, dtype=np.uint8)
    if buffer.size < step * height:
        raise DepthError(
            f"{encoding} depth image has {buffer.size} bytes, but height {height} x step {step} needs "
            f"{step * height}"
        )
    order = ">" if is_bigendian else "<"
    dtype = np.dtype(f"{order}f4" if is_float else f"{order}u2")
    values = buffer[: step * height].reshape(height, step)[:, :row_bytes].view(dtype)
    return DepthImage(values, None if is_float else (MILLIMETRES if scale is None else scale))


def depth_to_metres(
    data: bytes | bytearray | memoryview | np.ndarray,
    encoding: str,
    height: int,
    width: int,
    step: int,
    is_bigendian: bool,
    scale: float | None = None,
) -> np.ndarray:
    """HxW float32 metres from the fields of a sensor_msgs/Image (all of it; see read_depth)."""
    return read_depth(data, encoding, height, width, step, is_bigendian, scale)[:, :]


def check_depth_geometry(
    image_size: tuple[int, int], depth_shape: tuple[int, ...], camera: CameraModel
) -> None:
    """Raises DepthError unless the CameraInfo and the depth image's shape fit a width x height image.

    lift_points checks this itself; it is public so that input files can be checked before a model runs.
    """
    width, height = image_size
    camera.check_image_size(width, height)
    if len(depth_shape) != 2 or 0 in depth_shape:
        raise DepthError(f"depth image must be a non-empty HxW array, got shape {tuple(depth_shape)}")
    depth_height, depth_width = depth_shape
    if abs(height * depth_width / width - depth_height) > ASPECT_TOLERANCE_PX:
        raise DepthError(
            f"depth image is {depth_width}x{depth_height} but the colour image is {width}x{height}: another "
            "aspect ratio, so they do not cover the same field of view; use a depth image registered "
            "(aligned) to the colour image"
        )


def lift_points(
    points_px: Sequence[tuple[float, float]] | np.ndarray,
    image_size: tuple[int, int],
    depth_m: np.ndarray | DepthImage,
    camera: CameraModel,
    settings: DepthSettings,
) -> list[LiftedPoint]:
    """Each point (x, y) of a width x height colour image, lifted with a registered depth image in metres.

    Raises DepthError when the whole depth frame or CameraInfo cannot be used (wrong CameraInfo size,
    another aspect ratio); a point without valid depth near it is returned invalid, with its reason.
    """
    check_depth_geometry(image_size, depth_m.shape, camera)
    width, height = image_size
    scale_x, scale_y = depth_m.shape[1] / width, depth_m.shape[0] / height
    points = np.asarray(points_px, dtype=np.float64).reshape(-1, 2)
    if points.size == 0:
        return []
    rays = camera.rays(points)
    lifted = []
    for (x, y), ray in zip(points, rays, strict=True):
        depth, spread, distance = _sample_depth(depth_m, x * scale_x, y * scale_y, settings)
        if math.isnan(depth):
            reason = (
                f"no valid depth within {settings.depth_search_radius} depth-image pixels of the point "
                f"(holes, or depths outside {settings.min_depth:g}-{settings.max_depth:g} m)"
            )
            lifted.append(LiftedPoint(None, math.nan, math.nan, math.nan, reason))
            continue
        xyz = (float(ray[0] * depth), float(ray[1] * depth), depth)
        lifted.append(LiftedPoint(xyz, depth, spread, distance))
    return lifted


def camera_info_topic_beside(image_topic: str) -> str:
    """The CameraInfo topic of an image topic, as image_transport names it: camera_info in the same namespace.

    /camera/image_raw -> /camera/camera_info; a transport suffix (/camera/image_raw/compressed) is skipped.
    """
    parts = image_topic.rstrip("/").split("/")
    if len(parts) > 1 and parts[-1] in ("compressed", "compressedDepth", "theora", "zstd"):
        parts = parts[:-1]
    return "/".join([*parts[:-1], "camera_info"])


def _sample_depth(
    depth_m: np.ndarray | DepthImage, x: float, y: float, settings: DepthSettings
) -> tuple[float, float, float]:
    """(depth, spread, search distance) at depth-image point (x, y); NaN depth when none is valid."""
    rows, columns = depth_m.shape
    column = min(int(math.floor(x)), columns - 1)  # x == width lies on the last column's right edge
    row = min(int(math.floor(y)), rows - 1)
    window = _window_values(depth_m, x, y, settings)
    if window.size:
        median = float(np.median(window))
        return median, _median_absolute_deviation(window, median), 0.0
    radius = settings.depth_search_radius
    top, left = max(0, row - radius), max(0, column - radius)
    patch = depth_m[top : row + radius + 1, left : column + radius + 1]
    valid = _valid(patch, settings)
    if not valid.any():
        return math.nan, math.nan, math.nan
    found_rows, found_columns = np.nonzero(valid)
    # the valid pixel whose centre is nearest the point; equally near ones give their median
    distances = np.hypot(found_columns + left + 0.5 - x, found_rows + top + 0.5 - y)
    nearest = distances.min()
    ties = distances == nearest
    depth = float(np.median(patch[found_rows[ties], found_columns[ties]]))
    # spread of the window around the depth that was found, so a planner still sees an edge there
    centre_x = float(found_columns[ties][0] + left + 0.5)
    centre_y = float(found_rows[ties][0] + top + 0.5)
    around = _window_values(depth_m, centre_x, centre_y, settings)
    return depth, _median_absolute_deviation(around, float(np.median(around))), float(nearest)


def _window_values(
    depth_m: np.ndarray | DepthImage, x: float, y: float, settings: DepthSettings
) -> np.ndarray:
    """Valid depths of the depth_window-sided window centred nearest (x, y), clipped to the image."""
    side = settings.depth_window
    left = math.floor(x - (side - 1) / 2)
    top = math.floor(y - (side - 1) / 2)
    rows, columns = depth_m.shape
    left = min(left, columns - 1)  # keep at least the edge pixel for a point on the right or bottom edge
    top = min(top, rows - 1)
    window = depth_m[max(0, top) : max(0, top + side), max(0, left) : max(0, left + side)]
    return window[_valid(window, settings)]


def _valid(depths: np.ndarray, settings: DepthSettings) -> np.ndarray:
    with np.errstate(invalid="ignore"):  # NaN compares False, which is what "no depth" needs
        return (depths >= settings.min_depth) & (depths <= settings.max_depth)


def _median_absolute_deviation(values: np.ndarray, median: float) -> float:
    return float(np.median(np.abs(values - median)))


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
