"""tools/ensure_colcon.sh with stand-ins for apt-get and dpkg-query: each way it can fail gives its reason.

The real install is exercised by tools/run_tests.sh before test_colcon_build.py; these tests only put
test doubles (small shell scripts) first on PATH, so nothing is installed and no network is used.
"""

import os
import shutil
import stat
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "tools" / "ensure_colcon.sh"
# What the script runs besides apt-get, dpkg-query, colcon, id and sudo (which the doubles play).
REAL_TOOLS = ("bash", "env", "grep", "mktemp", "rm", "tail", "timeout", "sleep", "cat")


def tool_dir(tmp_path: Path, **doubles: str) -> Path:
    """A PATH directory with the real tools above and a double script for each keyword (name: body)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in REAL_TOOLS:
        (bin_dir / name).symlink_to(shutil.which(name))
    doubles = {"id": "echo 0", **doubles}  # root, as in CI, whoever runs the test
    for name, body in doubles.items():
        path = bin_dir / name.replace("_", "-")
        path.write_text(f'#!{shutil.which("bash")}\necho "${{0##*/}} $*" >> {tmp_path / "calls"}\n{body}\n')
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return bin_dir


def run_script(bin_dir: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SCRIPT)],
        env={"PATH": str(bin_dir), "HOME": os.environ.get("HOME", "/root"), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def apt_get_calls(tmp_path: Path) -> list[list[str]]:
    """The arguments of each apt-get call the doubles recorded."""
    log = tmp_path / "calls"
    lines = log.read_text().splitlines() if log.exists() else []
    return [line.split()[1:] for line in lines if line.startswith("apt-get ")]


NOT_INSTALLED = "exit 1"  # dpkg-query: no such package installed
INSTALLED = 'for package in "${@:3}"; do echo "install ok installed"; done'


def test_installed_packages_cost_one_query_and_no_apt_get(tmp_path):
    bin_dir = tool_dir(tmp_path, dpkg_query=INSTALLED, colcon="exit 0", apt_get="exit 0")
    result = run_script(bin_dir)
    assert result.returncode == 0, result.stderr
    assert apt_get_calls(tmp_path) == []


def test_an_apt_error_is_reported_after_one_refresh_of_the_package_lists(tmp_path):
    apt_get = (
        'case " $* " in *" update "*) exit 0 ;; esac; echo "E: Unable to locate package colcon"; exit 100'
    )
    bin_dir = tool_dir(tmp_path, dpkg_query=NOT_INSTALLED, apt_get=apt_get)
    result = run_script(bin_dir)
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert "apt-get install colcon" in last_line and "(exit 100)" in last_line
    assert last_line.endswith("E: Unable to locate package colcon")
    steps = [next(arg for arg in call if arg in ("install", "update")) for call in apt_get_calls(tmp_path)]
    assert steps == ["install", "update", "install"]


def test_a_hung_apt_get_is_stopped_at_the_time_bound(tmp_path):
    bin_dir = tool_dir(tmp_path, dpkg_query=NOT_INSTALLED, apt_get="exec sleep 30")
    result = run_script(bin_dir, MOLMO_ROS_APT_TIMEOUT_S="1")
    assert result.returncode == 1
    assert "took longer than 1 s (MOLMO_ROS_APT_TIMEOUT_S)" in result.stderr.strip().splitlines()[-1]


def test_without_apt_get_it_names_the_packages_to_install(tmp_path):
    bin_dir = tool_dir(tmp_path, dpkg_query=NOT_INSTALLED)
    result = run_script(bin_dir)
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert "no apt-get" in last_line and "python3-colcon-ros" in last_line


def test_without_root_or_sudo_it_says_so_and_installs_nothing(tmp_path):
    bin_dir = tool_dir(tmp_path, dpkg_query=NOT_INSTALLED, apt_get="exit 0", id="echo 1000")
    result = run_script(bin_dir)
    assert result.returncode == 1 and "needs root" in result.stderr.strip().splitlines()[-1]
    assert apt_get_calls(tmp_path) == []


def test_without_root_passwordless_sudo_installs_them(tmp_path):
    """As on GitHub's hosted runners: a user whose sudo asks no password gets apt-get run through it, with
    DEBIAN_FRONTEND still set past sudo's reset of the environment."""
    installed = tmp_path / "installed"
    bin_dir = tool_dir(
        tmp_path,
        id="echo 1000",
        # sudo resets the environment; the double keeps PATH, where real sudo may put its secure_path (on
        # Debian it holds env and apt-get too)
        sudo='[[ $1 == -n ]] || exit 1; shift; unset DEBIAN_FRONTEND; "$@"',
        apt_get=f'echo "$DEBIAN_FRONTEND" >> {tmp_path / "frontend"}; : > {installed}',
        dpkg_query=f"[[ -e {installed} ]] || exit 1; {INSTALLED}",
        colcon="exit 0",
    )
    result = run_script(bin_dir)
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    sudo_calls = [call for call in calls if call.startswith("sudo ")]
    assert sudo_calls[0] == "sudo -n true", "sudo is asked first whether it needs a password"
    assert [call.split()[1:4] for call in sudo_calls[1:]] == [["-n", "env", "DEBIAN_FRONTEND=noninteractive"]]
    steps = [next(arg for arg in call if arg in ("install", "update")) for call in apt_get_calls(tmp_path)]
    assert steps == ["install"]
    assert (tmp_path / "frontend").read_text().split() == ["noninteractive"]


def test_without_root_a_sudo_that_asks_a_password_is_not_used(tmp_path):
    bin_dir = tool_dir(
        tmp_path,
        dpkg_query=NOT_INSTALLED,
        apt_get="exit 0",
        id="echo 1000",
        sudo='echo "sudo: a password is required" >&2; exit 1',
    )
    result = run_script(bin_dir)
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert "needs root or passwordless sudo" in last_line and "sudo apt-get install colcon" in last_line
    assert apt_get_calls(tmp_path) == []
