"""sensor_msgs images to pointing frames; decoding is deferred until the model needs the pixels."""

from sensor_msgs.msg import CompressedImage, Image

from molmo_ros.image_conversion import compressed_to_rgb, raw_to_rgb
from molmo_ros.pointing.frames import Frame


def _stamp_ns(message: Image | CompressedImage) -> int:
    return message.header.stamp.sec * 1_000_000_000 + message.header.stamp.nanosec


def frame_from_image(message: Image, camera: str, received_ns: int) -> Frame:
    return Frame(
        camera=camera,
        stamp_ns=_stamp_ns(message),
        frame_id=message.header.frame_id,
        received_ns=received_ns,
        decode=lambda: raw_to_rgb(
            message.data,
            message.encoding,
            message.height,
            message.width,
            message.step,
            bool(message.is_bigendian),
        ),
    )


def frame_from_compressed(message: CompressedImage, camera: str, received_ns: int) -> Frame:
    return Frame(
        camera=camera,
        stamp_ns=_stamp_ns(message),
        frame_id=message.header.frame_id,
        received_ns=received_ns,
        decode=lambda: compressed_to_rgb(message.data, message.format),
    )
