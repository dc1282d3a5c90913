"""The planner's frame: where 3D answers are expressed when the target_frame setting is set.

Transforms come through one small interface, `TransformSource`, with two implementations: the static
poses of fixed cameras (`StaticCameraPoses`, from each camera's pose_* settings, tested everywhere) and
tf2 (`molmo_ros.nodes.tf2_transforms`, a ROS import, so it lives with the node). A camera with a static
pose uses it; every other frame, a request's own image's included, goes to tf2, which is loaded whenever
it can be imported. When neither can give a frame's transform in time the answer is the error
NO_TRANSFORM: a point is never handed over in the camera's frame as if it were the planner's.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from molmo_ros.depth.transforms import RigidTransform
from molmo_ros.pointing.errors import ErrorCode, PointingError
from molmo_ros.pointing.outcomes import View
from molmo_ros.pointing.settings import CameraSettings, PointingSettings
from molmo_ros.settings_fields import SettingRef, SettingValueError

TARGET_FRAME = SettingRef(PointingSettings, "target_frame")


class TransformUnavailable(Exception):
    """No transform between two frames at a stamp within the timeout; the message says why."""


class TransformSource(Protocol):
    """Looks up the transform that maps points of `view`'s frame (its frame_id, at its stamp; a stamp
    of 0 means the newest) into `target`, waiting at most `timeout_s`; raises TransformUnavailable."""

    def lookup(self, target: str, view: View, timeout_s: float) -> RigidTransform: ...


class StaticCameraPoses:
    """The fixed poses of the cameras that have one (cameras.<name>.pose_*), each in the target frame
    (`target_frame` refuses a pose given in another frame)."""

    def __init__(self, cameras: Mapping[str, CameraSettings], why_no_tf2: str = "") -> None:
        self._poses = {
            name: camera.static_pose() for name, camera in cameras.items() if camera.pose_parent_frame
        }
        self._why_no_tf2 = why_no_tf2  # when these poses are the only source: why tf2 is not there

    def has_pose(self, camera: str) -> bool:
        return camera in self._poses

    def lookup(self, target: str, view: View, timeout_s: float) -> RigidTransform:
        if view.camera not in self._poses:
            what = f"camera {view.camera!r}" if view.camera else "a request's own image"
            without = f", and tf2 is not available ({self._why_no_tf2})" if self._why_no_tf2 else ""
            raise TransformUnavailable(f"{what} has no static pose{without}")
        return self._poses[view.camera]


class StaticPosesFirst:
    """A camera's static pose where it has one; every other frame from `others` (tf2)."""

    def __init__(self, static: StaticCameraPoses, others: TransformSource) -> None:
        self._static, self._others = static, others

    def lookup(self, target: str, view: View, timeout_s: float) -> RigidTransform:
        source = self._static if self._static.has_pose(view.camera) else self._others
        return source.lookup(target, view, timeout_s)


@dataclass(frozen=True)
class TargetFrame:
    """Where answers are expressed: `frame`, with transforms from `source`, waiting up to `timeout_s`."""

    frame: str
    source: TransformSource
    timeout_s: float

    def transform_of(self, view: View, wait: bool = True) -> RigidTransform:
        """The transform from `view`'s frame to this one at its stamp, or PointingError NO_TRANSFORM;
        waiting up to the timeout, or (`wait` False) only taking what is there now."""
        timeout_s = self.timeout_s if wait else 0.0
        try:
            return self.source.lookup(self.frame, view, timeout_s)
        except TransformUnavailable as error:
            raise PointingError(
                ErrorCode.NO_TRANSFORM,
                f"no transform from {view.frame_id!r} to {self.frame!r} at the frame's stamp "
                f"({view.stamp_ns / 1e9:.3f} s) within {timeout_s:g} s: {error}",
                [TARGET_FRAME, SettingRef(PointingSettings, "transform_timeout")],
            ) from error


def target_frame(
    settings: PointingSettings,
    cameras: Mapping[str, CameraSettings],
    load_tf2: Callable[[], TransformSource],
) -> TargetFrame | None:
    """The target frame the settings ask for, with the transform sources it needs; None when
    target_frame is empty. `load_tf2` raises ImportError where tf2_ros cannot be imported; it is called
    whenever target_frame is set, since a request's own image may come from any frame. Without tf2 the
    static poses serve alone, when every camera has one. SettingValueError says what to set instead."""
    if not settings.target_frame:
        return None
    for name, camera in cameras.items():
        if camera.pose_parent_frame and camera.pose_parent_frame != settings.target_frame:
            raise SettingValueError(
                f"camera {name!r}'s static pose is given in {camera.pose_parent_frame!r} but the target "
                f"frame is {settings.target_frame!r}: give the pose in {settings.target_frame!r}",
                [SettingRef(CameraSettings, "pose_parent_frame", name), TARGET_FRAME],
            )
    try:
        tf2 = load_tf2()
    except ImportError as error:
        without_pose = [name for name, camera in cameras.items() if not camera.pose_parent_frame]
        if without_pose:
            raise SettingValueError(
                f"the target frame is {settings.target_frame!r}, but camera(s) {', '.join(without_pose)} "
                f"have no static pose and tf2 is not available ({error}): give each camera a static pose "
                "(its parent frame, translation and rotation), run in a ROS 2 install that has tf2_ros, or "
                "leave the target frame empty",
                [TARGET_FRAME]
                + [SettingRef(CameraSettings, "pose_parent_frame", name) for name in without_pose],
            ) from error
        static = StaticCameraPoses(cameras, why_no_tf2=str(error))
        return TargetFrame(settings.target_frame, static, settings.transform_timeout)
    source = StaticPosesFirst(StaticCameraPoses(cameras), tf2)
    return TargetFrame(settings.target_frame, source, settings.transform_timeout)
