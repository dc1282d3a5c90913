"""Where the MolmoE weights come from, and how they get into our model without surprises.

A checkpoint is either a local directory or a Hugging Face model id at a pinned commit, fetched
with `huggingface_hub` into the normal HF cache (offline mode is respected). Reference checkpoints
(`pytorch_model*.bin` or `model*.safetensors`, single or sharded with an index) are read lazily,
tensor by tensor, and streamed through `key_mapping` into a model built on the meta device, so
peak memory stays near one copy of the weights. `.bin` files are opened with
`torch.load(weights_only=True, mmap=True)`: plain tensors only, never pickled code.

Converting the released checkpoint costs time at every start, so the converted weights (in our
key names, in bfloat16 or float16) can be kept in a weights cache and loaded directly afterwards.
The cache lives in `cache_dir` if given, else `$MOLMO_CACHE_DIR`, else
`$XDG_CACHE_HOME/molmo_ros` (normally `~/.cache/molmo_ros`); one subdirectory per source,
revision and dtype, with the config/tokenizer files and a manifest saying what it was made from.
Deleting it is always safe; when it cannot be written (read-only, disk full) the weights are loaded
straight from the source instead, with a warning.
"""

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import torch
from huggingface_hub import HfApi, constants, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from molmo_ros.engine.config import MolmoConfig
from molmo_ros.engine.defaults import DEFAULT_MODEL_ID, DEFAULT_REVISION, MODEL_ENV_VAR
from molmo_ros.engine.defaults import default_model as default_model  # re-exported for callers
from molmo_ros.engine.errors import EngineOutOfMemoryError, IncompatibleCheckpointError, WeightsNotFoundError
from molmo_ros.engine.key_mapping import convert_reference_state_dict, load_reference_model
from molmo_ros.engine.modeling import MolmoEForPointing, build_meta_model

log = logging.getLogger(__name__)

CACHE_DIR_ENV_VAR = "MOLMO_CACHE_DIR"

# Everything a checkpoint directory needs besides the weights; the repo's *.py files are never fetched.
METADATA_FILES = (
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")

CACHE_FORMAT_VERSION = 1
CACHE_MANIFEST = "molmo_ros_manifest.json"
CACHE_SHARD_BYTES = 2 * 1024**3
CACHEABLE_DTYPES = (torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class WeightFiles:
    """A checkpoint's weights: format 'safetensors' or 'torch' (.bin); one file or an index's shards."""

    format: str
    paths: tuple[Path, ...]
    index: Path | None = None


@dataclass(frozen=True)
class CheckpointSource:
    """A resolved checkpoint: the directory holding config, tokenizer and weights, and where it came from."""

    model: str
    revision: str | None  # None for a local directory
    directory: Path
    weights: WeightFiles

    def describe(self) -> str:
        return str(self.directory) if self.revision is None else f"{self.model}@{self.revision}"


@dataclass(frozen=True)
class LoadedCheckpoint:
    model: MolmoEForPointing
    files_dir: Path  # config.json and tokenizer files for the preprocessor
    description: str  # for logs: what was loaded and from where


def _fix_hint(model: str, revision: str | None) -> str:
    hub = (
        f"{DEFAULT_MODEL_ID} at revision {DEFAULT_REVISION}" if revision is None else f"{model} at {revision}"
    )
    return (
        "To fix: point the model setting at a local checkpoint directory holding config.json, the tokenizer "
        "files and the weights (ROS parameter engine.model, CLI --model, or environment variable "
        f"{MODEL_ENV_VAR}), "
        f"or let {hub} be found in the Hugging Face cache: set HF_HOME to a cache that already holds it, "
        "or go online (unset HF_HUB_OFFLINE) so it can be downloaded once."
    )


def find_weight_files(directory: Path) -> WeightFiles | None:
    """The weights in a checkpoint directory, preferring safetensors; None if there are none."""
    for index_name, single_name, fmt in (
        (SAFETENSORS_INDEX, SAFETENSORS_FILE, "safetensors"),
        (TORCH_INDEX, TORCH_FILE, "torch"),
    ):
        index = directory / index_name
        if index.is_file():
            weight_map = _read_weight_map(index)
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


def _read_weight_map(index: Path) -> dict[str, str]:
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
                name: weights.index.parent / shard for name, shard in _read_weight_map(weights.index).items()
            }
        else:
            (path,) = weights.paths
            self._file_of = {name: path for name in self._open(path).keys()}
        self.names: tuple[str, ...] = tuple(sorted(self._file_of))

    def get_tensor(self, name: str) -> torch.Tensor:
        path = self._file_of[name]
        if self._weights.format == "safetensors":
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
                _open_safetensors(path) if self._weights.format == "safetensors" else _load_torch(path)
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
    except (
        Exception
    ) as error:  # UnpicklingError for anything but plain tensors, zip/EOF errors when truncated
        raise IncompatibleCheckpointError(
            f"{path} is not a plain tensor checkpoint that can be loaded safely (weights_only=True): {error}"
        ) from error
    if not isinstance(state, dict):
        raise IncompatibleCheckpointError(
            f"{path} holds a {type(state).__name__}, not a state dict of tensors"
        )
    return state


def hub_cache_dir() -> Path:
    """The HF hub cache, read from the environment now (huggingface_hub reads it once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def hub_offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE")
    if value is None:
        return bool(constants.HF_HUB_OFFLINE)
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def resolve_checkpoint(model: str, revision: str | None = DEFAULT_REVISION) -> CheckpointSource:
    """A local directory as is, or a hub id fetched (or found in the cache) at `revision`."""
    path = Path(model).expanduser()
    if path.exists() or not _HUB_ID.match(model):
        return _local_checkpoint(model, path)
    return _hub_checkpoint(model, revision or DEFAULT_REVISION)


def _local_checkpoint(model: str, path: Path) -> CheckpointSource:
    if not path.exists():
        reason = f"{model!r} is neither an existing directory nor a Hugging Face model id (owner/name)"
    elif not path.is_dir():
        reason = f"{path} is not a directory"
    elif not (path / "config.json").is_file():
        reason = f"the directory {path} has no config.json"
    elif (weights := find_weight_files(path)) is None:
        reason = (
            f"the directory {path} has no weight files ({SAFETENSORS_FILE}, {SAFETENSORS_INDEX}, "
            f"{TORCH_FILE} or {TORCH_INDEX})"
        )
    else:
        return CheckpointSource(model, None, path.resolve(), weights)
    raise WeightsNotFoundError(f"No MolmoE weights found: {reason}. {_fix_hint(model, None)}")


def _hub_checkpoint(model_id: str, revision: str) -> CheckpointSource:
    cache_dir = hub_cache_dir()
    cached = _cached_snapshot(model_id, revision, cache_dir)
    if cached is not None:
        return cached
    if hub_offline():
        raise WeightsNotFoundError(
            f"No MolmoE weights found: {model_id} at revision {revision} is not in the Hugging Face cache "
            f"{cache_dir}, and HF_HUB_OFFLINE is set so nothing can be downloaded. "
            + _fix_hint(model_id, revision)
        )
    try:
        files = HfApi().list_repo_files(model_id, revision=revision)
        snapshot = snapshot_download(
            model_id, revision=revision, cache_dir=cache_dir, allow_patterns=_download_patterns(files)
        )
    except (RepositoryNotFoundError, GatedRepoError) as error:
        reason = f"the Hugging Face repository {model_id} does not exist or needs access rights ({error})"
    except RevisionNotFoundError as error:
        reason = f"{model_id} has no revision {revision} ({error})"
    # Anything else is the network or the disk failing (DNS, timeouts, refused connections from the
    # hub's HTTP client, HTTP errors, disk full); its types vary with huggingface_hub versions.
    except Exception as error:
        reason = f"{model_id} at revision {revision} could not be downloaded: {type(error).__name__}: {error}"
    else:
        source = _snapshot_source(model_id, revision, Path(snapshot))
        if source is not None:
            return source
        reason = f"the download of {model_id} at revision {revision} has no config.json or no weight files"
    raise WeightsNotFoundError(f"No MolmoE weights found: {reason}. {_fix_hint(model_id, revision)}")


def _cached_snapshot(model_id: str, revision: str, cache_dir: Path) -> CheckpointSource | None:
    try:
        snapshot = snapshot_download(model_id, revision=revision, cache_dir=cache_dir, local_files_only=True)
    except (LocalEntryNotFoundError, OSError):
        return None
    return _snapshot_source(model_id, revision, Path(snapshot))


def _snapshot_source(model_id: str, revision: str, snapshot: Path) -> CheckpointSource | None:
    weights = find_weight_files(snapshot)
    if weights is None or not (snapshot / "config.json").is_file():
        return None
    return CheckpointSource(model_id, revision, snapshot, weights)


def _download_patterns(repo_files: list[str]) -> list[str]:
    """Metadata plus ONE weight format (safetensors if published), so nothing is downloaded twice."""
    names = set(repo_files)
    if SAFETENSORS_INDEX in names or SAFETENSORS_FILE in names:
        weights = [SAFETENSORS_INDEX, "model*.safetensors"]
    else:
        weights = [TORCH_INDEX, "pytorch_model*.bin"]
    return [*METADATA_FILES, *weights]


# --- loading ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def out_of_memory_guard(device: torch.device, activity: str) -> Iterator[None]:
    """Turn torch's OOM into EngineOutOfMemoryError with the numbers and what to lower."""
    try:
        yield
    except torch.OutOfMemoryError as error:
        raise EngineOutOfMemoryError(
            f"out of memory on {device}{_memory_report(device)} while {activity}. Lower the memory use: "
            "run in bfloat16 (dtype), send smaller images (fewer crops) or fewer prompts at once, lower "
            "max_new_tokens, free the GPU of other processes, or use another GPU (device)."
        ) from error


def _memory_report(device: torch.device) -> str:
    if device.type != "cuda":
        return ""
    try:
        free, total = torch.cuda.mem_get_info(device)
    except RuntimeError:
        return ""
    return f" ({free / 2**30:.2f} GiB free of {total / 2**30:.2f} GiB)"


def load_model(source: CheckpointSource, device: torch.device, dtype: torch.dtype) -> MolmoEForPointing:
    """Convert a reference checkpoint tensor by tensor into our model (built in eval mode) on `device`."""
    config = MolmoConfig.from_json_file(source.directory / "config.json")
    with (
        out_of_memory_guard(device, f"loading {source.describe()}"),
        CheckpointReader(source.weights) as reader,
    ):
        return load_reference_model(config, reader.get_tensor, reader.names, dtype, device)


def load_cached_model(entry: Path, device: torch.device) -> MolmoEForPointing:
    """Load weights already in our key names and dtype, shard by shard, straight onto `device`."""
    model = build_meta_model(MolmoConfig.from_json_file(entry / "config.json"))
    expected = {name for name, _ in model.named_parameters()}
    loaded: set[str] = set()
    with out_of_memory_guard(device, f"loading the converted weights in {entry}"):
        for shard in _read_manifest(entry)["shards"]:
            tensors = load_file(entry / shard, device=str(device))
            unexpected = set(tensors) - expected
            if unexpected:
                raise IncompatibleCheckpointError(
                    f"the weights cache {entry} holds tensors this model does not have: "
                    f"{sorted(unexpected)[:5]}; "
                    "delete that directory to rebuild it"
                )
            model.load_state_dict(tensors, strict=False, assign=True)
            loaded.update(tensors)
        model.init_non_persistent_buffers(device)
    missing = expected - loaded
    if missing:
        raise IncompatibleCheckpointError(
            f"the weights cache {entry} lacks {len(missing)} tensors (e.g. {sorted(missing)[:5]}); "
            "delete that directory to rebuild it"
        )
    return model


# --- the converted-weights cache -------------------------------------------------------------------------


def weights_cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get(CACHE_DIR_ENV_VAR):
        return Path(os.environ[CACHE_DIR_ENV_VAR]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "molmo_ros"


def _pinned_hub_origin(model: str, revision: str | None) -> dict[str, object] | None:
    """A hub id at a full commit names immutable files, so it identifies a cache entry by itself."""
    revision = revision or DEFAULT_REVISION
    if Path(model).expanduser().exists() or not _HUB_ID.match(model) or not _COMMIT.match(revision):
        return None
    return {"model": model, "revision": revision}


def _source_origin(source: CheckpointSource) -> dict[str, object]:
    """Where converted weights came from: a pinned commit, or else the names, sizes and times of the
    weights and of the config/tokenizer files (the entry keeps copies of those, so edits must show)."""
    pinned = _pinned_hub_origin(source.model, source.revision) if source.revision else None
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


def _identity(origin: dict[str, object], dtype: torch.dtype) -> dict[str, object]:
    """What a cache entry must match: its origin, the dtype and the layout version of the cache."""
    return {
        "format_version": CACHE_FORMAT_VERSION,
        "source": origin,
        "dtype": str(dtype).removeprefix("torch."),
    }


def cache_entry_dir(root: Path, origin: dict[str, object], dtype: torch.dtype) -> Path:
    identity = _identity(origin, dtype)
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    readable = re.sub(r"[^\w.-]+", "--", str(origin["model"]).strip("/"))[-60:]
    return root / f"{readable}-{identity['dtype']}-{digest}"


def find_cache_entry(root: Path, origin: dict[str, object], dtype: torch.dtype) -> Path | None:
    entry = cache_entry_dir(root, origin, dtype)
    try:
        manifest = _read_manifest(entry)
    except (OSError, ValueError):
        return None
    return entry if manifest.get("identity") == _identity(origin, dtype) else None


def _read_manifest(entry: Path) -> dict:
    return json.loads((entry / CACHE_MANIFEST).read_text())


def build_cache_entry(root: Path, source: CheckpointSource, dtype: torch.dtype) -> Path:
    """Convert once into shards of our key names; the manifest is written last, the directory renamed
    into place, so a crash leaves no entry that looks complete."""
    origin = _source_origin(source)
    entry = cache_entry_dir(root, origin, dtype)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".incomplete-", dir=root))
    try:
        config = MolmoConfig.from_json_file(source.directory / "config.json")
        total = sum(1 for _ in build_meta_model(config).parameters())
        for name in METADATA_FILES:
            if (source.directory / name).is_file():
                shutil.copyfile(source.directory / name, staging / name)
        with (
            CheckpointReader(source.weights) as reader,
            tqdm(total=total, unit="tensor", desc=f"converting {source.describe()} to {dtype}") as progress,
        ):
            converted = convert_reference_state_dict(reader.get_tensor, reader.names, config, dtype)
            shards = _write_shards(converted, staging, progress.update)
        manifest = {"identity": _identity(origin, dtype), "shards": shards}
        (staging / CACHE_MANIFEST).write_text(json.dumps(manifest, indent=1))
        _move_into_place(staging, entry, origin, dtype)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return entry


def _move_into_place(staging: Path, entry: Path, origin: dict[str, object], dtype: torch.dtype) -> None:
    """Rename the finished staging directory to `entry`. Another process converting the same source may
    have got there first: its complete entry is kept (it may be loading from it) and ours dropped."""
    if find_cache_entry(entry.parent, origin, dtype) is not None:
        return
    if entry.exists():  # without a matching manifest: left over from something else, never complete
        shutil.rmtree(entry, ignore_errors=True)
    try:
        staging.rename(entry)
    except OSError:
        if find_cache_entry(entry.parent, origin, dtype) is None:
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
        save_file(pending, directory / name, metadata={"format": "pt"})
        shards.append(name)
        pending.clear()

    for name, tensor in tensors:
        pending[name] = tensor.detach().to("cpu").contiguous()
        pending_bytes += tensor.numel() * tensor.element_size()
        advance(1)
        if pending_bytes >= CACHE_SHARD_BYTES:
            flush()
            pending_bytes = 0
    if pending or not shards:
        flush()
    return shards


def load_checkpoint(
    model: str,
    revision: str | None,
    device: torch.device,
    dtype: torch.dtype,
    *,
    use_cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> LoadedCheckpoint:
    """Load through the weights cache when the dtype is a reduced one (converting on first use), else
    straight from the source. A hub id at a pinned commit that is already converted needs neither the
    network nor the HF cache any more. Never falls back to random weights."""
    caching = use_cache and dtype in CACHEABLE_DTYPES
    root = weights_cache_root(cache_dir)
    pinned = _pinned_hub_origin(model, revision)
    if caching and pinned is not None and (entry := find_cache_entry(root, pinned, dtype)) is not None:
        return _from_cache(entry, device, f"{model}@{pinned['revision']}")
    source = resolve_checkpoint(model, revision)
    if not caching:
        return LoadedCheckpoint(load_model(source, device, dtype), source.directory, source.describe())
    entry = find_cache_entry(root, _source_origin(source), dtype)
    if entry is None:
        log.info("converting %s to %s once; the result is kept in %s", source.describe(), dtype, root)
        try:
            entry = build_cache_entry(root, source, dtype)
        except (OSError, SafetensorError) as error:
            log.warning(
                "cannot keep converted weights in %s (%s: %s); loading %s without the weights cache. "
                "Set a writable cache_dir (or %s) to get fast starts.",
                root,
                type(error).__name__,
                error,
                source.describe(),
                CACHE_DIR_ENV_VAR,
            )
            return LoadedCheckpoint(load_model(source, device, dtype), source.directory, source.describe())
    return _from_cache(entry, device, source.describe())


def _from_cache(entry: Path, device: torch.device, description: str) -> LoadedCheckpoint:
    return LoadedCheckpoint(
        load_cached_model(entry, device), entry, f"{description} (converted weights in {entry})"
    )
