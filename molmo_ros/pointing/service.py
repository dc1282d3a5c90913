"""The pointing service without ROS: requests in, worker threads that own the model, outcomes out.

The ROS node only converts messages to these calls and back, so everything that decides what a
request gets (validation, frame choice, the bounded queue, the standing query, depth, cancellation,
the lifecycle, errors) lives here and is tested without DDS.

Every request that `submit` accepts is answered exactly once, through its ticket's future: with an
outcome, or with a `PointingError` whose code says why (busy, not active, shutting down, cancelled, ...).
Nothing is dropped, whatever happens to the model or the node.
"""

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from enum import Enum

import numpy as np

from molmo_ros.backends.interface import GenerationControl, PointingBackend, ProgressCallback, Stage
from molmo_ros.depth import DepthSettings
from molmo_ros.engine.errors import (
    EngineOutOfMemoryError,
    GenerationCancelledError,
    InvalidImageError,
    ServerResponseError,
    ServerUnavailableError,
    UnsupportedRequestError,
)
from molmo_ros.geometry import to_pixels
from molmo_ros.image_conversion import ImageConversionError
from molmo_ros.parsing import parse_answer
from molmo_ros.pointing.depth_lifting import ViewDepth, lift_view
from molmo_ros.pointing.errors import ErrorCode, PointingError
from molmo_ros.pointing.frames import CameraInfo, DepthFrame, Frame, LatestFrames
from molmo_ros.pointing.outcomes import AskOutcome, OutcomePoint, PointingOutcome, View
from molmo_ros.pointing.settings import ALL_CAMERAS, CameraSettings, PointingSettings
from molmo_ros.prompts import make_point_prompt
from molmo_ros.settings_fields import setting_specs

log = logging.getLogger(__name__)

RUNTIME_SETTINGS = frozenset(spec.field_name for spec in setting_specs(PointingSettings) if spec.info.runtime)
SHUTTING_DOWN = "the node is shutting down"


@dataclass(frozen=True)
class PointingRequest:
    """A question about the newest frame(s) of the named camera(s), or about the request's own image.

    `query` is what to point at (`ask` False) or the whole prompt (`ask` True), as the user gave it.
    """

    query: str
    camera: str = ""  # "" = the default camera, ALL_CAMERAS = every camera
    cameras: tuple[str, ...] = ()  # several cameras in one prompt; overrides camera when given
    image: Frame | None = None  # an image sent with the request replaces the camera frames
    depth: DepthFrame | None = None  # depth registered to `image`
    camera_info: CameraInfo | None = None  # of `image`
    require_depth: bool = False  # or the require_depth setting
    ask: bool = False


class _State(Enum):
    INACTIVE = "inactive"
    ACTIVE = "active"
    STOPPED = "stopped"


@dataclass(eq=False)
class Ticket:
    """One accepted request: its future resolves to an outcome or fails with a PointingError."""

    request: PointingRequest
    future: Future = field(default_factory=Future)
    control: GenerationControl = field(default_factory=GenerationControl)
    # Why a running request was stopped (cancelled by its client, node deactivated, shutting down).
    stop_reason: PointingError | None = None
    _service: "PointingService | None" = None

    def cancel(self) -> None:
        """Removes a waiting request at once; stops a running one at the model's next step."""
        if self._service is not None:
            self._service.cancel(self)


class PointingService:
    """Answers requests on worker threads, newest frame first, with a bounded wait queue.

    Requests beyond `queue_size` waiting ones are refused at once as BUSY instead of piling up.
    A standing query runs on every new frame whenever no request is waiting; requests go first.
    The service starts inactive: `activate(backend)` hands it a model, `deactivate()` takes it back
    (answering every waiting and running request NOT_ACTIVE), `stop()` ends it for good.
    """

    def __init__(
        self,
        frames: LatestFrames,
        settings: PointingSettings,
        now_ns: Callable[[], int],
        on_outcome: Callable[[PointingOutcome], None],
        on_error: Callable[[PointingError], None],
        cameras: Mapping[str, CameraSettings] | None = None,
        depth_settings: DepthSettings | None = None,
    ) -> None:
        self._frames = frames
        self._settings = settings
        self._cameras = dict(cameras or {})
        self._depth_settings = depth_settings or DepthSettings()
        self._now_ns = now_ns
        self._on_outcome = on_outcome
        self._on_error = on_error
        self._wake = threading.Condition()
        self._jobs: deque[Ticket] = deque()
        self._running: set[Ticket] = set()
        self._standing_query: str | None = None
        self._standing_query_as_given = ""  # what the outcomes carry as their query
        self._standing_seen: dict[str, int] = {}
        self._standing_next_camera = 0
        self._standing_busy = False
        # The running standing-query generation, so that deactivate can stop it like a request.
        self._standing_control: GenerationControl | None = None
        self._state = _State.INACTIVE
        self._inactive_reason = "the node is not active yet (lifecycle: configure and activate it)"
        self._backend: PointingBackend | None = None
        self._workers: list[threading.Thread] = []

    # --- settings ---------------------------------------------------------------------------------------

    @property
    def settings(self) -> PointingSettings:
        return self._settings

    @property
    def depth_settings(self) -> DepthSettings:
        return self._depth_settings

    def checked_settings(self, **changes: object) -> PointingSettings:
        """The settings with `changes` applied, or ValueError with the reason; changes nothing."""
        fixed = set(changes) - RUNTIME_SETTINGS
        if fixed:
            raise ValueError(f"{', '.join(sorted(fixed))} cannot change while the service runs")
        return replace(self._settings, **changes)

    def apply_settings(self, settings: PointingSettings) -> None:
        """Applies to requests not yet started (use `checked_settings` first)."""
        with self._wake:
            self._settings = settings

    # --- lifecycle --------------------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return self._state is _State.ACTIVE

    @property
    def backend(self) -> PointingBackend | None:
        return self._backend

    def activate(self, backend: PointingBackend) -> None:
        """Starts answering with `backend`: one worker thread per call the backend may take at once."""
        with self._wake:
            if self._state is _State.STOPPED:
                raise RuntimeError("the pointing service was stopped")
            if self._state is _State.ACTIVE:
                # A second set of workers would outlive deactivate() and use a backend being freed.
                raise RuntimeError("the pointing service is already active; deactivate it first")
            self._backend = backend
            self._state = _State.ACTIVE
            self._workers = [
                threading.Thread(target=self._work, name=f"molmo-pointing-worker-{index}", daemon=True)
                for index in range(max(1, backend.max_concurrent_calls))
            ]
        for worker in self._workers:
            worker.start()

    def deactivate(self, reason: str = "the node was deactivated") -> PointingBackend | None:
        """Answers every waiting request NOT_ACTIVE, stops the running ones at their next step, waits for
        the workers and returns the backend (the caller frees it). New requests get NOT_ACTIVE."""
        error = PointingError(ErrorCode.NOT_ACTIVE, reason)
        with self._wake:
            if self._state is _State.ACTIVE:
                self._state = _State.INACTIVE
            self._inactive_reason = reason
            waiting = list(self._jobs)
            self._jobs.clear()
            for ticket in self._running:
                ticket.stop_reason = ticket.stop_reason or error
                ticket.control.cancel()
            if self._standing_control is not None:
                self._standing_control.cancel()
            # The frames are forgotten below and their counts restart: the standing query must take
            # the first new frame as new, not wait for as many frames as it had seen.
            self._standing_seen = {}
            backend, self._backend = self._backend, None
            workers, self._workers = self._workers, []
            self._wake.notify_all()
        for ticket in waiting:
            self._fail(ticket, error)
        for worker in workers:
            worker.join()
        self._frames.clear()
        return backend

    def stop(self) -> PointingBackend | None:
        """Ends the service: like deactivate, and every later request is answered NOT_ACTIVE too."""
        backend = self.deactivate(SHUTTING_DOWN)
        with self._wake:
            self._state = _State.STOPPED
        return backend

    # --- requests ---------------------------------------------------------------------------------------

    def pending(self) -> int:
        with self._wake:
            return len(self._jobs)

    def submit(self, request: PointingRequest, on_progress: ProgressCallback | None = None) -> Ticket:
        """A ticket whose future resolves to an outcome or fails with a PointingError; never blocks."""
        ticket = Ticket(request, control=GenerationControl(on_progress), _service=self)
        try:
            with self._wake:
                if self._state is not _State.ACTIVE:
                    raise PointingError(ErrorCode.NOT_ACTIVE, self._inactive_reason)
                ticket.request = self._checked(request)
                if len(self._jobs) >= self._settings.queue_size:
                    raise PointingError(
                        ErrorCode.BUSY,
                        f"busy: {len(self._jobs)} requests are already waiting (parameter queue_size); "
                        "try again shortly",
                    )
                self._jobs.append(ticket)
                self._notify(ticket.control.report, Stage.QUEUED, len(self._jobs) - 1)
                self._wake.notify_all()
        except PointingError as error:
            self._fail(ticket, error)
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        error = PointingError(ErrorCode.CANCELED, "the request was cancelled by its client")
        with self._wake:
            if ticket in self._running:
                ticket.stop_reason = ticket.stop_reason or error
                ticket.control.cancel()
                return
            if ticket not in self._jobs:
                return  # already answered
            self._jobs.remove(ticket)
            self._report_positions()
        self._fail(ticket, error)

    def set_standing_query(self, query: str) -> None:
        """Points at every new frame while set; an empty query clears it. Invalid queries raise."""
        cleaned = validate_query(query, self._settings.max_query_length) if query.strip() else None
        with self._wake:
            if cleaned == self._standing_query:
                return  # a planner re-publishing its query must not get the same frame answered again
            self._standing_query = cleaned
            self._standing_query_as_given = query
            # The frame already there counts as new, so a standing query answers without waiting.
            self._standing_seen = {
                camera: max(self._frames.sequence(camera) - 1, 0) for camera in self._settings.cameras
            }
            self._wake.notify_all()

    @property
    def standing_query(self) -> str | None:
        return self._standing_query

    def frame_arrived(self) -> None:
        """Wakes a worker when a standing query waits for a new frame."""
        if self._standing_query is not None:
            with self._wake:
                self._wake.notify_all()

    # --- checks at submit time --------------------------------------------------------------------------

    def _checked(self, request: PointingRequest) -> PointingRequest:
        """Everything that can be refused at once; called with the lock held."""
        validate_query(request.query, self._settings.max_query_length, "prompt" if request.ask else "query")
        if request.image is not None:
            return request
        cameras = self._requested_cameras(request)
        if request.ask and len(cameras) > 1:
            raise PointingError(
                ErrorCode.UNSUPPORTED, "Ask answers about one frame: name one camera, or leave camera empty"
            )
        assert self._backend is not None
        if len(cameras) > self._backend.max_images:
            raise PointingError(
                ErrorCode.UNSUPPORTED,
                f"this request needs {len(cameras)} images in one prompt, but engine.backend "
                f"{self._backend.name} takes {self._backend.max_images}; several cameras at once need "
                "engine.backend molmo2, or openai with a server that serves Molmo2",
            )
        for camera in cameras:
            if self._frames.get(camera) is None:
                raise PointingError(ErrorCode.NO_FRAME, f"no frame received yet from camera {camera!r}")
        return replace(request, camera="", cameras=cameras)

    def _requested_cameras(self, request: PointingRequest) -> tuple[str, ...]:
        configured = self._settings.cameras
        if request.cameras:
            names = tuple(request.cameras)
        elif request.camera == ALL_CAMERAS:
            names = configured
        else:
            names = (request.camera or self._settings.camera_for_default,)
        unknown = [name for name in names if name not in configured]
        if unknown:
            raise PointingError(
                ErrorCode.UNKNOWN_CAMERA,
                f"unknown camera {unknown[0]!r}; configured cameras: {', '.join(configured)}",
            )
        if len(set(names)) != len(names):
            raise PointingError(ErrorCode.UNKNOWN_CAMERA, f"a camera is named twice: {list(names)}")
        return names

    # --- the workers ------------------------------------------------------------------------------------

    def _next_task(self) -> tuple[Ticket | None, str | None, bool]:
        """Waits for a request or, failing that, a new frame for the standing query.
        Returns (ticket, standing camera, keep working)."""
        with self._wake:
            while self._state is _State.ACTIVE:
                if self._jobs:
                    ticket = self._jobs.popleft()
                    self._running.add(ticket)
                    self._report_positions()
                    return ticket, None, True
                if not self._standing_busy:
                    camera = self._camera_with_new_frame()
                    if camera is not None:
                        self._standing_busy = True
                        self._standing_control = GenerationControl()
                        return None, camera, True
                self._wake.wait()
            return None, None, False

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
            ticket, standing_camera, keep_working = self._next_task()
            if not keep_working:
                return
            if ticket is not None:
                try:
                    outcome = self._answer_safely(ticket.request, ticket.control)
                except PointingError as error:
                    with self._wake:
                        self._running.discard(ticket)
                    self._fail(ticket, ticket.stop_reason or error)
                else:
                    with self._wake:
                        self._running.discard(ticket)
                    ticket.future.set_result(outcome)
                    if isinstance(outcome, PointingOutcome):
                        self._notify(self._on_outcome, outcome)
            else:
                self._answer_standing_query(standing_camera)

    def _answer_standing_query(self, camera: str) -> None:
        control = self._standing_control
        assert control is not None, "set with the lock held when the standing run was chosen"
        try:
            with self._wake:
                query, as_given = self._standing_query, self._standing_query_as_given
            if query is None or self._frames.get(camera) is None:
                return
            request = PointingRequest(query=as_given, cameras=(camera,))
            try:
                outcome = self._answer_safely(request, control)
            except PointingError as error:
                if not control.cancelled:  # stopped by deactivate: nobody asked, nothing to report
                    self._notify(self._on_error, error)
            else:
                self._notify(self._on_outcome, outcome)
        finally:
            with self._wake:
                self._standing_busy = False
                self._standing_control = None
                self._wake.notify_all()

    def _fail(self, ticket: Ticket, error: PointingError) -> None:
        if not ticket.future.done():
            ticket.future.set_exception(error)
        self._notify(self._on_error, error)

    def _report_positions(self) -> None:
        """Tells every waiting request its place. Called with the lock held, as is submit's first report,
        so that each client hears its positions in the order the queue changed, and QUEUED before the
        worker's VISION (a feedback publish only hands the message to DDS: it never waits)."""
        for position, ticket in enumerate(list(self._jobs)):
            self._notify(ticket.control.report, Stage.QUEUED, position)

    @staticmethod
    def _notify(callback: Callable[..., object], *values: object) -> None:
        """A failing publish, log or feedback (e.g. during shutdown) must not end a worker: requests
        would hang. It is logged in one line; the request it belongs to is still answered."""
        try:
            callback(*values)
        except Exception as error:
            log.warning("pointing service callback failed: %s: %s", type(error).__name__, error)

    # --- answering --------------------------------------------------------------------------------------

    def _answer_safely(
        self, request: PointingRequest, control: GenerationControl
    ) -> PointingOutcome | AskOutcome:
        """Every failure of answering becomes a PointingError, so each request gets its answer."""
        try:
            return self._answer(request, control)
        except PointingError:
            raise
        except Exception as error:
            raise PointingError(
                ErrorCode.ENGINE_ERROR, f"internal error: {type(error).__name__}: {error}"
            ) from error

    def _answer(self, request: PointingRequest, control: GenerationControl) -> PointingOutcome | AskOutcome:
        settings = self._settings
        frames = (
            [request.image] if request.image is not None else [self._frames.get(c) for c in request.cameras]
        )
        assert all(frame is not None for frame in frames), (
            "checked at submit; frames are only cleared inactive"
        )
        ages = [self._checked_age_s(frame, own_image=request.image is not None) for frame in frames]
        images = [self._decoded(frame, own_image=request.image is not None) for frame in frames]
        query = request.query.strip()
        prompt = query if request.ask else make_point_prompt(settings.prompt_template, query)
        backend = self._backend
        if backend is None:
            raise PointingError(ErrorCode.NOT_ACTIVE, self._inactive_reason)
        started = time.perf_counter()
        text = self._generate(backend, images, prompt, control)
        model_seconds = time.perf_counter() - started
        views = [_view(frame, image) for frame, image in zip(frames, images, strict=True)]
        if request.ask:
            return AskOutcome(
                prompt=prompt,
                view=views[0],
                text=text,
                model_seconds=model_seconds,
                frame_age_seconds=ages[0],
            )
        outcome = self._pointing_outcome(request, prompt, frames, views, text, model_seconds, max(ages))
        return replace(outcome, images=tuple(images))

    def _generate(
        self, backend: PointingBackend, images: list[np.ndarray], prompt: str, control: GenerationControl
    ) -> str:
        try:
            control.raise_if_cancelled()
            return backend.generate(images, [prompt], control).texts[0]
        except GenerationCancelledError as error:
            raise PointingError(ErrorCode.CANCELED, "the request was cancelled") from error
        except InvalidImageError as error:
            raise PointingError(ErrorCode.BAD_IMAGE, f"the model cannot use this image: {error}") from error
        except UnsupportedRequestError as error:
            raise PointingError(ErrorCode.UNSUPPORTED, str(error)) from error
        except EngineOutOfMemoryError as error:
            raise PointingError(ErrorCode.ENGINE_ERROR, f"the model ran out of memory: {error}") from error
        except ServerUnavailableError as error:
            raise PointingError(
                ErrorCode.SERVER_UNAVAILABLE, f"the model server is unavailable: {error}"
            ) from error
        except ServerResponseError as error:
            raise PointingError(ErrorCode.ENGINE_ERROR, f"the model server failed: {error}") from error
        except Exception as error:
            raise PointingError(
                ErrorCode.ENGINE_ERROR, f"the model failed: {type(error).__name__}: {error}"
            ) from error

    def _pointing_outcome(
        self,
        request: PointingRequest,
        prompt: str,
        frames: list[Frame],
        views: list[View],
        text: str,
        model_seconds: float,
        frame_age_s: float,
    ) -> PointingOutcome:
        parsed = parse_answer(text)
        by_view: list[list] = [[] for _ in views]
        outside = 0
        for point in parsed.points:
            image_index = point.image_index
            index = 0 if image_index is None or len(views) == 1 else image_index
            if 0 <= index < len(views):
                by_view[index].append(point)
            else:
                outside += 1  # a frame number for an image the model was not given
        points: list[OutcomePoint] = []
        require_depth = request.require_depth or self._settings.require_depth
        for index, (frame, view) in enumerate(zip(frames, views, strict=True)):
            pixels = to_pixels(by_view[index], view.width, view.height)
            outside += len(pixels.outside)
            depth = self._lift(request, frame, view, [(p.x, p.y) for p in pixels.inside])
            if require_depth and depth.status:
                raise PointingError(
                    ErrorCode.NO_DEPTH, f"no usable depth for camera {view.camera!r}: {depth.status}"
                )
            views[index] = replace(
                view,
                depth_stamp_ns=depth.stamp_ns,
                depth_status=depth.status,
                depth_configured=depth.configured,
            )
            for pixel, lifted in zip(pixels.inside, depth.points, strict=True):
                points.append(
                    OutcomePoint(
                        x=pixel.x,
                        y=pixel.y,
                        label=pixel.label,
                        view=index,
                        position_m=lifted.xyz if lifted is not None else None,
                        depth_spread_m=lifted.spread if lifted is not None else float("nan"),
                    )
                )
        return PointingOutcome(
            query=request.query,
            prompt=prompt,
            views=tuple(views),
            points=tuple(points),
            points_outside_image=outside,
            raw_text=text,
            answer_malformed=parsed.malformed,
            parse_problems=parsed.problems,
            model_seconds=model_seconds,
            frame_age_seconds=frame_age_s,
        )

    def _lift(
        self, request: PointingRequest, frame: Frame, view: View, pixels: list[tuple[float, float]]
    ) -> ViewDepth:
        if request.image is not None:
            if request.depth is None or request.camera_info is None:
                return ViewDepth.unavailable(len(pixels), "the request carries no depth image and CameraInfo")
            return lift_view(
                pixels,
                view,
                request.depth,
                request.camera_info,
                registered=True,
                settings=self._depth_settings,
                paired_by_request=True,
            )
        camera = self._cameras.get(frame.camera) or CameraSettings(name=frame.camera)
        if not camera.depth_topic:
            return ViewDepth.unavailable(
                len(pixels),
                f"no depth topic configured (parameter cameras.{frame.camera}.depth_topic)",
                configured=False,
            )
        info = self._frames.camera_info(frame.camera)
        if info is None:
            return ViewDepth.unavailable(len(pixels), f"no CameraInfo received on {camera.info_topic()}")
        depth = self._frames.nearest_depth(frame.camera, frame.stamp_ns)
        return lift_view(
            pixels, view, depth, info, registered=camera.depth_registered, settings=self._depth_settings
        )

    def _checked_age_s(self, frame: Frame, own_image: bool) -> float:
        """Age by the frame's own stamp; a frame without a stamp is aged from when it arrived."""
        reference_ns = frame.stamp_ns if frame.stamp_ns > 0 else frame.received_ns
        age_s = (self._now_ns() - reference_ns) / 1e9
        limit = self._settings.max_frame_age_s
        if own_image or limit <= 0:
            return age_s
        if age_s > limit:
            raise PointingError(
                ErrorCode.STALE_FRAME,
                f"the newest frame from camera {frame.camera!r} is {age_s:.2f} s old; the limit is "
                f"{limit:g} s (parameter max_frame_age); is the camera still publishing?",
            )
        if -age_s > limit:
            raise PointingError(
                ErrorCode.FRAME_FROM_FUTURE,
                f"the newest frame from camera {frame.camera!r} is stamped {-age_s:.2f} s ahead of this "
                f"node's clock (more than max_frame_age, {limit:g} s): the camera's clock and the node's "
                "disagree; synchronise them (NTP/PTP), or check use_sim_time on both",
            )
        return age_s

    @staticmethod
    def _decoded(frame: Frame, own_image: bool) -> np.ndarray:
        try:
            return frame.decode()
        except ImageConversionError as error:
            source = "the request's image" if own_image else f"the frame from camera {frame.camera!r}"
            raise PointingError(ErrorCode.BAD_IMAGE, f"cannot use {source}: {error}") from error


def _view(frame: Frame, image: np.ndarray) -> View:
    height, width = image.shape[:2]
    return View(
        camera=frame.camera, stamp_ns=frame.stamp_ns, frame_id=frame.frame_id, width=width, height=height
    )


def validate_query(query: str, max_length: int, what: str = "query") -> str:
    """The query with surrounding blanks removed; raises INVALID_QUERY with the reason."""
    stripped = query.strip()
    if not stripped:
        example = "e.g. 'red mug'" if what == "query" else "e.g. 'Describe this image.'"
        raise PointingError(ErrorCode.INVALID_QUERY, f"the {what} is empty; say what you want, {example}")
    if len(stripped) > max_length:
        raise PointingError(
            ErrorCode.INVALID_QUERY,
            f"the {what} is {len(stripped)} characters long; "
            f"the limit is {max_length} (parameter max_query_length)",
        )
    bad = [ch for ch in stripped if not ch.isprintable() or "\ud800" <= ch <= "\udfff"]
    if bad:
        raise PointingError(
            ErrorCode.INVALID_QUERY,
            f"the {what} is not plain text: it contains control or invalid characters "
            f"{sorted(set(map(repr, bad)))}",
        )
    return stripped
