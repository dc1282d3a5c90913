"""The converted-weights cache: the checkpoint in our key names and in bfloat16 (or float16), or with int8
weights (quantization.py), made once.

Converting the released fp32 checkpoint costs time at every start, so the converted weights are kept
and loaded directly afterwards. The cache lives in `cache_dir` if given, else `$MOLMO_CACHE_DIR`, else
`$XDG_CACHE_HOME/molmo_ros` (normally `~/.cache/molmo_ros`); one subdirectory per source, revision and
dtype (and quantization), with the config/tokenizer files and a manifest saying what it was made from.
Deleting it is always safe; the caller falls back to loading from the source when it cannot be written.
int8 weights are torchao `Int8Tensor`s, written as their int8 values and scales with torchao's own
safetensors flattening (the names and layout are in each shard's metadata).
"""

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torchao.prototype.safetensors.safetensors_support import (
    flatten_tensor_state_dict,
    unflatten_tensor_state_dict,
)
from torchao.quantization import Int8Tensor
from tqdm import tqdm

from molmo_ros.backends.device import out_of_memory_guard
from molmo_ros.backends.errors import IncompatibleCheckpointError
from molmo_ros.backends.hub import is_commit, is_hub_id
from molmo_ros.backends.molmoe.checkpoint_reader import CheckpointReader
from molmo_ros.backends.molmoe.checkpoint_source import METADATA_FILES, CheckpointSource
from molmo_ros.backends.molmoe.config import MolmoConfig
from molmo_ros.backends.molmoe.defaults import MOLMOE_DEFAULT
from molmo_ros.backends.molmoe.key_mapping import convert_weights
from molmo_ros.backends.molmoe.modeling import MolmoEForPointing, build_meta_model
from molmo_ros.backends.molmoe.quantization import INT8_SCHEME, quantized_weight_names

CACHE_DIR_ENV_VAR = "MOLMO_CACHE_DIR"
CACHE_FORMAT_VERSION = 1
CACHE_MANIFEST = "molmo_ros_manifest.json"
CACHE_SHARD_BYTES = 2 * 1024**3
CACHEABLE_DTYPES = (torch.bfloat16, torch.float16)
_ENTRY_NAME_CHARS = 60  # the readable part of an entry's directory name
_SHOWN = 5  # tensor names listed in an error message


def weights_cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get(CACHE_DIR_ENV_VAR):
        return Path(os.environ[CACHE_DIR_ENV_VAR]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "molmo_ros"


def pinned_hub_origin(model: str, revision: str | None) -> dict[str, object] | None:
    """A hub id at a full commit names immutable files, so it identifies a cache entry by itself."""
    revision = revision or MOLMOE_DEFAULT.revision
    if not is_hub_id(model) or not is_commit(revision):
        return None
    return {"model": model, "revision": revision}


def source_origin(source: CheckpointSource) -> dict[str, object]:
    """Where converted weights came from: a pinned commit, or else the names, sizes and times of the
    weights and of the config/tokenizer files (the entry keeps copies of those, so edits must show)."""
    pinned = pinned_hub_origin(source.model, source.revision) if source.revision else None
    if pinned is not None:
        return pinned
    metadata = [source.directory / name for name in METADATA_FILES if (source.directory / name).is_file()]
    files = sorted(source.weights.paths) + ([source.weights.index] if source.weights.index else []) + metadata
    stats = [[path.name, path.stat().st_size, path.stat().st_mtime_ns] for path in files]
    return {
        "model": source.model,
        "revision": source.revision,
        "directory": str(source.directory),
        "files": stats,
    }


def _identity(origin: dict[str, object], dtype: torch.dtype, quantization: str) -> dict[str, object]:
    """What a cache entry must match: its origin, the dtype, the quantization (with how it was made) and
    the layout version of the cache. Unquantized entries carry no quantization field, so those made
    before int8 existed still match."""
    identity = {
        "format_version": CACHE_FORMAT_VERSION,
        "source": origin,
        "dtype": str(dtype).removeprefix("torch."),
    }
    if quantization != "none":
        identity["quantization"] = quantization
        identity["quantization_scheme"] = INT8_SCHEME
    return identity


def cache_entry_dir(root: Path, origin: dict[str, object], dtype: torch.dtype, quantization: str) -> Path:
    identity = _identity(origin, dtype, quantization)
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    readable = re.sub(r"[^\w.-]+", "--", str(origin["model"]).strip("/"))[-_ENTRY_NAME_CHARS:]
    kind = identity["dtype"] if quantization == "none" else f"{quantization}-{identity['dtype']}"
    return root / f"{readable}-{kind}-{digest}"


def find_cache_entry(
    root: Path, origin: dict[str, object], dtype: torch.dtype, quantization: str = "none"
) -> Path | None:
    entry = cache_entry_dir(root, origin, dtype, quantization)
    try:
        manifest = _read_manifest(entry)
    except (OSError, ValueError):
        return None
    return entry if manifest.get("identity") == _identity(origin, dtype, quantization) else None


def _read_manifest(entry: Path) -> dict:
    return json.loads((entry / CACHE_MANIFEST).read_text())


def build_cache_entry(
    root: Path, source: CheckpointSource, dtype: torch.dtype, quantization: str = "none"
) -> Path:
    """Convert once into shards of our key names; the manifest is written last, the directory renamed
    into place, so a crash leaves no entry that looks complete."""
    origin = source_origin(source)
    entry = cache_entry_dir(root, origin, dtype, quantization)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".incomplete-", dir=root))
    try:
        config = MolmoConfig.from_json_file(source.directory / "config.json")
        total = sum(1 for _ in build_meta_model(config).parameters())
        target = dtype if quantization == "none" else f"{quantization} weights, the rest {dtype}"
        for name in METADATA_FILES:
            if (source.directory / name).is_file():
                shutil.copyfile(source.directory / name, staging / name)
        with (
            CheckpointReader(source.weights) as reader,
            tqdm(total=total, unit="tensor", desc=f"converting {source.describe()} to {target}") as progress,
        ):
            converted = convert_weights(reader.get_tensor, reader.names, config, dtype, None, quantization)
            shards = _write_shards(converted, staging, progress.update)
        manifest = {"identity": _identity(origin, dtype, quantization), "shards": shards}
        (staging / CACHE_MANIFEST).write_text(json.dumps(manifest, indent=1))
        _move_into_place(staging, entry, origin, dtype, quantization)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return entry


def _move_into_place(
    staging: Path, entry: Path, origin: dict[str, object], dtype: torch.dtype, quantization: str
) -> None:
    """Rename the finished staging directory to `entry`. Another process converting the same source may
    have got there first: its complete entry is kept (it may be loading from it) and ours dropped."""
    if find_cache_entry(entry.parent, origin, dtype, quantization) is not None:
        return
    if entry.exists():  # without a matching manifest: left over from something else, never complete
        shutil.rmtree(entry, ignore_errors=True)
    try:
        staging.rename(entry)
    except OSError:
        if find_cache_entry(entry.parent, origin, dtype, quantization) is None:
            raise


def _write_shards(
    tensors: Iterator[tuple[str, torch.Tensor]], directory: Path, advance: Callable[[int], object]
) -> list[str]:
    """safetensors files of about CACHE_SHARD_BYTES each, so at most one shard is held in memory."""
    shards: list[str] = []
    pending: dict[str, torch.Tensor] = {}
    pending_bytes = 0

    def flush() -> None:
        name = f"model-{len(shards) + 1:05d}.safetensors"
        if any(isinstance(tensor, Int8Tensor) for tensor in pending.values()):
            flat, layout = flatten_tensor_state_dict(pending)
            save_file(flat, directory / name, metadata={"format": "pt", **layout})
        else:
            save_file(pending, directory / name, metadata={"format": "pt"})
        shards.append(name)
        pending.clear()

    for name, tensor in tensors:
        pending[name] = tensor.detach().to("cpu").contiguous()
        pending_bytes += _stored_bytes(tensor)
        advance(1)
        if pending_bytes >= CACHE_SHARD_BYTES:
            flush()
            pending_bytes = 0
    if pending or not shards:
        flush()
    return shards


def _stored_bytes(tensor: torch.Tensor) -> int:
    """Bytes a tensor takes in a shard: an Int8Tensor's int8 values and scales, not its nominal dtype."""
    if isinstance(tensor, Int8Tensor):
        return _stored_bytes(tensor.qdata) + _stored_bytes(tensor.scale)
    return tensor.numel() * tensor.element_size()


def _load_shard(path: Path, device: torch.device) -> dict[str, torch.Tensor]:
    """One shard's tensors on `device`, int8 weights rebuilt as torchao Int8Tensors."""
    with safe_open(path, framework="pt", device=str(device)) as shard:
        metadata = shard.metadata() or {}
        tensors = {name: shard.get_tensor(name) for name in shard.keys()}
    if "tensor_names" not in metadata:  # an unquantized shard: plain tensors only
        return tensors
    rebuilt, leftover = unflatten_tensor_state_dict(tensors, metadata)
    return {**rebuilt, **leftover}


def load_cached_model(entry: Path, device: torch.device) -> MolmoEForPointing:
    """Load weights already in our key names and dtype, shard by shard, straight onto `device`."""
    model = build_meta_model(MolmoConfig.from_json_file(entry / "config.json"))
    expected = {name for name, _ in model.named_parameters()}
    loaded: set[str] = set()
    with out_of_memory_guard(device, f"loading the converted weights in {entry}"):
        manifest = _read_manifest(entry)
        for shard in manifest["shards"]:
            tensors = _load_shard(entry / shard, device)
            unexpected = set(tensors) - expected
            if unexpected:
                raise IncompatibleCheckpointError(
                    f"the weights cache {entry} holds tensors this model does not have: "
                    f"{sorted(unexpected)[:_SHOWN]}; "
                    "delete that directory to rebuild it"
                )
            model.load_state_dict(tensors, strict=False, assign=True)
            loaded.update(tensors)
        model.init_non_persistent_buffers(device)
    model.match_experts_kernel_to_weights()
    missing = expected - loaded
    if missing:
        raise IncompatibleCheckpointError(
            f"the weights cache {entry} lacks {len(missing)} tensors (e.g. {sorted(missing)[:_SHOWN]}); "
            "delete that directory to rebuild it"
        )
    _check_int8_weights(model, entry, manifest["identity"].get("quantization", "none"))
    return model


def _check_int8_weights(model: MolmoEForPointing, entry: Path, quantization: str) -> None:
    """An int8 entry (by its identity) holds int8 exactly where quantization puts it; an unquantized one
    holds none."""
    int8 = {name for name, parameter in model.named_parameters() if isinstance(parameter, Int8Tensor)}
    wanted = quantized_weight_names(model) if quantization == "int8" else set()
    if int8 != wanted:
        wrong = sorted(int8 ^ wanted)
        raise IncompatibleCheckpointError(
            f"the weights cache {entry} holds int8 weights where this version does not put them, or lacks "
            f"some (e.g. {wrong[:_SHOWN]}); delete that directory to rebuild it"
        )
