"""Command-line options made from settings dataclasses, so that molmo-point's defaults, bounds and
descriptions are the node's parameters' (each written once, in the settings field), and the names that
errors about settings are worded with (`option_name`).
"""

import argparse

from molmo_ros.backends.settings import BackendSettings
from molmo_ros.depth.settings import DepthSettings
from molmo_ros.settings_fields import SettingRef, setting_specs, worded

# The settings molmo-point takes as options, and the fields it leaves out: depth from a file has no stamp
# to pair by, so max_depth_skew means nothing here.
OPTION_SETTINGS: dict[type, frozenset[str]] = {
    BackendSettings: frozenset(),
    DepthSettings: frozenset({"max_depth_skew"}),
}


def add_setting_options(group: argparse._ArgumentGroup, settings_class: type) -> None:
    """One option per setting of `settings_class` (--field-name), with its default and description."""
    for spec in setting_specs(settings_class):
        if spec.field_name in OPTION_SETTINGS[settings_class]:
            continue
        group.add_argument(
            "--" + spec.field_name.replace("_", "-"),
            dest=spec.field_name,
            type=type(spec.default),
            default=spec.default,
            choices=spec.info.choices or None,
            help=f"{spec.info.description} (default: {spec.default!r})",
        )


def settings_from_options(settings_class: type, args: argparse.Namespace) -> object:
    """The settings the options give (ValueError, naming settings by reference, when they are refused)."""
    left_out = OPTION_SETTINGS[settings_class]
    return settings_class(
        **{
            spec.field_name: getattr(args, spec.field_name)
            for spec in setting_specs(settings_class)
            if spec.field_name not in left_out
        }
    )


def option_name(ref: SettingRef) -> str | None:
    """The command-line option of a setting an error is about; None for settings without one."""
    left_out = OPTION_SETTINGS.get(ref.settings_class)
    if left_out is None or ref.field_name in left_out:
        return None
    return "--" + ref.field_name.replace("_", "-")


def with_option_names(error: BaseException) -> str:
    """The error's message followed by the options it is about, e.g. "... (option --model)"."""
    return worded(error, option_name, "option")
