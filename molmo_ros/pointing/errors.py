"""Why a request failed: one code per kind of failure, each with its own message for the user.

The codes are the constants of the Point and Ask service responses and the Point action result
(a test checks the interfaces agree with this enum), so a client can branch on them and a person can
read the message.
"""

from collections.abc import Sequence
from enum import IntEnum

from molmo_ros.settings_fields import RefersToSettings, SettingRef


class ErrorCode(IntEnum):
    OK = 0
    INVALID_QUERY = 1
    UNKNOWN_CAMERA = 2
    NO_FRAME = 3
    STALE_FRAME = 4
    BAD_IMAGE = 5
    ENGINE_ERROR = 6
    BUSY = 7
    NOT_ACTIVE = 8
    FRAME_FROM_FUTURE = 9
    NO_DEPTH = 10
    UNSUPPORTED = 11
    SERVER_UNAVAILABLE = 12
    CANCELED = 13
    NO_TRANSFORM = 14


class PointingError(RefersToSettings):
    """A request that cannot be answered; the message is meant for the user and says what to do. The
    settings it is about are named by the edge (the node adds "parameter max_frame_age")."""

    def __init__(self, code: ErrorCode, message: str, settings: Sequence[SettingRef] = ()) -> None:
        super().__init__(message, settings)
        self.code = code


def unexpected_error(what: str, error: Exception, settings: Sequence[SettingRef] = ()) -> PointingError:
    """An error no answer was written for, as an ENGINE_ERROR naming its type: the request is still
    answered."""
    return PointingError(ErrorCode.ENGINE_ERROR, f"{what}: {type(error).__name__}: {error}", settings)
