"""The pointing service without ROS: requests in, one worker thread that owns the engine, outcomes out.

The ROS node only converts messages to these calls and back, so everything that decides what a
request gets (validation, frame choice, the bounded queue, the standing query, errors) lives here
and is tested without DDS.
"""

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import Protocol

import numpy as np

from molmo_ros.engine.errors import EngineOutOfMemoryError, InvalidImageError
from molmo_ros.geometry import PixelPoint, to_pixels
from molmo_ros.image_conversion import ImageConversionError
from molmo_ros.parsing import parse_answer
from molmo_ros.pointing.frames import Frame, LatestFrames
from molmo_ros.prompts import make_point_prompt

log = logging.getLogger(__name__)


class ErrorCode(IntEnum):
    """Why a request failed; the names match the constants of the Point service response."""

    OK = 0
    INVALID_QUERY = 1
    UNKNOWN_CAMERA = 2
    NO_FRAME = 3
    STALE_FRAME = 4
    BAD_IMAGE = 5
    ENGINE_ERROR = 6
    BUSY = 7


class PointingError(Exception):
    """A request that cannot be answered with points; the message is meant for the user."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class EngineAnswer(Protocol):
    texts: Sequence[str]


class PointingEngine(Protocol):
    """The one seam between the node and a model: image and prompts in, one text per prompt out."""

    def generate(self, image: np.ndarray, prompts: Sequence[str]) -> EngineAnswer: ...


@dataclass(frozen=True)
class PointingSettings:
    """How requests are checked and answered; `RUNTIME_SETTINGS` may change while the service runs."""

    cameras: tuple[str, ...]
    default_camera: str
    prompt_template: str
    max_query_length: int = 200
    max_frame_age_s: float = 2.0  # 0 disables the check
    queue_size: int = 4

    def __post_init__(self) -> None:
        """Checked on construction and on every `replace`, so no caller can hold inconsistent settings."""
        if self.default_camera not in self.cameras:
            raise ValueError(f"default camera {self.default_camera!r} is not one of {list(self.cameras)}")
        if self.queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        make_point_prompt(self.prompt_template, "check")  # a template without {query} is refused


RUNTIME_SETTINGS = frozenset({"prompt_template", "max_query_length", "max_frame_age_s"})


@dataclass(frozen=True)
class PointingRequest:
    query: str
    camera: str = ""
    image: Frame | None = None  # an image sent with the request replaces the camera frame


@dataclass(frozen=True)
class PointingOutcome:
    camera: str
    query: str
    prompt: str
    stamp_ns: int
    frame_id: str
    image_width: int
    image_height: int
    points: tuple[PixelPoint, ...]
    points_outside_image: int
    raw_text: str
    answer_malformed: bool
    parse_problems: tuple[str, ...]
    model_seconds: float
    frame_age_seconds: float


@dataclass
class _Job:
    request: PointingRequest
    future: Future


def validate_query(query: str, max_length: int) -> str:
    """The query with surrounding blanks removed; raises INVALID_QUERY with the reason."""
    stripped = query.strip()
    if not stripped:
        raise PointingError(
            ErrorCode.INVALID_QUERY, "the query is empty; say what to point at, e.g. 'red mug'"
        )
    if len(stripped) > max_length:
        raise PointingError(
            ErrorCode.INVALID_QUERY,
            f"the query is {len(stripped)} characters long; "
            f"the limit is {max_length} (parameter max_query_length)",
        )
    bad = [ch for ch in stripped if not ch.isprintable() or "\ud800" <= ch <= "\udfff"]
    if bad:
        raise PointingError(
            ErrorCode.INVALID_QUERY,
            "the query is not plain text: it contains control or invalid characters "
            f"{sorted(set(map(repr, bad)))}",
        )
    return stripped


class PointingService:
    """Answers pointing requests on one worker thread, newest frame first, with a bounded wait queue.

    Requests beyond `queue_size` waiting ones are refused at once as BUSY instead of piling up.
    A standing query runs on every new frame whenever no request is waiting; requests go first.
    """

    def __init__(
        self,
        engine: PointingEngine,
        frames: LatestFrames,
        settings: PointingSettings,
        now_ns: Callable[[], int],
        on_outcome: Callable[[PointingOutcome], None],
        on_error: Callable[[PointingError], None],
    ) -> None:
        self._engine = engine
        self._frames = frames
        self._settings = settings
        self._now_ns = now_ns
        self._on_outcome = on_outcome
        self._on_error = on_error
        self._wake = threading.Condition()
        self._jobs: deque[_Job] = deque()
        self._standing_query: str | None = None
        self._standing_seen: dict[str, int] = {}
        self._standing_next_camera = 0
        self._running = False
        self._worker: threading.Thread | None = None

    @property
    def settings(self) -> PointingSettings:
        return self._settings

    def update_settings(self, **changes: object) -> None:
        """Applies to requests not yet started; only RUNTIME_SETTINGS can change."""
        fixed = set(changes) - RUNTIME_SETTINGS
        if fixed:
            raise ValueError(f"{', '.join(sorted(fixed))} cannot change while the service runs")
        with self._wake:
            self._settings = replace(self._settings, **changes)

    def start(self) -> None:
        self._running = True
        self._worker = threading.Thread(target=self._work, name="molmo-pointing-worker", daemon=True)
        self._worker.start()

    def stop(self) -> None:
        """Stops the worker after the job in progress; waiting requests are failed, not dropped."""
        with self._wake:
            self._running = False
            pending = list(self._jobs)
            self._jobs.clear()
            self._wake.notify_all()
        for job in pending:
            job.future.set_exception(PointingError(ErrorCode.BUSY, "the node is shutting down"))
        if self._worker is not None:
            self._worker.join()

    def pending(self) -> int:
        with self._wake:
            return len(self._jobs)

    def submit(self, request: PointingRequest) -> Future:
        """A future that resolves to a PointingOutcome or fails with a PointingError; never blocks."""
        future: Future = Future()
        try:
            job = _Job(self._checked(request), future)
            with self._wake:
                if not self._running:
                    raise PointingError(ErrorCode.BUSY, "the node is shutting down")
                if len(self._jobs) >= self._settings.queue_size:
                    raise PointingError(
                        ErrorCode.BUSY,
                        f"busy: {len(self._jobs)} requests are already waiting (parameter queue_size); "
                        "try again shortly",
                    )
                self._jobs.append(job)
                self._wake.notify_all()
        except PointingError as error:
            future.set_exception(error)
            self._notify(self._on_error, error)
        return future

    def set_standing_query(self, query: str) -> None:
        """Points at every new frame while set; an empty query clears it. Invalid queries raise."""
        cleaned = validate_query(query, self._settings.max_query_length) if query.strip() else None
        with self._wake:
            if cleaned == self._standing_query:
                return  # a planner re-publishing its query must not get the same frame answered again
            self._standing_query = cleaned
            # The frame already there counts as new, so a standing query answers without waiting.
            self._standing_seen = {
                camera: max(self._frames.sequence(camera) - 1, 0) for camera in self._settings.cameras
            }
            self._wake.notify_all()

    @property
    def standing_query(self) -> str | None:
        return self._standing_query

    def frame_arrived(self) -> None:
        """Wakes the worker when a standing query waits for a new frame."""
        if self._standing_query is not None:
            with self._wake:
                self._wake.notify_all()

    def _checked(self, request: PointingRequest) -> PointingRequest:
        query = validate_query(request.query, self._settings.max_query_length)
        if request.image is not None:
            return PointingRequest(query=query, camera=request.camera, image=request.image)
        camera = request.camera or self._settings.default_camera
        if camera not in self._settings.cameras:
            raise PointingError(
                ErrorCode.UNKNOWN_CAMERA,
                f"unknown camera {camera!r}; configured cameras: {', '.join(self._settings.cameras)}",
            )
        if self._frames.get(camera) is None:
            raise PointingError(ErrorCode.NO_FRAME, f"no frame received yet from camera {camera!r}")
        return PointingRequest(query=query, camera=camera)

    def _next_task(self) -> tuple[_Job | None, str | None]:
        """Waits for a request or, failing that, a new frame for the standing query."""
        with self._wake:
            while self._running:
                if self._jobs:
                    return self._jobs.popleft(), None
                camera = self._camera_with_new_frame()
                if camera is not None:
                    return None, camera
                self._wake.wait()
        return None, None

    def _camera_with_new_frame(self) -> str | None:
        if self._standing_query is None:
            return None
        cameras = self._settings.cameras
        for offset in range(len(cameras)):
            camera = cameras[(self._standing_next_camera + offset) % len(cameras)]
            sequence = self._frames.sequence(camera)
            if sequence > self._standing_seen.get(camera, 0):
                self._standing_seen[camera] = sequence
                self._standing_next_camera = (cameras.index(camera) + 1) % len(cameras)
                return camera
        return None

    def _work(self) -> None:
        while True:
            job, standing_camera = self._next_task()
            if job is not None:
                try:
                    outcome = self._answer_safely(job.request)
                except PointingError as error:
                    job.future.set_exception(error)
                    self._notify(self._on_error, error)
                else:
                    job.future.set_result(outcome)
                    self._notify(self._on_outcome, outcome)
            elif standing_camera is not None:
                query = self._standing_query
                if query is None:
                    continue
                try:
                    outcome = self._answer_safely(PointingRequest(query=query, camera=standing_camera))
                except PointingError as error:
                    self._notify(self._on_error, error)
                else:
                    self._notify(self._on_outcome, outcome)
            else:
                return

    @staticmethod
    def _notify(callback: Callable[[object], None], value: object) -> None:
        """A failing publish or log (e.g. during shutdown) must not end the worker: requests would hang."""
        try:
            callback(value)
        except Exception:
            log.exception("pointing service callback failed")

    def _answer_safely(self, request: PointingRequest) -> PointingOutcome:
        """Every failure of answering becomes a PointingError, so each request gets its answer."""
        try:
            return self._answer(request)
        except PointingError:
            raise
        except Exception as error:
            raise PointingError(
                ErrorCode.ENGINE_ERROR, f"internal error: {type(error).__name__}: {error}"
            ) from error

    def _answer(self, request: PointingRequest) -> PointingOutcome:
        frame = request.image or self._frames.get(request.camera)
        assert frame is not None, "requests are checked for a frame and frames are never removed"
        age_s = self._frame_age_s(frame)
        limit = self._settings.max_frame_age_s
        if request.image is None and limit > 0 and age_s > limit:
            raise PointingError(
                ErrorCode.STALE_FRAME,
                f"the newest frame from camera {frame.camera!r} is {age_s:.2f} s old; "
                f"the limit is {limit:g} s "
                "(parameter max_frame_age); is the camera still publishing?",
            )
        try:
            image = frame.decode()
        except ImageConversionError as error:
            source = (
                "the request's image"
                if request.image is not None
                else f"the frame from camera {frame.camera!r}"
            )
            raise PointingError(ErrorCode.BAD_IMAGE, f"cannot use {source}: {error}") from error
        prompt = make_point_prompt(self._settings.prompt_template, request.query)
        started = time.perf_counter()
        try:
            answer = self._engine.generate(image, [prompt])
        except InvalidImageError as error:
            raise PointingError(ErrorCode.BAD_IMAGE, f"the model cannot use this image: {error}") from error
        except EngineOutOfMemoryError as error:
            raise PointingError(ErrorCode.ENGINE_ERROR, f"the model ran out of memory: {error}") from error
        except Exception as error:
            raise PointingError(
                ErrorCode.ENGINE_ERROR, f"the model failed: {type(error).__name__}: {error}"
            ) from error
        model_seconds = time.perf_counter() - started
        raw_text = answer.texts[0]
        height, width = image.shape[:2]
        parsed = parse_answer(raw_text)
        pixels = to_pixels(parsed.points, width, height)
        return PointingOutcome(
            camera=frame.camera,
            query=request.query,
            prompt=prompt,
            stamp_ns=frame.stamp_ns,
            frame_id=frame.frame_id,
            image_width=width,
            image_height=height,
            points=pixels.inside,
            points_outside_image=len(pixels.outside),
            raw_text=raw_text,
            answer_malformed=parsed.malformed,
            parse_problems=parsed.problems,
            model_seconds=model_seconds,
            frame_age_seconds=age_s,
        )

    def _frame_age_s(self, frame: Frame) -> float:
        """Age by the frame's own stamp; a frame without a stamp is aged from when it arrived."""
        reference_ns = frame.stamp_ns if frame.stamp_ns > 0 else frame.received_ns
        return (self._now_ns() - reference_ns) / 1e9
