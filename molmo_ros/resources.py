"""Where the package's shared files (config, samples, launch) are, installed or in a source checkout."""

import os
import sys
from pathlib import Path

PACKAGE = "molmo_ros"


def share_dir() -> Path:
    """The package's share directory.

    `ament_index_python` only reads AMENT_PREFIX_PATH, which nothing sets in a plain venv, so the venv
    prefix and the source checkout are tried after it.
    """
    candidates = [
        Path(prefix) / "share" / PACKAGE
        for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)
        if prefix
    ]
    candidates += [Path(sys.prefix) / "share" / PACKAGE, Path(__file__).resolve().parent.parent]
    for candidate in candidates:
        if (candidate / "config" / "pointer.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"cannot find the {PACKAGE} share directory; looked in {', '.join(map(str, candidates))}"
    )
