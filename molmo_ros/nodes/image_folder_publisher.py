"""`image_folder_publisher`: a camera stand-in that publishes the images of a folder, for demos and trials.

Images are loaded and encoded once; each publish only restamps the message, so the publisher
itself costs almost nothing and measurements of the pointer node are not disturbed by it.
"""

import sys
from itertools import cycle
from pathlib import Path

import cv2
import numpy as np
from rcl_interfaces.msg import FloatingPointRange, ParameterDescriptor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from molmo_ros.image_conversion import rgb_to_raw
from molmo_ros.nodes.runner import CONFIGURATION_ERRORS, run_node
from molmo_ros.resources import share_dir

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def load_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot read image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class ImageFolderPublisher(Node):
    def __init__(self, **node_options: object) -> None:
        super().__init__("image_folder_publisher", **node_options)
        folder = self.declare_parameter(
            "folder",
            "",
            ParameterDescriptor(
                description="Folder of images to publish in name order; empty means the bundled samples."
            ),
        ).value
        rate = self.declare_parameter(
            "rate",
            5.0,
            ParameterDescriptor(
                description="Frames per second.",
                floating_point_range=[FloatingPointRange(from_value=0.1, to_value=120.0, step=0.0)],
            ),
        ).value
        seconds_per_image = self.declare_parameter(
            "seconds_per_image",
            3.0,
            ParameterDescriptor(description="How long each image is shown before the next one."),
        ).value
        topic = self.declare_parameter(
            "topic",
            "/camera/image_raw",
            ParameterDescriptor(
                description="Topic to publish on (a CompressedImage topic when compressed is true)."
            ),
        ).value
        self._frame_id = self.declare_parameter(
            "frame_id",
            "camera_optical_frame",
            ParameterDescriptor(description="frame_id written into every header."),
        ).value
        compressed = self.declare_parameter(
            "compressed",
            False,
            ParameterDescriptor(
                description="Publish sensor_msgs/CompressedImage (JPEG) instead of sensor_msgs/Image."
            ),
        ).value
        encoding = self.declare_parameter(
            "encoding",
            "rgb8",
            ParameterDescriptor(description="Encoding of raw images: rgb8, bgr8 or mono8."),
        ).value
        reliable = self.declare_parameter(
            "reliable",
            False,
            ParameterDescriptor(description="Reliable QoS instead of the sensor-data profile."),
        ).value

        paths = sorted(
            p for p in Path(folder or share_dir() / "samples").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not paths:
            raise ValueError(
                f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder or share_dir() / 'samples'}"
            )
        self._messages = [self._encode(load_rgb(path), compressed, encoding) for path in paths]
        self._repeat = max(1, round(seconds_per_image * rate))
        self._sequence = cycle(message for message in self._messages for _ in range(self._repeat))
        qos = (
            QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
            if reliable
            else qos_profile_sensor_data
        )
        self._publisher = self.create_publisher(CompressedImage if compressed else Image, topic, qos)
        self.create_timer(1.0 / rate, self._publish)
        self.get_logger().info(
            f"publishing {len(paths)} image(s) from {paths[0].parent} on "
            f"{self._publisher.topic_name} at {rate:g} Hz"
        )

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
        message = next(self._sequence)
        message.header.stamp = self.get_clock().now().to_msg()
        self._publisher.publish(message)


def main(args: list[str] | None = None) -> int:
    return run_node("image_folder_publisher", ImageFolderPublisher, (OSError, *CONFIGURATION_ERRORS), args)


if __name__ == "__main__":
    sys.exit(main())
