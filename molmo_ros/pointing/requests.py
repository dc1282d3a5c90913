"""What a request asks, and everything about it that can be refused at once, before it waits in the queue."""

from dataclasses import dataclass, replace

from molmo_ros.backends.errors import SEVERAL_IMAGES_HINT
from molmo_ros.backends.settings import backend_setting
from molmo_ros.depth.camera import CameraModel
from molmo_ros.depth.errors import DepthError
from molmo_ros.depth.pairing import DepthFrame
from molmo_ros.pointing.errors import ErrorCode, PointingError
from molmo_ros.pointing.frames import Frame, LatestFrames
from molmo_ros.pointing.settings import ALL_CAMERAS, DEFAULT_CAMERA, PointingSettings
from molmo_ros.settings_fields import SettingRef

MAX_QUERY_LENGTH = SettingRef(PointingSettings, "max_query_length")


@dataclass(frozen=True)
class PointingRequest:
    """A question about the newest frame(s) of the named camera(s), or about the request's own image.

    `query` is what to point at (`ask` False) or the whole prompt (`ask` True), as the user gave it.
    Once accepted, `cameras` lists the cameras it is about (empty for a request's own image).
    """

    query: str
    camera: str = DEFAULT_CAMERA  # or ALL_CAMERAS
    cameras: tuple[str, ...] = ()  # several cameras in one prompt; overrides camera when given
    image: Frame | None = None  # an image sent with the request replaces the camera frames
    depth: DepthFrame | None = None  # depth registered to `image`
    camera_model: CameraModel | DepthError | None = None  # of `image`; the error if unusable
    require_depth: bool = False  # or the require_depth setting
    ask: bool = False


def checked_request(
    request: PointingRequest, settings: PointingSettings, frames: LatestFrames, max_images: int, backend: str
) -> PointingRequest:
    """The request with its cameras resolved, or PointingError for what can be refused before it waits:
    a bad query, unknown cameras, more images than the backend takes, a camera with no frame yet."""
    validate_query(request.query, settings.max_query_length, "prompt" if request.ask else "query")
    if request.image is not None:
        return request
    cameras = requested_cameras(request, settings)
    if request.ask and len(cameras) > 1:
        raise PointingError(
            ErrorCode.UNSUPPORTED, "Ask answers about one frame: name one camera, or leave camera empty"
        )
    if len(cameras) > max_images:
        raise PointingError(
            ErrorCode.UNSUPPORTED,
            f"this request needs {len(cameras)} images in one prompt, but the {backend} backend takes "
            f"{max_images}; {SEVERAL_IMAGES_HINT}",
            [backend_setting("backend")],
        )
    for camera in cameras:
        if frames.get(camera) is None:
            raise PointingError(ErrorCode.NO_FRAME, f"no frame received yet from camera {camera!r}")
    return replace(request, camera=DEFAULT_CAMERA, cameras=cameras)


def requested_cameras(request: PointingRequest, settings: PointingSettings) -> tuple[str, ...]:
    """The one resolution of a request's camera choice: `cameras`, else every camera for ALL_CAMERAS,
    else the named camera, else the default one."""
    configured = settings.cameras
    if request.cameras:
        names = tuple(request.cameras)
    elif request.camera == ALL_CAMERAS:
        names = configured
    elif request.camera == DEFAULT_CAMERA:
        names = (settings.camera_for_default,)
    else:
        names = (request.camera,)
    unknown = [name for name in names if name not in configured]
    if unknown:
        raise PointingError(
            ErrorCode.UNKNOWN_CAMERA,
            f"unknown camera {unknown[0]!r}; configured cameras: {', '.join(configured)}",
        )
    if len(set(names)) != len(names):
        raise PointingError(ErrorCode.UNKNOWN_CAMERA, f"a camera is named twice: {list(names)}")
    return names


def validate_query(query: str, max_length: int, what: str = "query") -> str:
    """The query with surrounding blanks removed; raises INVALID_QUERY with the reason."""
    stripped = query.strip()
    if not stripped:
        example = "e.g. 'red mug'" if what == "query" else "e.g. 'Describe this image.'"
        raise PointingError(ErrorCode.INVALID_QUERY, f"the {what} is empty; say what you want, {example}")
    if len(stripped) > max_length:
        raise PointingError(
            ErrorCode.INVALID_QUERY,
            f"the {what} is {len(stripped)} characters long; the limit is {max_length}",
            [MAX_QUERY_LENGTH],
        )
    bad = [ch for ch in stripped if not ch.isprintable() or "\ud800" <= ch <= "\udfff"]
    if bad:
        raise PointingError(
            ErrorCode.INVALID_QUERY,
            f"the {what} is not plain text: it contains control or invalid characters "
            f"{sorted(set(map(repr, bad)))}",
        )
    return stripped
