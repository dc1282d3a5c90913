"""What the pointing service answers: plain dataclasses the node turns into messages."""

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class View:
    """One frame the model saw: where it came from, its size, and the depth used to lift its points."""

    camera: str
    stamp_ns: int
    frame_id: str
    width: int
    height: int
    depth_stamp_ns: int = 0  # 0: no depth frame was used
    depth_status: str = ""  # empty when depth was used, else why not
    depth_configured: bool = True  # False when the camera has no depth source, so 2D is all it can give


@dataclass(frozen=True)
class OutcomePoint:
    """x = column, y = row, continuous pixel coordinates of the frame `view` indexes."""

    x: float
    y: float
    label: str
    view: int
    position_m: tuple[float, float, float] | None  # in the view's optical frame; None without depth
    depth_spread_m: float  # NaN without depth


@dataclass(frozen=True)
class PointingOutcome:
    query: str  # as the user gave it
    prompt: str
    views: tuple[View, ...]
    points: tuple[OutcomePoint, ...]
    points_outside_image: int
    raw_text: str
    answer_malformed: bool
    parse_problems: tuple[str, ...]
    model_seconds: float
    frame_age_seconds: float
    # The RGB frames the model saw, one per view (for drawing the answer).
    images: tuple[np.ndarray, ...] = field(default=(), repr=False, compare=False)

    @property
    def view(self) -> View:
        """The first (for most requests the only) frame."""
        return self.views[0]


@dataclass(frozen=True)
class AskOutcome:
    prompt: str
    view: View
    text: str
    model_seconds: float
    frame_age_seconds: float
