"""What molmo-demo prints of a result's 3D points (the whole demo runs in test_pointer_process.py)."""

import math

from geometry_msgs.msg import Point as PointMsg
from geometry_msgs.msg import Vector3

from molmo_ros import demo
from molmo_ros.msg import CameraView, PointingResult


def result_with_points(count: int) -> PointingResult:
    result = PointingResult(labels=[f"mug {index}" for index in range(count)])
    result.points = [PointMsg(x=10.0 * index, y=5.0) for index in range(count)]
    result.views = [CameraView()]
    result.views[0].header.frame_id = "camera_optical_frame"
    result.point_views = [0] * count
    return result


def test_valid_3d_points_are_printed_in_metres_with_their_frame_and_trust(capsys):
    result = result_with_points(3)
    result.points_3d = [PointMsg(x=0.1234, y=-0.05, z=1.5), PointMsg(x=0.2, y=0.1, z=0.8), PointMsg()]
    result.depth_valid = [True, True, False]
    result.depth_support = [25, 5, 0]
    result.depth_step = [0.0, -1.2, math.nan]
    result.depth_edge = [False, True, False]
    result.depth_fallback = [False, True, False]
    result.depth_search_distance = [0.0, 1.5, math.nan]
    result.normal_valid = [True, False, False]
    result.normals = [Vector3(x=-0.0001, y=-0.5, z=-0.866), Vector3(), Vector3()]
    result.normal_error = [0.42, math.nan, math.nan]
    result.normal_status = ["", "the surface is too thin here to orient", "no depth at this point"]
    demo._print_3d(result)
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "  mug 0: x=0.123 y=-0.050 z=1.500 m in camera_optical_frame (support 25, no edge)",
        "    surface normal (0.000, -0.500, -0.866), within 0.4 degrees (1 sigma)",
        "  mug 1: x=0.200 y=0.100 z=0.800 m in camera_optical_frame (support 5, edge: depth step -1.200 m, "
        "nearest surface 1.5 px away (none at the pixel))",
        "    no normal: the surface is too thin here to orient",
        "  mug 2: no valid depth at this point",
    ]


def test_a_target_frame_is_named_instead_of_the_cameras(capsys):
    result = result_with_points(1)
    result.target_frame = "base_link"
    result.points_3d = [PointMsg(x=1.0, y=0.0, z=0.5)]
    result.depth_valid, result.depth_support, result.depth_step = [True], [25], [0.0]
    result.depth_edge, result.depth_fallback, result.normal_valid = [False], [False], [False]
    result.depth_search_distance, result.normal_error = [0.0], [math.nan]
    result.normals, result.normal_status = [Vector3()], ["normals are off (parameter normal_radius)"]
    demo._print_3d(result)
    assert "m in base_link (support 25" in capsys.readouterr().out


def test_the_scene_description_names_the_thin_pole_and_the_tilted_board():
    described = demo._describe_scene()
    assert "8 mm pole at 1 m" in described and "tilted 30 degrees at 2.2 m" in described


def test_without_3d_points_the_reason_is_printed(capsys):
    result = result_with_points(1)
    result.views[0].depth_status = "no depth within 0.05 s of the colour frame"
    demo._print_3d(result)
    assert capsys.readouterr().out == "no 3D points: no depth within 0.05 s of the colour frame\n"
