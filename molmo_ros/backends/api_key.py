"""The openai backend's API key: read from the environment, checked, and kept out of every message.

A key file saved with Windows line endings leaves a carriage return at the end of the key, and a key
copied from a web page may bring a non-breaking space or a typographic quote. An HTTP header can carry
neither: httpx then fails deep inside (printing the whole header, key included) or crashes with a
UnicodeEncodeError. So surrounding whitespace is stripped, and a key that still holds a control or
non-ASCII character is refused before anything is sent, naming the variable and the offending
characters (never part of a real key, which is printable ASCII) but never the key.

A server may still echo the key back, in an error body or a repr of the header, escaped, percent- or
base64-encoded; `KeyRedactor` knows each of these forms and replaces them in every message.
Torch-free and ROS-free, so the node and the CLI check the key before loading anything.
"""

import base64
import html
import json
import os
import re
import unicodedata
from urllib.parse import quote, quote_plus

from molmo_ros.backends.errors import InvalidSettingError
from molmo_ros.backends.settings import BackendSettings, backend_setting

REDACTED = "[API key]"
# A base64 run this short matches ordinary text by chance; the raw key and its escaped forms are always
# redacted, whatever their length.
MIN_BASE64_CORE = 8
_SHOWN_CHARACTERS = 3  # the offending characters named in the refusal; the count says if there are more


def read_api_key(settings: BackendSettings) -> str:
    """The key in the variable `settings.api_key_env` names, surrounding whitespace stripped ("" if unset).

    InvalidSettingError (a ValueError) naming the variable when the key holds a character no HTTP
    header can carry."""
    variable = settings.api_key_env
    key = os.environ.get(variable, "").strip()
    unusable = sorted({char for char in key if not _header_safe(char)})
    if unusable:
        named = ", ".join(_describe(char) for char in unusable[:_SHOWN_CHARACTERS])
        more = f" and {len(unusable) - _SHOWN_CHARACTERS} more" if len(unusable) > _SHOWN_CHARACTERS else ""
        raise InvalidSettingError(
            f"the API key in the environment variable {variable} (named by the api_key_env setting) holds "
            f"characters an HTTP header cannot carry ({named}{more}) after its surrounding whitespace is "
            f"removed; set {variable} to the key alone, in plain ASCII on one line (the key is not shown)",
            [backend_setting("api_key_env")],
        )
    return key


def check_api_key(settings: BackendSettings) -> None:
    """Refuses an unusable key when the openai backend is chosen: only it sends one, and a node should
    fail at configure (a CLI at start) rather than on its first request."""
    if settings.backend == "openai":
        read_api_key(settings)


class KeyRedactor:
    """Replaces every form of one key in a text: raw, escaped, percent-encoded and base64-encoded."""

    def __init__(self, key: str) -> None:
        forms = _key_forms(key) if key else set()
        # Longest first, so a form is never cut by a shorter one it contains. Case matters everywhere but
        # in a percent escape's hex digits (%2f and %2F are the same byte): a key "EMPTY" must not hide
        # the word "empty".
        alternatives = "|".join(_pattern_of(form) for form in sorted(forms, key=len, reverse=True))
        self._pattern = re.compile(alternatives) if forms else None

    def __call__(self, text: str) -> str:
        return self._pattern.sub(REDACTED, text) if self._pattern else text


def _header_safe(char: str) -> bool:
    """Printable ASCII: what HTTP header values may hold (RFC 9110 field-vchar plus space)."""
    return " " <= char <= "~"


def _describe(char: str) -> str:
    return f"U+{ord(char):04X} {unicodedata.name(char, 'control character')}"


def _key_forms(key: str) -> set[str]:
    data = key.encode("utf-8")
    forms = {
        key,
        repr(key)[1:-1],  # str escapes: \r, \x.., \u....
        repr(data)[2:-1],  # bytes escapes, as in "Illegal header value b'Bearer ...\r'"
        "".join(f"\\x{byte:02x}" for byte in data),  # every byte escaped
        key.encode("unicode_escape").decode("ascii"),
        json.dumps(key)[1:-1],
        json.dumps(key, ensure_ascii=False)[1:-1],
        json.dumps(key)[1:-1].replace("/", "\\/"),  # JSON writers that escape slashes (PHP, Java, proxies)
        html.escape(key),
        quote(key, safe=""),
        quote(key),
        quote_plus(key, safe=""),
    }
    forms |= _base64_cores(data)
    return {form for form in forms if form}


def _base64_cores(data: bytes) -> set[str]:
    """The base64 characters that depend on the key alone, for each of the three byte offsets the key
    can have inside a larger encoded text (a header value, a Basic-auth pair), standard and URL-safe."""
    cores = set()
    for offset in range(3):
        padded = bytes(offset) + data
        whole_groups = len(padded) // 3
        encoded = base64.b64encode(padded[: whole_groups * 3]).decode("ascii")
        core = encoded[4:] if offset else encoded  # the first group mixes in the bytes before the key
        if len(core) >= MIN_BASE64_CORE:
            cores |= {core, core.replace("+", "-").replace("/", "_")}
    return cores


def _pattern_of(form: str) -> str:
    """The regular expression of one form: literal, with percent escapes' hex digits in either case."""
    pieces = re.split(r"(%[0-9A-Fa-f]{2})", form)
    return "".join(
        f"%(?i:{re.escape(piece[1:])})" if re.fullmatch(r"%[0-9A-Fa-f]{2}", piece) else re.escape(piece)
        for piece in pieces
    )
