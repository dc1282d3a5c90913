"""The openai backend's API key, whatever its bytes: stripped, refused when a header cannot carry it, and
never shown, in any encoding, by the node's log, the Point response, the action result or molmo-point.

Every path is tested for each error mode of a server (unreachable, HTTP 4xx, HTTP 5xx, a timeout, bad
JSON), with the server double echoing the Authorization header in each encoding it knows. Absence is
checked by `leaks`, written here independently of molmo_ros' redactor: it decodes a message every way
the key could hide in it and looks for any 6-character piece of the key.
"""

import base64
import binascii
import codecs
import html
import re
import socket
from pathlib import Path
from urllib.parse import unquote, unquote_plus

import numpy as np
import PIL.Image
import pytest
import rclpy
from doubles.openai_server import ECHOES, OpenAIServerDouble
from rclpy.action import ActionClient
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from ros_helpers import Spinner, TestClient, image_message, wait_until

from molmo_ros.action import Point as PointAction
from molmo_ros.backends.api_key import REDACTED, KeyRedactor, check_api_key, read_api_key
from molmo_ros.backends.errors import InvalidSettingError, ServerResponseError
from molmo_ros.backends.openai_chat import ERROR_BODY_CHARS, OpenAIChatBackend
from molmo_ros.backends.settings import BackendSettings
from molmo_ros.cli import point as cli
from molmo_ros.nodes.pointer import PointerNode
from molmo_ros.nodes.throttled_log import ThrottledErrorLog
from molmo_ros.srv import Point

KEY_VARIABLE = "MOLMO_TEST_API_KEY"
# '/', '+', '=' and '_' make the percent, JSON and the two base64 forms differ from the raw key.
SECRET = "sk-proj-Zq9/xW+4tY_7uV=k2Lm8"
PIECE = 6  # the shortest piece of the key `leaks` looks for; base64 may keep 2 bytes at each end (docstring)


def leaks(text: str, secret: str = SECRET) -> list[str]:
    """Each way of reading `text` in which a PIECE-character piece of `secret` appears (empty: none).

    Readings: as written, percent-decoded (both ways), with backslash escapes decoded, and every run of
    base64 characters decoded at each of its 4 offsets in both alphabets. A base64 encoding shares its
    first and last characters with the bytes around the key, so up to 2 bytes at each end may remain:
    fewer than PIECE."""
    pieces = {secret[start : start + PIECE] for start in range(len(secret) - PIECE + 1)}
    readings = {
        "as written": text,
        "percent": unquote(text),
        "percent-plus": unquote_plus(text),
        "html": html.unescape(text),
        "json slashes": text.replace("\\/", "/"),
    }
    try:
        readings["escapes"] = codecs.decode(text.encode("latin-1", "backslashreplace"), "unicode_escape")
        readings["escapes-utf8"] = readings["escapes"].encode("latin-1", "replace").decode("utf-8", "replace")
    except UnicodeDecodeError:
        pass
    found = [name for name, reading in readings.items() if any(piece in reading for piece in pieces)]
    piece_bytes = {piece.encode() for piece in pieces}
    for run in re.findall(r"[A-Za-z0-9+/_=-]{8,}", text):
        for offset in range(4):
            chunk = run[offset:].rstrip("=")
            chunk = chunk[: len(chunk) - len(chunk) % 4]
            for altchars in (b"+/", b"-_"):
                try:
                    decoded = base64.b64decode(chunk, altchars=altchars)
                except (binascii.Error, ValueError):
                    continue
                if any(piece in decoded for piece in piece_bytes):
                    found.append(f"base64 {run!r}")
    return found


def test_the_leak_detector_finds_the_key_in_every_echo_the_double_can_make():
    # Guards the guard: if `leaks` missed an encoding, the absence checks below would prove nothing.
    header = f"Bearer {SECRET}"
    for name, encode in ECHOES.items():
        assert leaks(f"server said: {encode(header)} (HTTP 401)"), name
    assert leaks(f"truncated: {SECRET[:PIECE]}")
    assert not leaks(f"Bearer {REDACTED} failed; {SECRET[: PIECE - 1]}")


# --- reading and checking the key ---------------------------------------------------------------------


def settings(**overrides: object) -> BackendSettings:
    return BackendSettings(**{"backend": "openai", "api_key_env": KEY_VARIABLE, **overrides})


@pytest.mark.parametrize(
    "stored", [f"{SECRET}\r\n", f"  {SECRET}\t", f"\u00a0{SECRET}\n"], ids=["crlf", "blanks", "nbsp"]
)
def test_surrounding_whitespace_is_stripped(monkeypatch, stored):
    monkeypatch.setenv(KEY_VARIABLE, stored)
    assert read_api_key(settings()) == SECRET


def test_an_unset_or_blank_variable_sends_no_key(monkeypatch):
    monkeypatch.delenv(KEY_VARIABLE, raising=False)
    assert read_api_key(settings()) == ""
    monkeypatch.setenv(KEY_VARIABLE, " \r\n")
    assert read_api_key(settings()) == ""


@pytest.mark.parametrize(
    ("stored", "named"),
    [
        (f"{SECRET[:10]}\r{SECRET[10:]}", "U+000D"),
        (f"{SECRET}\r\nsk-second-key-0123", "U+000A"),
        (f"{SECRET[:10]}\t{SECRET[10:]}", "U+0009"),
        (f"{SECRET}\u2019", "U+2019 RIGHT SINGLE QUOTATION MARK"),
        (f"sk-\u00e9{SECRET}", "U+00E9 LATIN SMALL LETTER E WITH ACUTE"),
    ],
    ids=["carriage-return-inside", "two-lines", "tab-inside", "typographic-quote", "accented-letter"],
)
def test_a_key_a_header_cannot_carry_is_refused_naming_the_variable_not_the_key(monkeypatch, stored, named):
    monkeypatch.setenv(KEY_VARIABLE, stored)
    with pytest.raises(InvalidSettingError) as refusal:
        check_api_key(settings())
    message = str(refusal.value)
    assert KEY_VARIABLE in message and "api_key_env" in message and named in message
    assert not leaks(message) and not leaks(message, stored.strip())


def test_only_the_openai_backend_checks_the_key(monkeypatch):
    monkeypatch.setenv(KEY_VARIABLE, f"{SECRET}\u2019")
    check_api_key(settings(backend="molmoe"))  # the key is never read: nothing to refuse
    with pytest.raises(InvalidSettingError):
        OpenAIChatBackend.load(settings())  # built directly, the backend refuses it too


# --- the redactor ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key", [SECRET, f"{SECRET}\r", f"sk-\u00e9\u2019{SECRET}", 'sk-"quoted"\\back'], ids=lambda k: ascii(k)
)
def test_every_form_of_a_key_is_replaced(key):
    redact = KeyRedactor(key)
    header = f"Bearer {key}"
    forms = {
        "raw": header,
        "str repr": repr(header),
        "bytes repr (httpx's message)": f"Illegal header value {header.encode()!r}",
        **{name: encode(header) for name, encode in ECHOES.items()},
        "percent, lower-case hex": re.sub(
            r"%[0-9A-F]{2}", lambda m: m.group().lower(), ECHOES["percent"](header)
        ),
        "base64 at offset 0": base64.b64encode(key.encode()).decode(),
        "base64 at offset 2": base64.b64encode(b"u:" + key.encode()).decode(),
    }
    for name, form in forms.items():
        redacted = redact(f"server said {form}.")
        assert REDACTED in redacted, name
        assert not leaks(redacted, key), (name, redacted)


def test_no_key_leaves_messages_as_they_are():
    assert KeyRedactor("")("HTTP 500: upstream failed") == "HTTP 500: upstream failed"


def test_a_key_across_the_end_of_the_quoted_body_leaves_no_part_of_itself(monkeypatch):
    monkeypatch.setenv(KEY_VARIABLE, SECRET)
    # The double's error body is this JSON; the key starts 10 characters before the quoted part ends.
    before_key = '{"error": {"message": "scripted failure: key '
    filler = "x" * (ERROR_BODY_CHARS - 10 - len(before_key))
    with OpenAIServerDouble(answers=[f"{filler}key {SECRET} rejected"]) as server:
        server.misbehave("error")
        server.error_status = 400
        with pytest.raises(ServerResponseError) as failure:
            OpenAIChatBackend.load(settings(url=server.url, max_retries=0)).generate([frame()], ["p"])
    message = str(failure.value)
    assert "HTTP 400" in message and REDACTED in message
    assert not leaks(message), message


# --- every path, every error mode -----------------------------------------------------------------------


def frame() -> np.ndarray:
    return np.full((24, 32, 3), 90, dtype=np.uint8)


def closed_port_url() -> str:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}/v1"


# (mode, echo, what the message must say, the node's error code name). Each echo of the double is
# played by the modes whose reply carries a body: HTTP errors and bad JSON.
ECHOING_MODES = (
    [("4xx", echo, "HTTP 401", "ENGINE_ERROR") for echo in ECHOES]
    + [("5xx", echo, "HTTP 500", "ENGINE_ERROR") for echo in ECHOES]
    + [("bad-json", echo, "malformed JSON", "ENGINE_ERROR") for echo in ECHOES]
)
SILENT_MODES = [
    ("timeout", None, "did not answer within", "SERVER_UNAVAILABLE"),
    ("unreachable", None, "cannot reach", "SERVER_UNAVAILABLE"),
]
ALL_MODES = ECHOING_MODES + SILENT_MODES
# Every mode but the timeout must be answered within it, on a loaded 2-core machine too: a local reply
# took over 0.3 s once in CI there. The double's slow reply takes twice as long: a timeout.
REQUEST_TIMEOUT_S = 2.0
SLOW_REPLY_S = 2 * REQUEST_TIMEOUT_S


def play(server: OpenAIServerDouble, mode: str, echo: str | None) -> str:
    """Makes the double fail the next request in `mode`; returns the URL to send it to."""
    server.echo_authorization = echo
    if mode in ("4xx", "5xx"):
        server.error_status = 401 if mode == "4xx" else 500
        server.misbehave("error")
    elif mode == "bad-json":
        server.misbehave("malformed_json")
    elif mode == "timeout":
        server.misbehave("slow")
    return closed_port_url() if mode == "unreachable" else server.url


@pytest.fixture
def server():
    with OpenAIServerDouble(slow_s=SLOW_REPLY_S) as double:
        yield double


@pytest.fixture
def png(tmp_path) -> Path:
    path = tmp_path / "frame.png"
    PIL.Image.fromarray(frame()).save(path)
    return path


@pytest.mark.parametrize(("mode", "echo", "says", "code"), ALL_MODES, ids=lambda value: str(value))
def test_molmo_point_says_what_failed_without_the_key(
    monkeypatch, capsys, server, png, mode, echo, says, code
):
    monkeypatch.setenv(KEY_VARIABLE, f"{SECRET}\r\n")  # as read from a file with Windows line endings
    url = play(server, mode, echo)
    arguments = ["--backend", "openai", "--url", url, "--api-key-env", KEY_VARIABLE, "--max-retries", "0"]
    arguments += ["--request-timeout", str(REQUEST_TIMEOUT_S), "--query", "mug", "--image", str(png)]
    assert cli.main(arguments) == cli.EXIT_ENGINE_ERROR
    captured = capsys.readouterr()
    assert says in captured.err, captured.err
    if echo:
        assert REDACTED in captured.err, "the echo reached the message, and was redacted"
        assert server.requests[-1].headers["Authorization"] == f"Bearer {SECRET}", "sent stripped"
    assert not leaks(captured.out + captured.err), captured.err


@pytest.mark.parametrize(
    ("stored", "named"),
    [(f"{SECRET}\r{SECRET}", "U+000D"), (f"{SECRET}\u00a0x", "U+00A0")],
    ids=["cr", "nbsp"],
)
def test_molmo_point_refuses_an_unusable_key_at_start_as_a_usage_error(
    monkeypatch, capsys, server, png, stored, named
):
    monkeypatch.setenv(KEY_VARIABLE, stored)
    arguments = ["--backend", "openai", "--url", server.url, "--api-key-env", KEY_VARIABLE]
    assert cli.main([*arguments, "--query", "mug", "--image", str(png)]) == cli.EXIT_USAGE
    captured = capsys.readouterr()
    assert KEY_VARIABLE in captured.err and named in captured.err and "Traceback" not in captured.err
    assert not leaks(captured.out + captured.err)
    assert server.requests == [], "nothing was sent"


@pytest.fixture
def ros():
    rclpy.init()
    yield
    rclpy.try_shutdown()


def openai_node(url: str, **parameters: object) -> PointerNode:
    values = {
        "engine.backend": "openai",
        "engine.url": url,
        "engine.api_key_env": KEY_VARIABLE,
        "engine.max_retries": 0,
        "engine.request_timeout": REQUEST_TIMEOUT_S,
        "autostart": False,
        **parameters,
    }
    node = PointerNode(parameter_overrides=[Parameter(name, value=value) for name, value in values.items()])
    # Every failed request is logged, not one per error code and interval, so each one's line is checked.
    node._log_error = ThrottledErrorLog(node.get_logger(), interval_s=0.0)
    return node


def test_the_node_refuses_an_unusable_key_at_configure_naming_the_variable(ros, monkeypatch, capfd):
    monkeypatch.setenv(KEY_VARIABLE, f"{SECRET}\r{SECRET}")
    node = openai_node(closed_port_url())
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        logged = capfd.readouterr().err
        assert "cannot configure" in logged and KEY_VARIABLE in logged and "U+000D" in logged, logged
        assert not leaks(logged)
        monkeypatch.setenv(KEY_VARIABLE, f"{SECRET}\r\n")
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS, "a stripped key is fine"
    finally:
        node.destroy_node()


def failed_answers(url: str, server: OpenAIServerDouble, modes: list[tuple]) -> list[tuple]:
    """Runs a node against `url` and fails one service call and one action goal in each mode."""
    node = openai_node(url)
    user = TestClient()
    action = ActionClient(user, PointAction, "/molmo/point_action")
    spinner = None
    image = image_message(frame(), 1, "camera_optical_frame")
    answers = []
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        spinner = Spinner(node, user)
        for mode, echo, says, code in modes:
            play(server, mode, echo)
            response = user.call(Point.Request(query="mug", image=image))
            play(server, mode, echo)
            result = goal_result(action, PointAction.Goal(query="mug", image=image))
            answers += [
                (mode, echo, says, code, "service", response),
                (mode, echo, says, code, "action", result),
            ]
    finally:
        if spinner:
            spinner.close()
        action.destroy()
        user.destroy_node()
        node.destroy_node()
    return answers


def test_the_node_says_what_failed_without_the_key_in_response_result_and_log(ros, monkeypatch, capfd):
    monkeypatch.setenv(KEY_VARIABLE, f"{SECRET}\r\n")
    with OpenAIServerDouble(slow_s=SLOW_REPLY_S) as server:
        answers = failed_answers(server.url, server, [m for m in ALL_MODES if m[0] != "unreachable"])
        answers += failed_answers(closed_port_url(), server, [m for m in ALL_MODES if m[0] == "unreachable"])
        sent_keys = {request.headers.get("Authorization") for request in server.requests}
    assert sent_keys == {f"Bearer {SECRET}"}, "the key was sent, stripped"
    logged = capfd.readouterr().err
    assert len(answers) == 2 * len(ALL_MODES)
    for mode, echo, says, code, interface, answer in answers:
        case = (mode, echo, interface, answer.message)
        assert not answer.success and answer.error_code == getattr(Point.Response, code), case
        assert says in answer.message, case
        assert (REDACTED in answer.message) == bool(echo), case
        assert not leaks(answer.message), case
        assert f"{code}: {answer.message}" in logged, case
    assert not leaks(logged), logged


def goal_result(action: ActionClient, goal: PointAction.Goal) -> PointAction.Result:
    assert action.wait_for_server(timeout_sec=10)
    sent = action.send_goal_async(goal)
    assert wait_until(sent.done, timeout=20) and sent.result().accepted
    outcome = sent.result().get_result_async()
    assert wait_until(outcome.done, timeout=20)
    return outcome.result().result


def test_redaction_minds_case_and_length_so_ordinary_words_survive():
    """vLLM's usual placeholder key "EMPTY" hides itself, not the word "empty"; and a short key makes no
    base64 pattern that ordinary text would match by chance."""
    redact = KeyRedactor("EMPTY")
    assert redact("the prompt is empty; key EMPTY") == f"the prompt is empty; key {REDACTED}"
    assert redact("dGhlIHByb21wdA== is base64 text") == "dGhlIHByb21wdA== is base64 text"
