"""Reading a checkpoint's weights: `pytorch_model*.bin` or `model*.safetensors`, one file or sharded.

Tensors are read lazily, one by one, so conversion can stream them into a model built on the meta
device and peak memory stays near one copy of the weights. `.bin` files are opened with
`torch.load(weights_only=True, mmap=True)`: plain tensors only, never pickled code, and the pages stay
file-backed until a tensor is converted.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import torch
from safetensors import safe_open

from molmo_ros.backends.errors import IncompatibleCheckpointError

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"
SAFETENSORS_FORMAT = "safetensors"
TORCH_FORMAT = "torch"


@dataclass(frozen=True)
class WeightFiles:
    """A checkpoint's weights: format 'safetensors' or 'torch' (.bin); one file or an index's shards."""

    format: str
    paths: tuple[Path, ...]
    index: Path | None = None


def find_weight_files(directory: Path) -> WeightFiles | None:
    """The weights in a checkpoint directory, preferring safetensors; None if there are none."""
    for index_name, single_name, fmt in (
        (SAFETENSORS_INDEX, SAFETENSORS_FILE, SAFETENSORS_FORMAT),
        (TORCH_INDEX, TORCH_FILE, TORCH_FORMAT),
    ):
        index = directory / index_name
        if index.is_file():
            weight_map = read_weight_map(index)
            shards = tuple(directory / name for name in sorted(set(weight_map.values())))
            missing = [shard.name for shard in shards if not shard.is_file()]
            if missing:
                raise IncompatibleCheckpointError(
                    f"{index} lists shards that are not in {directory}: {missing}"
                )
            return WeightFiles(fmt, shards, index)
        if (directory / single_name).is_file():
            return WeightFiles(fmt, (directory / single_name,))
    return None


def read_weight_map(index: Path) -> dict[str, str]:
    """tensor name -> shard file name, from a sharded checkpoint's index."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise IncompatibleCheckpointError(f"cannot read the shard index {index}: {error}") from error
    if not isinstance(weight_map, dict) or not weight_map:
        raise IncompatibleCheckpointError(f"the shard index {index} has an empty or invalid weight_map")
    return weight_map


class CheckpointReader:
    """Tensors of a checkpoint by name, read only when asked for, so conversion can stream."""

    def __init__(self, weights: WeightFiles) -> None:
        self._weights = weights
        self._open_files: dict[Path, object] = {}
        if weights.index is not None:
            self._file_of = {
                name: weights.index.parent / shard for name, shard in read_weight_map(weights.index).items()
            }
        else:
            (path,) = weights.paths
            self._file_of = {name: path for name in self._open(path).keys()}
        self.names: tuple[str, ...] = tuple(sorted(self._file_of))

    def get_tensor(self, name: str) -> torch.Tensor:
        path = self._file_of[name]
        if self._weights.format == SAFETENSORS_FORMAT:
            return self._open(path).get_tensor(name)
        tensor = self._open(path).get(name)
        if not isinstance(tensor, torch.Tensor):
            raise IncompatibleCheckpointError(
                f"{path} has no tensor named {name!r} (its index says it should)"
            )
        return tensor

    def close(self) -> None:
        self._open_files.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _open(self, path: Path):  # a safetensors handle or a dict of (memory-mapped) tensors
        if path not in self._open_files:
            self._open_files[path] = (
                _open_safetensors(path) if self._weights.format == SAFETENSORS_FORMAT else _load_torch(path)
            )
        return self._open_files[path]


def _open_safetensors(path: Path):
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except Exception as error:  # safetensors raises its own SafetensorError and OSError subclasses
        raise IncompatibleCheckpointError(f"{path} is not a readable safetensors file: {error}") from error


def _load_torch(path: Path) -> dict[str, torch.Tensor]:
    """A `.bin` state dict, memory-mapped; old non-zip files cannot be mapped and are read whole."""
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "mmap" not in str(error):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)
    # UnpicklingError for anything but plain tensors, zip/EOF errors when truncated
    except Exception as error:
        raise IncompatibleCheckpointError(
            f"{path} is not a plain tensor checkpoint that can be loaded safely (weights_only=True): {error}"
        ) from error
    if not isinstance(state, dict):
        raise IncompatibleCheckpointError(
            f"{path} holds a {type(state).__name__}, not a state dict of tensors"
        )
    return state
