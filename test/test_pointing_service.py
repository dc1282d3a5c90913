"""The pointing service without ROS: validation, frame choice, queue bound, standing query, lifecycle,
cancel and progress, several cameras, depth, ask requests and how each engine failure is answered."""

import threading
import time

import numpy as np
import pytest
from doubles.scripted_engine import ScriptedEngine, fixed_points_answer
from ros_helpers import wait_until

from molmo_ros.backends.errors import (
    DeviceOutOfMemoryError,
    InvalidImageError,
    ServerResponseError,
    ServerUnavailableError,
    UnsupportedRequestError,
)
from molmo_ros.backends.interface import Stage
from molmo_ros.depth.camera import CameraModel
from molmo_ros.depth.errors import DepthError
from molmo_ros.depth.images import read_depth
from molmo_ros.depth.pairing import DepthFrame, DepthMissing
from molmo_ros.depth.settings import DepthSettings
from molmo_ros.depth.transforms import RigidTransform
from molmo_ros.image_conversion import ImageConversionError, raw_to_rgb
from molmo_ros.pointing.errors import ErrorCode, PointingError
from molmo_ros.pointing.frames import Frame
from molmo_ros.pointing.outcomes import AskOutcome, DepthUsed, View
from molmo_ros.pointing.requests import PointingRequest
from molmo_ros.pointing.service import SHUTTING_DOWN, PointingService, Ticket, checked_settings
from molmo_ros.pointing.settings import ALL_CAMERAS, CameraSettings, PointingSettings
from molmo_ros.pointing.target_frame import TargetFrame, TransformUnavailable
from molmo_ros.settings_fields import SettingRef, setting_specs

SECOND = 1_000_000_000
MILLISECOND = 1_000_000
ANSWER_TIMEOUT_S = 10.0
# Two Molmo2 points, one per prompt image: frame 1 (the first image) at its centre, frame 2 at a quarter.
TWO_VIEW_ANSWER = '<points coords="1 1 500 500;2 1 250 250">mugs</points>'
# Float64 arithmetic on exactly representable inputs (depths 1.0/2.0/3.0 m, focal length 100 px, pixel
# centres at .5): the only error is the rounding of a few float64 operations, ~1e-15 m.
LIFT_TOLERANCE_M = 1e-12
FOCAL_PX = 100.0


class Clock:
    def __init__(self, now_ns: int = 1000 * SECOND) -> None:
        self.now_ns = now_ns

    def __call__(self) -> int:
        return self.now_ns


def make_frame(camera: str, stamp_ns: int, width: int = 64, height: int = 48, value: int = 0) -> Frame:
    image = np.full((height, width, 3), value, dtype=np.uint8)
    return Frame(
        camera=camera,
        stamp_ns=stamp_ns,
        frame_id=f"{camera}_optical",
        received_ns=stamp_ns,
        decode=lambda: image,
    )


def make_depth(
    camera: str, stamp_ns: int, metres: float, width: int = 64, height: int = 48, frame_id: str = ""
) -> DepthFrame:
    """A constant-depth 32FC1 image of `camera`, decoded as the node decodes depth messages."""
    data = np.full((height, width), metres, dtype=np.float32).tobytes()
    return DepthFrame(
        stamp_ns=stamp_ns,
        frame_id=frame_id or f"{camera}_optical",
        decode=lambda: read_depth(data, "32FC1", height, width, width * 4, False).metres(),
    )


def make_camera_model(width: int = 64, height: int = 48) -> CameraModel:
    """A distortion-free camera whose optical axis goes through the image centre."""
    cx, cy = width / 2 - 0.5, height / 2 - 0.5  # CameraInfo convention: the centre of pixel 0 is at 0
    return CameraModel.pinhole(width, height, FOCAL_PX, FOCAL_PX, cx, cy)


def public_name(ref: SettingRef) -> str:
    specs = setting_specs(ref.settings_class)
    return next(spec.parameter for spec in specs if spec.field_name == ref.field_name)


def words(error: PointingError) -> str:
    """The error's message and the public names of the settings it is about (the node adds them)."""
    return " ".join([str(error), *map(public_name, error.settings)])


def depth_words(view: View) -> str:
    """What a view says of its depth: the reason and the public names of the settings it is about."""
    if isinstance(view.depth, DepthUsed):
        return ""
    if isinstance(view.depth, DepthMissing):
        return " ".join([view.depth.reason, *map(public_name, view.depth.settings)])
    return "no depth_topic"


def depth_stamp_ns(view: View) -> int:
    return view.depth.stamp_ns if isinstance(view.depth, DepthUsed) else 0


def expected_position(x: float, y: float, depth_m: float, width: int = 64, height: int = 48) -> tuple:
    """Pinhole lifting of a continuous pixel (x, y) with make_camera_model's intrinsics."""
    return (
        (x - width / 2) / FOCAL_PX * depth_m,
        (y - height / 2) / FOCAL_PX * depth_m,
        depth_m,
    )


class ProgressLog:
    """Records on_progress reports of one ticket, in the order they came."""

    def __init__(self) -> None:
        self.reports: list[tuple[Stage, int]] = []
        self._lock = threading.Lock()

    def __call__(self, stage: Stage, value: int) -> None:
        with self._lock:
            self.reports.append((stage, value))

    def snapshot(self) -> list[tuple[Stage, int]]:
        with self._lock:
            return list(self.reports)


class Harness:
    def __init__(
        self,
        engine: ScriptedEngine | None,
        cameras: dict[str, CameraSettings] | None = None,
        depth_settings: DepthSettings | None = None,
        target: TargetFrame | None = None,
        **settings: object,
    ) -> None:
        defaults = dict(
            cameras=("front", "wrist"),
            default_camera="front",
            prompt_template="Point to the {query}",
            max_query_length=50,
            max_frame_age_s=2.0,
            queue_size=2,
        )
        defaults.update(settings)
        self.clock = Clock()
        self.outcomes = []
        self.errors = []
        self.outcome_event = threading.Event()
        self.service = PointingService(
            PointingSettings(**defaults),
            self.clock,
            self._on_outcome,
            self.errors.append,
            cameras=cameras,
            depth_settings=depth_settings,
            target=target,
        )
        if engine is not None:
            self.service.activate(engine)

    def _on_outcome(self, outcome) -> None:
        self.outcomes.append(outcome)
        self.outcome_event.set()

    def put(self, frame: Frame) -> None:
        self.service.put_frame(frame)

    def put_depth(self, camera: str, *depth_args: object, **depth_fields: object) -> None:
        self.service.put_depth(camera, make_depth(camera, *depth_args, **depth_fields))

    def submit(self, query: str = "cup", on_progress=None, **fields: object) -> Ticket:
        return self.service.submit(PointingRequest(query=query, **fields), on_progress)

    def point(self, query: str, timeout: float = ANSWER_TIMEOUT_S, **fields: object):
        return self.submit(query, **fields).future.result(timeout)


@pytest.fixture
def make_harness():
    harnesses = []

    def make(engine: ScriptedEngine | None, **kwargs: object) -> Harness:
        harness = Harness(engine, **kwargs)
        harnesses.append(harness)
        return harness

    yield make
    for harness in harnesses:
        harness.service.stop()


def failure(harness: Harness, query: str = "cup", **fields: object) -> PointingError:
    with pytest.raises(PointingError) as caught:
        harness.point(query, **fields)
    return caught.value


def error_of(ticket: Ticket, timeout: float = ANSWER_TIMEOUT_S) -> PointingError:
    error = ticket.future.exception(timeout)
    assert isinstance(error, PointingError), f"expected a PointingError, got {error!r}"
    return error


# --- answers ------------------------------------------------------------------------------------------


def test_answer_carries_the_frame_stamp_and_pixel_points(make_harness):
    engine = ScriptedEngine(answer=lambda prompt, image: fixed_points_answer([(25.0, 50.0)], "mug"))
    harness = make_harness(engine)
    stamp = harness.clock.now_ns - SECOND // 2
    harness.put(make_frame("front", stamp, width=200, height=100))

    outcome = harness.point("red mug")

    assert engine.calls[0].prompts == ["Point to the red mug"]
    assert outcome.prompt == "Point to the red mug" and outcome.query == "red mug"
    view = outcome.view
    assert (view.stamp_ns, view.frame_id, view.camera) == (stamp, "front_optical", "front")
    assert (view.width, view.height) == (200, 100)
    assert len(outcome.views) == 1
    assert [(p.x, p.y, p.label, p.view) for p in outcome.points] == [(50.0, 50.0, "mug", 0)]
    assert outcome.frame_age_seconds == pytest.approx(0.5)
    assert outcome.model_seconds >= 0 and not outcome.answer_malformed
    assert harness.outcomes == [], "a request's answer goes to its ticket; the node publishes it"


def test_outcome_query_is_as_given_and_the_prompt_uses_the_stripped_query(make_harness):
    engine = ScriptedEngine()
    harness = make_harness(engine)
    harness.put(make_frame("front", harness.clock.now_ns))
    outcome = harness.point("  red mug \t")
    assert outcome.query == "  red mug \t"
    assert outcome.prompt == "Point to the red mug" and engine.calls[0].prompts == ["Point to the red mug"]


def test_points_outside_the_image_are_dropped_and_counted(make_harness):
    engine = ScriptedEngine(answer=lambda prompt, image: fixed_points_answer([(10.0, 10.0), (120.0, 50.0)]))
    harness = make_harness(engine)
    harness.put(make_frame("front", harness.clock.now_ns))
    outcome = harness.point("cup")
    assert len(outcome.points) == 1 and outcome.points_outside_image == 1


def test_malformed_answer_gives_zero_points_and_keeps_text(make_harness):
    text = '<point x="10" y="'
    harness = make_harness(ScriptedEngine(answer=lambda prompt, image: text))
    harness.put(make_frame("front", harness.clock.now_ns))
    outcome = harness.point("cup")
    assert outcome.points == () and outcome.answer_malformed and outcome.raw_text == text


def test_request_image_replaces_camera_frame_and_needs_no_camera_frame(make_harness):
    engine = ScriptedEngine()
    harness = make_harness(engine)
    own = make_frame("", stamp_ns=0, width=30, height=20, value=7)
    outcome = harness.point("cup", image=own)
    assert (outcome.view.width, outcome.view.height) == (30, 20)
    assert int(engine.calls[0].image[0, 0, 0]) == 7


# --- refusals -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query, fragment",
    [
        ("", "empty"),
        ("   ", "empty"),
        ("x" * 51, "limit is 50"),
        ("red\x00mug", "not plain text"),
        ("mug\x1b[2J", "not plain text"),
        ("bad \ud800 surrogate", "not plain text"),
    ],
)
def test_invalid_queries_are_refused_with_the_reason(make_harness, query, fragment):
    engine = ScriptedEngine()
    harness = make_harness(engine)
    harness.put(make_frame("front", harness.clock.now_ns))
    error = failure(harness, query)
    assert error.code == ErrorCode.INVALID_QUERY and fragment in str(error)
    assert engine.calls == []


def test_unknown_camera_names_the_configured_ones(make_harness):
    error = failure(make_harness(ScriptedEngine()), "cup", camera="rear")
    assert error.code == ErrorCode.UNKNOWN_CAMERA and "front, wrist" in str(error)


def test_no_frame_yet(make_harness):
    harness = make_harness(ScriptedEngine())
    harness.put(make_frame("front", harness.clock.now_ns))
    error = failure(harness, "cup", camera="wrist")
    assert error.code == ErrorCode.NO_FRAME and "wrist" in str(error)


def test_stale_frame_is_refused_and_age_zero_disables(make_harness):
    harness = make_harness(ScriptedEngine())
    harness.put(make_frame("front", harness.clock.now_ns - 3 * SECOND))
    error = failure(harness, "cup")
    assert error.code == ErrorCode.STALE_FRAME and "3.00 s old" in str(error)

    relaxed = make_harness(ScriptedEngine(), max_frame_age_s=0.0)
    relaxed.put(make_frame("front", relaxed.clock.now_ns - 3600 * SECOND))
    assert relaxed.point("cup").frame_age_seconds == pytest.approx(3600)


def test_frame_stamped_beyond_max_frame_age_ahead_of_the_clock_is_a_clock_problem(make_harness):
    harness = make_harness(ScriptedEngine())
    harness.put(make_frame("front", harness.clock.now_ns + 3 * SECOND))
    error = failure(harness, "cup")
    assert error.code == ErrorCode.FRAME_FROM_FUTURE
    assert "3.00 s ahead" in str(error) and "clock" in str(error) and "max_frame_age" in words(error)


def test_frame_stamped_ahead_within_max_frame_age_is_used(make_harness):
    harness = make_harness(ScriptedEngine())
    harness.put(make_frame("front", harness.clock.now_ns + 3 * SECOND // 2))
    assert harness.point("cup").frame_age_seconds == pytest.approx(-1.5)


def test_frame_from_the_future_is_accepted_when_max_frame_age_is_zero(make_harness):
    harness = make_harness(ScriptedEngine(), max_frame_age_s=0.0)
    harness.put(make_frame("front", harness.clock.now_ns + 100 * SECOND))
    assert harness.point("cup").frame_age_seconds == pytest.approx(-100)


def test_corrupt_frame_is_a_bad_image(make_harness):
    harness = make_harness(ScriptedEngine())
    truncated = Frame(
        "front",
        harness.clock.now_ns,
        "f",
        harness.clock.now_ns,
        decode=lambda: raw_to_rgb(b"\x00" * 10, "rgb8", 48, 64, 192, False),
    )
    harness.put(truncated)
    error = failure(harness, "cup")
    assert error.code == ErrorCode.BAD_IMAGE and "camera 'front'" in str(error)

    unsupported = Frame("", 0, "", 0, decode=lambda: raw_to_rgb(b"\x00" * 64, "yuv422", 4, 8, 16, False))
    error = failure(harness, "cup", image=unsupported)
    assert error.code == ErrorCode.BAD_IMAGE and "request's image" in str(error)
    assert isinstance(error.__cause__, ImageConversionError)


# --- engine failures ----------------------------------------------------------------------------------


def raising(error: Exception):
    def answer(prompt, image):
        raise error

    return answer


@pytest.mark.parametrize(
    "error, code, fragment",
    [
        (InvalidImageError("image is 0x0"), ErrorCode.BAD_IMAGE, "image is 0x0"),
        (UnsupportedRequestError("use molmo2"), ErrorCode.UNSUPPORTED, "use molmo2"),
        (ServerUnavailableError("http://gpu:8000 timed out"), ErrorCode.SERVER_UNAVAILABLE, "gpu:8000"),
        (ServerResponseError("http://gpu:8000 said 500"), ErrorCode.ENGINE_ERROR, "said 500"),
        (DeviceOutOfMemoryError("cuda:0 is full"), ErrorCode.ENGINE_ERROR, "out of memory"),
        (RuntimeError("CUDA error: device-side assert"), ErrorCode.ENGINE_ERROR, "device-side assert"),
    ],
)
def test_each_engine_error_is_answered_with_its_code(make_harness, error, code, fragment):
    harness = make_harness(ScriptedEngine(answer=raising(error)))
    harness.put(make_frame("front", harness.clock.now_ns))
    answered = failure(harness, "cup")
    assert answered.code == code and fragment in str(answered)
    assert str(error) in str(answered), "the engine's own message is kept"
    assert answered in harness.errors, "every failure is also reported to on_error"


def test_engine_failure_is_reported_and_the_worker_survives(make_harness):
    def flaky(prompt, image):
        if "boom" in prompt:
            raise RuntimeError("CUDA error: device-side assert")
        return "There are none."

    harness = make_harness(ScriptedEngine(answer=flaky))
    harness.put(make_frame("front", harness.clock.now_ns))
    error = failure(harness, "boom")
    assert error.code == ErrorCode.ENGINE_ERROR and "device-side assert" in str(error)
    assert harness.point("cup").points == ()


# --- queue, frames and standing query -----------------------------------------------------------------


def test_requests_beyond_the_queue_are_busy_and_all_get_answers(make_harness):
    engine = ScriptedEngine(hold=True)
    harness = make_harness(engine, queue_size=2)
    harness.put(make_frame("front", harness.clock.now_ns))

    running = harness.submit()
    assert engine.wait_started()
    waiting = [harness.submit(), harness.submit()]
    refused = [harness.submit() for _ in range(5)]

    for ticket in refused:
        assert ticket.future.done() and ticket.future.exception().code == ErrorCode.BUSY
    assert "queue_size" in words(refused[0].future.exception())
    assert harness.service.pending() == 2
    engine.release(3)
    for ticket in [running, *waiting]:
        assert ticket.future.result(timeout=ANSWER_TIMEOUT_S).raw_text == "There are none."


def test_the_newest_frame_is_used_and_nothing_queues_while_busy(make_harness):
    engine = ScriptedEngine(hold=True)
    harness = make_harness(engine)
    harness.put(make_frame("front", harness.clock.now_ns, value=0))
    first = harness.submit()
    assert engine.wait_started()
    second = harness.submit()
    for value in range(1, 200):
        harness.put(make_frame("front", harness.clock.now_ns, value=value))
    assert harness.service.frames.sequence("front") == 200
    assert int(harness.service.frames.get("front").decode()[0, 0, 0]) == 199, "only the newest frame is held"
    assert harness.service.pending() == 1, "frames never become queued work"
    engine.release(2)
    first.future.result(ANSWER_TIMEOUT_S)
    second.future.result(ANSWER_TIMEOUT_S)
    assert int(engine.calls[1].image[0, 0, 0]) == 199


def test_standing_query_follows_new_frames_and_requests_go_first(make_harness):
    engine = ScriptedEngine(hold=True)
    harness = make_harness(engine)
    harness.put(make_frame("front", harness.clock.now_ns, value=1))
    harness.service.set_standing_query("cup")
    assert engine.wait_started()  # the standing query runs on the frame already there
    harness.put(make_frame("wrist", harness.clock.now_ns, value=2))
    request = harness.submit("plate", camera="front")
    engine.release(2)
    assert request.future.result(ANSWER_TIMEOUT_S).query == "plate", (
        "the waiting request runs before the next standing run"
    )
    assert [call.prompts[0] for call in engine.calls[:2]] == ["Point to the cup", "Point to the plate"]
    engine.release(5)
    assert wait_until(lambda: len(engine.calls) >= 3)
    assert engine.calls[2].prompts == ["Point to the cup"] and int(engine.calls[2].image[0, 0, 0]) == 2
    assert wait_until(lambda: len([o for o in harness.outcomes if o.query == "cup"]) == 2)

    harness.service.set_standing_query("")
    assert harness.service.standing_query is None
    calls = len(engine.calls)
    harness.put(make_frame("front", harness.clock.now_ns, value=3))
    time.sleep(0.2)
    assert len(engine.calls) == calls
    standing = [o for o in harness.outcomes if o.query == "cup"]
    assert {o.view.camera for o in standing} == {"front", "wrist"}


def test_clearing_the_standing_query_just_after_a_worker_chose_its_frame_reports_nothing(make_harness):
    """The worker chose a frame for the query, then the query was cleared before the answer began: the
    run keeps the query it was chosen with and is cancelled, so nothing is asked, published or logged."""
    engine = ScriptedEngine()
    harness = make_harness(engine)
    service = harness.service
    answer_standing_query = service._answer_standing_query

    def cleared_first(run) -> None:
        service.set_standing_query("")
        answer_standing_query(run)

    service._answer_standing_query = cleared_first
    harness.put(make_frame("front", harness.clock.now_ns))
    service.set_standing_query("cup")
    assert wait_until(lambda: service.standing_query is None)
    assert harness.point("plate").raw_text == "There are none.", "the worker went on"
    assert harness.outcomes == [] and harness.errors == []
    assert [call.prompts for call in engine.calls] == [["Point to the plate"]]


def test_republishing_the_same_standing_query_does_not_answer_the_same_frame_again(make_harness):
    engine = ScriptedEngine()
    harness = make_harness(engine)
    harness.put(make_frame("front", harness.clock.now_ns))
    harness.service.set_standing_query("cup")
    assert wait_until(lambda: len(engine.calls) == 1)
    harness.service.set_standing_query("cup")
    harness.service.set_standing_query(" cup ")
    time.sleep(0.2)
    assert len(engine.calls) == 1
    harness.service.set_standing_query("plate")
    assert wait_until(lambda: len(engine.calls) == 2), "a new query answers the current frame at once"


def test_a_failing_publish_does_not_stop_the_worker(make_harness):
    engine = ScriptedEngine()
    harness = make_harness(engine)
    published = []

    def broken_publish(outcome) -> None:
        published.append(outcome)
        raise RuntimeError("publisher's context is invalid")

    harness.service._on_standing_outcome = broken_publish
    harness.put(make_frame("front", harness.clock.now_ns))
    harness.service.set_standing_query("cup")
    assert wait_until(lambda: len(published) == 1)
    assert harness.point("plate").raw_text == "There are none.", "the worker survived the failing publish"
    harness.put(make_frame("front", harness.clock.now_ns, value=1))
    assert wait_until(lambda: len(published) == 2), "and the standing query goes on"


def test_clearing_the_standing_query_cancels_its_running_answer(make_harness):
    """Cleared while the model answers it: the answer is stopped and nothing is published or logged."""
    engine = ScriptedEngine(hold=True)
    harness = make_harness(engine)
    harness.put(make_frame("front", harness.clock.now_ns))
    harness.service.set_standing_query("cup")
    assert engine.wait_started()
    harness.service.set_standing_query("")
    engine.release(2)
    assert harness.point("plate").raw_text == "There are none.", "the worker went on"
    assert harness.outcomes == [] and harness.errors == []
    assert engine.calls[0].prompts == ["Point to the cup"]


def test_invalid_standing_query_raises_and_keeps_the_old_one(make_harness):
    harness = make_harness(ScriptedEngine())
    harness.service.set_standing_query("cup")
    with pytest.raises(PointingError):
        harness.service.set_standing_query("x" * 100)
    assert harness.service.standing_query == "cup"


def test_runtime_settings_change_and_fixed_ones_are_refused(make_harness):
    engine = ScriptedEngine()
    harness = make_harness(engine)
    harness.put(make_frame("front", harness.clock.now_ns))
    service = harness.service
    service.apply_settings(checked_settings(service.settings, prompt_template="Find the {query}"))
    harness.point("cup")
    assert engine.calls[-1].prompts == ["Find the cup"]
    with pytest.raises(ValueError, match="queue_size"):
        checked_settings(service.settings, queue_size=10)
    with pytest.raises(ValueError):
        checked_settings(service.settings, prompt_template="no placeholder")
    assert service.settings.prompt_template == "Find the {query}", "a refused change changes nothing"


# --- lifecycle ----------------------------------------------------------------------------------------


def test_request_before_activate_is_not_active_with_its_own_message(make_harness):
    harness = make_harness(None)
    harness.put(make_frame("front", harness.clock.now_ns))
    ticket = harness.submit()
    assert ticket.future.done(), "answered at once"
    error = error_of(ticket, 0)
    assert error.code == ErrorCode.NOT_ACTIVE and "not active yet" in str(error)
    assert not harness.service.active


def test_request_after_deactivate_is_not_active_with_the_reason(make_harness):
    engine = ScriptedEngine()
    harness = make_harness(engine)
    harness.put(make_frame("front", harness.clock.now_ns))
    harness.point("cup")
    assert harness.service.deactivate("the GPU is needed elsewhere") is engine
    ticket = harness.submit()
    assert ticket.future.done()
    error = error_of(ticket, 0)
    assert error.code == ErrorCode.NOT_ACTIVE and "the GPU is needed elsewhere" in str(error)
    assert not harness.service.has_room() and len(engine.calls) == 1


def test_deactivate_answers_waiting_and_stops_running_requests_and_returns_the_backend(make_harness):
    engine = ScriptedEngine(hold=True)
    harness = make_harness(engine, queue_size=3)
    harness.put(make_frame("front", harness.clock.now_ns))
    running = harness.submit()
    assert engine.wait_started()
    waiting = [harness.submit("plate"), harness.submit("fork")]

    assert harness.service.deactivate() is engine, "never released: the running call must be stopped"

    for ticket in [running, *waiting]:
        assert ticket.future.done(), "nothing is left unanswered"
        error = error_of(ticket, 0)
        assert error.code == ErrorCode.NOT_ACTIVE and "deactivated" in str(error)
    assert len(engine.calls) == 1, "waiting requests never reach the model"
    assert harness.outcomes == []


def test_reactivated_service_waits_for_a_new_frame(make_harness):
    harness = make_harness(ScriptedEngine())
    harness.put(make_frame("front", harness.clock.now_ns))
    harness.service.deactivate()
    engine = ScriptedEngine()
    harness.service.activate(engine)
    assert failure(harness).code == ErrorCode.NO_FRAME, "frames from before the deactivation are forgotten"
    harness.put(make_frame("front", harness.clock.now_ns))
    harness.point("cup")
    assert len(engine.calls) == 1


def test_standing_query_answers_the_first_frame_after_reactivation(make_harness):
    engine = ScriptedEngine()
    harness = make_harness(engine)
    harness.service.set_standing_query("cup")
    for count in range(1, 4):
        harness.put(make_frame("front", harness.clock.now_ns, value=count))
        assert wait_until(lambda expected=count: len(engine.calls) == expected)
    harness.service.deactivate()
    harness.service.activate(engine)
    harness.put(make_frame("front", harness.clock.now_ns, value=7))
    assert wait_until(lambda: len(engine.calls) == 4), "the standing query stays set across a deactivation"
    assert int(engine.calls[3].image[0, 0, 0]) == 7


def test_activating_an_active_service_is_refused_and_keeps_its_backend(make_harness):
    engine = ScriptedEngine()
    harness = make_harness(engine)
    with pytest.raises(RuntimeError, match="is active; it cannot activate"):
        harness.service.activate(ScriptedEngine())
    harness.put(make_frame("front", harness.clock.now_ns))
    harness.point("cup")
    assert len(engine.calls) == 1


def test_stop_answers_every_request_shutting_down_and_refuses_new_ones(make_harness):
    engine = ScriptedEngine(hold=True)
    harness = make_harness(engine, queue_size=3)
    harness.put(make_frame("front", harness.clock.now_ns))
    running = harness.submit()
    assert engine.wait_started()
    waiting = harness.submit()

    assert harness.service.stop() is engine
    later = harness.submit()

    for ticket in [running, waiting, later]:
        assert ticket.future.done(), "nothing is left unanswered"
        error = error_of(ticket, 0)
        assert error.code == ErrorCode.NOT_ACTIVE and SHUTTING_DOWN in str(error)
    with pytest.raises(RuntimeError, match="stopped"):
        harness.service.activate(ScriptedEngine())


def test_deactivate_stops_a_running_standing_query(make_harness):
    engine = ScriptedEngine(hold=True)
    harness = make_harness(engine)
    harness.put(make_frame("front", harness.clock.now_ns))
    harness.service.set_standing_query("cup")
    assert engine.wait_started()
    stopper = threading.Thread(target=harness.service.deactivate)
    stopper.start()
    stopper.join(ANSWER_TIMEOUT_S / 2)
    assert not stopper.is_alive(), "deactivate must not wait for a held standing-query generation"
    assert harness.outcomes == [] and harness.errors == [], "a stopped standing run reports nothing"


# --- cancel and progress ------------------------------------------------------------------------------


def test_progress_of_one_request_is_queued_then_vision_then_each_decoding_step(make_harness):
    harness = make_harness(ScriptedEngine(answer=lambda prompt, image: "abc"))
    harness.put(make_frame("front", harness.clock.now_ns))
    for _ in range(20):  # the worker is idle: it may pick the request up before submit returns
        progress = ProgressLog()
        harness.submit(on_progress=progress).future.result(ANSWER_TIMEOUT_S)
        assert progress.snapshot() == [
            (Stage.QUEUED, 0),
            (Stage.VISION, 0),
            (Stage.DECODING, 1),
            (Stage.DECODING, 2),
            (Stage.DECODING, 3),
        ]


class SlowFirstPublish(ProgressLog):
    """A feedback publish that takes a moment the first time (the QUEUED report made by submit): a
    report is on the wire only when the call returns."""

    PUBLISH_S = 0.2  # far longer than a worker needs to take up an idle request (well under 1 ms)

    def __init__(self) -> None:
        super().__init__()
        self._first_call = threading.Event()

    def __call__(self, stage: Stage, value: int) -> None:
        if not self._first_call.is_set():
            self._first_call.set()
            time.sleep(self.PUBLISH_S)
        super().__call__(stage, value)


def test_queued_is_reported_before_vision_even_when_publishing_takes_time(make_harness):
    harness = make_harness(ScriptedEngine(answer=lambda prompt, image: "a"))
    harness.put(make_frame("front", harness.clock.now_ns))
    progress = SlowFirstPublish()
    harness.submit(on_progress=progress).future.result(ANSWER_TIMEOUT_S)
    assert progress.snapshot() == [(Stage.QUEUED, 0), (Stage.VISION, 0), (Stage.DECODING, 1)]


def test_the_last_queue_position_reported_is_the_true_one(make_harness):
    engine = ScriptedEngine(hold=True)
    harness = make_harness(engine, queue_size=3)
    harness.put(make_frame("front", harness.clock.now_ns))
    harness.submit("cup")
    assert engine.wait_started()
    harness.submit("a")
    progress = SlowFirstPublish()
    submitter = threading.Thread(target=lambda: harness.submit("b", on_progress=progress))
    submitter.start()
    assert wait_until(lambda: harness.service.pending() == 2)
    engine.release()  # the worker takes "a" while "b"'s first report (position 1) is being published
    submitter.join(ANSWER_TIMEOUT_S)
    assert engine.wait_started()
    assert progress.snapshot() == [(Stage.QUEUED, 1), (Stage.QUEUED, 0)]
    engine.release(2)


def test_cancelling_a_waiting_request_answers_it_at_once_and_reports_new_positions(make_harness):
    engine = ScriptedEngine(hold=True)
    harness = make_harness(engine, queue_size=3)
    harness.put(make_frame("front", harness.clock.now_ns))
    running = harness.submit("cup")
    assert engine.wait_started()
    logs = [ProgressLog() for _ in range(3)]
    first, second, third = (harness.submit(q, on_progress=log) for q, log in zip("abc", logs, strict=True))
    assert [log.snapshot() for log in logs] == [[(Stage.QUEUED, i)] for i in range(3)]

    harness.service.cancel(first)

    assert first.future.done(), "a waiting request is answered at once"
    error = error_of(first, 0)
    assert error.code == ErrorCode.CANCELED and "cancelled" in str(error)
    assert logs[1].snapshot() == [(Stage.QUEUED, 1), (Stage.QUEUED, 0)]
    assert logs[2].snapshot() == [(Stage.QUEUED, 2), (Stage.QUEUED, 1)]
    assert harness.service.pending() == 2
    engine.release(3)
    for ticket in (running, second, third):
        ticket.future.result(ANSWER_TIMEOUT_S)
    assert [call.prompts for call in engine.calls] == [
        ["Point to the cup"],
        ["Point to the b"],
        ["Point to the c"],
    ]


def test_cancelling_a_held_running_request_stops_it(make_harness):
    engine = ScriptedEngine(hold=True)
    harness = make_harness(engine)
    harness.put(make_frame("front", harness.clock.now_ns))
    running = harness.submit()
    assert engine.wait_started()
    waiting = harness.submit("plate")
    harness.service.cancel(running)
    assert error_of(running).code == ErrorCode.CANCELED
    engine.release()
    assert waiting.future.result(ANSWER_TIMEOUT_S).query == "plate", "the worker goes on with the next"


def test_cancelling_while_decoding_stops_at_the_next_step(make_harness):
    engine = ScriptedEngine(hold=True, answer=lambda prompt, image: "a long answer")
    harness = make_harness(engine)
    harness.put(make_frame("front", harness.clock.now_ns))
    progress = ProgressLog()
    tickets: list[Ticket] = []

    def cancel_after_two_tokens(stage: Stage, value: int) -> None:
        progress(stage, value)
        if stage is Stage.DECODING and value == 2:
            harness.service.cancel(tickets[0])

    tickets.append(harness.submit(on_progress=cancel_after_two_tokens))
    engine.release()
    assert error_of(tickets[0]).code == ErrorCode.CANCELED
    assert progress.snapshot()[-2:] == [(Stage.DECODING, 1), (Stage.DECODING, 2)], "no step after cancel"
    assert harness.outcomes == []


def test_cancelling_an_answered_request_changes_nothing(make_harness):
    harness = make_harness(ScriptedEngine())
    harness.put(make_frame("front", harness.clock.now_ns))
    ticket = harness.submit()
    outcome = ticket.future.result(ANSWER_TIMEOUT_S)
    harness.service.cancel(ticket)
    assert ticket.future.result(0) is outcome


def test_backend_with_three_concurrent_calls_runs_three_requests_at_once(make_harness):
    engine = ScriptedEngine(hold=True, max_concurrent_calls=3)
    harness = make_harness(engine, queue_size=4)
    harness.put(make_frame("front", harness.clock.now_ns))
    tickets = [harness.submit(f"thing {i}") for i in range(4)]
    for _ in range(3):
        assert engine.wait_started(), "three calls start before any is released"
    assert not engine.wait_started(timeout=0.2), "the fourth waits for a free call"
    assert harness.service.pending() == 1
    engine.release(4)
    assert {t.future.result(ANSWER_TIMEOUT_S).query for t in tickets} == {f"thing {i}" for i in range(4)}


# --- several cameras ----------------------------------------------------------------------------------


def two_camera_harness(make_harness, engine: ScriptedEngine, **kwargs: object) -> Harness:
    harness = make_harness(engine, **kwargs)
    harness.put(make_frame("front", harness.clock.now_ns - 100 * MILLISECOND, width=64, height=48, value=1))
    harness.put(make_frame("wrist", harness.clock.now_ns - 200 * MILLISECOND, width=80, height=60, value=2))
    return harness


@pytest.mark.parametrize("fields", [{"cameras": ("front", "wrist")}, {"camera": ALL_CAMERAS}])
def test_points_of_several_cameras_are_tagged_with_their_view(make_harness, fields):
    engine = ScriptedEngine(answer=lambda prompt, image: TWO_VIEW_ANSWER, max_images=2)
    harness = two_camera_harness(make_harness, engine)
    now = harness.clock.now_ns

    outcome = harness.point("mug", **fields)

    assert [int(image[0, 0, 0]) for image in engine.calls[0].images] == [1, 2], "one prompt, both frames"
    views = [(v.camera, v.stamp_ns, v.frame_id, v.width, v.height) for v in outcome.views]
    assert views == [
        ("front", now - 100 * MILLISECOND, "front_optical", 64, 48),
        ("wrist", now - 200 * MILLISECOND, "wrist_optical", 80, 60),
    ]
    assert [(p.view, p.x, p.y) for p in outcome.points] == [(0, 32.0, 24.0), (1, 20.0, 15.0)]
    assert outcome.frame_age_seconds == pytest.approx(0.2), "the age of the oldest frame"


def test_several_cameras_with_a_one_image_backend_is_unsupported_and_names_the_backends_that_can(
    make_harness,
):
    engine = ScriptedEngine(max_images=1, name="molmoe")
    harness = two_camera_harness(make_harness, engine)
    error = failure(harness, "mug", cameras=("front", "wrist"))
    assert error.code == ErrorCode.UNSUPPORTED
    assert "molmoe" in str(error) and "molmo2" in str(error) and "openai" in str(error)
    assert "backend" in words(error)
    assert engine.calls == []


def test_unknown_camera_in_the_list_is_refused(make_harness):
    harness = two_camera_harness(make_harness, ScriptedEngine(max_images=2))
    error = failure(harness, "mug", cameras=("front", "rear"))
    assert error.code == ErrorCode.UNKNOWN_CAMERA and "'rear'" in str(error)


def test_camera_named_twice_in_the_list_is_refused(make_harness):
    harness = two_camera_harness(make_harness, ScriptedEngine(max_images=2))
    error = failure(harness, "mug", cameras=("front", "front"))
    assert error.code == ErrorCode.UNKNOWN_CAMERA and "named twice" in str(error)


def test_a_stale_frame_of_one_listed_camera_is_refused_naming_it(make_harness):
    engine = ScriptedEngine(max_images=2)
    harness = make_harness(engine)
    harness.put(make_frame("front", harness.clock.now_ns))
    harness.put(make_frame("wrist", harness.clock.now_ns - 5 * SECOND))
    error = failure(harness, "mug", camera=ALL_CAMERAS)
    assert error.code == ErrorCode.STALE_FRAME and "'wrist'" in str(error)
    assert engine.calls == []


def test_missing_frame_of_one_listed_camera_is_no_frame(make_harness):
    harness = make_harness(ScriptedEngine(max_images=2))
    harness.put(make_frame("front", harness.clock.now_ns))
    error = failure(harness, "mug", cameras=("front", "wrist"))
    assert error.code == ErrorCode.NO_FRAME and "'wrist'" in str(error)


# --- depth --------------------------------------------------------------------------------------------


CENTRE_ANSWER = fixed_points_answer([(25.0, 50.0)])  # pixel (16, 24) of a 64x48 frame


def test_depth_that_arrives_while_the_model_runs_is_used(make_harness):
    """A depth frame stamped like the colour frame often arrives a little after it; it is paired once the
    model has answered, so it is used rather than the previous one (beyond max_depth_skew here)."""
    camera = CameraSettings(name="front", depth_topic="/d")
    engine = ScriptedEngine(answer=lambda prompt, image: CENTRE_ANSWER, hold=True)
    harness = make_harness(engine, cameras={"front": camera})
    harness.service.put_camera_model("front", make_camera_model())
    stamp = harness.clock.now_ns
    harness.put_depth("front", stamp - 100 * MILLISECOND, 1.0)
    harness.put(make_frame("front", stamp))
    ticket = harness.submit("cup")
    assert engine.wait_started()
    harness.put_depth("front", stamp, 2.0)
    engine.release()
    outcome = ticket.future.result(ANSWER_TIMEOUT_S)
    assert outcome.points[0].position_m[2] == pytest.approx(2.0)
    assert depth_stamp_ns(outcome.view) == stamp


def depth_harness(
    make_harness, camera: CameraSettings | None = None, depth_settings: DepthSettings | None = None, **kw
) -> Harness:
    camera = camera or CameraSettings(name="front", depth_topic="/d")
    engine = ScriptedEngine(answer=lambda prompt, image: CENTRE_ANSWER)
    harness = make_harness(engine, cameras={"front": camera}, depth_settings=depth_settings, **kw)
    harness.service.put_camera_model("front", make_camera_model())
    return harness


def test_points_are_lifted_with_the_depth_of_their_frame(make_harness):
    harness = depth_harness(make_harness)
    stamp = harness.clock.now_ns
    harness.put(make_frame("front", stamp))
    harness.put_depth("front", stamp + 10 * MILLISECOND, 2.0)

    outcome = harness.point("cup")

    (point,) = outcome.points
    assert (point.x, point.y) == (16.0, 24.0)
    assert point.position_m == pytest.approx(expected_position(16.0, 24.0, 2.0), abs=LIFT_TOLERANCE_M)
    assert point.depth.depth_step == 0.0 and not point.depth.edge, "a constant depth has no edge"
    assert depth_stamp_ns(outcome.view) == stamp + 10 * MILLISECOND and depth_words(outcome.view) == ""


def test_the_depth_frame_nearest_in_stamp_is_used(make_harness):
    harness = depth_harness(make_harness)
    stamp = harness.clock.now_ns
    harness.put(make_frame("front", stamp))
    for offset_ms, metres in [(-40, 1.0), (-5, 2.0), (20, 3.0), (200, 4.0)]:
        harness.put_depth("front", stamp + offset_ms * MILLISECOND, metres)
    outcome = harness.point("cup")
    assert outcome.points[0].position_m[2] == 2.0
    assert depth_stamp_ns(outcome.view) == stamp - 5 * MILLISECOND


def test_among_depth_frames_equally_near_in_stamp_the_newest_is_used(make_harness):
    harness = depth_harness(make_harness)
    stamp = harness.clock.now_ns
    harness.put(make_frame("front", stamp))
    for metres in (1.0, 2.0, 3.0):  # e.g. a driver that stamps every depth frame alike
        harness.put_depth("front", stamp, metres)
    assert harness.point("cup").points[0].position_m[2] == 3.0


def test_depth_beyond_max_depth_skew_leaves_2d_points_and_says_why(make_harness):
    harness = depth_harness(make_harness, depth_settings=DepthSettings(max_depth_skew=0.05))
    stamp = harness.clock.now_ns
    harness.put(make_frame("front", stamp))
    harness.put_depth("front", stamp + 100 * MILLISECOND, 2.0)
    outcome = harness.point("cup")
    (point,) = outcome.points
    assert point.position_m is None and point.depth is None
    assert (point.x, point.y) == (16.0, 24.0)
    assert "max_depth_skew" in depth_words(outcome.view) and depth_stamp_ns(outcome.view) == 0


def test_depth_in_another_frame_is_refused_unless_declared_registered(make_harness):
    harness = depth_harness(make_harness)
    stamp = harness.clock.now_ns
    harness.put(make_frame("front", stamp))
    harness.put_depth("front", stamp, 2.0, frame_id="front_depth_optical")
    outcome = harness.point("cup")
    assert outcome.points[0].position_m is None
    assert "depth_registered" in depth_words(outcome.view) and "front_depth_optical" in depth_words(
        outcome.view
    )

    registered = depth_harness(
        make_harness, camera=CameraSettings(name="front", depth_topic="/d", depth_registered=True)
    )
    registered.put(make_frame("front", stamp))
    registered.put_depth("front", stamp, 2.0, frame_id="front_depth_optical")
    assert registered.point("cup").points[0].position_m[2] == 2.0


@pytest.mark.parametrize("by_request", [True, False])
def test_required_depth_turns_unusable_depth_into_no_depth(make_harness, by_request):
    harness = depth_harness(make_harness, require_depth=not by_request)
    stamp = harness.clock.now_ns
    harness.put(make_frame("front", stamp))
    harness.put_depth("front", stamp + 100 * MILLISECOND, 2.0)
    error = failure(harness, "cup", require_depth=by_request)
    assert error.code == ErrorCode.NO_DEPTH and "max_depth_skew" in words(error) and "'front'" in str(error)

    harness.put_depth("front", stamp, 2.0, frame_id="elsewhere")
    error = failure(harness, "cup", require_depth=by_request)
    assert error.code == ErrorCode.NO_DEPTH and "depth_registered" in words(error)
    assert harness.outcomes == []


def test_depth_without_camera_info_keeps_2d_points_and_names_the_topic(make_harness):
    camera = CameraSettings(name="front", topic="/front/color/image_raw", depth_topic="/d")
    harness = make_harness(
        ScriptedEngine(answer=lambda prompt, image: CENTRE_ANSWER), cameras={"front": camera}
    )
    harness.put(make_frame("front", harness.clock.now_ns))
    harness.put_depth("front", harness.clock.now_ns, 2.0)
    outcome = harness.point("cup")
    assert outcome.points[0].position_m is None
    assert "/front/color/camera_info" in depth_words(outcome.view)


def test_unusable_camera_info_keeps_2d_points_and_says_why(make_harness):
    harness = depth_harness(make_harness)
    with pytest.raises(DepthError) as zeros:
        CameraModel.from_camera_info(64, 48, "plumb_bob", (0.0,) * 5, (0.0,) * 9, (0.0,) * 12)
    harness.service.put_camera_model("front", zeros.value)
    harness.put(make_frame("front", harness.clock.now_ns))
    harness.put_depth("front", harness.clock.now_ns, 2.0)
    outcome = harness.point("cup")
    assert outcome.points[0].position_m is None and "CameraInfo" in depth_words(outcome.view)

    harness.service.put_camera_model("front", make_camera_model(width=32, height=24))
    outcome = harness.point("cup")
    assert outcome.points[0].position_m is None
    assert "32x24" in depth_words(outcome.view) and "64x48" in depth_words(outcome.view)


def test_unreadable_depth_image_keeps_2d_points_and_says_why(make_harness):
    harness = depth_harness(make_harness)
    stamp = harness.clock.now_ns
    harness.put(make_frame("front", stamp))
    data = bytes(64 * 48 * 3)
    unreadable = DepthFrame(stamp, "front_optical", lambda: read_depth(data, "rgb8", 48, 64, 192, False))
    harness.service.put_depth("front", unreadable)
    outcome = harness.point("cup")
    assert outcome.points[0].position_m is None and (outcome.points[0].x, outcome.points[0].y) == (16.0, 24.0)
    assert "'rgb8' is not supported" in depth_words(outcome.view)


def test_camera_without_depth_topic_keeps_2d_points_and_says_so(make_harness):
    harness = make_harness(ScriptedEngine(answer=lambda prompt, image: CENTRE_ANSWER))
    harness.put(make_frame("front", harness.clock.now_ns))
    outcome = harness.point("cup")
    assert outcome.points[0].position_m is None
    assert "depth_topic" in depth_words(outcome.view) and depth_stamp_ns(outcome.view) == 0


def test_request_image_with_its_own_depth_and_camera_info_is_lifted(make_harness):
    engine = ScriptedEngine(answer=lambda prompt, image: CENTRE_ANSWER)
    harness = make_harness(engine)
    own = make_frame("", stamp_ns=5 * SECOND)
    depth = make_depth("", stamp_ns=9 * SECOND, metres=3.0, frame_id="sensor")  # paired by the request
    outcome = harness.point("cup", image=own, depth=depth, camera_model=make_camera_model())
    assert outcome.points[0].position_m == pytest.approx(
        expected_position(16.0, 24.0, 3.0), abs=LIFT_TOLERANCE_M
    )
    assert depth_stamp_ns(outcome.view) == 9 * SECOND

    without = harness.point("cup", image=own)
    assert without.points[0].position_m is None and "CameraInfo" in depth_words(without.view)


def test_each_camera_of_a_several_camera_request_is_lifted_with_its_own_depth(make_harness):
    cameras = {
        "front": CameraSettings(name="front", depth_topic="/front/depth"),
        "wrist": CameraSettings(name="wrist"),
    }
    engine = ScriptedEngine(answer=lambda prompt, image: TWO_VIEW_ANSWER, max_images=2)
    harness = make_harness(engine, cameras=cameras)
    harness.put(make_frame("front", harness.clock.now_ns))
    harness.put(make_frame("wrist", harness.clock.now_ns, width=80, height=60))
    harness.service.put_camera_model("front", make_camera_model())
    harness.put_depth("front", harness.clock.now_ns, 1.0)
    outcome = harness.point("mug", camera=ALL_CAMERAS)
    front, wrist = outcome.points
    assert front.position_m == pytest.approx(expected_position(32.0, 24.0, 1.0), abs=LIFT_TOLERANCE_M)
    assert wrist.position_m is None and "depth_topic" in depth_words(outcome.views[1])
    assert depth_words(outcome.views[0]) == ""


# --- ask ----------------------------------------------------------------------------------------------


def test_ask_answers_with_the_text_and_publishes_no_points(make_harness):
    engine = ScriptedEngine(answer=lambda prompt, image: "A red mug on a table.")
    harness = make_harness(engine)
    stamp = harness.clock.now_ns - SECOND // 4
    harness.put(make_frame("front", stamp, width=200, height=100))

    outcome = harness.point("Describe this image.", ask=True)

    assert isinstance(outcome, AskOutcome)
    assert outcome.text == "A red mug on a table."
    assert outcome.prompt == "Describe this image." and engine.calls[0].prompts == ["Describe this image."]
    view = outcome.view
    assert (view.camera, view.stamp_ns, view.frame_id, view.width, view.height) == (
        "front",
        stamp,
        "front_optical",
        200,
        100,
    )
    assert outcome.frame_age_seconds == pytest.approx(0.25)
    assert harness.outcomes == [], "an ask is answered to its asker only"


def test_ask_prompt_is_checked_like_a_query(make_harness):
    harness = make_harness(ScriptedEngine())
    harness.put(make_frame("front", harness.clock.now_ns))
    error = failure(harness, "  ", ask=True)
    assert error.code == ErrorCode.INVALID_QUERY and "prompt is empty" in str(error)


def test_ask_about_every_camera_is_refused_as_unsupported(make_harness):
    harness = make_harness(ScriptedEngine(max_images=2))
    harness.put(make_frame("front", harness.clock.now_ns))
    harness.put(make_frame("wrist", harness.clock.now_ns))
    error = failure(harness, "What is on the table?", camera="*", ask=True)
    assert error.code == ErrorCode.UNSUPPORTED and "one camera" in str(error)


# --- the target frame ---------------------------------------------------------------------------------


class RecordingTransforms:
    """A TransformSource double: a translation by (1, 0, 0), or TransformUnavailable when `missing`; it
    records, for each lookup, how many model calls had started by then."""

    def __init__(self, engine: ScriptedEngine, missing: bool = False) -> None:
        self.engine, self.missing = engine, missing
        self.asked: list[int] = []

    def lookup(self, target: str, view: View, timeout_s: float) -> RigidTransform:
        self.asked.append(len(self.engine.calls))
        if self.missing:
            raise TransformUnavailable("no such frame")
        return RigidTransform.from_quaternion((1.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0))


def target_harness(make_harness, answer: str, missing: bool = False) -> tuple[Harness, RecordingTransforms]:
    """A camera with depth 2 m away, answering `answer`, and a target frame whose transforms come from a
    RecordingTransforms."""
    engine = ScriptedEngine(answer=lambda prompt, image: answer)
    transforms = RecordingTransforms(engine, missing)
    camera = CameraSettings(name="front", depth_topic="/d")
    target = TargetFrame("base_link", transforms, 0.1)
    harness = make_harness(engine, cameras={"front": camera}, target=target)
    harness.service.put_camera_model("front", make_camera_model())
    stamp = harness.clock.now_ns
    harness.put(make_frame("front", stamp))
    harness.put_depth("front", stamp, 2.0)
    return harness, transforms


def test_the_transform_to_the_target_frame_is_looked_up_before_the_model_runs(make_harness):
    """tf2 keeps 10 s of a moving camera's transforms: looked up after a long answer, a frame's transform
    could be gone. It is looked up when the frame is chosen, before the model's first call."""
    harness, transforms = target_harness(make_harness, CENTRE_ANSWER)
    outcome = harness.point("cup")
    assert transforms.asked == [0], "once, before the model ran"
    (point,) = outcome.points
    expected = np.array(expected_position(16.0, 24.0, 2.0)) + [1.0, 0.0, 0.0]
    assert point.target.position == pytest.approx(expected, abs=LIFT_TOLERANCE_M)


def test_a_transform_not_found_fails_only_an_answer_with_3d_points(make_harness):
    harness, transforms = target_harness(make_harness, CENTRE_ANSWER, missing=True)
    error = failure(harness, "cup")
    assert error.code == ErrorCode.NO_TRANSFORM and "no such frame" in str(error)
    assert transforms.asked == [0, 1], "taken before the model, and looked up again after it"
    harness, transforms = target_harness(make_harness, "There are none.", missing=True)
    assert harness.point("cup").points == ()
    assert transforms.asked == [0], "no wait for a transform that no 3D point needs"


def test_a_camera_without_depth_needs_no_transform(make_harness):
    engine = ScriptedEngine(answer=lambda prompt, image: CENTRE_ANSWER)
    transforms = RecordingTransforms(engine, missing=True)
    harness = make_harness(engine, target=TargetFrame("base_link", transforms, 0.1))
    harness.put(make_frame("front", harness.clock.now_ns))
    outcome = harness.point("cup")
    assert transforms.asked == [] and outcome.points[0].target is None
