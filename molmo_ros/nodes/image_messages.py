"""sensor_msgs images, depth and CameraInfo to the pointing service's inputs; decoding is deferred until
the model (or the lifting) needs the pixels."""

from collections.abc import Callable

import numpy as np
from sensor_msgs.msg import CameraInfo as CameraInfoMsg
from sensor_msgs.msg import CompressedImage, Image

from molmo_ros.depth import read_depth
from molmo_ros.image_conversion import compressed_to_rgb, raw_to_rgb
from molmo_ros.nodes.messages import stamp_ns
from molmo_ros.pointing.frames import CameraInfo, DepthFrame, Frame


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


def frame_from_image(message: Image, camera: str, received_ns: int) -> Frame:
    def decode() -> np.ndarray:
        return raw_to_rgb(
            message.data,
            message.encoding,
            message.height,
            message.width,
            message.step,
            bool(message.is_bigendian),
        )

    return _frame(message, camera, received_ns, decode)


def frame_from_compressed(message: CompressedImage, camera: str, received_ns: int) -> Frame:
    return _frame(message, camera, received_ns, lambda: compressed_to_rgb(message.data, message.format))


def camera_info(message: CameraInfoMsg) -> CameraInfo:
    return CameraInfo(
        frame_id=message.header.frame_id,
        width=message.width,
        height=message.height,
        distortion_model=message.distortion_model,
        d=tuple(float(value) for value in message.d),
        k=tuple(float(value) for value in message.k),
        p=tuple(float(value) for value in message.p),
    )


def depth_frame(message: Image, camera: str, scale: float | None) -> DepthFrame:
    """Kept undecoded: most depth frames are never used, and the one used is read only where needed."""
    return DepthFrame(
        camera=camera,
        stamp_ns=stamp_ns(message.header.stamp),
        frame_id=message.header.frame_id,
        width=message.width,
        height=message.height,
        decode=lambda: read_depth(
            message.data,
            message.encoding,
            message.height,
            message.width,
            message.step,
            bool(message.is_bigendian),
            scale,
        ),
    )
