"""OpenAIChatBackend against the local chat-completions double: the request it sends, retries, each error."""

import base64
import io
import logging
import socket
import threading

import numpy as np
import PIL.Image
import pytest
from doubles.openai_server import OpenAIServerDouble
from ros_helpers import wait_until

from molmo_ros.backends import openai_chat
from molmo_ros.backends.errors import (
    GenerationCancelledError,
    InvalidImageError,
    ServerResponseError,
    ServerUnavailableError,
    UnsupportedRequestError,
)
from molmo_ros.backends.interface import GenerationControl, Stage
from molmo_ros.backends.openai_chat import OpenAIChatBackend
from molmo_ros.backends.settings import BackendSettings
from molmo_ros.nodes.parameters import with_parameter_names
from molmo_ros.parsing import parse_answer

KEY_VARIABLE = "MOLMO_TEST_API_KEY"
SECRET = "sk-test-0123456789-secret"
ANSWER = '<points coords="1 1 250 750;2 2 500 500">mug</points>'


@pytest.fixture
def server():
    with OpenAIServerDouble(answers=[ANSWER], slow_s=1.0) as double:
        yield double


def frame(width: int = 64, height: int = 48, value: int = 0) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 3 + value, y * 5, (x + y) % 256], axis=-1).astype(np.uint8)


def backend_for(server: OpenAIServerDouble, **overrides) -> OpenAIChatBackend:
    settings = dict(
        backend="openai", url=server.url, model="molmo2-served", max_retries=2, api_key_env=KEY_VARIABLE
    )
    settings.update(overrides)
    return OpenAIChatBackend.load(BackendSettings(**settings))


def decode_data_url(url: str) -> tuple[str, PIL.Image.Image]:
    header, encoded = url.split(",", 1)
    return header, PIL.Image.open(io.BytesIO(base64.b64decode(encoded)))


def test_one_request_per_prompt_carries_images_as_data_urls_and_the_prompt(server, monkeypatch):
    monkeypatch.delenv(KEY_VARIABLE, raising=False)
    backend = backend_for(server)
    answer = backend.generate([frame(), frame(value=7)], ["Point to the mug", "Point to the cup"])
    backend.close()
    assert answer.texts == [ANSWER, ANSWER]
    assert [request.path for request in server.requests] == ["/v1/chat/completions"] * 2
    first, second = server.requests
    assert first.texts() == ["Point to the mug"] and second.texts() == ["Point to the cup"]
    assert first.body["model"] == "molmo2-served" and first.body["max_tokens"] == 200
    urls = first.image_urls()
    assert len(urls) == 2 and urls == second.image_urls()
    for url in urls:
        header, image = decode_data_url(url)
        assert header == "data:image/jpeg;base64" and image.format == "JPEG" and image.size == (64, 48)
    assert "authorization" not in {name.lower() for name in first.headers}


def test_png_format_sends_the_exact_pixels(server):
    backend = backend_for(server, image_format="png")
    pixels = frame()
    backend.generate([pixels], ["Point to the mug"])
    header, image = decode_data_url(server.requests[0].image_urls()[0])
    assert header == "data:image/png;base64"
    assert np.array_equal(np.asarray(image), pixels)


def test_large_frames_are_downscaled_only_when_max_image_side_is_set(server):
    backend_for(server, image_format="png").generate([frame(400, 300)], ["p"])
    backend_for(server, image_format="png", max_image_side=100).generate([frame(400, 300)], ["p"])
    backend_for(server, image_format="png", max_image_side=1000).generate([frame(400, 300)], ["p"])
    sizes = [decode_data_url(request.image_urls()[0])[1].size for request in server.requests]
    assert sizes == [(400, 300), (100, 75), (400, 300)]


def test_points_of_a_downscaled_frame_are_fractions_of_the_original(server):
    # The model answers in per-mille of what it saw; the same fraction of the original frame is the point.
    answer = backend_for(server, max_image_side=100).generate([frame(400, 300)], ["p"]).texts[0]
    first = parse_answer(answer).points[0]
    assert (first.x * 400, first.y * 300) == pytest.approx((100.0, 225.0))


def test_api_key_is_sent_from_the_named_variable_and_never_shown(server, monkeypatch, caplog):
    monkeypatch.setenv(KEY_VARIABLE, SECRET)
    caplog.set_level(logging.DEBUG)
    backend = backend_for(server, max_retries=0)
    backend.generate([frame()], ["p"])
    assert server.requests[0].headers["Authorization"] == f"Bearer {SECRET}"
    server.error_status = 401
    server.misbehave("error")
    with pytest.raises(ServerResponseError) as failure:
        backend.generate([frame()], ["p"])
    assert "401" in str(failure.value) and "engine.api_key_env" in with_parameter_names(failure.value)
    assert SECRET not in str(failure.value) and SECRET not in repr(failure.value)
    assert SECRET not in caplog.text


def test_key_echoed_by_the_server_is_removed_from_the_message(server, monkeypatch):
    monkeypatch.setenv(KEY_VARIABLE, SECRET)
    server.answers[0] = f"bad key {SECRET}"
    server.error_status = 400
    server.misbehave("error")
    with pytest.raises(ServerResponseError) as failure:
        backend_for(server, max_retries=0).generate([frame()], ["p"])
    assert "bad key [API key]" in str(failure.value) and SECRET not in str(failure.value)


def test_5xx_is_retried_and_then_answered(server):
    server.misbehave("error", times=2)
    answer = backend_for(server, max_retries=2).generate([frame()], ["p"])
    assert answer.texts == [ANSWER] and len(server.requests) == 3


def test_5xx_after_the_last_retry_is_a_response_error_naming_the_url(server):
    server.misbehave("error", times=3)
    with pytest.raises(ServerResponseError) as failure:
        backend_for(server, max_retries=1).generate([frame()], ["p"])
    assert len(server.requests) == 2
    message = str(failure.value)
    assert server.url in message and "HTTP 500" in message and "2 attempt(s)" in message


def test_4xx_is_not_retried(server):
    server.error_status = 404
    server.misbehave("error")
    with pytest.raises(ServerResponseError, match="HTTP 404.*served model name") as failure:
        backend_for(server, max_retries=3).generate([frame()], ["p"])
    assert with_parameter_names(failure.value).endswith("(parameter engine.model)")
    assert len(server.requests) == 1


def test_a_closed_connection_is_retried(server):
    server.misbehave("close")
    assert backend_for(server, max_retries=1).generate([frame()], ["p"]).texts == [ANSWER]
    assert len(server.requests) == 2


def test_a_connection_closed_every_time_is_server_unavailable(server):
    server.misbehave("close", times=3)
    with pytest.raises(ServerUnavailableError, match="after 3 attempt"):
        backend_for(server, max_retries=2).generate([frame()], ["p"])


def test_unreachable_server_is_unavailable_naming_the_url():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    backend = OpenAIChatBackend.load(BackendSettings(backend="openai", url=url, max_retries=1))
    with pytest.raises(ServerUnavailableError) as failure:
        backend.generate([frame()], ["p"])
    assert url in str(failure.value) and "engine.url" in with_parameter_names(failure.value)


def test_slow_server_times_out_as_unavailable(server):
    server.misbehave("slow")
    with pytest.raises(ServerUnavailableError, match=r"did not answer within 0.2 s"):
        backend_for(server, request_timeout=0.2).generate([frame()], ["p"])
    assert len(server.requests) == 1  # a timeout is not retried: it would multiply the wait


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("malformed_json", "malformed JSON"),
        ("empty_choices", "empty choice list"),
        ("no_text", "no text"),
    ],
)
def test_unusable_replies_are_response_errors_naming_the_url(server, fault, reason):
    server.misbehave(fault)
    with pytest.raises(ServerResponseError) as failure:
        backend_for(server).generate([frame()], ["p"])
    assert reason in str(failure.value) and server.url in str(failure.value)
    assert len(server.requests) == 1


def test_cancel_before_sending_sends_nothing(server):
    control = GenerationControl()
    control.cancel()
    with pytest.raises(GenerationCancelledError):
        backend_for(server).generate([frame()], ["p"], control)
    assert server.requests == []


def test_cancel_during_the_request_raises_before_returning(server):
    stages = []

    def cancel_once_answered(stage: Stage, tokens: int) -> None:
        stages.append(stage)
        if stage is Stage.DECODING:
            control.cancel()

    control = GenerationControl(cancel_once_answered)
    with pytest.raises(GenerationCancelledError):
        backend_for(server).generate([frame()], ["first", "second"], control)
    # Cancelled as the first answer came back: it is dropped and the second prompt never sent.
    assert [request.texts() for request in server.requests] == [["first"]]
    assert stages == [Stage.VISION, Stage.DECODING]


def test_progress_reports_vision_then_decoding_tokens(server):
    reports = []
    backend_for(server).generate([frame()], ["p"], GenerationControl(lambda *report: reports.append(report)))
    assert reports == [(Stage.VISION, 0), (Stage.DECODING, len(ANSWER.split()))]


def test_in_flight_limit_becomes_the_concurrent_call_count(server):
    assert backend_for(server, max_in_flight=7).max_concurrent_calls == 7


@pytest.mark.parametrize(
    ("images", "error"),
    [
        ([], InvalidImageError),
        ([np.zeros((4, 4), np.uint8)], InvalidImageError),
        ([np.zeros((4, 4, 3), np.float32)], InvalidImageError),
        ([frame()] * 9, UnsupportedRequestError),
    ],
    ids=["no-image", "grey", "float", "too-many"],
)
def test_bad_images_are_refused_before_sending(server, images, error):
    with pytest.raises(error):
        backend_for(server).generate(images, ["p"])
    assert server.requests == []


def test_cancel_during_a_retry_backoff_stops_before_the_next_attempt(server, monkeypatch):
    """Deactivate and shutdown cancel a running call: a failing server must not hold them for every retry."""
    # A long backoff: the cancel surely lands in it, and a backoff that ignored the cancel would make a
    # second attempt after it.
    monkeypatch.setattr(openai_chat, "FIRST_RETRY_DELAY_S", 30.0)
    server.misbehave("error", times=10)
    control = GenerationControl()

    def cancel_once_the_first_attempt_failed() -> None:
        assert wait_until(lambda: len(server.requests) >= 1, timeout=30)
        control.cancel()

    canceller = threading.Thread(target=cancel_once_the_first_attempt_failed)
    canceller.start()
    with pytest.raises(GenerationCancelledError):
        backend_for(server, max_retries=10).generate([frame()], ["p"], control)
    canceller.join()
    assert len(server.requests) == 1, "no attempt after the cancel"
