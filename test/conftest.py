"""Shared fixtures: where the reference data lives, and how tests keep DDS traffic on this machine."""

import os
import random
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def _reference_dir() -> Path:
    default = REPO_ROOT.parent / "shared" / "molmo_reference"
    return Path(os.environ.get("MOLMO_REFERENCE_DIR", default)).resolve()


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The golden data from the official MolmoE code; see its FACTS.md.

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


@pytest.fixture(scope="session")
def tiny_model_dir(reference_dir: Path) -> Path:
    """The tiny seeded-random MolmoE checkpoint (reference key names, real tokenizer)."""
    return reference_dir / "tiny"


def pytest_configure(config: pytest.Config) -> None:
    # Every ROS participant started by this test session, in-process or in a child process, stays
    # on this machine and in a domain of its own.
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 101)))
