"""`image_folder_publisher`: a camera stand-in that publishes the images of a folder, for demos and trials.

Beside each image it publishes, as an RGB-D camera driver does, a depth image registered to it (16UC1,
millimetres) and the CameraInfo of a plausible pinhole camera, all with the same stamp and frame_id. The
depth is a synthetic scene of planes, boxes, a thin pole and a tilted board at known places (SCENE
below), not a measurement of the picture: it lets the demo and tests exercise the whole 3D path (thin
parts, edges, surface normals) without a real camera.

Images are loaded and encoded once; each publish only restamps the messages, so the publisher
itself costs almost nothing and measurements of the pointer node are not disturbed by it.
"""

import math
import sys
from dataclasses import dataclass
from itertools import cycle
from pathlib import Path

import cv2
import numpy as np
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header

from molmo_ros.depth.images import MILLIMETRES
from molmo_ros.image_conversion import rgb_to_raw
from molmo_ros.nodes.dds_profile import large_image_profile
from molmo_ros.nodes.parameters import declare_setting_parameters, read_settings
from molmo_ros.nodes.runner import CONFIGURATION_ERRORS, run_node
from molmo_ros.pointing.settings import camera_info_topic_beside
from molmo_ros.resources import share_dir
from molmo_ros.settings_fields import check_setting_bounds, setting

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
DEFAULT_DEPTH_TOPIC = "/camera/aligned_depth_to_color/image_raw"  # RealSense's name for registered depth

# The pinhole camera: the horizontal field of view of a RealSense D435 colour camera, square pixels, the
# principal point in the middle of the image, no distortion.
HORIZONTAL_FOV_DEG = 69.0


@dataclass(frozen=True)
class BoxFace:
    """The front face of a box: a rectangle facing the camera at depth z (optical frame, metres)."""

    left: float
    right: float
    top: float
    bottom: float
    z: float


@dataclass(frozen=True)
class TiltedBoard:
    """A rectangular board turned about its vertical centre line by `tilt_deg` (positive: its right edge
    away from the camera), centred at (x, y, z) in the optical frame (metres)."""

    x: float
    y: float
    z: float
    half_width: float
    half_height: float
    tilt_deg: float

    @property
    def normal(self) -> tuple[float, float, float]:
        """Unit normal of its face, towards the camera."""
        tilt = math.radians(self.tilt_deg)
        return (math.sin(tilt), 0.0, -math.cos(tilt))


@dataclass(frozen=True)
class Scene:
    """A wall facing the camera, a floor below it, boxes and a thin pole standing on the floor, and a
    tilted board, so that thin parts, edges and a slanted surface can all be pointed at (metres)."""

    wall_z: float
    floor_y: float  # the camera's height above the floor (y points down)
    boxes: tuple[BoxFace, ...]
    pole: BoxFace  # 8 mm wide: 2-4 pixels at the demo's sizes, the thin part a window median missed
    board: TiltedBoard


SCENE = Scene(
    wall_z=3.0,
    floor_y=0.6,
    boxes=(BoxFace(-0.5, -0.1, 0.1, 0.6, 1.2), BoxFace(0.2, 0.7, 0.0, 0.6, 1.8)),
    pole=BoxFace(0.0, 0.008, -0.4, 0.6, 1.0),
    board=TiltedBoard(-0.9, -0.3, 2.2, 0.35, 0.25, 30.0),
)


@dataclass(frozen=True)
class Intrinsics:
    """CameraInfo convention: the centre of pixel 0 is at 0."""

    fx: float
    fy: float
    cx: float
    cy: float


def demo_intrinsics(width: int, height: int) -> Intrinsics:
    focal = (width / 2) / math.tan(math.radians(HORIZONTAL_FOV_DEG) / 2)
    return Intrinsics(focal, focal, (width - 1) / 2, (height - 1) / 2)


def synthetic_depth_mm(width: int, height: int, scene: Scene = SCENE) -> np.ndarray:
    """HxW uint16 depth in millimetres of `scene` seen by demo_intrinsics: the nearest surface per pixel."""
    camera = demo_intrinsics(width, height)
    ray_x = ((np.arange(width) - camera.cx) / camera.fx)[np.newaxis, :]
    ray_y = ((np.arange(height) - camera.cy) / camera.fy)[:, np.newaxis]
    depth = np.full((height, width), scene.wall_z)
    with np.errstate(divide="ignore"):
        floor = np.where(ray_y > 0, scene.floor_y / ray_y, np.inf)  # rows below the horizon meet the floor
    depth = np.minimum(depth, np.broadcast_to(floor, depth.shape))
    for box in (*scene.boxes, scene.pole):
        x, y = ray_x * box.z, ray_y * box.z
        face = (box.left <= x) & (x <= box.right) & (box.top <= y) & (y <= box.bottom)
        depth = np.where(face & (box.z < depth), box.z, depth)
    board = scene.board
    nx, _, nz = board.normal
    # the board's plane n . p = n . centre, met by the ray (ray_x, ray_y, 1) at Z = n . centre / n . ray
    z = np.broadcast_to((nx * board.x + nz * board.z) / (nx * ray_x + nz), depth.shape)
    across = (ray_x * z - board.x) * -nz + (z - board.z) * nx  # along the board's horizontal in-plane axis
    on_board = (np.abs(across) <= board.half_width) & (np.abs(ray_y * z - board.y) <= board.half_height)
    depth = np.where(on_board & (z > 0) & (z < depth), z, depth)
    return np.round(depth / MILLIMETRES).astype(np.uint16)


def camera_info(width: int, height: int, header: Header) -> CameraInfo:
    camera = demo_intrinsics(width, height)
    return CameraInfo(
        header=header,
        width=width,
        height=height,
        distortion_model="plumb_bob",
        d=[0.0] * 5,
        k=[camera.fx, 0.0, camera.cx, 0.0, camera.fy, camera.cy, 0.0, 0.0, 1.0],
        r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        p=[camera.fx, 0.0, camera.cx, 0.0, 0.0, camera.fy, camera.cy, 0.0, 0.0, 0.0, 1.0, 0.0],
    )


def depth_image(depth_mm: np.ndarray, header: Header) -> Image:
    height, width = depth_mm.shape
    return Image(
        header=header,
        height=height,
        width=width,
        encoding="16UC1",
        is_bigendian=int(sys.byteorder == "big"),
        step=width * 2,
        data=depth_mm.tobytes(),
    )


def load_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot read image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@dataclass(frozen=True)
class FolderCameraSettings:
    """The image_folder_publisher's parameters, each default written once."""

    folder: str = setting("", "Folder of images to publish in name order; empty means the bundled samples.")
    rate: float = setting(5.0, "Frames per second.", minimum=0.1, maximum=120.0)
    seconds_per_image: float = setting(
        3.0, "How long each image is shown before the next one.", minimum=0.0, maximum=86400.0
    )
    topic: str = setting(
        "/camera/image_raw", "Topic to publish on (a CompressedImage topic when compressed is true)."
    )
    frame_id: str = setting("camera_optical_frame", "frame_id written into every header.")
    compressed: bool = setting(
        False, "Publish sensor_msgs/CompressedImage (JPEG) instead of sensor_msgs/Image."
    )
    encoding: str = setting("rgb8", "Encoding of raw images.", choices=("rgb8", "bgr8", "mono8"))
    publish_depth: bool = setting(
        True, "Also publish a synthetic registered depth image and a CameraInfo per image."
    )
    depth_topic: str = setting(DEFAULT_DEPTH_TOPIC, "Topic of the depth image (16UC1, millimetres).")
    camera_info_topic: str = setting(
        "", "Topic of the CameraInfo; empty means camera_info beside the image topic."
    )
    reliable: bool = setting(False, "Reliable QoS instead of the sensor-data profile.")

    def __post_init__(self) -> None:
        check_setting_bounds(self)


class ImageFolderPublisher(Node):
    def __init__(self, **node_options: object) -> None:
        super().__init__("image_folder_publisher", **node_options)
        declare_setting_parameters(self, FolderCameraSettings)
        settings = read_settings(self, FolderCameraSettings)
        self._frame_id = settings.frame_id
        folder = Path(settings.folder or share_dir() / "samples")
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
        self._frames = [self._frame(load_rgb(path), settings) for path in paths]
        self._repeat = max(1, round(settings.seconds_per_image * settings.rate))
        self._sequence = cycle(frame for frame in self._frames for _ in range(self._repeat))
        qos = (
            QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
            if settings.reliable
            else qos_profile_sensor_data
        )
        message_type = CompressedImage if settings.compressed else Image
        self._publisher = self.create_publisher(message_type, settings.topic, qos)
        also = ""
        if settings.publish_depth:
            self._depth_publisher = self.create_publisher(Image, settings.depth_topic, qos)
            info_topic = settings.camera_info_topic or camera_info_topic_beside(settings.topic)
            self._info_publisher = self.create_publisher(CameraInfo, info_topic, qos)
            also = f", depth on {self._depth_publisher.topic_name}, CameraInfo on {info_topic}"
        self.create_timer(1.0 / settings.rate, self._publish)
        self.get_logger().info(
            f"publishing {len(paths)} image(s) from {folder} on {self._publisher.topic_name}{also} at "
            f"{settings.rate:g} Hz"
        )

    def _frame(
        self, rgb: np.ndarray, settings: FolderCameraSettings
    ) -> tuple[Image | CompressedImage, Image | None, CameraInfo | None]:
        """The colour message and, with depth, the depth image and CameraInfo of the same size."""
        colour = self._encode(rgb, settings.compressed, settings.encoding)
        if not settings.publish_depth:
            return colour, None, None
        height, width = rgb.shape[:2]
        depth = depth_image(synthetic_depth_mm(width, height), Header(frame_id=self._frame_id))
        return colour, depth, camera_info(width, height, Header(frame_id=self._frame_id))

    def _encode(self, rgb: np.ndarray, compressed: bool, encoding: str) -> Image | CompressedImage:
        header = Header(frame_id=self._frame_id)
        if compressed:
            ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            if not ok:
                raise ValueError("JPEG encoding failed")
            return CompressedImage(header=header, format="jpeg", data=jpeg.tobytes())
        data, step = rgb_to_raw(rgb, encoding)
        height, width = rgb.shape[:2]
        return Image(
            header=header, height=height, width=width, encoding=encoding, is_bigendian=0, step=step, data=data
        )

    def _publish(self) -> None:
        colour, depth, info = next(self._sequence)
        stamp = self.get_clock().now().to_msg()
        colour.header.stamp = stamp
        self._publisher.publish(colour)
        if depth is not None and info is not None:
            depth.header.stamp = info.header.stamp = stamp
            self._depth_publisher.publish(depth)
            self._info_publisher.publish(info)


def main(args: list[str] | None = None) -> int:
    """Runs with the shipped Fast DDS profile unless one is chosen: raw frames over 512 KB are otherwise
    lost whenever the subscriber's process waits for a CPU (see dds_profile)."""
    with large_image_profile():
        return run_node(
            "image_folder_publisher", ImageFolderPublisher, (OSError, *CONFIGURATION_ERRORS), args
        )


if __name__ == "__main__":
    sys.exit(main())
