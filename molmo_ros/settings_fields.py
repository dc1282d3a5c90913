"""Settings dataclass fields that carry their own description and bounds.

Each setting is written once, as a dataclass field made with `setting()`: its default, what it means and
its valid range live there. The ROS node derives its parameter declarations from these fields, the CLI its
defaults, and a test checks that `config/pointer.yaml` agrees with them, so no default is repeated.
"""

from collections.abc import Sequence
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class SettingInfo:
    """What a settings field says about itself besides its name and default."""

    description: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    runtime: bool = False  # may change while the node runs
    parameter: str = ""  # ROS parameter name when it differs from the field name


def setting(
    default: Any,
    description: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    choices: Sequence[str] = (),
    runtime: bool = False,
    parameter: str = "",
) -> Any:
    """A dataclass field with its description and bounds; lists become tuples so defaults stay immutable."""
    info = SettingInfo(description, minimum, maximum, tuple(choices), runtime, parameter)
    if isinstance(default, list):
        default = tuple(default)
    return field(default=default, metadata={"setting": info})


@dataclass(frozen=True)
class SettingSpec:
    field_name: str
    parameter: str  # the name users see (ROS parameter, config key)
    default: Any
    info: SettingInfo


def setting_specs(settings_class: type, prefix: str = "") -> list[SettingSpec]:
    """The `setting()` fields of a settings dataclass, in declaration order, with their public names."""
    specs = []
    for item in fields(settings_class):
        info = _info(item)
        if info is None:
            continue
        if item.default is MISSING:
            raise TypeError(f"setting {settings_class.__name__}.{item.name} has no default")
        specs.append(SettingSpec(item.name, prefix + (info.parameter or item.name), item.default, info))
    return specs


def check_setting_bounds(settings: object) -> None:
    """Raises ValueError naming the first field outside its range or choices (call from __post_init__)."""
    for item in fields(settings):
        info = _info(item)
        if info is None:
            continue
        value = getattr(settings, item.name)
        name = info.parameter or item.name
        if info.choices and value not in info.choices:
            raise ValueError(f"{name} must be one of {', '.join(info.choices)}, not {value!r}")
        if info.minimum is not None and value < info.minimum:
            raise ValueError(f"{name} must be at least {info.minimum:g}, not {value!r}")
        if info.maximum is not None and value > info.maximum:
            raise ValueError(f"{name} must be at most {info.maximum:g}, not {value!r}")


def _info(item: Field) -> SettingInfo | None:
    return item.metadata.get("setting")
