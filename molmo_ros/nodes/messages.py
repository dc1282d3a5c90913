"""Pointing outcomes to ROS messages; no node state here (messages to inputs: image_messages.py)."""

import math

from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point as PointMsg
from geometry_msgs.msg import PointStamped, Pose, Vector3
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from molmo_ros.depth.pairing import DepthMissing
from molmo_ros.msg import CameraView, PointingResult
from molmo_ros.nodes.parameters import said_with_parameters
from molmo_ros.pointing.outcomes import DepthUsed, PointingOutcome, View
from molmo_ros.pointing.settings import CameraSettings
from molmo_ros.settings_fields import SettingRef

NANOSECONDS = 1_000_000_000
MARKER_DIAMETER_M = 0.03
LABEL_HEIGHT_M = 0.04
LABEL_LIFT_M = 0.05  # the label floats above its sphere (optical frame: y points down)


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
    points_3d, valid, spread = [], [], []
    for point in outcome.points:
        position = point.position_m
        valid.append(position is not None)
        points_3d.append(PointMsg(x=position[0], y=position[1], z=position[2]) if position else PointMsg())
        spread.append(point.depth.spread if position else math.nan)
    return PointingResult(
        header=view_header(first),
        camera=first.camera,
        query=outcome.query,
        prompt=outcome.prompt,
        points=[PointMsg(x=float(point.x), y=float(point.y), z=0.0) for point in outcome.points],
        labels=[point.label for point in outcome.points],
        image_width=first.width,
        image_height=first.height,
        views=[
            CameraView(
                header=view_header(view),
                camera=view.camera,
                image_width=view.width,
                image_height=view.height,
                depth_stamp=depth_stamp(view),
                depth_status=depth_status(view),
            )
            for view in outcome.views
        ],
        point_views=[point.view for point in outcome.points],
        points_3d=points_3d,
        depth_valid=valid,
        depth_spread=spread,
        raw_text=outcome.raw_text,
        answer_malformed=outcome.answer_malformed,
        points_outside_image=outcome.points_outside_image,
        model_seconds=outcome.model_seconds,
        frame_age_seconds=outcome.frame_age_seconds,
    )


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


def first_target(outcome: PointingOutcome) -> PointStamped | None:
    """The first point with a measured 3D position, in its camera's optical frame."""
    for point in outcome.points:
        if point.position_m is not None:
            x, y, z = point.position_m
            return PointStamped(header=view_header(outcome.views[point.view]), point=PointMsg(x=x, y=y, z=z))
    return None


def markers(outcome: PointingOutcome, namespace: str) -> MarkerArray:
    """DELETEALL, then a sphere and a text label per 3D point, so each answer replaces the last one's."""
    array = MarkerArray(markers=[Marker(action=Marker.DELETEALL)])
    for index, point in enumerate(outcome.points):
        if point.position_m is None:
            continue
        header = view_header(outcome.views[point.view])
        x, y, z = point.position_m
        colour = ColorRGBA(r=1.0, g=0.2, b=0.2, a=1.0)
        array.markers.append(
            Marker(
                header=header,
                ns=namespace,
                id=2 * index,
                type=Marker.SPHERE,
                action=Marker.ADD,
                pose=_pose_at(x, y, z),
                scale=Vector3(x=MARKER_DIAMETER_M, y=MARKER_DIAMETER_M, z=MARKER_DIAMETER_M),
                color=colour,
            )
        )
        array.markers.append(
            Marker(
                header=header,
                ns=namespace,
                id=2 * index + 1,
                type=Marker.TEXT_VIEW_FACING,
                action=Marker.ADD,
                pose=_pose_at(x, y - LABEL_LIFT_M, z),
                scale=Vector3(z=LABEL_HEIGHT_M),
                color=ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0),
                text=point.label or outcome.query,
            )
        )
    return array


def _pose_at(x: float, y: float, z: float) -> Pose:
    pose = Pose()
    pose.position = PointMsg(x=x, y=y, z=z)
    pose.orientation.w = 1.0
    return pose
