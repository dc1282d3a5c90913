"""The throttled error log: one line per kind per interval, and honest counts of what it held back."""

import pytest

from molmo_ros.nodes import throttled_log
from molmo_ros.nodes.throttled_log import ThrottledErrorLog
from molmo_ros.pointing.errors import ErrorCode, PointingError


class RecordingLogger:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def warning(self, line: str) -> None:
        self.lines.append(line)


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(throttled_log.time, "monotonic", lambda: now[0])
    return now


def test_a_burst_is_one_line_and_the_count_comes_with_the_true_time_since(clock):
    logger = RecordingLogger()
    log = ThrottledErrorLog(logger, interval_s=5.0)
    busy = PointingError(ErrorCode.BUSY, "busy: 4 requests are already waiting")
    for _ in range(85):  # a burst within one second
        log(busy)
        clock[0] += 0.01
    assert logger.lines == ["BUSY: busy: 4 requests are already waiting"]

    clock[0] = 1025.0  # the next BUSY comes 25 s after the first line, not 5
    log(busy)
    assert logger.lines[-1] == (
        "BUSY: busy: 4 requests are already waiting (84 more like this in the 25 s since the last such line)"
    )


def test_each_kind_has_its_own_interval(clock):
    logger = RecordingLogger()
    log = ThrottledErrorLog(logger, interval_s=5.0)
    log(PointingError(ErrorCode.BUSY, "busy"))
    log(PointingError(ErrorCode.NO_FRAME, "no frame"))
    log(PointingError(ErrorCode.BUSY, "busy"))
    assert logger.lines == ["BUSY: busy", "NO_FRAME: no frame"]
    clock[0] += 5.0
    log(PointingError(ErrorCode.BUSY, "busy"))
    assert logger.lines[-1] == "BUSY: busy (1 more like this in the 5 s since the last such line)"
