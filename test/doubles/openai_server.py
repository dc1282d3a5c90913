"""Test double: a local OpenAI-compatible chat-completions server that answers scripted Molmo2 text.

It listens on 127.0.0.1 at a random port, answers each request on its own thread, records every request
(path, headers, JSON body) and can be told to misbehave for the next requests: be slow, answer HTTP 500,
close the connection without answering, or answer malformed JSON, an empty choice list or a choice with
no text. With `echo_authorization` set to one of ECHOES, its HTTP errors and malformed JSON replies start
with the request's Authorization header in that encoding: the worst case for keeping an API key out of
messages. It stops by itself after `lifetime_s` so a failing test never leaves it running.

    with OpenAIServerDouble(answers=['<points coords="1 1 500 500">mug</points>']) as server:
        settings = BackendSettings(backend="openai", url=server.url)
"""

import base64
import html
import json
import re
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote

DEFAULT_LIFETIME_S = 120.0
FAULTS = ("slow", "error", "close", "malformed_json", "empty_choices", "no_text")
# The forms in which servers and proxies have been seen to repeat a header: as received, as a Python bytes
# repr, byte by byte escaped, as a JSON string, percent-encoded (a URL) and base64-encoded (a log blob).
ECHOES: dict[str, Callable[[str], str]] = {
    "raw": lambda value: value,
    "bytes-repr": lambda value: repr(value.encode()),
    "hex-escaped": lambda value: "".join(f"\\x{byte:02x}" for byte in value.encode()),
    "json": json.dumps,
    "json-escaped-slashes": lambda value: json.dumps(value).replace("/", "\\/"),
    "percent-lowercase-hex": lambda value: re.sub(
        r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), quote(value, safe="")
    ),
    "html": html.escape,
    "percent": lambda value: quote(value, safe=""),
    "base64": lambda value: base64.b64encode(value.encode()).decode(),
    "base64url": lambda value: base64.urlsafe_b64encode(value.encode()).decode(),
}


@dataclass(frozen=True)
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: Any  # the parsed JSON body, or the raw text if it was not JSON

    def image_urls(self) -> list[str]:
        return [
            part["image_url"]["url"]
            for message in self.body["messages"]
            for part in message["content"]
            if part.get("type") == "image_url"
        ]

    def texts(self) -> list[str]:
        return [
            part["text"]
            for message in self.body["messages"]
            for part in message["content"]
            if part.get("type") == "text"
        ]


class OpenAIServerDouble:
    """Answers POST {url}/chat/completions with the scripted answers in turn (the last one repeats)."""

    def __init__(
        self, answers: list[str] | None = None, lifetime_s: float = DEFAULT_LIFETIME_S, slow_s: float = 2.0
    ) -> None:
        self.answers = deque(answers or ['<points coords="1 1 500 500">thing</points>'])
        self.requests: list[RecordedRequest] = []
        self.slow_s = slow_s
        self.error_status = 500
        self.echo_authorization: str | None = None  # a key of ECHOES
        self._faults: deque[str] = deque()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._stopper = threading.Timer(lifetime_s, self.stop)
        self._stopper.daemon = True

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def misbehave(self, fault: str, times: int = 1) -> None:
        """The next `times` requests get `fault` (one of FAULTS) instead of an answer."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {FAULTS}")
        with self._lock:
            self._faults.extend([fault] * times)

    def start(self) -> "OpenAIServerDouble":
        self._thread.start()
        self._stopper.start()
        return self

    def stop(self) -> None:
        self._stopper.cancel()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "OpenAIServerDouble":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _next(self, request: RecordedRequest) -> tuple[str | None, str]:
        with self._lock:
            self.requests.append(request)
            fault = self._faults.popleft() if self._faults else None
            answer = self.answers[0]
            if len(self.answers) > 1:
                self.answers.popleft()
        return fault, answer

    def _echo(self, authorization: str) -> str:
        return ECHOES[self.echo_authorization](authorization) if self.echo_authorization else ""

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw
                fault, answer = double._next(RecordedRequest(self.path, dict(self.headers), body))
                echo = double._echo(self.headers.get("Authorization", ""))
                if not self.path.endswith("/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                elif fault == "slow":
                    threading.Event().wait(double.slow_s)
                    self._send(200, _completion(answer))
                elif fault == "error" and echo:
                    self._send_raw(double.error_status, f"invalid credentials {echo}".encode())
                elif fault == "error":
                    # The scripted answer goes into the error text, so a test can make it echo a secret.
                    self._send(double.error_status, {"error": {"message": f"scripted failure: {answer}"}})
                elif fault == "close":
                    self.close_connection = True
                    self.connection.shutdown(2)  # socket.SHUT_RDWR: the client sees the connection drop
                elif fault == "malformed_json":
                    self._send_raw(200, f'{{"echo": "{echo}", "choices": ['.encode())
                elif fault == "empty_choices":
                    self._send(200, {**_completion(answer), "choices": []})
                elif fault == "no_text":
                    reply = _completion(answer)
                    reply["choices"][0]["message"]["content"] = None
                    self._send(200, reply)
                else:
                    self._send(200, _completion(answer))

            def _send(self, status: int, payload: dict) -> None:
                self._send_raw(status, json.dumps(payload).encode())

            def _send_raw(self, status: int, data: bytes) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped waiting (a timeout test): nobody to answer

        return Handler


def _completion(text: str) -> dict:
    return {
        "id": "chatcmpl-double",
        "object": "chat.completion",
        "model": "double",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": len(text.split()), "total_tokens": 0},
    }
