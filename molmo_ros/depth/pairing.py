"""Which depth frame goes with a colour frame, and lifting that frame's points with it.

A missing, late or unreadable depth frame is not an error of the request: the points stay 2D and the
view says why in one short sentence (`DepthMissing.reason`), unless the request demands depth (the
pointing service then answers NO_DEPTH with that sentence).
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from molmo_ros.depth.camera import CameraModel
from molmo_ros.depth.errors import DepthError
from molmo_ros.depth.images import DepthImage
from molmo_ros.depth.lifting import LiftedPoint, lift_points
from molmo_ros.depth.settings import DepthSettings
from molmo_ros.settings_fields import SettingRef


@dataclass(frozen=True)
class DepthFrame:
    """One depth image as it arrived, with its stamp; `decode` checks it and returns a `DepthImage`
    (cheap: it views the message's buffer and converts only what is read) or raises DepthError."""

    stamp_ns: int
    frame_id: str
    decode: Callable[[], DepthImage | np.ndarray]


@dataclass(frozen=True)
class PairedDepth:
    """A depth image registered to a colour frame, and that frame's camera model."""

    image: DepthImage | np.ndarray
    camera: CameraModel
    stamp_ns: int | None  # of the depth frame; None when the depth came without a stamp (a file)


@dataclass(frozen=True)
class DepthMissing:
    """Why a view has no usable depth, and the settings that reason is about (named by the node)."""

    reason: str
    settings: tuple[SettingRef, ...] = ()


# A view's depth before lifting: paired, missing with a reason, or None when the camera has no depth source.
ViewDepth = PairedDepth | DepthMissing | None


def pair_depth(
    colour_stamp_ns: int,
    depth: DepthFrame | None,
    camera: CameraModel | DepthError,
    settings: DepthSettings,
    *,
    check_stamps: bool = True,
) -> PairedDepth | DepthMissing:
    """The depth frame and camera model of a colour frame stamped `colour_stamp_ns`, or why they cannot
    be used. `check_stamps` False: the caller sent colour, depth and camera together (a request's own)."""
    if depth is None:
        return DepthMissing("no depth frame received")
    if isinstance(camera, DepthError):
        return DepthMissing(f"unusable CameraInfo: {camera}")
    skew_s = abs(depth.stamp_ns - colour_stamp_ns) / 1e9
    if check_stamps and skew_s > settings.max_depth_skew:
        return DepthMissing(
            f"no depth frame within {settings.max_depth_skew:g} s of the colour frame; the nearest is "
            f"{skew_s:.3f} s away",
            (SettingRef(DepthSettings, "max_depth_skew"),),
        )
    try:
        image = depth.decode()
    except DepthError as error:
        return DepthMissing(f"unusable depth: {error}")
    return PairedDepth(image, camera, depth.stamp_ns)


def lift_view(
    pixels: Sequence[tuple[float, float]],
    image_size: tuple[int, int],
    depth: PairedDepth,
    settings: DepthSettings,
) -> tuple[LiftedPoint, ...] | DepthMissing:
    """The pixels of a width x height colour frame lifted with its paired depth, or why the whole frame's
    depth cannot be used (a CameraInfo for another size, a depth image of another aspect ratio)."""
    try:
        return tuple(lift_points(pixels, image_size, depth.image, depth.camera, settings))
    except DepthError as error:
        return DepthMissing(f"unusable depth: {error}")
