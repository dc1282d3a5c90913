"""The pointing service without ROS: it owns the newest frames and the worker threads that own the model,
and schedules requests: a bounded queue, cancellation, the standing query and the lifecycle.

What a request is answered with is decided elsewhere: `requests` (what is refused at once), `answering`
(frames, ages, depth, the model's answer) and `answer` (the model's text to points). The ROS node only
converts messages to these calls and back.

Every request that `submit` accepts is answered exactly once, through its ticket's future: with an
outcome, or with a `PointingError` whose code says why (busy, not active, shutting down, cancelled, ...).
Nothing is dropped, whatever happens to the model or the node.
"""

import logging
import threading
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from enum import Enum

from molmo_ros.backends.interface import GenerationControl, PointingBackend, ProgressCallback, Stage
from molmo_ros.depth.camera import CameraModel
from molmo_ros.depth.errors import DepthError
from molmo_ros.depth.pairing import DepthFrame
from molmo_ros.depth.settings import DepthSettings
from molmo_ros.pointing.answering import Context, answer_request
from molmo_ros.pointing.errors import ErrorCode, PointingError
from molmo_ros.pointing.frames import Frame, LatestFrames
from molmo_ros.pointing.outcomes import AskOutcome, PointingOutcome
from molmo_ros.pointing.requests import PointingRequest, checked_request, validate_query
from molmo_ros.pointing.settings import CameraSettings, PointingSettings
from molmo_ros.pointing.standing import StandingQuery, StandingRun
from molmo_ros.pointing.target_frame import TargetFrame
from molmo_ros.settings_fields import SettingRef, setting_specs

log = logging.getLogger(__name__)

RUNTIME_SETTINGS = frozenset(spec.field_name for spec in setting_specs(PointingSettings) if spec.info.runtime)
SHUTTING_DOWN = "the node is shutting down"
NOT_STARTED = "the node is not active yet (lifecycle: configure and activate it)"


def checked_settings(settings: PointingSettings, **changes: object) -> PointingSettings:
    """`settings` with `changes` applied, or ValueError with the reason: only the runtime settings may
    change while the service runs."""
    fixed = set(changes) - RUNTIME_SETTINGS
    if fixed:
        raise ValueError(f"{', '.join(sorted(fixed))} cannot change while the service runs")
    return replace(settings, **changes)


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


class PointingService:
    """Answers requests on worker threads, newest frame first, with a bounded wait queue.

    Requests beyond `queue_size` waiting ones are refused at once as BUSY instead of piling up. A
    standing query runs on every new frame whenever no request is waiting, and its outcomes go to
    `on_standing_outcome`; requests go first. Every failure also goes to `on_error` (for the log).
    The service starts inactive: `activate(backend)` hands it a model, `deactivate()` takes it back
    (answering every waiting and running request NOT_ACTIVE), `stop()` ends it for good.
    """

    def __init__(
        self,
        settings: PointingSettings,
        now_ns: Callable[[], int],
        on_standing_outcome: Callable[[PointingOutcome], None],
        on_error: Callable[[PointingError], None],
        cameras: Mapping[str, CameraSettings] | None = None,
        depth_settings: DepthSettings | None = None,
        target: TargetFrame | None = None,
    ) -> None:
        self.frames = LatestFrames()
        self._settings = settings
        # What answering needs besides the newest frames and settings, which it takes when it starts.
        depths = depth_settings or DepthSettings()
        self._context = Context(self.frames, settings, dict(cameras or {}), depths, now_ns, target)
        self._on_standing_outcome = on_standing_outcome
        self._on_error = on_error
        self._wake = threading.Condition()
        self._jobs: deque[Ticket] = deque()
        self._running: set[Ticket] = set()
        self._standing = StandingQuery()
        self._state = _State.INACTIVE
        self._inactive_reason = NOT_STARTED
        self._backend: PointingBackend | None = None
        self._workers: list[threading.Thread] = []

    @property
    def settings(self) -> PointingSettings:
        return self._settings

    def apply_settings(self, settings: PointingSettings) -> None:
        """Applies to requests not yet started (see `checked_settings`)."""
        with self._wake:
            self._settings = settings

    def put_frame(self, frame: Frame) -> None:
        """Keeps `frame` as its camera's newest, while active, and wakes a waiting standing query."""
        if self._state is _State.ACTIVE:
            self.frames.put(frame)
            if self._standing.query is not None:
                with self._wake:
                    self._wake.notify_all()

    def put_depth(self, camera: str, depth: DepthFrame) -> None:
        if self._state is _State.ACTIVE:
            self.frames.put_depth(camera, depth)

    def put_camera_model(self, camera: str, model: CameraModel | DepthError) -> None:
        """`model` is the error when the camera's CameraInfo cannot be used (reported with its points)."""
        if self._state is _State.ACTIVE:
            self.frames.put_camera_model(camera, model)

    @property
    def active(self) -> bool:
        return self._state is _State.ACTIVE

    def activate(self, backend: PointingBackend) -> None:
        """Starts answering with `backend`: one worker thread per call the backend may take at once."""
        with self._wake:
            if self._state is not _State.INACTIVE:
                # A second set of workers would outlive deactivate() and use a backend being freed.
                raise RuntimeError(f"the pointing service is {self._state.value}; it cannot activate")
            self.frames.clear()  # a frame that slipped in after the last deactivate's clear is stale now
            self._backend, self._state = backend, _State.ACTIVE
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
            waiting, self._jobs = list(self._jobs), deque()
            for ticket in self._running:
                ticket.stop_reason = ticket.stop_reason or error
                ticket.control.cancel()
            self._standing.stop_running()
            self._standing.forget_frames()
            backend, self._backend = self._backend, None
            workers, self._workers = self._workers, []
            self._wake.notify_all()
        for ticket in waiting:
            self._fail(ticket, error)
        for worker in workers:
            worker.join()
        self.frames.clear()
        return backend

    def stop(self) -> PointingBackend | None:
        """Ends the service: like deactivate, and every later request is answered NOT_ACTIVE too."""
        backend = self.deactivate(SHUTTING_DOWN)
        with self._wake:
            self._state = _State.STOPPED
        return backend

    def pending(self) -> int:
        with self._wake:
            return len(self._jobs)

    def has_room(self) -> bool:
        """Whether a request submitted now would be taken rather than answered NOT_ACTIVE or BUSY."""
        with self._wake:
            return self._state is _State.ACTIVE and not self._queue_full()

    def _queue_full(self) -> bool:
        return len(self._jobs) >= self._settings.queue_size

    def submit(self, request: PointingRequest, on_progress: ProgressCallback | None = None) -> Ticket:
        """A ticket whose future resolves to an outcome or fails with a PointingError; never blocks."""
        ticket = Ticket(request, control=GenerationControl(on_progress))
        try:
            with self._wake:
                if self._state is not _State.ACTIVE or self._backend is None:
                    raise PointingError(ErrorCode.NOT_ACTIVE, self._inactive_reason)
                backend = self._backend
                ticket.request = checked_request(
                    request, self._settings, self.frames, backend.max_images, backend.name
                )
                if self._queue_full():
                    raise PointingError(
                        ErrorCode.BUSY,
                        f"busy: {len(self._jobs)} requests are already waiting; try again shortly",
                        [SettingRef(PointingSettings, "queue_size")],
                    )
                self._jobs.append(ticket)
                _notify(ticket.control.report, Stage.QUEUED, len(self._jobs) - 1)
                self._wake.notify_all()
        except PointingError as error:
            self._fail(ticket, error)
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        """Removes a waiting request at once; stops a running one at the model's next step."""
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
            if self._standing.set(cleaned, query, self.frames, self._settings.cameras):
                self._wake.notify_all()

    @property
    def standing_query(self) -> str | None:
        return self._standing.query

    def _next_task(self) -> Ticket | StandingRun | None:
        """Waits for a request or, failing that, a new frame for the standing query; None when the
        service is no longer active."""
        with self._wake:
            while self._state is _State.ACTIVE:
                if self._jobs:
                    ticket = self._jobs.popleft()
                    self._running.add(ticket)
                    self._report_positions()
                    return ticket
                run = self._standing.start_next(self.frames, self._settings.cameras)
                if run is not None:
                    return run
                self._wake.wait()
            return None

    def _work(self) -> None:
        while (task := self._next_task()) is not None:
            if isinstance(task, Ticket):
                self._answer_ticket(task)
            else:
                self._answer_standing_query(task)

    def _answer_ticket(self, ticket: Ticket) -> None:
        try:
            outcome = self._answer(ticket.request, ticket.control)
        except PointingError as error:
            outcome = error
        with self._wake:
            self._running.discard(ticket)
        if isinstance(outcome, PointingError):
            self._fail(ticket, ticket.stop_reason or outcome)
        else:
            ticket.future.set_result(outcome)

    def _answer_standing_query(self, run: StandingRun) -> None:
        try:
            outcome = self._answer(PointingRequest(query=run.query, cameras=(run.camera,)), run.control)
        except PointingError as error:
            if not run.control.cancelled:  # stopped by deactivate or a new query: nothing to report
                _notify(self._on_error, error)
        else:
            _notify(self._on_standing_outcome, outcome)
        finally:
            with self._wake:
                self._standing.finished()
                self._wake.notify_all()

    def _answer(self, request: PointingRequest, control: GenerationControl) -> PointingOutcome | AskOutcome:
        backend = self._backend
        if backend is None:
            raise PointingError(ErrorCode.NOT_ACTIVE, self._inactive_reason)
        context = replace(self._context, frames=self.frames, settings=self._settings)
        return answer_request(request, backend, control, context)

    def _fail(self, ticket: Ticket, error: PointingError) -> None:
        if not ticket.future.done():
            ticket.future.set_exception(error)
        _notify(self._on_error, error)

    def _report_positions(self) -> None:
        """Tells every waiting request its place. Called with the lock held, as is submit's first report,
        so that each client hears its positions in the order the queue changed, and QUEUED before the
        worker's VISION (a feedback publish only hands the message to DDS: it never waits)."""
        for position, ticket in enumerate(list(self._jobs)):
            _notify(ticket.control.report, Stage.QUEUED, position)


def _notify(callback: Callable[..., object], *values: object) -> None:
    """A failing publish, log or feedback (e.g. during shutdown) must not end a worker: requests would
    hang. It is logged in one line; the request it belongs to is still answered."""
    try:
        callback(*values)
    except Exception as error:
        log.warning("pointing service callback failed: %s: %s", type(error).__name__, error)
