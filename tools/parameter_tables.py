"""The README's parameter tables, written from the settings dataclasses (where each default is written once).

    .venv/bin/python tools/parameter_tables.py           # rewrite the tables in README.md
    .venv/bin/python tools/parameter_tables.py --check   # exit 1 if README.md differs (a test runs this)

Each table sits between `<!-- parameters:NAME -->` and `<!-- /parameters:NAME -->` in README.md.
"""

import argparse
import json
import re
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # this source tree's settings, not an installed copy's

from molmo_ros.backends.settings import BackendSettings
from molmo_ros.depth.settings import DepthSettings
from molmo_ros.nodes.parameters import NodeSettings, camera_prefix
from molmo_ros.pointing.settings import CameraSettings, PointingSettings
from molmo_ros.settings_fields import SettingSpec, setting_specs

README = REPO_ROOT / "README.md"
# Each table: its marker name and the settings it lists, with their parameter prefix.
TABLES: dict[str, tuple[tuple[type, str], ...]] = {
    "node": ((NodeSettings, ""), (PointingSettings, "")),
    "depth": ((DepthSettings, ""),),
    "camera": ((CameraSettings, camera_prefix("<name>")),),
    "engine": ((BackendSettings, "engine."),),
}


def default_text(value: object) -> str:
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, tuple):
        return f"`{json.dumps(list(value))}`"
    if value == "":
        return "empty"
    return f"`{value}`"


def bounds_text(spec: SettingSpec) -> str:
    info = spec.info
    if info.choices:
        return ", ".join(f"`{choice}`" for choice in info.choices)
    if info.minimum is not None and info.maximum is not None:
        return f"{info.minimum:g} to {info.maximum:g}"
    return ""


def table(sources: tuple[tuple[type, str], ...]) -> str:
    rows = [
        "| parameter | default | values | changes at run time | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for settings_class, prefix in sources:
        for spec in setting_specs(settings_class, prefix):
            runtime = "yes" if spec.info.runtime else "no"
            description = spec.info.description.replace("|", "\\|")
            rows.append(
                f"| `{spec.parameter}` | {default_text(spec.default)} | {bounds_text(spec)} | {runtime} | "
                f"{description} |"
            )
    return "\n".join(rows)


def with_tables(text: str) -> str:
    for name, sources in TABLES.items():
        pattern = re.compile(
            rf"(<!-- parameters:{name} -->\n)(?:.*?\n)?(<!-- /parameters:{name} -->)", re.DOTALL
        )
        if not pattern.search(text):
            raise SystemExit(
                f"README.md has no <!-- parameters:{name} --> ... <!-- /parameters:{name} --> block"
            )
        rows = table(sources)
        text = pattern.sub(lambda match, rows=rows: f"{match.group(1)}{rows}\n{match.group(2)}", text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that README.md is up to date")
    args = parser.parse_args(argv)
    current = README.read_text()
    wanted = with_tables(current)
    if args.check:
        if current != wanted:
            print("README.md's parameter tables differ from the settings; run tools/parameter_tables.py")
            return 1
        return 0
    README.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
