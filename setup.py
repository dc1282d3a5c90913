"""pip build of molmo_ros: runs the CMake interface build and ships its output in one wheel.

The wheel then holds our sources plus the generated molmo_ros.msg / molmo_ros.srv modules and
typesupport extensions, the interface libraries (installed into <venv>/lib, which the ROS wheels'
bootstrapper already puts on the library path) and share/ (ament index, package.xml, launch, config,
samples). colcon builds CMakeLists.txt directly instead. Why it is done this way: docs/BUILD.md.
"""

import hashlib
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PACKAGE = "molmo_ros"


class BinaryDistribution(Distribution):
    """Makes setuptools run build_ext and tag the wheel for this platform: it carries compiled code."""

    def has_ext_modules(self) -> bool:
        return True


def package_xml_version() -> str:
    """package.xml is the one place the version is written (ament requires it there)."""
    return ElementTree.parse(ROOT / "package.xml").getroot().findtext("version").strip()


def ros_prefixes() -> list[str]:
    """Prefixes holding the ROS CMake packages: this venv, and pip's isolated build environment if any."""
    site_dirs = [Path(entry) for entry in sys.path if entry.endswith("site-packages")]
    candidates = [Path(sys.prefix)] + [site_dir.parents[2] for site_dir in site_dirs]
    prefixes: list[str] = []
    for candidate in candidates:
        if (candidate / "share" / "ament_cmake" / "cmake").is_dir() and str(candidate) not in prefixes:
            prefixes.append(str(candidate))
    if not prefixes:
        raise SystemExit("the ROS build wheels are missing: pip install -r requirements/build.txt first")
    return prefixes


def cmake_cache_value(build_dir: Path, name: str) -> str:
    for line in (build_dir / "CMakeCache.txt").read_text().splitlines():
        key, _, value = line.partition("=")
        if key.split(":")[0] == name:
            return value
    raise KeyError(f"{name} not in {build_dir / 'CMakeCache.txt'}")


def data_files_under(stage: Path, top: str, recursive: bool) -> list[tuple[str, list[str]]]:
    """(install dir relative to the prefix, files) pairs for setuptools' data_files."""
    groups: dict[str, list[str]] = {}
    for path in sorted((stage / top).rglob("*") if recursive else (stage / top).iterdir()):
        if path.is_file():
            groups.setdefault(path.parent.relative_to(stage).as_posix(), []).append(str(path))
    return sorted(groups.items())


class FreshBuildPy(build_py):
    """pip builds in the checkout and keeps build/lib: a module deleted from the source must not ship."""

    def run(self) -> None:
        shutil.rmtree(Path(self.build_lib) / PACKAGE, ignore_errors=True)
        super().run()


class BuildInterfaces(build_ext):
    """Generates and compiles the interfaces with CMake, then hands the results to the wheel."""

    def run(self) -> None:
        if self.inplace or getattr(self, "editable_mode", False):
            raise SystemExit(
                "editable and in-place builds cannot install the interface libraries into "
                "<venv>/lib; use: pip install --no-build-isolation ."
            )
        prefixes = ros_prefixes()
        # One CMake build directory per venv, kept for fast rebuilds. Its cache pins where the ROS
        # packages were found, so it starts over when they come from elsewhere (isolated builds).
        venv_key = hashlib.sha256(sys.prefix.encode()).hexdigest()[:12]
        build_dir = Path(self.build_temp).resolve() / f"cmake-{venv_key}"
        found_in = build_dir / "ros_prefixes.txt"
        if found_in.is_file() and found_in.read_text() != os.pathsep.join(prefixes):
            shutil.rmtree(build_dir)
        build_dir.mkdir(parents=True, exist_ok=True)
        found_in.write_text(os.pathsep.join(prefixes))
        stage = build_dir / "stage"
        env = dict(os.environ, AMENT_PREFIX_PATH=os.pathsep.join(prefixes))
        subprocess.run(
            [
                "cmake",
                "-S",
                str(ROOT),
                "-B",
                str(build_dir),
                f"-DCMAKE_PREFIX_PATH={';'.join(prefixes)}",
                f"-DCMAKE_INSTALL_PREFIX={sys.prefix}",
                f"-DPython3_EXECUTABLE={sys.executable}",
                "-DCMAKE_BUILD_TYPE=Release",
                "-DBUILD_TESTING=OFF",
                "-DMOLMO_ROS_INSTALL_PYTHON=OFF",
            ],
            check=True,
            env=env,
        )
        subprocess.run(
            ["cmake", "--build", str(build_dir), "--parallel", str(os.cpu_count() or 1)], check=True, env=env
        )
        shutil.rmtree(stage, ignore_errors=True)
        subprocess.run(["cmake", "--install", str(build_dir), "--prefix", str(stage)], check=True, env=env)

        generated = stage / cmake_cache_value(build_dir, "PYTHON_INSTALL_DIR") / PACKAGE
        target = Path(self.build_lib) / PACKAGE
        not_shipped = shutil.ignore_patterns("__pycache__", "*.c")
        for entry in generated.iterdir():
            # rosidl writes an empty __init__.py; ours (with extend_path) is already in build_lib.
            if entry.name == "__init__.py" or not_shipped(str(generated), [entry.name]):
                continue
            if entry.is_dir():
                shutil.copytree(entry, target / entry.name, dirs_exist_ok=True, ignore=not_shipped)
            else:
                shutil.copy2(entry, target / entry.name)
        # include/ and share/<pkg>/cmake keep the venv a complete ament prefix for C++ users too.
        self.distribution.data_files = (
            data_files_under(stage, "lib", recursive=False)
            + data_files_under(stage, "include", recursive=True)
            + data_files_under(stage, "share", recursive=True)
        )


setup(
    version=package_xml_version(),
    distclass=BinaryDistribution,
    cmdclass={"build_py": FreshBuildPy, "build_ext": BuildInterfaces},
)
