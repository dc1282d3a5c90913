"""ROS parameters derived from the settings dataclasses: one declaration per `setting()` field.

The dataclasses hold every default, description and range once (`molmo_ros.settings_fields`); this
module only turns them into parameter declarations with descriptors, and parameter values back into
settings. Float parameters also take integers ("ros2 param set ... max_frame_age 5" is what a person
types): they are declared with dynamic typing and converted to floats before anything checks them.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.node import Node
from rclpy.parameter import Parameter

from molmo_ros.backends.settings import BackendSettings
from molmo_ros.depth.settings import DepthSettings
from molmo_ros.pointing.settings import CameraSettings, PointingSettings
from molmo_ros.settings_fields import (
    SettingRef,
    SettingSpec,
    check_setting_bounds,
    setting,
    setting_specs,
    with_setting_names,
    worded,
)

SettingsT = TypeVar("SettingsT")
QOS_CHOICES = ("sensor_data", "reliable")


@dataclass(frozen=True)
class NodeSettings:
    """What only the ROS node needs."""

    qos: str = setting(
        "sensor_data",
        "QoS of the camera, depth and CameraInfo subscriptions: sensor_data (best effort) or reliable. "
        "Depth is always 1: only the newest frame matters.",
        choices=QOS_CHOICES,
    )
    autostart: bool = setting(
        True,
        "Configure and activate the node by itself at start (no lifecycle manager needed); false leaves "
        "it unconfigured for a lifecycle manager.",
    )

    def __post_init__(self) -> None:
        check_setting_bounds(self)


def _descriptor(spec: SettingSpec, read_only: bool) -> ParameterDescriptor:
    info = spec.info
    descriptor = ParameterDescriptor(description=info.description, read_only=read_only)
    if info.choices:
        descriptor.additional_constraints = f"one of {', '.join(info.choices)}"
    if isinstance(spec.default, bool):
        return descriptor
    if _is_float_list(spec.default):
        descriptor.dynamic_typing = True  # [0, 0, 1] (integers) is accepted and converted, as for floats
        return descriptor
    if isinstance(spec.default, float):
        descriptor.dynamic_typing = True  # an integer is accepted and converted (see to_float_parameters)
        if info.minimum is not None and info.maximum is not None:
            descriptor.floating_point_range = [
                FloatingPointRange(from_value=float(info.minimum), to_value=float(info.maximum), step=0.0)
            ]
    elif isinstance(spec.default, int) and info.minimum is not None and info.maximum is not None:
        descriptor.integer_range = [
            IntegerRange(from_value=int(info.minimum), to_value=int(info.maximum), step=1)
        ]
    return descriptor


def declare_setting_parameters(node: Node, settings_class: type, prefix: str = "") -> None:
    """Declares one parameter per setting of `settings_class` (once: again after a lifecycle cleanup is a
    no-op). Settings marked `runtime` stay writable; all others are read-only. Values are checked only
    when read (`read_settings`), so a lifecycle node can fail its configure transition with the reason."""
    for spec in setting_specs(settings_class, prefix):
        if node.has_parameter(spec.parameter):
            continue
        default = list(spec.default) if isinstance(spec.default, tuple) else spec.default
        node.declare_parameter(spec.parameter, default, _descriptor(spec, not spec.info.runtime))


def read_settings(node: Node, settings_class: type[SettingsT], prefix: str = "", **fixed: Any) -> SettingsT:
    """The settings built from the declared parameters' values; ValueError naming what is wrong.

    `fixed` fills dataclass fields that are not parameters, or replaces a parameter's value (a change
    being checked before it is applied)."""
    values = {
        spec.field_name: setting_value(spec, node.get_parameter(spec.parameter).value)
        for spec in setting_specs(settings_class, prefix)
    }
    return settings_class(**{**values, **fixed})


def setting_value(spec: SettingSpec, value: Any) -> Any:
    """A parameter value as the settings field expects it, or ValueError naming the parameter."""
    expected = type(spec.default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if _is_float_list(spec.default):
        if not isinstance(value, list | tuple) or not all(_is_number(item) for item in value):
            raise ValueError(f"parameter {spec.parameter} must be a list of numbers, not {value!r}")
        return tuple(float(item) for item in value)
    if expected is tuple:
        if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
            raise ValueError(f"parameter {spec.parameter} must be a list of strings, not {value!r}")
        return tuple(value)
    if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
        raise ValueError(f"parameter {spec.parameter} must be a {expected.__name__}, not {value!r}")
    return value


def _is_float_list(default: Any) -> bool:
    return isinstance(default, tuple) and bool(default) and all(isinstance(item, float) for item in default)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def runtime_specs(settings_class: type, prefix: str = "") -> dict[str, SettingSpec]:
    """Parameter name -> spec of the settings that may change while the node runs."""
    return {spec.parameter: spec for spec in setting_specs(settings_class, prefix) if spec.info.runtime}


def to_float_parameters(parameters: Sequence[Parameter], float_names: set[str]) -> list[Parameter]:
    """Pre-set hook: an integer given for a float parameter becomes that float (a list of integers for a
    list of floats, that list of floats)."""
    converted = []
    for parameter in parameters:
        if parameter.name in float_names and parameter.type_ == Parameter.Type.INTEGER:
            parameter = Parameter(parameter.name, Parameter.Type.DOUBLE, float(parameter.value))
        elif parameter.name in float_names and parameter.type_ == Parameter.Type.INTEGER_ARRAY:
            values = [float(value) for value in parameter.value]
            parameter = Parameter(parameter.name, Parameter.Type.DOUBLE_ARRAY, values)
        converted.append(parameter)
    return converted


def float_parameter_names(*specs_sources: tuple[type, str]) -> set[str]:
    return {
        spec.parameter
        for settings_class, prefix in specs_sources
        for spec in setting_specs(settings_class, prefix)
        if isinstance(spec.default, float) or _is_float_list(spec.default)
    }


# Every settings class whose fields are parameters, with its parameter prefix (cameras.<name>.* are
# declared at configure, once camera_names is known).
SETTINGS: tuple[tuple[type, str], ...] = (
    (NodeSettings, ""),
    (PointingSettings, ""),
    (DepthSettings, ""),
    (BackendSettings, "engine."),
)


def camera_prefix(camera: str) -> str:
    return f"cameras.{camera}."


def parameter_name(ref: SettingRef) -> str | None:
    """The ROS parameter a setting is, e.g. engine.device or cameras.front.depth_topic."""
    if ref.settings_class is CameraSettings:
        prefix = camera_prefix(ref.scope or "<name>")
    else:
        prefix = dict(SETTINGS).get(ref.settings_class)
        if prefix is None:
            return None
    return next(
        spec.parameter
        for spec in setting_specs(ref.settings_class, prefix)
        if spec.field_name == ref.field_name
    )


def with_parameter_names(error: BaseException) -> str:
    """The error's message with the parameters it is about, e.g. "... (parameter max_frame_age)"."""
    return worded(error, parameter_name, "parameter")


def said_with_parameters(message: str, refs: Sequence[SettingRef]) -> str:
    """`message` with the parameters `refs` name (see `with_parameter_names`)."""
    return with_setting_names(message, refs, parameter_name, "parameter")
