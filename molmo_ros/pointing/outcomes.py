"""What the pointing service answers: plain dataclasses the node turns into messages and the CLI prints."""

from dataclasses import dataclass, field

import numpy as np

from molmo_ros.depth.lifting import LiftedPoint
from molmo_ros.depth.pairing import DepthMissing
from molmo_ros.depth.transforms import Pose, RigidTransform
from molmo_ros.geometry import PixelPoint


@dataclass(frozen=True)
class DepthUsed:
    """The view's points were lifted with a depth frame stamped `stamp_ns` (None: a file, no stamp)."""

    stamp_ns: int | None


# A view's depth: used, missing (with the reason), or None when its camera has no depth source at all.
ViewDepthState = DepthUsed | DepthMissing | None


@dataclass(frozen=True)
class View:
    """One frame the model saw: where it came from, its size, and what became of its depth."""

    camera: str
    stamp_ns: int
    frame_id: str
    width: int
    height: int
    depth: ViewDepthState = None
    # Maps this frame's optical frame into the outcome's target frame, at its stamp; None when the
    # outcome has no target frame, or the view no 3D point to express in it.
    to_target: RigidTransform | None = None


@dataclass(frozen=True)
class Target:
    """A point's 3D position, and its surface normal and approach pose where it has a normal, in the
    outcome's target frame (its view's optical frame when the outcome has none)."""

    position: tuple[float, float, float]
    normal: tuple[float, float, float] | None
    approach: Pose | None  # z along the approach (-normal); see depth.transforms


@dataclass(frozen=True)
class OutcomePoint:
    """x = column, y = row, continuous pixel coordinates of the frame `view` indexes."""

    x: float
    y: float
    label: str
    view: int
    depth: (
        LiftedPoint | None
    )  # None when the view has no usable depth; else lifted (camera frame), or why not
    target: Target | None = None  # None without a 3D position

    @property
    def position_m(self) -> tuple[float, float, float] | None:
        """In the view's optical frame; None without depth."""
        return None if self.depth is None else self.depth.xyz


@dataclass(frozen=True)
class PointingOutcome:
    query: str  # as the user gave it
    prompt: str
    views: tuple[View, ...]
    points: tuple[OutcomePoint, ...]
    outside_points: tuple[PixelPoint, ...]  # in the answer, but outside their frame (its pixels): dropped
    points_for_unseen_images: int  # in the answer, for an image number the model was not shown: dropped
    raw_text: str
    answer_malformed: bool
    parse_problems: tuple[str, ...]
    model_seconds: float
    frame_age_seconds: float
    # The RGB frames the model saw, one per view (for drawing the answer).
    images: tuple[np.ndarray, ...] = field(default=(), repr=False, compare=False)
    target_frame: str = ""  # the frame of every point's `target`; empty: each point's view's optical frame

    @property
    def view(self) -> View:
        """The first (for most requests the only) frame."""
        return self.views[0]

    @property
    def points_outside_image(self) -> int:
        return len(self.outside_points) + self.points_for_unseen_images


@dataclass(frozen=True)
class AskOutcome:
    prompt: str
    view: View
    text: str
    model_seconds: float
    frame_age_seconds: float
