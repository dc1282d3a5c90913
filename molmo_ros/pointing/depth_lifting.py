"""Which depth frame and CameraInfo go with a colour frame, and lifting its points with them.

A missing, late, unregistered or unreadable depth frame is not an error of the request: the points
stay 2D and the view says why in one short sentence (`ViewDepth.status`), unless the request
demands depth (the service then answers NO_DEPTH with that sentence).
"""

from dataclasses import dataclass

from molmo_ros.depth import CameraModel, DepthError, DepthSettings, LiftedPoint, lift_points
from molmo_ros.pointing.frames import CameraInfo, DepthFrame
from molmo_ros.pointing.outcomes import View


@dataclass(frozen=True)
class ViewDepth:
    stamp_ns: int  # of the depth frame used; 0 when none was
    status: str  # empty when depth was used, else why not
    points: tuple[LiftedPoint | None, ...]  # one per pixel; None when the view has no usable depth
    configured: bool = True  # False: the camera has no depth source at all (not an error of its depth)

    @classmethod
    def unavailable(cls, count: int, status: str, configured: bool = True) -> "ViewDepth":
        return cls(stamp_ns=0, status=status, points=(None,) * count, configured=configured)


def lift_view(
    pixels: list[tuple[float, float]],
    view: View,
    depth: DepthFrame | None,
    info: CameraInfo | None,
    *,
    registered: bool,
    settings: DepthSettings,
    paired_by_request: bool = False,
) -> ViewDepth:
    """Lifts the view's pixels with `depth` and `info`, or says why they cannot be lifted.

    `paired_by_request`: the request sent the image, its depth and CameraInfo together, so their stamps
    and frame ids are not compared."""
    if depth is None:
        return ViewDepth.unavailable(len(pixels), "no depth frame received")
    if info is None:
        return ViewDepth.unavailable(len(pixels), "no CameraInfo to go with the depth frame")
    skew_s = abs(depth.stamp_ns - view.stamp_ns) / 1e9
    if skew_s > settings.max_depth_skew and not paired_by_request:
        return ViewDepth.unavailable(
            len(pixels),
            f"no depth frame within max_depth_skew ({settings.max_depth_skew:g} s) of the colour frame; "
            f"the nearest is {skew_s:.3f} s away",
        )
    if depth.frame_id != view.frame_id and not (registered or paired_by_request):
        return ViewDepth.unavailable(
            len(pixels),
            f"the depth frame's frame_id {depth.frame_id!r} differs from the colour frame's "
            f"{view.frame_id!r}, so it is not registered to it; use an aligned depth topic, or set "
            f"cameras.{view.camera or '<name>'}.depth_registered true if it is registered",
        )
    try:
        camera = CameraModel.from_camera_info(
            info.width, info.height, info.distortion_model, info.d, info.k, info.p
        )
    except DepthError as error:
        return ViewDepth.unavailable(len(pixels), f"unusable CameraInfo: {error}")
    try:
        depth_m = depth.decode()
        lifted = lift_points(pixels, (view.width, view.height), depth_m, camera, settings)
    except DepthError as error:
        return ViewDepth.unavailable(len(pixels), f"unusable depth: {error}")
    return ViewDepth(stamp_ns=depth.stamp_ns, status="", points=tuple(lifted))
