"""The pointing service without ROS: validation, frame choice, queue bound, standing query, errors."""

import threading
import time

import numpy as np
import pytest
from doubles.scripted_engine import ScriptedEngine, fixed_points_answer
from ros_helpers import wait_until

from molmo_ros.image_conversion import ImageConversionError, raw_to_rgb
from molmo_ros.pointing.frames import Frame, LatestFrames
from molmo_ros.pointing.service import (
    ErrorCode,
    PointingError,
    PointingRequest,
    PointingService,
    PointingSettings,
)

SECOND = 1_000_000_000


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


class Harness:
    def __init__(self, engine: ScriptedEngine, **settings: object) -> None:
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
        self.frames = LatestFrames()
        self.outcomes = []
        self.errors = []
        self.outcome_event = threading.Event()
        self.service = PointingService(
            engine,
            self.frames,
            PointingSettings(**defaults),
            self.clock,
            self._on_outcome,
            self.errors.append,
        )
        self.service.start()

    def _on_outcome(self, outcome) -> None:
        self.outcomes.append(outcome)
        self.outcome_event.set()

    def put(self, frame: Frame) -> None:
        self.frames.put(frame)
        self.service.frame_arrived()

    def point(self, query: str, camera: str = "", image: Frame | None = None, timeout: float = 10.0):
        return self.service.submit(PointingRequest(query=query, camera=camera, image=image)).result(timeout)


@pytest.fixture
def make_harness():
    harnesses = []

    def make(engine: ScriptedEngine, **settings: object) -> Harness:
        harness = Harness(engine, **settings)
        harnesses.append(harness)
        return harness

    yield make
    for harness in harnesses:
        harness.service.stop()


def failure(harness: Harness, query: str, **kwargs: object) -> PointingError:
    with pytest.raises(PointingError) as caught:
        harness.point(query, **kwargs)
    return caught.value


def test_answer_carries_the_frame_stamp_and_pixel_points(make_harness):
    engine = ScriptedEngine(answer=lambda prompt, image: fixed_points_answer([(25.0, 50.0)], "mug"))
    harness = make_harness(engine)
    stamp = harness.clock.now_ns - SECOND // 2
    harness.put(make_frame("front", stamp, width=200, height=100))

    outcome = harness.point("  red mug ")

    assert engine.calls[0].prompts == ["Point to the red mug"]
    assert outcome.prompt == "Point to the red mug" and outcome.query == "red mug"
    assert (outcome.stamp_ns, outcome.frame_id, outcome.camera) == (stamp, "front_optical", "front")
    assert (outcome.image_width, outcome.image_height) == (200, 100)
    assert [(p.x, p.y, p.label) for p in outcome.points] == [(50.0, 50.0, "mug")]
    assert outcome.frame_age_seconds == pytest.approx(0.5)
    assert outcome.model_seconds >= 0 and not outcome.answer_malformed
    assert harness.outcome_event.wait(5)
    assert harness.outcomes == [outcome], "every answer is also published"


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
    assert (outcome.image_width, outcome.image_height) == (30, 20)
    assert int(engine.calls[0].image[0, 0, 0]) == 7


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


def test_requests_beyond_the_queue_are_busy_and_all_get_answers(make_harness):
    engine = ScriptedEngine(hold=True)
    harness = make_harness(engine, queue_size=2)
    harness.put(make_frame("front", harness.clock.now_ns))

    def submit():
        return harness.service.submit(PointingRequest(query="cup"))

    running = submit()
    assert engine.wait_started()
    waiting = [submit(), submit()]
    refused = [submit() for _ in range(5)]

    for future in refused:
        assert future.done() and future.exception().code == ErrorCode.BUSY
    assert "queue_size" in str(refused[0].exception())
    assert harness.service.pending() == 2
    engine.release(3)
    for future in [running, *waiting]:
        assert future.result(timeout=10).raw_text == "There are none."


def test_the_newest_frame_is_used_and_nothing_queues_while_busy(make_harness):
    engine = ScriptedEngine(hold=True)
    harness = make_harness(engine)
    harness.put(make_frame("front", harness.clock.now_ns, value=0))
    first = harness.service.submit(PointingRequest(query="cup"))
    assert engine.wait_started()
    second = harness.service.submit(PointingRequest(query="cup"))
    for value in range(1, 200):
        harness.put(make_frame("front", harness.clock.now_ns, value=value))
    assert harness.frames.sequence("front") == 200
    assert int(harness.frames.get("front").decode()[0, 0, 0]) == 199, "only the newest frame is held"
    assert harness.service.pending() == 1, "frames never become queued work"
    engine.release(2)
    first.result(10)
    second.result(10)
    assert int(engine.calls[1].image[0, 0, 0]) == 199


def test_standing_query_follows_new_frames_and_requests_go_first(make_harness):
    engine = ScriptedEngine(hold=True)
    harness = make_harness(engine)
    harness.put(make_frame("front", harness.clock.now_ns, value=1))
    harness.service.set_standing_query("cup")
    assert engine.wait_started()  # the standing query runs on the frame already there
    harness.put(make_frame("wrist", harness.clock.now_ns, value=2))
    request = harness.service.submit(PointingRequest(query="plate", camera="front"))
    engine.release(2)
    assert request.result(10).query == "plate", "the waiting request runs before the next standing run"
    assert [call.prompts[0] for call in engine.calls[:2]] == ["Point to the cup", "Point to the plate"]
    engine.release(5)
    deadline = time.monotonic() + 10
    while len(engine.calls) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.calls[2].prompts == ["Point to the cup"] and int(engine.calls[2].image[0, 0, 0]) == 2

    harness.service.set_standing_query("")
    assert harness.service.standing_query is None
    calls = len(engine.calls)
    harness.put(make_frame("front", harness.clock.now_ns, value=3))
    time.sleep(0.2)
    assert len(engine.calls) == calls
    standing = [o for o in harness.outcomes if o.query == "cup"]
    assert {o.camera for o in standing} == {"front", "wrist"}


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

    def broken_publish(outcome) -> None:
        raise RuntimeError("publisher's context is invalid")

    harness.service._on_outcome = broken_publish
    harness.put(make_frame("front", harness.clock.now_ns))
    assert harness.point("cup").raw_text == "There are none."
    assert harness.point("plate").raw_text == "There are none.", "the worker survived the failing publish"


def test_invalid_standing_query_raises_and_keeps_the_old_one(make_harness):
    harness = make_harness(ScriptedEngine())
    harness.service.set_standing_query("cup")
    with pytest.raises(PointingError):
        harness.service.set_standing_query("x" * 100)
    assert harness.service.standing_query == "cup"


def test_stop_fails_waiting_requests_instead_of_dropping_them(make_harness):
    engine = ScriptedEngine(hold=True)
    harness = make_harness(engine, queue_size=3)
    harness.put(make_frame("front", harness.clock.now_ns))
    running = harness.service.submit(PointingRequest(query="cup"))
    assert engine.wait_started()
    waiting = harness.service.submit(PointingRequest(query="cup"))
    stopper = threading.Thread(target=harness.service.stop)
    stopper.start()
    assert waiting.exception(timeout=10).code == ErrorCode.BUSY
    engine.release(1)
    stopper.join(10)
    assert running.result(0).raw_text == "There are none."


def test_runtime_settings_change_and_fixed_ones_are_refused(make_harness):
    engine = ScriptedEngine()
    harness = make_harness(engine)
    harness.put(make_frame("front", harness.clock.now_ns))
    harness.service.update_settings(prompt_template="Find the {query}")
    harness.point("cup")
    assert engine.calls[-1].prompts == ["Find the cup"]
    with pytest.raises(ValueError, match="queue_size"):
        harness.service.update_settings(queue_size=10)
    with pytest.raises(ValueError):
        harness.service.update_settings(prompt_template="no placeholder")
    assert harness.service.settings.prompt_template == "Find the {query}"
