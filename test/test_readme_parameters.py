"""The README's parameter tables say what the settings say: every parameter, its default, range and
meaning, as `tools/parameter_tables.py` writes them from the settings dataclasses."""

import subprocess
import sys

from conftest import REPO_ROOT


def test_readme_parameter_tables_equal_the_settings():
    completed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "parameter_tables.py"), "--check"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_the_check_notices_a_changed_default(tmp_path, monkeypatch):
    """A README whose table says another default fails the check (the check compares, it does not pass
    whatever it is given)."""
    sys.path.insert(0, str(REPO_ROOT / "tools"))
    try:
        import parameter_tables
    finally:
        sys.path.remove(str(REPO_ROOT / "tools"))
    readme = tmp_path / "README.md"
    text = (REPO_ROOT / "README.md").read_text()
    readme.write_text(text.replace("| `queue_size` | `4` |", "| `queue_size` | `5` |"))
    monkeypatch.setattr(parameter_tables, "README", readme)
    assert parameter_tables.main(["--check"]) == 1
    assert parameter_tables.main([]) == 0 and readme.read_text() == text
