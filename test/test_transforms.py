"""Rigid transforms, approach poses and the target frame, without ROS.

Rotations to compare with are built by cv2.Rodrigues (axis-angle) and quaternions applied with the
Hamilton product written out here, never with the code under test. Everything is float64 arithmetic on
values near 1: EXACT = 1e-12 is a few hundred ulps.
"""

import math

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from quaternions import axis_angle_quaternion, hamilton, rotate

from molmo_ros.depth.camera import CameraModel
from molmo_ros.depth.errors import DepthError
from molmo_ros.depth.pairing import PairedDepth
from molmo_ros.depth.settings import DepthSettings
from molmo_ros.depth.transforms import (
    Pose,
    RigidTransform,
    approach_pose,
    matrix_to_quaternion,
    quaternion_to_matrix,
)
from molmo_ros.nodes.parameters import with_parameter_names
from molmo_ros.pointing.answer import ViewInput, pointing_outcome
from molmo_ros.pointing.errors import ErrorCode, PointingError
from molmo_ros.pointing.outcomes import View
from molmo_ros.pointing.settings import CameraSettings, PointingSettings
from molmo_ros.pointing.target_frame import StaticCameraPoses, TargetFrame, TransformUnavailable, target_frame

EXACT = 1e-12


rotations = st.tuples(
    st.tuples(st.floats(-1, 1), st.floats(-1, 1), st.floats(-1, 1)).filter(lambda a: np.linalg.norm(a) > 0.1),
    st.floats(-math.pi, math.pi),
)


@settings(max_examples=200, deadline=None)
@given(rotation=rotations)
def test_quaternions_and_matrices_agree_with_rodrigues_both_ways(rotation):
    axis, angle = rotation
    expected, _ = cv2.Rodrigues(np.asarray(axis) / np.linalg.norm(axis) * angle)
    quaternion = axis_angle_quaternion(axis, angle)
    np.testing.assert_allclose(quaternion_to_matrix(tuple(quaternion)), expected, atol=EXACT)
    back = np.array(matrix_to_quaternion(expected))
    assert back[3] >= 0 and np.linalg.norm(back) == pytest.approx(1.0, abs=EXACT)
    # q and -q are one rotation; w >= 0 picks one, except at w = 0 (a half turn), where rounding decides
    assert abs(float(back @ quaternion)) == pytest.approx(1.0, abs=1e-9)


def test_a_transform_maps_points_vectors_and_poses():
    translation = np.array([0.4, -0.1, 1.2])
    quaternion = axis_angle_quaternion((1, 2, 3), 0.7)
    transform = RigidTransform.from_quaternion(translation, quaternion)
    point = np.array([0.3, -0.2, 2.0])
    assert transform.point(point) == pytest.approx(rotate(quaternion, point) + translation, abs=EXACT)
    assert transform.vector(point) == pytest.approx(rotate(quaternion, point), abs=EXACT)
    turned = transform.pose(Pose((0.0, 0.0, 1.0), tuple(axis_angle_quaternion((0, 0, 1), 0.3))))
    expected = hamilton(quaternion, axis_angle_quaternion((0, 0, 1), 0.3))
    assert turned.position == pytest.approx(rotate(quaternion, [0, 0, 1]) + translation, abs=EXACT)
    assert np.abs(np.dot(turned.orientation, expected)) == pytest.approx(1.0, abs=EXACT)  # q and -q: one turn


@pytest.mark.parametrize(
    "quaternion, fragment",
    [((0, 0, 0, 0), "norm 0"), ((0.1, 0.2, 0.3), "4 finite numbers"), ((0, 0, 1.1, 0), "norm 1.1")],
)
def test_a_quaternion_that_is_not_a_rotation_is_refused(quaternion, fragment):
    with pytest.raises(DepthError, match=fragment):
        RigidTransform.from_quaternion((0, 0, 0), quaternion)


def test_a_rounded_quaternion_is_normalised():
    transform = RigidTransform.from_quaternion((0, 0, 0), (0.7071, 0.0, 0.0, 0.7071))  # 4 decimals
    np.testing.assert_allclose(transform.rotation @ transform.rotation.T, np.eye(3), atol=EXACT)


# --- the approach pose ---


@settings(max_examples=200, deadline=None)
@given(rotation=rotations)
def test_the_approach_pose_looks_into_the_surface_with_x_the_image_right_direction(rotation):
    axis, angle = rotation
    tilt, _ = cv2.Rodrigues(np.asarray(axis) / np.linalg.norm(axis) * angle / 2.1)  # within 86 degrees
    normal = tilt @ np.array([0.0, 0.0, -1.0])
    pose = approach_pose((0.1, 0.2, 1.0), normal)
    z_axis, x_axis = rotate(pose.orientation, [0, 0, 1]), rotate(pose.orientation, [1, 0, 0])
    assert z_axis == pytest.approx(-normal, abs=1e-9)
    # x: image-right with its part along z removed, normalised (written out here)
    right = np.array([1.0, 0.0, 0.0]) - normal[0] * normal
    assert x_axis == pytest.approx(right / np.linalg.norm(right), abs=1e-9)
    assert pose.position == (0.1, 0.2, 1.0)


def test_an_approach_along_image_right_takes_image_down_for_x():
    pose = approach_pose((0, 0, 1), (-1.0, 0.0, 0.0))  # the surface faces image-right: approach along +x
    assert rotate(pose.orientation, [0, 0, 1]) == pytest.approx([1, 0, 0], abs=EXACT)
    assert rotate(pose.orientation, [1, 0, 0]) == pytest.approx([0, 1, 0], abs=EXACT)


def test_the_approach_pose_is_the_same_physical_pose_in_every_frame():
    normal = np.array([0.3, -0.2, -0.93])
    normal /= np.linalg.norm(normal)
    in_camera = approach_pose((0.1, 0.0, 0.8), normal)
    base_from_camera = RigidTransform.from_quaternion((1.0, 2.0, 0.5), axis_angle_quaternion((0, 1, 1), 1.1))
    in_base = base_from_camera.pose(in_camera)
    for axis in np.eye(3):
        expected = base_from_camera.vector(rotate(in_camera.orientation, axis))
        assert rotate(in_base.orientation, axis) == pytest.approx(expected, abs=1e-9)
    assert in_base.position == pytest.approx(base_from_camera.point(in_camera.position), abs=EXACT)


# --- the static transform: a known camera pose gives known base-frame points and poses ---


def looking_forward_and_down(pitch_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """A camera's optical axes in base coordinates (looking along base x, pitched down), and its
    quaternion: the optical frame's fixed turn (-0.5, 0.5, -0.5, 0.5) after the pitch about base y."""
    forward = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    pitch, _ = cv2.Rodrigues(np.array([0.0, math.radians(pitch_deg), 0.0]))
    quaternion = hamilton(
        axis_angle_quaternion((0, 1, 0), math.radians(pitch_deg)), np.array([-0.5, 0.5, -0.5, 0.5])
    )
    return pitch @ forward, quaternion


def answer_over_a_wall(target: TargetFrame | None, camera: str = "front"):
    """A 64x48 camera (f = 100) facing a wall 2 m away, the model pointing at pixel (32, 12)."""
    model = CameraModel.pinhole(64, 48, 100.0, 100.0, 31.5, 23.5)
    depth = PairedDepth(np.full((48, 64), 2.0, dtype=np.float32), model, stamp_ns=7)
    view = View(camera=camera, stamp_ns=123_000_000_000, frame_id="front_optical", width=64, height=48)
    return pointing_outcome(
        query="mug",
        prompt="Point to the mug",
        text='<point x="50.0" y="25.0" alt="mug">mug</point>',
        inputs=[ViewInput(view, depth)],
        depth_settings=DepthSettings(),
        require_depth=False,
        model_seconds=0.0,
        frame_age_seconds=0.0,
        target=target,
    )


def no_tf2():
    raise ImportError("No module named 'tf2_ros'")


class Tf2Double:
    """Stands in for tf2 (a TransformSource): every frame 1, 2, 3 m from the target, unturned."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def lookup(self, target, view, timeout_s):
        self.asked.append(view.frame_id)
        return RigidTransform.from_quaternion((1, 2, 3), (0, 0, 0, 1))


def static_target(translation, quaternion) -> TargetFrame:
    camera = CameraSettings(
        name="front", pose_parent_frame="base_link", pose_translation=translation, pose_rotation=quaternion
    )
    settings = PointingSettings(cameras=("front",), target_frame="base_link")
    found = target_frame(settings, {"front": camera}, load_tf2=no_tf2)
    assert found is not None and found.frame == "base_link"
    return found


def test_a_known_camera_pose_gives_known_base_frame_points_normals_and_poses():
    rotation, quaternion = looking_forward_and_down(25.0)
    translation = np.array([0.3, 0.05, 1.1])
    outcome = answer_over_a_wall(static_target(translation.tolist(), quaternion.tolist()))
    (point,) = outcome.points
    in_camera = np.array([0.0, -0.24, 2.0])  # ray (0, -0.12, 1) at 2 m
    assert point.depth.xyz == pytest.approx(in_camera, abs=EXACT), "the camera frame stays in the view"
    assert outcome.target_frame == "base_link"
    assert point.target.position == pytest.approx(rotation @ in_camera + translation, abs=1e-9)
    assert point.target.normal == pytest.approx(rotation @ np.array([0.0, 0.0, -1.0]), abs=1e-9)
    approach = point.target.approach
    assert approach.position == pytest.approx(point.target.position, abs=EXACT)
    # facing the wall, the camera-frame approach pose is the identity: in the base frame, the camera's axes
    for axis in range(3):
        assert rotate(approach.orientation, np.eye(3)[axis]) == pytest.approx(rotation[:, axis], abs=1e-9)
    assert outcome.view.to_target.translation == pytest.approx(translation, abs=EXACT)


def test_without_a_target_frame_the_target_is_in_the_camera_frame():
    outcome = answer_over_a_wall(None)
    (point,) = outcome.points
    assert outcome.target_frame == "" and outcome.view.to_target is None
    assert point.target.position == point.depth.xyz and point.target.normal == point.depth.normal
    assert point.target.approach == approach_pose(point.depth.xyz, point.depth.normal)


def test_a_frame_without_a_transform_is_the_no_transform_error():
    target = static_target([0, 0, 0], [0, 0, 0, 1])
    with pytest.raises(PointingError) as raised:
        answer_over_a_wall(target, camera="wrist")
    assert raised.value.code is ErrorCode.NO_TRANSFORM
    assert "no transform from 'front_optical' to 'base_link' at the frame's stamp (123.000 s)" in str(
        raised.value
    )
    assert "camera 'wrist' has no static pose" in str(raised.value)


def test_static_poses_answer_only_for_their_cameras():
    poses = StaticCameraPoses({"front": CameraSettings(name="front", pose_parent_frame="base_link")})
    view = View(camera="front", stamp_ns=0, frame_id="front_optical", width=1, height=1)
    assert poses.has_pose("front") and not poses.has_pose("wrist")
    np.testing.assert_allclose(poses.lookup("base_link", view, 0.1).rotation, np.eye(3))
    own = View(camera="", stamp_ns=0, frame_id="handheld", width=1, height=1)
    with pytest.raises(TransformUnavailable, match="^a request's own image has no static pose$"):
        poses.lookup("base_link", own, 0.1)


# --- choosing the transform sources ---


def test_an_empty_target_frame_needs_no_transforms():
    assert target_frame(PointingSettings(), {"camera": CameraSettings(name="camera")}, pytest.fail) is None


def test_cameras_without_a_static_pose_need_tf2_and_say_what_to_set_without_it():
    settings = PointingSettings(cameras=("front", "wrist"), target_frame="base_link")
    cameras = {
        "front": CameraSettings(name="front", pose_parent_frame="base_link"),
        "wrist": CameraSettings(name="wrist"),
    }
    with pytest.raises(ValueError, match="camera.s. wrist have no static pose .* tf2 is not available"):
        target_frame(settings, cameras, no_tf2)

    found = target_frame(settings, cameras, Tf2Double)
    wrist = View(camera="wrist", stamp_ns=0, frame_id="wrist_optical", width=1, height=1)
    front = View(camera="front", stamp_ns=0, frame_id="front_optical", width=1, height=1)
    assert found.transform_of(wrist).translation == pytest.approx([1, 2, 3])
    assert found.transform_of(front).translation == pytest.approx([0, 0, 0]), "its static pose, not tf2"


def test_a_requests_own_image_takes_tf2_even_when_every_camera_has_a_static_pose():
    settings = PointingSettings(cameras=("front",), target_frame="base_link")
    cameras = {"front": CameraSettings(name="front", pose_parent_frame="base_link")}
    tf2 = Tf2Double()
    found = target_frame(settings, cameras, lambda: tf2)
    own = View(camera="", stamp_ns=0, frame_id="handheld", width=1, height=1)
    assert found.transform_of(own).translation == pytest.approx([1, 2, 3]) and tf2.asked == ["handheld"]


def test_without_tf2_static_poses_serve_alone_and_other_frames_say_tf2_is_missing():
    settings = PointingSettings(cameras=("front",), target_frame="base_link")
    cameras = {"front": CameraSettings(name="front", pose_parent_frame="base_link")}
    found = target_frame(settings, cameras, no_tf2)
    front = View(camera="front", stamp_ns=0, frame_id="front_optical", width=1, height=1)
    assert found.transform_of(front).translation == pytest.approx([0, 0, 0])
    own = View(camera="", stamp_ns=0, frame_id="handheld", width=1, height=1)
    with pytest.raises(PointingError) as raised:
        found.transform_of(own)
    assert raised.value.code is ErrorCode.NO_TRANSFORM
    assert "a request's own image has no static pose, and tf2 is not available (No module named" in str(
        raised.value
    )


def test_a_static_pose_in_another_frame_than_the_target_is_refused_at_once():
    settings = PointingSettings(cameras=("front",), target_frame="base_link")
    cameras = {"front": CameraSettings(name="front", pose_parent_frame="world")}
    with pytest.raises(ValueError, match="given in 'world' but the target frame is 'base_link'"):
        target_frame(settings, cameras, pytest.fail)


def test_camera_pose_settings_are_checked():
    with pytest.raises(ValueError, match="static pose: .* norm"):
        CameraSettings(name="front", pose_parent_frame="base_link", pose_rotation=(0, 0, 0, 2))
    with pytest.raises(ValueError, match="no parent frame") as no_parent:
        CameraSettings(name="front", pose_translation=(1, 0, 0))
    assert "(parameter cameras.front.pose_parent_frame)" in with_parameter_names(no_parent.value)
    assert CameraSettings(name="front").static_pose() is None
