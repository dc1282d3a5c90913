"""Settings dataclass fields that carry their own description and bounds.

Each setting is written once, as a dataclass field made with `setting()`: its default, what it means and
its valid range live there. The ROS node derives its parameter declarations from these fields, the CLI its
defaults, and a test checks that `config/pointer.yaml` agrees with them, so no default is repeated.
"""

from collections.abc import Callable, Sequence
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


@dataclass(frozen=True)
class SettingRef:
    """A setting that an error message is about.

    Lower layers never spell a ROS parameter or a command-line option: their errors carry these
    references, and each edge names them its own way (the node `engine.device`, `molmo-point`
    `--device`), see `worded`."""

    settings_class: type
    field_name: str
    scope: str = ""  # the owner of a per-instance setting: the camera of a cameras.<name>.* setting

    def __post_init__(self) -> None:
        if self.field_name not in {item.name for item in fields(self.settings_class) if _info(item)}:
            raise TypeError(f"{self.settings_class.__name__} has no setting {self.field_name!r}")


class RefersToSettings(Exception):
    """An error whose message is about some settings; the edge adds their public names (`worded`)."""

    def __init__(self, message: str, settings: Sequence[SettingRef] = ()) -> None:
        super().__init__(message)
        self.settings = tuple(settings)


class SettingValueError(RefersToSettings, ValueError):
    """A setting out of its range or at odds with another; the settings it names are references."""


def setting_error(settings: object, message: str, *field_names: str) -> SettingValueError:
    """A SettingValueError about fields of `settings` (scoped to its `name`, for per-camera settings)."""
    scope = getattr(settings, "name", "")
    return SettingValueError(
        message,
        [
            SettingRef(type(settings), field_name, scope if isinstance(scope, str) else "")
            for field_name in field_names
        ],
    )


def worded(error: BaseException, name_of: Callable[[SettingRef], str | None], kind: str) -> str:
    """The error's message, followed by the public names of the settings it is about, e.g.
    "... (parameter engine.device)"; settings that `name_of` cannot name (None) are left out."""
    return with_setting_names(str(error), getattr(error, "settings", ()), name_of, kind)


def with_setting_names(
    message: str, refs: Sequence[SettingRef], name_of: Callable[[SettingRef], str | None], kind: str
) -> str:
    """`message`, followed by the public names of the settings `refs` (see `worded`)."""
    names = [name for name in dict.fromkeys(name_of(ref) for ref in refs) if name]
    return f"{message} ({kind} {', '.join(names)})" if names else message


def check_setting_bounds(settings: object) -> None:
    """Raises SettingValueError (a ValueError) naming the first field outside its range or choices (call
    from __post_init__)."""
    for item in fields(settings):
        info = _info(item)
        if info is None:
            continue
        value = getattr(settings, item.name)
        name = info.parameter or item.name
        if info.choices and value not in info.choices:
            raise setting_error(
                settings,
                f"the {name} setting must be one of {', '.join(info.choices)}, not {value!r}",
                item.name,
            )
        if info.minimum is not None and value < info.minimum:
            raise setting_error(
                settings, f"the {name} setting must be at least {info.minimum:g}, not {value!r}", item.name
            )
        if info.maximum is not None and value > info.maximum:
            raise setting_error(
                settings, f"the {name} setting must be at most {info.maximum:g}, not {value!r}", item.name
            )


def _info(item: Field) -> SettingInfo | None:
    return item.metadata.get("setting")
