"""Where the model runs and in which dtype, and what an out-of-memory error tells the user.

The settings hold plain strings (torch-free, see `molmo_ros.backends.settings`); they are turned into
torch objects here, at load time, with an error that names the setting and the values it takes.
"""

import contextlib
import ctypes
import functools
import gc
import sys
from collections.abc import Callable, Iterator

import torch

from molmo_ros.backends.errors import DeviceOutOfMemoryError, InvalidSettingError
from molmo_ros.backends.settings import DEVICES_HELP, backend_setting

AUTO = "auto"
# The torch dtype of each name the dtype setting accepts (besides "auto").
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_device(name: str) -> torch.device:
    """A cpu or cuda[:N] device from its name, without checking that it exists."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as error:
        raise _device_error(f"the device setting must be {DEVICES_HELP}; got {name!r}") from error
    if device.type not in ("cpu", "cuda"):
        raise _device_error(f"the device setting must be {DEVICES_HELP}; got {name!r}")
    return device


def resolve_device(name: str) -> torch.device:
    """ "auto" picks CUDA when present; a named CUDA device must exist on this machine."""
    if name == AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = parse_device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise _device_error(
                f"device {name!r} was asked for but CUDA is not available here; use cpu or auto"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise _device_error(
                f"device {name!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s)"
            )
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """ "auto" is bfloat16 on CUDA (half the memory, fast kernels) and float32 on CPU (exact)."""
    if name == AUTO:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise InvalidSettingError(
            f"the dtype setting must be auto or one of {', '.join(DTYPES)}; got {name!r}",
            [backend_setting("dtype")],
        )
    return DTYPES[name]


def _device_error(message: str) -> InvalidSettingError:
    return InvalidSettingError(message, [backend_setting("device")])


@contextlib.contextmanager
def out_of_memory_guard(device: torch.device, activity: str) -> Iterator[None]:
    """Turn torch's OOM into DeviceOutOfMemoryError with the numbers and what to lower."""
    try:
        yield
    except torch.OutOfMemoryError as error:
        raise DeviceOutOfMemoryError(
            f"out of memory on {device}{_memory_report(device)} while {activity}. Lower the memory use: "
            "run in bfloat16 (dtype), send smaller images (fewer crops) or fewer prompts at once, lower "
            "max_new_tokens, free the GPU of other processes, or use another GPU (device).",
            [backend_setting(name) for name in ("dtype", "max_new_tokens", "device")],
        ) from error


def _memory_report(device: torch.device) -> str:
    if device.type != "cuda":
        return ""
    try:
        free, total = torch.cuda.mem_get_info(device)
    except RuntimeError:
        return ""
    return f" ({free / 2**30:.2f} GiB free of {total / 2**30:.2f} GiB)"


def release_device_memory(device: torch.device) -> None:
    """Collect dropped tensors now and give their memory back, so other processes see it as free.

    On CUDA, torch's caching allocator would keep the freed blocks (nvidia-smi would still count them):
    they are handed back to the driver. On the host, glibc keeps freed heap chunks that lie below live
    allocations for reuse, so part of a freed model stays resident (its medium-sized tensors: about
    115 MiB of a 3.5 GiB float32 model in bench/deactivate_memory.py); malloc_trim returns those pages
    to the kernel. It runs for CUDA too, as loading passes every tensor through host memory."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library has none (macOS, Windows, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    # dlopen(NULL): the symbols already loaded into this process, i.e. its own C library, whatever its name.
    return getattr(ctypes.CDLL(None), "malloc_trim", None)
