"""The constants of the ROS interfaces agree with the Python enums the pointing service answers with.

The node copies `PointingError.code` into `error_code` and `Stage` into the feedback's `stage` as plain
numbers, so a constant added, renamed or renumbered on one side only would silently mislabel answers.
"""

import pytest

from molmo_ros.action import Point as PointAction
from molmo_ros.backends.interface import Stage
from molmo_ros.pointing.errors import ErrorCode
from molmo_ros.srv import Ask, Point


def constants(message_type: type) -> dict[str, int]:
    """The constants a rosidl message class declares (its metaclass keeps them in one dict)."""
    metaclass = type(message_type)
    return dict(getattr(metaclass, f"_{metaclass.__name__}__constants"))


@pytest.mark.parametrize(
    "message_type", [Point.Response, Ask.Response, PointAction.Result], ids=["Point", "Ask", "action"]
)
def test_error_code_constants_equal_the_error_code_enum(message_type):
    assert constants(message_type) == {code.name: code.value for code in ErrorCode}
    for code in ErrorCode:
        assert getattr(message_type, code.name) == code.value, "readable as class attributes too"


def test_feedback_stage_constants_equal_the_stage_enum():
    assert constants(PointAction.Feedback) == {stage.name: stage.value for stage in Stage}
    for stage in Stage:
        assert getattr(PointAction.Feedback, stage.name) == stage.value
