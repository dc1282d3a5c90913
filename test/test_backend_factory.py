"""load_backend: each engine.backend gets its own backend, and the openai one never loads torch."""

import subprocess
import sys
from pathlib import Path

import pytest

from molmo_ros.backends.factory import load_backend
from molmo_ros.backends.molmo2 import Molmo2Backend
from molmo_ros.backends.openai_chat import OpenAIChatBackend
from molmo_ros.backends.settings import BackendSettings
from molmo_ros.nodes.parameters import with_parameter_names

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_openai_setting_gives_the_chat_client_with_its_in_flight_limit():
    backend = load_backend(BackendSettings(backend="openai", url="http://127.0.0.1:9/v1", max_in_flight=6))
    assert isinstance(backend, OpenAIChatBackend)
    assert (backend.name, backend.max_concurrent_calls, backend.url) == ("openai", 6, "http://127.0.0.1:9/v1")
    backend.close()


def test_molmo2_setting_loads_the_tiny_checkpoint(tiny_molmo2_dir):
    backend = load_backend(BackendSettings(backend="molmo2", model=str(tiny_molmo2_dir), device="cpu"))
    assert isinstance(backend, Molmo2Backend) and backend.name == "molmo2"
    backend.close()


def test_unknown_backend_is_refused_by_the_settings():
    with pytest.raises(ValueError, match="backend setting must be one of molmoe, molmo2, openai") as failure:
        BackendSettings(backend="llava")
    assert with_parameter_names(failure.value).endswith("(parameter engine.backend)")


def test_openai_backend_imports_neither_torch_nor_transformers():
    """A robot that only talks to a server must not pay for (or need) the model stack."""
    code = (
        "import sys; from molmo_ros.backends.factory import load_backend; "
        "from molmo_ros.backends.settings import BackendSettings; "
        "load_backend(BackendSettings(backend='openai')).close(); "
        "heavy = {'torch', 'transformers'} & set(sys.modules); assert not heavy, heavy"
    )
    completed = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
