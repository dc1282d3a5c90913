"""The layering the README describes, enforced: import-linter checks pyproject.toml's contracts on every
test run (nodes and the CLI over pointing over the backends; each backend independent; no ROS below the
nodes)."""

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint_imports(*arguments: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    # The source tree first, so the graph is built from it and not from the installed copy.
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-logo", "--no-cache", *arguments],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_layering_contract_is_kept():
    completed = _lint_imports()
    print(completed.stdout)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "0 broken" in completed.stdout


def test_the_checker_sees_the_imports_it_judges(tmp_path):
    """A contract that the code breaks on purpose (the backends do import their errors) is reported
    broken: the contracts above are checked against a real import graph, not an empty one."""
    config = tmp_path / "broken.toml"
    config.write_text(
        "[tool.importlinter]\n"
        'root_package = "molmo_ros"\n'
        "[[tool.importlinter.contracts]]\n"
        'name = "backends without their errors"\n'
        'type = "forbidden"\n'
        'source_modules = ["molmo_ros.backends.openai_chat"]\n'
        'forbidden_modules = ["molmo_ros.backends.errors"]\n'
    )
    completed = _lint_imports("--config", str(config))
    assert completed.returncode == 1, completed.stdout + completed.stderr
    assert "molmo_ros.backends.openai_chat -> molmo_ros.backends.errors" in completed.stdout
