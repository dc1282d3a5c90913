"""Answering one accepted request: what the model is shown (its frames, checked for age and decoded), the
model's answer, the depth frame and camera model that go with each frame, and the outcome.

Depth is paired after the model has answered: a depth frame stamped like the colour frame often arrives
a few milliseconds after it (the standing query wakes on the colour frame), and by then it is there.

The transform of each frame that may have 3D points to the target frame is taken before the model runs,
while the frame is young, without waiting: tf2's buffer keeps 10 s of a moving camera's transforms, and a
frame's age plus the model's time could pass that (a lookup then fails as an extrapolation into the
past). One not there yet (tf lagging the camera) is looked up again after the model, waiting up to the
transform timeout, only if a 3D point needs it; a failed lookup then fails the request."""

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from molmo_ros.backends.interface import GenerationControl, PointingBackend
from molmo_ros.depth.pairing import DepthMissing, ViewDepth, pair_depth
from molmo_ros.depth.settings import DepthSettings
from molmo_ros.depth.transforms import RigidTransform
from molmo_ros.image_conversion import ImageConversionError
from molmo_ros.pointing.answer import ViewInput, ask_model, pointing_outcome
from molmo_ros.pointing.errors import ErrorCode, PointingError, unexpected_error
from molmo_ros.pointing.frames import Frame, LatestFrames
from molmo_ros.pointing.outcomes import AskOutcome, PointingOutcome, View
from molmo_ros.pointing.requests import PointingRequest
from molmo_ros.pointing.settings import CameraSettings, PointingSettings
from molmo_ros.pointing.target_frame import TargetFrame
from molmo_ros.prompts import make_point_prompt
from molmo_ros.settings_fields import SettingRef

MAX_FRAME_AGE = SettingRef(PointingSettings, "max_frame_age_s")


@dataclass(frozen=True)
class ModelInputs:
    frames: list[Frame]
    images: list[np.ndarray]  # RGB, one per frame
    views: list[View]
    ages_s: list[float]  # of each frame, by its stamp, when the model started


@dataclass(frozen=True)
class Context:
    """What answering needs besides the request and the model: the service's frames and settings."""

    frames: LatestFrames
    settings: PointingSettings
    cameras: Mapping[str, CameraSettings]
    depth_settings: DepthSettings
    now_ns: Callable[[], int]
    target: TargetFrame | None = None  # where 3D answers are expressed; None: each camera's optical frame


def answer_request(
    request: PointingRequest, backend: PointingBackend, control: GenerationControl, context: Context
) -> PointingOutcome | AskOutcome:
    """The outcome of one accepted request, or PointingError; nothing else escapes, so each request gets
    its answer."""
    try:
        settings = context.settings
        inputs = gather_inputs(request, context.frames, settings, context.now_ns)
        transforms = early_transforms(request, inputs.views, context) if not request.ask else []
        query = request.query.strip()
        prompt = query if request.ask else make_point_prompt(settings.prompt_template, query)
        started = time.perf_counter()
        text = ask_model(backend, inputs.images, prompt, control)
        seconds = time.perf_counter() - started
        if request.ask:
            return AskOutcome(prompt, inputs.views[0], text, seconds, inputs.ages_s[0])
        return pointing_outcome(
            query=request.query,
            prompt=prompt,
            text=text,
            inputs=with_depth(request, inputs, context, transforms),
            depth_settings=context.depth_settings,
            require_depth=request.require_depth or settings.require_depth,
            model_seconds=seconds,
            frame_age_seconds=max(inputs.ages_s),
            images=inputs.images,
            target=context.target,
        )
    except PointingError:
        raise
    except Exception as error:
        raise unexpected_error("internal error", error) from error


def gather_inputs(
    request: PointingRequest,
    frames: LatestFrames,
    settings: PointingSettings,
    now_ns: Callable[[], int],
) -> ModelInputs:
    """The request's own image, or the newest frame of each of its cameras; PointingError for a frame
    that is too old, stamped in the future, or cannot be decoded."""
    own = request.image is not None
    chosen = [request.image] if own else [frames.get(camera) for camera in request.cameras]
    assert all(frame is not None for frame in chosen), "checked at submit; frames are cleared only inactive"
    images, views, ages = [], [], []
    for frame in chosen:
        limit_s = settings.max_frame_age_s
        ages.append(_age_s(frame, now_ns()) if own else _checked_age_s(frame, now_ns(), limit_s))
        image = _decoded(frame, own)
        height, width = image.shape[:2]
        images.append(image)
        views.append(View(frame.camera, frame.stamp_ns, frame.frame_id, width, height))
    return ModelInputs(chosen, images, views, ages)


def early_transforms(
    request: PointingRequest, views: list[View], context: Context
) -> list[RigidTransform | None]:
    """Each view's transform to the target frame, looked up now without waiting (see the module
    docstring); None where there is none yet, no target frame, or the view can have no 3D point (no depth
    source)."""
    found: list[RigidTransform | None] = []
    for view in views:
        if context.target is None or not _has_depth_source(request, view, context.cameras):
            found.append(None)
            continue
        try:
            found.append(context.target.transform_of(view, wait=False))
        except PointingError:
            found.append(None)  # tf lagging the camera: looked up again, waiting, if a 3D point needs it
    return found


def with_depth(
    request: PointingRequest,
    inputs: ModelInputs,
    context: Context,
    transforms: list[RigidTransform | None],
) -> list[ViewInput]:
    """Each view with the depth to lift its points with, and its `early_transforms`: the request's own
    depth, or the camera's depth frame stamped nearest the colour frame (see the module docstring for why
    this comes after the model)."""
    if request.image is not None:
        depths = [_own_depth(request, context.depth_settings)]
    else:
        depths = [
            _camera_depth(frame, context.frames, context.cameras, context.depth_settings)
            for frame in inputs.frames
        ]
    return [
        ViewInput(view, depth, transform)
        for view, depth, transform in zip(inputs.views, depths, transforms, strict=True)
    ]


def _has_depth_source(request: PointingRequest, view: View, cameras: Mapping[str, CameraSettings]) -> bool:
    """Whether the view's points may be lifted: it came with depth, or its camera has a depth topic."""
    if request.image is not None:
        return request.depth is not None and request.camera_model is not None
    return bool(_camera(cameras, view.camera).depth_topic)


def _camera(cameras: Mapping[str, CameraSettings], name: str) -> CameraSettings:
    return cameras.get(name) or CameraSettings(name=name)


def _own_depth(request: PointingRequest, settings: DepthSettings) -> ViewDepth:
    """The depth a request sent with its image: paired by the request itself, so stamps are not compared."""
    if request.depth is None or request.camera_model is None:
        return DepthMissing("the request carries no depth image and CameraInfo")
    assert request.image is not None
    return pair_depth(
        request.image.stamp_ns, request.depth, request.camera_model, settings, check_stamps=False
    )


def _camera_depth(
    frame: Frame, frames: LatestFrames, cameras: Mapping[str, CameraSettings], settings: DepthSettings
) -> ViewDepth:
    camera = _camera(cameras, frame.camera)
    if not camera.depth_topic:
        return None
    model = frames.camera_model(frame.camera)
    if model is None:
        return DepthMissing(f"no CameraInfo received on {camera.info_topic()}")
    depth = frames.nearest_depth(frame.camera, frame.stamp_ns)
    if depth is not None and depth.frame_id != frame.frame_id and not camera.depth_registered:
        return DepthMissing(
            f"the depth frame's frame_id {depth.frame_id!r} differs from the colour frame's "
            f"{frame.frame_id!r}, so it is not registered to it; use an aligned depth topic, or declare "
            "this camera's depth registered if it is",
            (SettingRef(CameraSettings, "depth_registered", frame.camera),),
        )
    return pair_depth(frame.stamp_ns, depth, model, settings)


def _age_s(frame: Frame, now_ns: int) -> float:
    """Age by the frame's own stamp; a frame without a stamp is aged from when it arrived."""
    reference_ns = frame.stamp_ns if frame.stamp_ns > 0 else frame.received_ns
    return (now_ns - reference_ns) / 1e9


def _checked_age_s(frame: Frame, now_ns: int, limit_s: float) -> float:
    """A camera frame's age, refused beyond `limit_s` either way (0 disables the check)."""
    age_s = _age_s(frame, now_ns)
    if limit_s == 0:
        return age_s
    if age_s > limit_s:
        raise PointingError(
            ErrorCode.STALE_FRAME,
            f"the newest frame from camera {frame.camera!r} is {age_s:.2f} s old; the limit is "
            f"{limit_s:g} s; is the camera still publishing, and do its frames reach this node (large raw "
            "frames need a transport that carries them: README, 'Large images')?",
            [MAX_FRAME_AGE],
        )
    if -age_s > limit_s:
        raise PointingError(
            ErrorCode.FRAME_FROM_FUTURE,
            f"the newest frame from camera {frame.camera!r} is stamped {-age_s:.2f} s ahead of this "
            f"node's clock (more than the frame age limit, {limit_s:g} s): the camera's clock and the "
            "node's disagree; synchronise them (NTP/PTP), or run both on the same (simulated or wall) clock",
            [MAX_FRAME_AGE],
        )
    return age_s


def _decoded(frame: Frame, own_image: bool) -> np.ndarray:
    try:
        return frame.decode()
    except ImageConversionError as error:
        source = "the request's image" if own_image else f"the frame from camera {frame.camera!r}"
        raise PointingError(ErrorCode.BAD_IMAGE, f"cannot use {source}: {error}") from error
