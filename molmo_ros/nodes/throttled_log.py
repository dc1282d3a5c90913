"""Error logging that stays readable under a flood of bad requests."""

import threading
import time

from molmo_ros.nodes.parameters import with_parameter_names
from molmo_ros.pointing.errors import ErrorCode, PointingError

ERROR_LOG_INTERVAL_S = 5.0


class ThrottledErrorLog:
    """Logs each kind of error at most once per interval, with how many were held back since the last line.

    The count is said with the true time since that last line, so a burst that ends is never reported
    as if it had happened in the last few seconds when the next error comes much later.
    """

    def __init__(self, logger: object, interval_s: float = ERROR_LOG_INTERVAL_S) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._last: dict[ErrorCode, float] = {}
        self._held_back: dict[ErrorCode, int] = {}

    def __call__(self, error: PointingError) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(error.code)
            if last is not None and now - last < self._interval_s:
                self._held_back[error.code] = self._held_back.get(error.code, 0) + 1
                return
            self._last[error.code] = now
            held_back = self._held_back.pop(error.code, 0)
        suffix = (
            f" ({held_back} more like this in the {now - last:.0f} s since the last such line)"
            if held_back
            else ""
        )
        self._logger.warning(f"{error.code.name}: {with_parameter_names(error)}{suffix}")
