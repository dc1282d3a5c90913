"""The `openai` backend: any OpenAI-compatible chat-completions server, such as vLLM serving Molmo2.

One GPU server shared by a fleet batches the requests of many robots, which a local model cannot; so this
backend lets several calls run at once (the max_in_flight setting). Frames travel as base64 data URLs in one
user message (images first, then the prompt, as Molmo2's chat template orders them). The model answers in
fractions of the image it saw, so a frame downscaled before sending still gives points in the original
frame's pixels. httpx does the HTTP; this module only builds the request and reads the reply.

The API key is read from the environment variable whose NAME is the api_key_env setting (`api_key`:
stripped, refused if a header cannot carry it); it goes only into the Authorization header, and every error
this module raises has the key removed in each form a server may echo it (raw, escaped, percent, base64).
"""

import base64
import io
from collections.abc import Sequence

import httpx
import numpy as np
import PIL.Image

from molmo_ros.backends.api_key import KeyRedactor, read_api_key
from molmo_ros.backends.errors import ServerResponseError, ServerUnavailableError
from molmo_ros.backends.images import check_images
from molmo_ros.backends.interface import BackendAnswer, GenerationControl, Stage
from molmo_ros.backends.settings import BackendSettings, DefaultModel, backend_setting, chosen_model

# What `vllm serve allenai/Molmo2-8B` serves under when no --served-model-name is given.
SERVED_DEFAULT = DefaultModel(family="served Molmo", model_id="allenai/Molmo2-8B")
# Molmo2 was trained on multi-image prompts; 8 covers a robot's cameras. The server must allow as many
# (vLLM: --limit-mm-per-prompt '{"image": 8}').
MAX_IMAGES_PER_PROMPT = 8
JPEG_QUALITY = 90  # visually lossless for pointing, about a tenth of the PNG size of a camera frame
FIRST_RETRY_DELAY_S = 0.25  # doubled after each failed attempt
ERROR_BODY_CHARS = 200  # how much of a server's error reply goes into our message
CHAT_COMPLETIONS_PATH = "/chat/completions"
_MIME_TYPES = {"jpeg": "image/jpeg", "png": "image/png"}
_RETRIED_STATUS = 500  # 5xx: the server's fault, worth another try; 4xx: ours, never retried
# What to check after an HTTP error, and the setting it concerns.
_STATUS_HINTS = {
    401: ("; check the API key", "api_key_env"),
    403: ("; check the API key", "api_key_env"),
    404: ("; check the served model name", "model"),
}


class OpenAIChatBackend:
    """Sends each prompt with its images to the server at the url setting; answers its first choice's text."""

    name = "openai"
    max_images = MAX_IMAGES_PER_PROMPT

    def __init__(self, settings: BackendSettings, transport: httpx.BaseTransport | None = None) -> None:
        self.url = settings.url.rstrip("/")
        self.model_name = chosen_model(settings.model, SERVED_DEFAULT)
        self.max_concurrent_calls = settings.max_in_flight
        self._settings = settings
        api_key = read_api_key(settings)
        self._redact = KeyRedactor(api_key)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=settings.request_timeout,
            limits=httpx.Limits(max_connections=settings.max_in_flight),
            transport=transport,
        )

    @classmethod
    def load(cls, settings: BackendSettings) -> "OpenAIChatBackend":
        """Builds the client; the server is first contacted by `generate`, so a node can start before it."""
        return cls(settings)

    def generate(
        self, images: Sequence[np.ndarray], prompts: Sequence[str], control: GenerationControl | None = None
    ) -> BackendAnswer:
        control = control or GenerationControl()
        check_images(images, self.max_images, self.name)
        try:
            return self._generate(images, prompts, control)
        except (ServerUnavailableError, ServerResponseError) as error:
            # The one place every server error passes: whatever a path put into it, the key leaves here.
            raise type(error)(self._redact(str(error)), error.settings) from None

    def _generate(
        self, images: Sequence[np.ndarray], prompts: Sequence[str], control: GenerationControl
    ) -> BackendAnswer:
        # The image work shared by every prompt: each frame is encoded once.
        image_parts = [{"type": "image_url", "image_url": {"url": self._data_url(image)}} for image in images]
        texts = []
        for prompt in prompts:
            control.raise_if_cancelled()
            control.report(Stage.VISION)
            reply = self._post(
                {
                    "model": self.model_name,
                    "messages": [
                        {"role": "user", "content": [*image_parts, {"type": "text", "text": prompt}]}
                    ],
                    "max_tokens": self._settings.max_new_tokens,
                    "temperature": 0.0,  # greedy, as the local backends decode
                },
                control,
            )
            text, tokens = self._answer_text(reply)
            control.report(Stage.DECODING, tokens)
            control.raise_if_cancelled()
            texts.append(text)
        return BackendAnswer(texts=texts)

    def close(self) -> None:
        self._client.close()

    def _data_url(self, image: np.ndarray) -> str:
        picture = PIL.Image.fromarray(image)
        longest = max(picture.size)
        limit = self._settings.max_image_side
        if limit and longest > limit:
            scale = limit / longest
            size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
            picture = picture.resize(size, PIL.Image.Resampling.BILINEAR, reducing_gap=2.0)
        buffer = io.BytesIO()
        image_format = self._settings.image_format
        if image_format == "jpeg":
            picture.save(buffer, format="JPEG", quality=JPEG_QUALITY)
        else:
            picture.save(buffer, format="PNG")
        encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
        return f"data:{_MIME_TYPES[image_format]};base64,{encoded}"

    def _post(self, body: dict, control: GenerationControl) -> httpx.Response:
        """The server's 2xx reply; retries connection errors and 5xx up to max_retries times.

        A cancelled call stops before its next attempt and during a backoff; an attempt already sent
        waits for the server's answer, at most request_timeout."""
        endpoint = self.url + CHAT_COMPLETIONS_PATH
        delay = FIRST_RETRY_DELAY_S
        attempts = self._settings.max_retries + 1
        for attempt in range(1, attempts + 1):
            control.raise_if_cancelled()
            last_try = attempt == attempts
            try:
                response = self._client.post(CHAT_COMPLETIONS_PATH, json=body)
            except httpx.TimeoutException as error:
                raise ServerUnavailableError(
                    f"{endpoint} did not answer within {self._settings.request_timeout:g} s "
                    f"({type(error).__name__}); raise the request_timeout setting or check the server's load",
                    [backend_setting("request_timeout")],
                ) from None
            except httpx.TransportError as error:
                if last_try:
                    raise ServerUnavailableError(
                        f"cannot reach {endpoint} after {attempts} attempt(s): "
                        f"{str(error) or type(error).__name__}; check the url setting and that "
                        "the server is running",
                        [backend_setting("url")],
                    ) from None
            else:
                if response.status_code < _RETRIED_STATUS or last_try:
                    break
            control.wait(delay)
            delay *= 2
        if response.is_success:
            return response
        retried = f" after {attempts} attempt(s)" if response.status_code >= _RETRIED_STATUS else ""
        hint, setting = _STATUS_HINTS.get(response.status_code, ("", None))
        raise ServerResponseError(
            f"{endpoint} answered HTTP {response.status_code}{retried}: {self._excerpt(response)!r}{hint}",
            [backend_setting(setting)] if setting else [],
        )

    def _answer_text(self, response: httpx.Response) -> tuple[str, int]:
        """The first choice's text and the completion token count the server reports (0 if none)."""
        endpoint = self.url + CHAT_COMPLETIONS_PATH
        try:
            reply = response.json()
        except ValueError:
            raise ServerResponseError(
                f"{endpoint} answered with malformed JSON: {self._excerpt(response)!r}"
            ) from None
        if not isinstance(reply, dict):
            raise ServerResponseError(f"{endpoint} answered JSON that is not an object")
        choices = reply.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ServerResponseError(f"{endpoint} answered with an empty choice list")
        message = choices[0].get("message") if isinstance(choices[0], dict) else None
        text = message.get("content") if isinstance(message, dict) else None
        if not isinstance(text, str) or not text:
            raise ServerResponseError(f"{endpoint} answered a choice with no text")
        usage = reply.get("usage")
        tokens = usage.get("completion_tokens", 0) if isinstance(usage, dict) else 0
        return text, tokens if isinstance(tokens, int) else 0

    def _excerpt(self, response: httpx.Response) -> str:
        """The start of a server's reply for an error message; redacted before it is cut, so a key that
        straddles the cut cannot leave a part of itself behind."""
        return self._redact(response.text)[:ERROR_BODY_CHARS]
