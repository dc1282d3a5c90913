"""What molmo-demo prints of a result's 3D points (the whole demo runs in test_pointer_process.py)."""

import math

from geometry_msgs.msg import Point as PointMsg

from molmo_ros import demo
from molmo_ros.msg import CameraView, PointingResult


def result_with_points(count: int) -> PointingResult:
    result = PointingResult(labels=[f"mug {index}" for index in range(count)])
    result.points = [PointMsg(x=10.0 * index, y=5.0) for index in range(count)]
    result.views = [CameraView()]
    result.views[0].header.frame_id = "camera_optical_frame"
    result.point_views = [0] * count
    return result


def test_valid_3d_points_are_printed_in_metres_with_their_frame_and_spread(capsys):
    result = result_with_points(2)
    result.points_3d = [PointMsg(x=0.1234, y=-0.05, z=1.5), PointMsg()]
    result.depth_valid = [True, False]
    result.depth_spread = [0.004, math.nan]
    demo._print_3d(result)
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "  mug 0: x=0.123 y=-0.050 z=1.500 m in camera_optical_frame (depth spread 4 mm)",
        "  mug 1: no valid depth at this point",
    ]


def test_without_3d_points_the_reason_is_printed(capsys):
    result = result_with_points(1)
    result.views[0].depth_status = "no depth within 0.05 s of the colour frame"
    demo._print_3d(result)
    assert capsys.readouterr().out == "no 3D points: no depth within 0.05 s of the colour frame\n"
