"""Pointing outcomes to ROS messages; no node state here (messages to inputs: image_messages.py)."""

import math

from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point as PointMsg
from geometry_msgs.msg import PointStamped, Pose, PoseStamped, Quaternion, Transform, Vector3
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from molmo_ros.depth.lifting import LiftedPoint
from molmo_ros.depth.pairing import DepthMissing
from molmo_ros.depth.transforms import Pose as TargetPose
from molmo_ros.depth.transforms import RigidTransform
from molmo_ros.msg import CameraView, PointingResult
from molmo_ros.nodes.parameters import said_with_parameters
from molmo_ros.pointing.outcomes import DepthUsed, OutcomePoint, PointingOutcome, View
from molmo_ros.pointing.settings import CameraSettings
from molmo_ros.settings_fields import SettingRef

NANOSECONDS = 1_000_000_000
MARKER_DIAMETER_M = 0.03
LABEL_HEIGHT_M = 0.04
LABEL_LIFT_M = 0.05  # the label floats above its sphere (optical frame: y points down)
NORMAL_ARROW_M = 0.08  # length of the normal's arrow
ARROW_SHAFT_M, ARROW_HEAD_M, ARROW_HEAD_LENGTH_M = 0.008, 0.016, 0.02


def stamp(nanoseconds: int) -> Time:
    seconds, rest = divmod(nanoseconds, NANOSECONDS)
    return Time(sec=seconds, nanosec=rest)


def stamp_ns(time: Time) -> int:
    return time.sec * NANOSECONDS + time.nanosec


def view_header(view: View) -> Header:
    return Header(stamp=stamp(view.stamp_ns), frame_id=view.frame_id)


def depth_status(view: View) -> str:
    """Empty when the view's points were lifted with depth, else why not, naming the parameters."""
    if isinstance(view.depth, DepthUsed):
        return ""
    if isinstance(view.depth, DepthMissing):
        return said_with_parameters(view.depth.reason, view.depth.settings)
    return said_with_parameters(
        "no depth topic configured", [SettingRef(CameraSettings, "depth_topic", view.camera)]
    )


def depth_stamp(view: View) -> Time:
    """The stamp of the depth frame used; zero when none was."""
    used = isinstance(view.depth, DepthUsed) and view.depth.stamp_ns is not None
    return stamp(view.depth.stamp_ns if used else 0)


def result_message(outcome: PointingOutcome) -> PointingResult:
    first = outcome.view
    result = PointingResult(
        header=view_header(first),
        camera=first.camera,
        query=outcome.query,
        prompt=outcome.prompt,
        points=[PointMsg(x=float(point.x), y=float(point.y), z=0.0) for point in outcome.points],
        labels=[point.label for point in outcome.points],
        image_width=first.width,
        image_height=first.height,
        views=[_view_message(outcome, index) for index in range(len(outcome.views))],
        point_views=[point.view for point in outcome.points],
        target_frame=outcome.target_frame,
        raw_text=outcome.raw_text,
        answer_malformed=outcome.answer_malformed,
        points_outside_image=outcome.points_outside_image,
        model_seconds=outcome.model_seconds,
        frame_age_seconds=outcome.frame_age_seconds,
    )
    for point in outcome.points:
        _add_3d(result, point)
    return result


def _add_3d(result: PointingResult, point: OutcomePoint) -> None:
    """Appends one point's entries to every per-point 3D array of `result`."""
    lifted, target = point.depth, point.target
    valid = lifted is not None and lifted.valid
    has_normal = target is not None and target.normal is not None
    result.points_3d.append(_point(target.position) if target else PointMsg())
    result.depth_valid.append(valid)
    result.depth_support.append(lifted.support if valid else 0)
    result.depth_step.append(lifted.depth_step if valid else math.nan)
    result.depth_edge.append(valid and lifted.edge)
    result.depth_fallback.append(valid and lifted.fallback)
    result.depth_search_distance.append(lifted.search_distance if valid else math.nan)
    result.normal_valid.append(has_normal)
    result.normals.append(_vector(target.normal) if has_normal else Vector3())
    result.normal_residual.append(lifted.normal_residual if valid else math.nan)
    result.normal_inliers.append(lifted.normal_inliers if valid else 0)
    result.normal_error.append(lifted.normal_error if has_normal else math.nan)
    result.normal_status.append(normal_status(lifted))
    result.approach_poses.append(
        _pose(target.approach) if has_normal else Pose(orientation=Quaternion(w=0.0))
    )


def normal_status(lifted: LiftedPoint | None) -> str:
    """Empty when the point has a normal, else why not, naming the parameters."""
    if lifted is None or not lifted.valid:
        return "no depth at this point"
    return said_with_parameters(lifted.normal_reason, lifted.normal_settings)


def _view_message(outcome: PointingOutcome, index: int) -> CameraView:
    view = outcome.views[index]
    own = [point.depth for point in outcome.points if point.view == index]
    return CameraView(
        header=view_header(view),
        camera=view.camera,
        image_width=view.width,
        image_height=view.height,
        depth_stamp=depth_stamp(view),
        depth_status=depth_status(view),
        camera_to_target=_transform(view.to_target),
        points_3d=[_point(p.xyz) if p is not None and p.xyz else PointMsg() for p in own],
        normals=[_vector(p.normal) if p is not None and p.normal else Vector3() for p in own],
    )


def _transform(transform: RigidTransform | None) -> Transform:
    """The transform as a message; all zeros (a zero quaternion, not a rotation) when there is none, so
    that no identity passes for a transform that was looked up."""
    if transform is None:
        return Transform(rotation=Quaternion(w=0.0))
    x, y, z, w = transform.quaternion
    return Transform(translation=_vector(transform.translation), rotation=Quaternion(x=x, y=y, z=z, w=w))


def summary(outcome: PointingOutcome) -> str:
    parts = [f"{len(outcome.points)} point(s)"]
    if any(view.depth is not None for view in outcome.views):
        parts.append(f"{sum(point.position_m is not None for point in outcome.points)} with depth")
    statuses = {depth_status(view) for view in outcome.views if isinstance(view.depth, DepthMissing)}
    if statuses:
        parts.append("no depth: " + "; ".join(sorted(statuses)))
    if outcome.points_outside_image:
        parts.append(f"{outcome.points_outside_image} outside the image dropped")
    if outcome.answer_malformed:
        parts.append("answer malformed: " + "; ".join(outcome.parse_problems))
    return ", ".join(parts)


def target_header(outcome: PointingOutcome, point: OutcomePoint) -> Header:
    """The header of a point's 3D values: the target frame, or its camera's, at its colour frame's stamp."""
    view = outcome.views[point.view]
    return Header(stamp=stamp(view.stamp_ns), frame_id=outcome.target_frame or view.frame_id)


def first_target(outcome: PointingOutcome) -> PointStamped | None:
    """The first point with a measured 3D position, in the outcome's target frame."""
    point = _first_3d(outcome)
    if point is None:
        return None
    return PointStamped(header=target_header(outcome, point), point=_point(point.target.position))


def first_target_pose(outcome: PointingOutcome) -> PoseStamped | None:
    """The approach pose of that same point; None when it has no normal (no orientation is made up)."""
    point = _first_3d(outcome)
    if point is None or point.target.approach is None:
        return None
    return PoseStamped(header=target_header(outcome, point), pose=_pose(point.target.approach))


def _first_3d(outcome: PointingOutcome) -> OutcomePoint | None:
    return next((point for point in outcome.points if point.target is not None), None)


def markers(outcome: PointingOutcome, namespace: str) -> MarkerArray:
    """DELETEALL, then a sphere, a text label and (with a normal) an arrow along the normal per 3D point,
    so each answer replaces the last one's; in the outcome's target frame."""
    array = MarkerArray(markers=[Marker(action=Marker.DELETEALL)])
    for index, point in enumerate(outcome.points):
        if point.target is None:
            continue
        header = target_header(outcome, point)
        position = point.target.position
        array.markers.append(
            Marker(
                header=header,
                ns=namespace,
                id=3 * index,
                type=Marker.SPHERE,
                action=Marker.ADD,
                pose=_pose_at(position),
                scale=Vector3(x=MARKER_DIAMETER_M, y=MARKER_DIAMETER_M, z=MARKER_DIAMETER_M),
                color=ColorRGBA(r=1.0, g=0.2, b=0.2, a=1.0),
            )
        )
        array.markers.append(
            Marker(
                header=header,
                ns=namespace,
                id=3 * index + 1,
                type=Marker.TEXT_VIEW_FACING,
                action=Marker.ADD,
                pose=_pose_at(_above(position, point.target.normal, outcome)),
                scale=Vector3(z=LABEL_HEIGHT_M),
                color=ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0),
                text=point.label or outcome.query,
            )
        )
        if point.target.normal is not None:
            array.markers.append(
                _normal_arrow(header, namespace, 3 * index + 2, position, point.target.normal)
            )
    return array


def _normal_arrow(header: Header, namespace: str, marker_id: int, position: tuple, normal: tuple) -> Marker:
    """An arrow from the point along its normal (ARROW with two points: shaft and head sizes in scale)."""
    tip = tuple(p + NORMAL_ARROW_M * n for p, n in zip(position, normal, strict=True))
    marker = Marker(
        header=header,
        ns=namespace,
        id=marker_id,
        type=Marker.ARROW,
        action=Marker.ADD,
        scale=Vector3(x=ARROW_SHAFT_M, y=ARROW_HEAD_M, z=ARROW_HEAD_LENGTH_M),
        color=ColorRGBA(r=0.2, g=0.6, b=1.0, a=1.0),
        points=[_point(position), _point(tip)],
    )
    marker.pose.orientation.w = 1.0
    return marker


def _above(position: tuple, normal: tuple | None, outcome: PointingOutcome) -> tuple:
    """Where the label floats: above the sphere in the camera's optical frame (y down); in a target
    frame, whose up is unknown here, beside the sphere along the normal, or at the sphere itself."""
    x, y, z = position
    if not outcome.target_frame:
        return (x, y - LABEL_LIFT_M, z)
    if normal is None:
        return position
    return tuple(p + LABEL_LIFT_M * n for p, n in zip(position, normal, strict=True))


def _point(xyz: tuple) -> PointMsg:
    return PointMsg(x=float(xyz[0]), y=float(xyz[1]), z=float(xyz[2]))


def _vector(xyz: tuple) -> Vector3:
    return Vector3(x=float(xyz[0]), y=float(xyz[1]), z=float(xyz[2]))


def _pose(pose: TargetPose) -> Pose:
    x, y, z, w = pose.orientation
    return Pose(position=_point(pose.position), orientation=Quaternion(x=x, y=y, z=z, w=w))


def _pose_at(position: tuple) -> Pose:
    pose = Pose()
    pose.position = _point(position)
    pose.orientation.w = 1.0
    return pose
