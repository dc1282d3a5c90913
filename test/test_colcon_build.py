"""A real `colcon build` of this package in a temporary workspace, used from its `install/setup.bash`.

Debian ships colcon (tools/ensure_colcon.sh installs it; tools/run_tests.sh calls that) but no ROS 2, so
the workspace's underlay is the project venv: its PyPI wheels provide ament, rosidl, rclpy and the
messages, as /opt/ros/<distro> would. The underlay's environment is set here the way a distro's
setup.bash sets it (AMENT_PREFIX_PATH, LD_LIBRARY_PATH), because the venv has no `local_setup.*` for
colcon to chain; then the workspace's own `install/setup.bash` is sourced on top, as a user does.

The venv also holds a pip-installed molmo_ros, so each check proves that what ran came from the colcon
install: the Python modules, the interface libraries the node process mapped, and the share directory.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rclpy
from ros_helpers import Spinner, TestClient, assert_the_model_answers

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV = Path(sys.prefix)
PYTHON_LIB = f"python{sys.version_info.major}.{sys.version_info.minor}"  # lib/<this>/site-packages
# What goes into the package (tools/ensure_venv.sh hashes the same list), copied into the workspace so the
# build never writes into the checkout or crawls the checkout's .venv.
PACKAGE_PATHS = (
    "molmo_ros",
    "msg",
    "srv",
    "action",
    "launch",
    "config",
    "samples",
    "cmake",
    "setup.py",
    "pyproject.toml",
    "CMakeLists.txt",
    "package.xml",
)
# Measured 28 s on the 2-core machine; bounded below pytest-timeout's 300 s, which counts this fixture too.
BUILD_TIMEOUT_S = 240
# The pip-installed wheels' re-exec (ros_wheels_bootstrapper 0.1.2) rebuilds LD_LIBRARY_PATH from a set,
# in random order, which could put the venv's pip-built molmo_ros libraries before the overlay's. With
# this guard set it keeps the order setup.bash made: overlay first, as on a distro.
BOOTSTRAP_DONE = "_ROS_WHEELS_BOOTSTRAP_COMPLETE"


def colcon_or_reason() -> str:
    """colcon's path; otherwise the test fails under CI=true and is skipped elsewhere, with the reason."""
    colcon = shutil.which("colcon")
    if colcon:
        return colcon
    reason = os.environ.get("MOLMO_ROS_COLCON_PROBLEM") or (
        "colcon is not installed: run tools/ensure_colcon.sh (tools/run_tests.sh does)"
    )
    message = f"no real colcon build: {reason}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def underlay_environment() -> dict[str, str]:
    """This environment with the venv as the only ROS prefix, and nothing from a workspace or a build."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("PYTHONPATH", "AMENT_PREFIX_PATH", "CMAKE_PREFIX_PATH", "COLCON_PREFIX_PATH")
    }
    site_packages = VENV / "lib" / PYTHON_LIB / "site-packages"
    libraries = [VENV / "lib", *sorted(site_packages.glob("ros_*.libs"))]
    env.update(
        AMENT_PREFIX_PATH=str(VENV),
        CMAKE_PREFIX_PATH=str(VENV),
        LD_LIBRARY_PATH=os.pathsep.join(map(str, libraries)),
        PATH=f"{VENV / 'bin'}{os.pathsep}{env['PATH']}",
    )
    env[BOOTSTRAP_DONE] = "1"
    return env


class Workspace:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.install = root / "install"
        self.prefix = self.install / "molmo_ros"

    def sourced(self, command: list[str]) -> list[str]:
        """`command` run by bash after `source install/setup.bash`, exec'd so its PID is the program's."""
        script = f'source "{self.install}/setup.bash" && exec "$@"'
        return ["bash", "-c", script, "bash", *command]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    colcon = colcon_or_reason()
    root = tmp_path_factory.mktemp("colcon_ws")
    source = root / "src" / "molmo_ros"
    for name in PACKAGE_PATHS:
        path = REPO_ROOT / name
        if path.is_dir():
            shutil.copytree(
                path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so")
            )
        else:
            source.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, source / name)
    env = underlay_environment() | {"COLCON_HOME": str(root / "colcon_home")}  # no user defaults.yaml
    command = [
        colcon,
        "build",
        "--packages-select",
        "molmo_ros",
        "--cmake-args",
        f"-DPython3_EXECUTABLE={VENV / 'bin' / 'python'}",
    ]
    result = subprocess.run(
        command, cwd=root, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S
    )
    assert result.returncode == 0, f"colcon build failed:\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    return Workspace(root)


PROBE = """
import json
import rclpy
from ament_index_python.packages import get_package_prefix, get_package_share_directory
import molmo_ros, molmo_ros.nodes.pointer, molmo_ros.srv
from molmo_ros.srv import Point

rclpy.init()
node = rclpy.create_node("colcon_probe")
node.create_client(Point, "point")  # loads the interface's typesupport libraries
with open("/proc/self/maps") as maps:
    mapped = sorted({line.split()[-1] for line in maps if "molmo_ros" in line})
print(json.dumps({
    "modules": [molmo_ros.__file__, molmo_ros.nodes.pointer.__file__, molmo_ros.srv.__file__],
    "prefix": get_package_prefix("molmo_ros"),
    "share": get_package_share_directory("molmo_ros"),
    "mapped": mapped,
    "busy": Point.Response.BUSY,
}))
rclpy.shutdown()
"""


def test_setup_bash_gives_the_installed_modules_interfaces_launch_file_and_config(workspace):
    result = subprocess.run(
        workspace.sourced([str(VENV / "bin" / "python"), "-c", PROBE]),
        cwd=workspace.root,
        env=underlay_environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    site_packages = workspace.prefix / "lib" / PYTHON_LIB
    for module in found["modules"]:
        assert Path(module).is_relative_to(site_packages), f"{module} is not the colcon install's"
    assert found["busy"] == 7  # the value written in srv/Point.srv
    assert found["mapped"], "the interface libraries were loaded"
    for library in found["mapped"]:
        assert Path(library).is_relative_to(workspace.prefix), f"{library} is not the colcon install's"
    assert Path(found["prefix"]) == workspace.prefix
    share = Path(found["share"])
    assert share == workspace.prefix / "share" / "molmo_ros"
    for installed in ("launch/pointer.launch.py", "config/pointer.yaml", "package.xml"):
        assert (share / installed).read_bytes() == (REPO_ROOT / installed).read_bytes(), installed


def test_node_program_from_the_install_answers_a_point_call_with_the_tiny_model(workspace, tiny_model_dir):
    program = workspace.prefix / "lib" / "molmo_ros" / "pointer"
    params_file = workspace.prefix / "share" / "molmo_ros" / "config" / "pointer.yaml"
    command = [
        str(program),
        "--ros-args",
        "--params-file",
        str(params_file),
        "-p",
        f"engine.model:={tiny_model_dir}",
        "-p",
        "engine.device:=cpu",
        "-p",
        "engine.max_new_tokens:=8",
    ]
    log_path = workspace.root / "pointer.log"  # a file, so a chatty node never blocks on a full pipe
    log = log_path.open("w")
    node = subprocess.Popen(
        workspace.sourced(command),
        cwd=workspace.root,
        env=underlay_environment(),
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    rclpy.init()
    user = TestClient()
    spinner = Spinner(user)
    try:
        rgb = np.random.default_rng(7).integers(0, 255, (48, 64, 3), dtype=np.uint8)
        assert_the_model_answers(user, rgb)
        with open(f"/proc/{node.pid}/maps") as maps:
            mapped = {line.split()[-1] for line in maps if "molmo_ros" in line}
    finally:
        spinner.close()
        user.destroy_node()
        rclpy.try_shutdown()
        node.send_signal(signal.SIGINT)
        try:
            node.wait(timeout=30)
        except subprocess.TimeoutExpired:
            node.kill()  # never left running; the assertion below reports its log
            node.wait()
        log.close()
    output = log_path.read_text()
    assert node.returncode == 0, output
    assert "active: molmoe backend ready" in output
    assert mapped and all(Path(library).is_relative_to(workspace.prefix) for library in mapped), mapped


def test_without_colcon_ci_fails_and_elsewhere_skips_with_the_reason(monkeypatch):
    reason = "ensure_colcon: apt-get update failed (exit 100): E: The repository is not signed."
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setenv("MOLMO_ROS_COLCON_PROBLEM", reason)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no real colcon build: ensure_colcon: apt-get update"):
        colcon_or_reason()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="E: The repository is not signed"):
        colcon_or_reason()
    monkeypatch.delenv("MOLMO_ROS_COLCON_PROBLEM")
    with pytest.raises(pytest.skip.Exception, match="run tools/ensure_colcon.sh"):
        colcon_or_reason()
