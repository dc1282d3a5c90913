"""`python -m build --sdist` gives an archive another machine can build from: interfaces, launch, config,
CMake files, requirements and the licence are in it, generated files are not.

Built with --no-isolation from a copy of the files git would commit, so it needs no network and writes
nothing into the checkout.
"""

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
BUILD_TIMEOUT_S = 300  # setuptools writes the archive in seconds; the bound only stops a hung build


def _committable_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=False,
    )
    if listed.returncode != 0:
        pytest.skip("not a git checkout: the sdist is built from the files git would commit")
    return [name for name in listed.stdout.decode().split("\0") if name and (REPO_ROOT / name).is_file()]


@pytest.fixture(scope="module")
def sdist_members(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    source = tmp_path_factory.mktemp("source")
    for name in _committable_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, source / name)
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (archive,) = out.glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        # Member names without the leading "molmo_ros-<version>/".
        return {member.name.partition("/")[2] for member in tar.getmembers() if member.isfile()}


def _repo_files(*patterns: str) -> set[str]:
    return {str(path.relative_to(REPO_ROOT)) for pattern in patterns for path in REPO_ROOT.glob(pattern)}


def test_sdist_holds_every_interface_file(sdist_members):
    interfaces = _repo_files("msg/*.msg", "srv/*.srv", "action/*.action")
    assert {"msg/PointingResult.msg", "srv/Point.srv", "action/Point.action"} <= interfaces
    assert interfaces <= sdist_members, sorted(interfaces - sdist_members)


def test_sdist_holds_launch_config_build_files_and_licence(sdist_members):
    expected = _repo_files("launch/*", "config/*", "samples/*", "cmake/*", "requirements/*.txt") | {
        "CMakeLists.txt",
        "package.xml",
        "pyproject.toml",
        "setup.py",
        "LICENSE",
        "README.md",
        "launch/pointer.launch.py",
        "config/pointer.yaml",
    }
    assert expected <= sdist_members, sorted(expected - sdist_members)


def test_sdist_holds_no_generated_files(sdist_members):
    generated = {name for name in sdist_members if name.endswith((".so", ".pyc")) or "/msg/_" in name}
    assert not generated, sorted(generated)


def test_licence_is_the_apache_2_text_the_metadata_names():
    licence = (REPO_ROOT / "LICENSE").read_text()
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    assert "END OF TERMS AND CONDITIONS" in licence
    assert 'license = "Apache-2.0"' in (REPO_ROOT / "pyproject.toml").read_text()
    assert "<license>Apache-2.0</license>" in (REPO_ROOT / "package.xml").read_text()
