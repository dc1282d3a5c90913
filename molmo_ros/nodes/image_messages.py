"""sensor_msgs images, depth and CameraInfo to the pointing service's inputs (frames, depth frames, camera
models); decoding is deferred until the model (or the lifting) needs the pixels."""

from collections.abc import Callable

import numpy as np
from sensor_msgs.msg import CameraInfo as CameraInfoMsg
from sensor_msgs.msg import CompressedImage, Image

from molmo_ros.depth.camera import CameraModel
from molmo_ros.depth.errors import DepthError
from molmo_ros.depth.images import read_depth
from molmo_ros.depth.pairing import DepthFrame
from molmo_ros.image_conversion import compressed_to_rgb, raw_to_rgb
from molmo_ros.nodes.messages import stamp_ns
from molmo_ros.pointing.frames import Frame


def _frame(
    message: Image | CompressedImage, camera: str, received_ns: int, decode: Callable[[], np.ndarray]
) -> Frame:
    return Frame(
        camera=camera,
        stamp_ns=stamp_ns(message.header.stamp),
        frame_id=message.header.frame_id,
        received_ns=received_ns,
        decode=decode,
    )


def _buffer(message: Image) -> tuple[object, str, int, int, int, bool]:
    """An Image's pixel buffer and its layout: data, encoding, height, width, step, big-endian."""
    big_endian = bool(message.is_bigendian)
    return message.data, message.encoding, message.height, message.width, message.step, big_endian


def frame_from_image(message: Image, camera: str, received_ns: int) -> Frame:
    return _frame(message, camera, received_ns, lambda: raw_to_rgb(*_buffer(message)))


def frame_from_compressed(message: CompressedImage, camera: str, received_ns: int) -> Frame:
    return _frame(message, camera, received_ns, lambda: compressed_to_rgb(message.data, message.format))


def camera_model(message: CameraInfoMsg) -> CameraModel | DepthError:
    """The camera model of a CameraInfo, or why it cannot be used (said with the points it would lift)."""
    try:
        return CameraModel.from_camera_info(
            message.width,
            message.height,
            message.distortion_model,
            [float(value) for value in message.d],
            [float(value) for value in message.k],
            [float(value) for value in message.p],
        )
    except DepthError as error:
        return error


def depth_frame(message: Image, scale: float | None) -> DepthFrame:
    """Kept undecoded: most depth frames are never used, and the one used is read only where needed."""
    return DepthFrame(
        stamp_ns=stamp_ns(message.header.stamp),
        frame_id=message.header.frame_id,
        decode=lambda: read_depth(*_buffer(message), scale),
    )
