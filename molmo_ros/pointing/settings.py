"""How requests are checked and answered, and what each camera delivers: the node's parameters, each
default written once (see `molmo_ros.settings_fields`)."""

from dataclasses import dataclass, field, fields

from molmo_ros.depth.errors import DepthError
from molmo_ros.depth.images import MILLIMETRES
from molmo_ros.depth.transforms import RigidTransform
from molmo_ros.prompts import POINT_ALL_TEMPLATE, POINT_TEMPLATE, QUERY_PLACEHOLDER, make_point_prompt
from molmo_ros.settings_fields import check_setting_bounds, setting, setting_error

DEFAULT_CAMERA = ""  # a request naming this camera (none) asks about the default camera
ALL_CAMERAS = "*"  # a request naming this camera asks about the newest frame of every camera at once
# The transports image_transport appends to an image topic's name.
TRANSPORT_SUFFIXES = ("compressed", "compressedDepth", "theora", "zstd")
_POSE = ("pose_translation", "pose_rotation")  # a camera's static pose, besides its parent frame


@dataclass(frozen=True)
class PointingSettings:
    """Checked on construction and on every `replace`, so no caller can hold inconsistent settings."""

    cameras: tuple[str, ...] = setting(
        ["camera"],
        "Names of the cameras to listen to; each has its cameras.<name>.* parameters.",
        parameter="camera_names",
    )
    default_camera: str = setting(
        "", "Camera used when a request names none; empty means the first of camera_names."
    )
    prompt_template: str = setting(
        POINT_TEMPLATE,
        f"Prompt sent to the model; {QUERY_PLACEHOLDER} is replaced by the query. '{POINT_TEMPLATE}' points "
        f"at one thing; '{POINT_ALL_TEMPLATE}' points at every one.",
        runtime=True,
    )
    max_query_length: int = setting(
        200, "Longest accepted query or prompt, in characters.", minimum=1, maximum=2000, runtime=True
    )
    max_frame_age_s: float = setting(
        2.0,
        "Refuse frames older than this many seconds when the model starts, and frames stamped further "
        "ahead of the node's clock (0 disables both checks).",
        minimum=0.0,
        maximum=3600.0,
        runtime=True,
        parameter="max_frame_age",
    )
    queue_size: int = setting(
        4, "Requests that may wait while the model is busy; more are answered 'busy'.", minimum=1, maximum=64
    )
    require_depth: bool = setting(
        False, "Answer NO_DEPTH instead of 2D-only points when no usable depth is found.", runtime=True
    )
    target_frame: str = setting(
        "",
        "Frame (e.g. base_link) to express the 3D points, normals, approach poses and markers in, at each "
        "colour frame's stamp; empty keeps each camera's optical frame. Transforms come from a camera's "
        "static pose (cameras.<name>.pose_*) or from tf2; one not found in time is the error NO_TRANSFORM.",
    )
    transform_timeout: float = setting(
        0.2,
        "Seconds to wait for a transform to target_frame at a frame's stamp (tf2 may lag the camera).",
        minimum=0.0,
        maximum=10.0,
    )

    def __post_init__(self) -> None:
        check_setting_bounds(self)
        if not self.cameras or len(set(self.cameras)) != len(self.cameras) or not all(self.cameras):
            raise setting_error(
                self, f"the camera names must be distinct and non-empty: {list(self.cameras)!r}", "cameras"
            )
        if ALL_CAMERAS in self.cameras:
            raise setting_error(
                self, f"{ALL_CAMERAS!r} cannot be a camera name: it means every camera", "cameras"
            )
        if self.default_camera and self.default_camera not in self.cameras:
            raise setting_error(
                self,
                f"the default camera {self.default_camera!r} is not one of {list(self.cameras)}",
                "default_camera",
            )
        make_point_prompt(self.prompt_template, "check")  # a template without {query} is refused

    @property
    def camera_for_default(self) -> str:
        return self.default_camera or self.cameras[0]


@dataclass(frozen=True)
class CameraSettings:
    """What one camera publishes (parameters cameras.<name>.*)."""

    topic: str = setting("", "Image topic; empty means /<name>/image_raw (with /compressed when compressed).")
    compressed: bool = setting(
        False, "The image topic carries sensor_msgs/CompressedImage (decoded with OpenCV)."
    )
    depth_topic: str = setting(
        "",
        "Depth image registered to this camera's colour image (16UC1/mono16 in mm, 32FC1 in m), e.g. a "
        "RealSense aligned_depth_to_color/image_raw; empty means no depth: points stay 2D.",
    )
    camera_info_topic: str = setting(
        "", "sensor_msgs/CameraInfo of the colour image; empty means camera_info beside the image topic."
    )
    depth_scale: float = setting(
        MILLIMETRES,
        "Metres per unit of integer depth (16UC1/mono16): 0.001 for millimetres, the ROS convention; "
        "32FC1 depth is in metres whatever this says.",
        minimum=1e-6,
        maximum=1000.0,
    )
    depth_registered: bool = setting(
        False,
        "Lift points from depth frames whose frame_id differs from the colour frame's (declare them "
        "registered to the colour image anyway).",
    )
    pose_parent_frame: str = setting(
        "",
        "A fixed camera's static pose: the frame its pose is given in (it must be target_frame); empty "
        "means no static pose (tf2 gives the camera's transform, if target_frame is set).",
    )
    pose_translation: tuple[float, ...] = setting(
        [0.0, 0.0, 0.0],
        "Static pose: position x, y, z in metres of this camera's optical frame (the frame_id of its "
        "images) in pose_parent_frame.",
    )
    pose_rotation: tuple[float, ...] = setting(
        [0.0, 0.0, 0.0, 1.0],
        "Static pose: orientation of this camera's optical frame in pose_parent_frame, as a unit "
        "quaternion x, y, z, w.",
    )
    name: str = field(default="", compare=True)

    def __post_init__(self) -> None:
        check_setting_bounds(self)
        for name in _POSE:  # frozen: written once here, as tuples of floats whatever the caller gave
            object.__setattr__(self, name, tuple(float(value) for value in getattr(self, name)))
        if self.pose_parent_frame:
            try:
                RigidTransform.from_quaternion(self.pose_translation, self.pose_rotation)
            except DepthError as error:
                raise setting_error(
                    self, f"camera {self.name!r}: static pose: {error}", "pose_translation", "pose_rotation"
                ) from error
        elif any(getattr(self, item.name) != item.default for item in fields(self) if item.name in _POSE):
            raise setting_error(
                self,
                f"camera {self.name!r} has a static pose translation or rotation but no parent frame for "
                "them: name the frame they are in",
                "pose_parent_frame",
            )

    def static_pose(self) -> RigidTransform | None:
        """This camera's optical frame in pose_parent_frame, or None without a static pose."""
        if not self.pose_parent_frame:
            return None
        return RigidTransform.from_quaternion(self.pose_translation, self.pose_rotation)

    def image_topic(self) -> str:
        return self.topic or f"/{self.name}/image_raw" + ("/compressed" if self.compressed else "")

    def info_topic(self) -> str:
        return self.camera_info_topic or camera_info_topic_beside(self.image_topic())


def camera_info_topic_beside(image_topic: str) -> str:
    """The CameraInfo topic of an image topic, as image_transport names it: camera_info in the same namespace.

    /camera/image_raw -> /camera/camera_info; a transport suffix (/camera/image_raw/compressed) is skipped.
    """
    parts = image_topic.rstrip("/").split("/")
    if len(parts) > 1 and parts[-1] in TRANSPORT_SUFFIXES:
        parts = parts[:-1]
    return "/".join([*parts[:-1], "camera_info"])
