"""The one answer path, shared by the pointing service and `molmo-point`: the model's text about some frames
becomes points in each frame's pixels, lifted to 3D where the frame has depth.

Pure: no frames are chosen and no threads are involved here. `ask_model` is the only call into a
backend, and it turns every backend failure into a PointingError with the code a client can branch on.
"""

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from molmo_ros.backends.errors import (
    BackendError,
    DeviceOutOfMemoryError,
    GenerationCancelledError,
    InvalidImageError,
    ServerResponseError,
    ServerUnavailableError,
    UnsupportedRequestError,
)
from molmo_ros.backends.interface import GenerationControl, PointingBackend
from molmo_ros.depth.lifting import LiftedPoint
from molmo_ros.depth.pairing import DepthMissing, PairedDepth, ViewDepth, lift_view
from molmo_ros.depth.settings import DepthSettings
from molmo_ros.depth.transforms import RigidTransform, approach_pose
from molmo_ros.geometry import PixelPoint, to_pixels
from molmo_ros.parsing import ParsedPoint, parse_answer
from molmo_ros.pointing.errors import ErrorCode, PointingError, unexpected_error
from molmo_ros.pointing.outcomes import DepthUsed, OutcomePoint, PointingOutcome, Target, View, ViewDepthState
from molmo_ros.pointing.settings import CameraSettings
from molmo_ros.pointing.target_frame import TargetFrame
from molmo_ros.settings_fields import SettingRef

# Backend failures and how a client hears of them: the code, and what the message says before the
# backend's own words.
_BACKEND_FAILURES: tuple[tuple[type[BackendError], ErrorCode, str], ...] = (
    (InvalidImageError, ErrorCode.BAD_IMAGE, "the model cannot use this image"),
    (DeviceOutOfMemoryError, ErrorCode.ENGINE_ERROR, "the model ran out of memory"),
    (ServerUnavailableError, ErrorCode.SERVER_UNAVAILABLE, "the model server is unavailable"),
    (ServerResponseError, ErrorCode.ENGINE_ERROR, "the model server failed"),
)
CANCELLED = "the request was cancelled"


@dataclass(frozen=True)
class ViewInput:
    """One frame the model is shown, and the depth to lift its points with."""

    view: View
    depth: ViewDepth  # paired, missing with the reason, or None when the camera has no depth source
    # The transform to the target frame, looked up when the frame was chosen (see answering.py); None
    # (none yet, or not looked up): looked up here, waiting, when a point needs it.
    to_target: RigidTransform | None = None


def ask_model(
    backend: PointingBackend, images: Sequence[np.ndarray], prompt: str, control: GenerationControl
) -> str:
    """The backend's answer to one prompt about `images`; every failure becomes a PointingError."""
    try:
        control.raise_if_cancelled()
        return backend.generate(images, [prompt], control).texts[0]
    except GenerationCancelledError as error:
        raise PointingError(ErrorCode.CANCELED, CANCELLED) from error
    except UnsupportedRequestError as error:  # its message already says which backend can
        raise PointingError(ErrorCode.UNSUPPORTED, str(error), error.settings) from error
    except BackendError as error:
        for error_type, code, what in _BACKEND_FAILURES:
            if isinstance(error, error_type):
                raise PointingError(code, f"{what}: {error}", error.settings) from error
        raise unexpected_error("the model failed", error, error.settings) from error
    except Exception as error:
        raise unexpected_error("the model failed", error) from error


def pointing_outcome(
    *,
    query: str,
    prompt: str,
    text: str,
    inputs: Sequence[ViewInput],
    depth_settings: DepthSettings,
    require_depth: bool,
    model_seconds: float,
    frame_age_seconds: float,
    images: Sequence[np.ndarray] = (),
    target: TargetFrame | None = None,
) -> PointingOutcome:
    """The answer `text` as points in the pixels of the frame each belongs to, lifted where depth allows,
    and expressed in `target`'s frame when given.

    Raises NO_DEPTH when `require_depth` and a frame has no usable depth, NO_TRANSFORM when a frame with
    3D points has no transform to `target`."""
    parsed = parse_answer(text)
    by_view, unseen = _points_by_view(parsed.points, len(inputs))
    views: list[View] = []
    points: list[OutcomePoint] = []
    outside: list[PixelPoint] = []
    for index, view_input in enumerate(inputs):
        view = view_input.view
        pixels = to_pixels(by_view[index], view.width, view.height)
        outside += pixels.outside
        size = (view.width, view.height)
        lifted, depth_state = _lift(view_input.depth, pixels.inside, size, depth_settings)
        if require_depth and not isinstance(depth_state, DepthUsed):
            raise _no_depth(view.camera, depth_state)
        has_3d = any(point is not None and point.valid for point in lifted)
        to_target = _to_target(view_input, target) if target is not None and has_3d else None
        views.append(replace(view, depth=depth_state, to_target=to_target))
        points += [
            OutcomePoint(pixel.x, pixel.y, pixel.label, index, depth, _target(depth, to_target))
            for pixel, depth in zip(pixels.inside, lifted, strict=True)
        ]
    return PointingOutcome(
        query=query,
        prompt=prompt,
        views=tuple(views),
        points=tuple(points),
        outside_points=tuple(outside),
        points_for_unseen_images=unseen,
        raw_text=text,
        answer_malformed=parsed.malformed,
        parse_problems=parsed.problems,
        model_seconds=model_seconds,
        frame_age_seconds=frame_age_seconds,
        images=tuple(images),
        target_frame="" if target is None else target.frame,
    )


def _to_target(view_input: ViewInput, target: TargetFrame) -> RigidTransform:
    """The view's transform to the target frame: the one looked up earlier, or now, waiting."""
    if view_input.to_target is None:
        return target.transform_of(view_input.view)
    return view_input.to_target


def _target(lifted: LiftedPoint | None, to_target: RigidTransform | None) -> Target | None:
    """The point's position, normal and approach pose in the target frame (the camera's without one)."""
    if lifted is None or lifted.xyz is None:
        return None
    approach = None if lifted.normal is None else approach_pose(lifted.xyz, lifted.normal)
    if to_target is None:
        return Target(lifted.xyz, lifted.normal, approach)
    return Target(
        to_target.point(lifted.xyz),
        None if lifted.normal is None else to_target.vector(lifted.normal),
        None if approach is None else to_target.pose(approach),
    )


def _points_by_view(points: Sequence[ParsedPoint], view_count: int) -> tuple[list[list[ParsedPoint]], int]:
    """The answer's points grouped by the image they name (all in the first when only one was shown),
    and how many name an image the model was not shown."""
    by_view: list[list[ParsedPoint]] = [[] for _ in range(view_count)]
    unseen = 0
    for point in points:
        index = 0 if point.image_index is None or view_count == 1 else point.image_index
        if 0 <= index < view_count:
            by_view[index].append(point)
        else:
            unseen += 1
    return by_view, unseen


def _lift(
    depth: ViewDepth, pixels: Sequence[PixelPoint], size: tuple[int, int], settings: DepthSettings
) -> tuple[tuple[LiftedPoint | None, ...], ViewDepthState]:
    if isinstance(depth, PairedDepth):
        lifted = lift_view([(pixel.x, pixel.y) for pixel in pixels], size, depth, settings)
        if not isinstance(lifted, DepthMissing):
            return lifted, DepthUsed(depth.stamp_ns)
        depth = lifted
    return (None,) * len(pixels), depth


def _no_depth(camera: str, depth: DepthMissing | None) -> PointingError:
    if depth is None:
        return PointingError(
            ErrorCode.NO_DEPTH,
            f"no usable depth for camera {camera!r}: it has no depth topic",
            [SettingRef(CameraSettings, "depth_topic", camera)],
        )
    return PointingError(
        ErrorCode.NO_DEPTH, f"no usable depth for camera {camera!r}: {depth.reason}", depth.settings
    )
