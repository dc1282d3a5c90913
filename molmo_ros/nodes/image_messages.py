"""sensor_msgs images to pointing frames; decoding is deferred until the model needs the pixels."""

from collections.abc import Callable

import numpy as np
from sensor_msgs.msg import CompressedImage, Image

from molmo_ros.image_conversion import compressed_to_rgb, raw_to_rgb
from molmo_ros.pointing.frames import Frame


def _frame(
    message: Image | CompressedImage, camera: str, received_ns: int, decode: Callable[[], np.ndarray]
) -> Frame:
    stamp = message.header.stamp
    return Frame(
        camera=camera,
        stamp_ns=stamp.sec * 1_000_000_000 + stamp.nanosec,
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
