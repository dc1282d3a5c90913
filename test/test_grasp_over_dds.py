"""Grasp targets from the pointer node over real DDS (kept on this machine), with the scripted engine double:
the surface normal and approach pose on /molmo/target_pose, answers in a target frame given by a static
camera pose or by tf2 (its test double: tf2_ros has no wheel here), and NO_TRANSFORM when none exists.

Expected values are computed here from the rendered scene and the camera pose, with rotations built by
cv2.Rodrigues and quaternions applied by the Hamilton product, never by the code under test. The camera of
the rig: 64x48, fx = fy = 100, principal point at the image centre (31.5, 23.5); the scripted answer points
at (50 %, 25 %), pixel (32, 12), OpenCV (31.5, 11.5), so its ray is (0, -0.12, 1).
"""

import math
import sys

import cv2
import numpy as np
import pytest
import rclpy
from doubles import tf2_ros as tf2_double
from geometry_msgs.msg import PointStamped, PoseStamped, Quaternion, TransformStamped, Vector3
from quaternions import hamilton, rotate
from rclpy.lifecycle import TransitionCallbackReturn
from ros_helpers import (
    camera_info_message,
    depth_image_message,
    depth_message,
    image_message,
    publish_until,
    wait_until,
)
from sensor_msgs.msg import Image
from test_pointer_node import Rig, mug_at, value_image
from visualization_msgs.msg import Marker, MarkerArray

from molmo_ros.drawing import NORMAL_FILL
from molmo_ros.srv import Point

RAY = np.array([0.0, -0.12, 1.0])  # of the pointed pixel, see above
FOCAL_PX, WIDTH, HEIGHT = 100.0, 64, 48
# Depth is published in whole millimetres: each sample is rounded by at most 0.5 mm. A least-squares slope
# over points spread evenly across a width w moves by at most 0.5 mm * sum|x| / sum x^2 = 0.5 mm * 3 / w;
# the 21-pixel fit at 1 m spans w = 210 mm (10 mm a pixel), so each of the two tilts is off by at most
# 0.41 degrees, the normal by at most sqrt(2) * 0.41 = 0.58 degrees.
ROUNDED_NORMAL_DEG = 0.6
# The depth is the median of the window's samples on the surface (on a plane, its middle pixel's depth,
# rounded by at most 0.5 mm), plus the fitted plane's change of depth from that pixel's centre to the
# pointed ray, half a pixel away: 0.5 px * Z tan(30 deg) / f = 2.9 mm at 1 m, which the slope's error
# (0.41 degrees, above) leaves right to 0.5 px * 10 mm * tan(0.41 deg) / cos^2(30 deg) = 0.05 mm. Without
# that change of depth the point lay 2.9 mm off the plane.
TILTED_DEPTH_M = 0.00055
EXACT = 1e-9  # rotations and vectors derived from one another, in float64


@pytest.fixture(scope="module", autouse=True)
def ros():
    rclpy.init()
    yield
    rclpy.try_shutdown()


@pytest.fixture
def make_rig():
    rigs = []

    def make(**parameters: object) -> Rig:
        rig = Rig(mug_at(50.0, 25.0), **parameters)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.close()


def tilted_plane_mm(tilt_deg: float, distance_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Depth in millimetres of a plane through (0, 0, distance) turned about the vertical by tilt_deg
    (its right side away from the camera), seen by the rig's camera; and its normal towards the camera."""
    tilt = math.radians(tilt_deg)
    normal = np.array([math.sin(tilt), 0.0, -math.cos(tilt)])
    ray_x = (np.arange(WIDTH) - (WIDTH - 1) / 2) / FOCAL_PX
    z = (normal[2] * distance_m) / (normal[0] * ray_x + normal[2])  # n . (Z ray) = n . (0, 0, d)
    return np.round(np.broadcast_to(z * 1000, (HEIGHT, WIDTH))), normal


def send_depth_image(rig: Rig, depth_mm: np.ndarray, stamp_ns: int) -> None:
    def arrived() -> bool:
        depth = rig.node.pointing.frames.nearest_depth("front", stamp_ns)
        return depth is not None and depth.stamp_ns == stamp_ns

    message = depth_image_message(depth_mm, stamp_ns, "front_optical")
    assert publish_until(rig.front_depth, lambda: message, arrived)


def angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    return math.degrees(math.acos(min(1.0, float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b)))))


def vector(message: Vector3) -> np.ndarray:
    return np.array([message.x, message.y, message.z])


def test_the_approach_pose_of_a_tilted_surface_goes_out_on_target_pose(make_rig):
    rig = make_rig()
    poses: list[PoseStamped] = []
    markers: list[MarkerArray] = []
    images: list[Image] = []
    rig.user.create_subscription(PoseStamped, "/molmo/target_pose", poses.append, 10)
    rig.user.create_subscription(MarkerArray, "/molmo/markers", markers.append, 10)
    rig.user.create_subscription(Image, "/molmo/debug_image", images.append, 1)
    depth_mm, true_normal = tilted_plane_mm(30.0, 1.0)
    stamp_ns = rig.now_ns()
    rig.send_front_info(fx=FOCAL_PX)
    send_depth_image(rig, depth_mm, stamp_ns)
    rig.send_front(10, stamp_ns=stamp_ns)
    assert wait_until(lambda: rig.node.count_subscribers("/molmo/debug_image") > 0)

    response = rig.user.point("mug")

    assert response.success, response.message
    result = response.result
    assert result.target_frame == "" and list(result.depth_valid) == [True]
    assert result.depth_support[0] == 25 and not result.depth_edge[0] and not result.depth_fallback[0]
    true_depth = true_normal[2] / (true_normal @ RAY)  # where the pointed ray meets the plane
    point = np.array([result.points_3d[0].x, result.points_3d[0].y, result.points_3d[0].z])
    assert point == pytest.approx(RAY * point[2], abs=EXACT) and point[2] == pytest.approx(
        true_depth, abs=TILTED_DEPTH_M
    )
    assert result.normal_valid[0] and result.normal_status[0] == ""
    normal = vector(result.normals[0])
    assert angle_deg(normal, true_normal) <= ROUNDED_NORMAL_DEG
    # the noise model's 4.8 mm over a grid 0.21 m wide: about 0.1 degrees (1 sigma)
    assert 0.0 < result.normal_error[0] < ROUNDED_NORMAL_DEG and result.depth_search_distance[0] == 0.0
    no_target = result.views[0].camera_to_target
    assert (no_target.rotation.x, no_target.rotation.y, no_target.rotation.z, no_target.rotation.w) == (
        0,
        0,
        0,
        0,
    )
    assert vector(no_target.translation).tolist() == [0.0, 0.0, 0.0], "no transform: zeros, not an identity"
    # the approach pose: z along -normal, x the image-right direction made perpendicular to z, at the point
    pose = result.approach_poses[0]
    expected_x = np.array([1.0, 0.0, 0.0]) + normal[0] * -normal  # e_x - (e_x . z) z, with z = -normal
    assert rotate(pose.orientation, np.array([0.0, 0.0, 1.0])) == pytest.approx(-normal, abs=EXACT)
    assert rotate(pose.orientation, np.array([1.0, 0.0, 0.0])) == pytest.approx(
        expected_x / np.linalg.norm(expected_x), abs=EXACT
    )
    assert [pose.position.x, pose.position.y, pose.position.z] == pytest.approx(point, abs=EXACT)

    assert wait_until(lambda: poses and markers and images)
    stamped = poses[0]
    assert stamped.header.frame_id == "front_optical" and stamped.header.stamp == result.header.stamp
    assert stamped.pose == pose
    arrows = [m for m in markers[-1].markers if (m.action, m.type) == (Marker.ADD, Marker.ARROW)]
    assert len(arrows) == 1 and arrows[0].header.frame_id == "front_optical"
    start, tip = (np.array([p.x, p.y, p.z]) for p in arrows[0].points)
    assert start == pytest.approx(point, abs=EXACT) and angle_deg(tip - start, normal) < 1e-6
    drawn = np.frombuffer(images[0].data, dtype=np.uint8).reshape(HEIGHT, WIDTH, 3)
    assert (drawn == NORMAL_FILL).all(axis=2).any(), "the normal's arrow is drawn on the debug image"


def test_a_thin_pole_gets_its_own_depth_and_no_orientation(make_rig):
    rig = make_rig()
    poses: list[PoseStamped] = []
    rig.user.create_subscription(PoseStamped, "/molmo/target_pose", poses.append, 10)
    depth_mm = np.full((HEIGHT, WIDTH), 2000)
    depth_mm[:, 32] = 800  # a 1-pixel pole (8 mm at this focal length) under the pointed pixel
    stamp_ns = rig.now_ns()
    rig.send_front_info(fx=FOCAL_PX)
    send_depth_image(rig, depth_mm, stamp_ns)
    rig.send_front(10, stamp_ns=stamp_ns)

    result = rig.user.point("mug").result

    assert result.points_3d[0].z == pytest.approx(0.8) and result.depth_support[0] == 5  # its column
    assert result.depth_edge[0] and result.depth_step[0] == pytest.approx(1.2)
    assert not result.normal_valid[0] and "too thin" in result.normal_status[0]
    assert result.normal_status[0].endswith("(parameter normal_max_error)") and math.isnan(
        result.normal_error[0]
    )
    assert (result.approach_poses[0].orientation.w, result.approach_poses[0].orientation.z) == (0.0, 0.0)
    assert not wait_until(lambda: poses, timeout=0.5), "no pose is made up for a point without a normal"


def camera_pose() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A camera 1.2 m up looking along the base's x axis, pitched 20 degrees down: its translation, its
    rotation matrix (optical axes in base coordinates) and its quaternion."""
    looking_forward = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # x_opt = -y_base, ...
    pitch, _ = cv2.Rodrigues(np.array([0.0, math.radians(20.0), 0.0]))  # about the base's y: x towards -z
    rotation = pitch @ looking_forward
    # the same rotation as a quaternion: the pitch's half angle after looking_forward's (-0.5, 0.5, -0.5, 0.5)
    quaternion = hamilton(
        np.array([0.0, math.sin(math.radians(10.0)), 0.0, math.cos(math.radians(10.0))]),
        np.array([-0.5, 0.5, -0.5, 0.5]),
    )
    return np.array([0.4, -0.1, 1.2]), rotation, quaternion


def static_pose_parameters(translation: np.ndarray, quaternion: np.ndarray) -> dict[str, object]:
    return {
        "target_frame": "base_link",
        "cameras.front.pose_parent_frame": "base_link",
        "cameras.front.pose_translation": translation.tolist(),
        "cameras.front.pose_rotation": quaternion.tolist(),
        "cameras.wrist.pose_parent_frame": "base_link",  # a static pose for each camera: no tf2 needed
    }


def test_a_static_camera_pose_puts_points_poses_and_markers_in_the_target_frame(make_rig):
    translation, rotation, quaternion = camera_pose()
    assert rotate(quaternion, np.array([0.0, 0.0, 1.0])) == pytest.approx(rotation[:, 2], abs=EXACT)
    rig = make_rig(**static_pose_parameters(translation, quaternion))
    targets: list[PointStamped] = []
    poses: list[PoseStamped] = []
    markers: list[MarkerArray] = []
    rig.user.create_subscription(PointStamped, "/molmo/target", targets.append, 10)
    rig.user.create_subscription(PoseStamped, "/molmo/target_pose", poses.append, 10)
    rig.user.create_subscription(MarkerArray, "/molmo/markers", markers.append, 10)
    stamp_ns = rig.now_ns()
    rig.send_front_info(fx=FOCAL_PX)
    rig.send_front_depth(2.0, stamp_ns)  # a wall 2 m in front of the camera
    rig.send_front(10, stamp_ns=stamp_ns)
    assert wait_until(lambda: rig.node.count_subscribers("/molmo/markers") > 0)

    response = rig.user.point("mug")

    assert response.success, response.message
    result = response.result
    in_camera = RAY * 2.0
    in_base = rotation @ in_camera + translation
    normal_in_base = rotation @ np.array([0.0, 0.0, -1.0])
    assert result.target_frame == "base_link"
    assert [result.points_3d[0].x, result.points_3d[0].y, result.points_3d[0].z] == pytest.approx(
        in_base, abs=1e-6
    )
    assert vector(result.normals[0]) == pytest.approx(normal_in_base, abs=1e-9)
    pose = result.approach_poses[0]
    # facing the wall the camera-frame approach pose is the identity, so in the base frame it is the camera's
    assert rotate(pose.orientation, np.array([0.0, 0.0, 1.0])) == pytest.approx(rotation[:, 2], abs=1e-9)
    assert rotate(pose.orientation, np.array([1.0, 0.0, 0.0])) == pytest.approx(rotation[:, 0], abs=1e-9)
    view = result.views[0]
    assert [view.points_3d[0].x, view.points_3d[0].y, view.points_3d[0].z] == pytest.approx(
        in_camera, abs=1e-6
    )
    assert vector(view.normals[0]) == pytest.approx([0.0, 0.0, -1.0], abs=1e-9)
    assert vector(view.camera_to_target.translation) == pytest.approx(translation, abs=EXACT)
    assert rotate(view.camera_to_target.rotation, np.array([1.0, 0.0, 0.0])) == pytest.approx(
        rotation[:, 0], abs=1e-9
    )

    assert wait_until(lambda: targets and poses and markers)
    for header in (targets[0].header, poses[0].header, markers[-1].markers[1].header):
        assert header.frame_id == "base_link" and header.stamp == result.header.stamp
    assert [targets[0].point.x, targets[0].point.y, targets[0].point.z] == pytest.approx(in_base, abs=1e-6)
    assert poses[0].pose == pose
    (arrow,) = [m for m in markers[-1].markers if (m.action, m.type) == (Marker.ADD, Marker.ARROW)]
    assert arrow.header.frame_id == "base_link" and arrow.header.stamp == result.header.stamp
    start, tip = (np.array([p.x, p.y, p.z]) for p in arrow.points)
    assert start == pytest.approx(in_base, abs=1e-6) and angle_deg(tip - start, normal_in_base) < 1e-6


def test_a_frame_without_a_transform_is_no_transform_never_the_camera_frame(make_rig):
    translation, _, quaternion = camera_pose()
    rig = make_rig(**static_pose_parameters(translation, quaternion))
    own = image_message(value_image(7), 5 * 1_000_000_000, "handheld")
    depth = depth_message(2.5, WIDTH, HEIGHT, 5 * 1_000_000_000, "handheld")
    info = camera_info_message(WIDTH, HEIGHT, FOCAL_PX, "handheld")

    response = rig.user.call(Point.Request(query="mug", image=own, depth=depth, camera_info=info))

    assert not response.success and response.error_code == Point.Response.NO_TRANSFORM
    assert "no transform from 'handheld' to 'base_link'" in response.message
    assert "a request's own image has no static pose" in response.message
    assert "parameter target_frame" in response.message
    assert rig.user.received() == [], "nothing is published in the wrong frame"
    without_depth = rig.user.call(Point.Request(query="mug", image=own))
    assert without_depth.success, "2D points need no transform"


def test_target_frame_without_a_static_pose_or_tf2_fails_configure_saying_what_to_set(
    make_rig, monkeypatch, capfd
):
    monkeypatch.setitem(sys.modules, "tf2_ros", None)  # as on a machine without ROS 2's tf2_ros
    rig = make_rig(autostart=False, target_frame="base_link")
    assert rig.node.trigger_configure() == TransitionCallbackReturn.FAILURE
    logged = capfd.readouterr().err
    assert "cannot configure" in logged and "camera(s) front, wrist have no static pose" in logged, logged
    assert "tf2 is not available" in logged
    assert "leave the target frame empty (parameter target_frame" in logged


def transform_message(translation: np.ndarray, quaternion: np.ndarray) -> TransformStamped:
    message = TransformStamped()
    message.transform.translation = Vector3(x=translation[0], y=translation[1], z=translation[2])
    x, y, z, w = quaternion
    message.transform.rotation = Quaternion(x=x, y=y, z=z, w=w)
    return message


def tf2_frames_services(rig: Rig) -> int:
    return sum(service.srv_name.split("/")[-1] == "tf2_frames" for service in rig.node.services)


def test_cameras_without_a_static_pose_take_tf2s_transform_at_the_frames_stamp(make_rig, monkeypatch):
    """Against the tf2_ros double: the lookup's frames, stamp and timeout, and its answer's conversion.
    tf2 takes a quaternion whose squared norm is within 1e-2 of 1; this one's is 1.005, and is normalised."""
    monkeypatch.setitem(sys.modules, "tf2_ros", tf2_double)
    rig = make_rig(target_frame="base_link", transform_timeout=0.3)
    (listener,) = [made for made in tf2_double.TransformListener.made if made.node is rig.node]
    translation, rotation, quaternion = camera_pose()
    off_unit = quaternion * math.sqrt(1.005)
    listener.buffer.transforms[("base_link", "front_optical")] = transform_message(translation, off_unit)
    stamp_ns = rig.now_ns()
    rig.send_front_info(fx=FOCAL_PX)
    rig.send_front_depth(2.0, stamp_ns)
    rig.send_front(10, stamp_ns=stamp_ns)

    result = rig.user.point("mug").result

    assert [result.points_3d[0].x, result.points_3d[0].y, result.points_3d[0].z] == pytest.approx(
        rotation @ (RAY * 2.0) + translation, abs=1e-6
    )
    # Taken before the model without waiting, and there: no second lookup.
    assert listener.buffer.calls == [("base_link", "front_optical", stamp_ns, 0)]
    listener.buffer.transforms.clear()
    listener.buffer.calls.clear()
    failed = rig.user.point("mug")
    assert failed.error_code == Point.Response.NO_TRANSFORM and "tf2: LookupException" in failed.message
    waits = [call[3] for call in listener.buffer.calls]
    assert waits == [0, 300_000_000], "not there before the model: looked up again after it, waiting"
    assert rig.node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    assert tf2_frames_services(rig) == 1
    assert rig.node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    assert listener.unregistered, "cleanup stops listening to /tf"
    assert tf2_frames_services(rig) == 0 and listener.buffer.jump_handle.unregistered, "the buffer's go too"
    assert rig.node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert tf2_frames_services(rig) == 1, "configuring again adds one tf2_frames service, not a second"
