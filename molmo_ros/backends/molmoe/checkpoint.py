"""Getting MolmoE weights into our model: through the converted-weights cache when it applies, else
straight from the checkpoint. Never falls back to random weights.

Where the files come from is `checkpoint_source`, how they are read `checkpoint_reader`, the cache
`weights_cache`, and the mapping of reference names and layouts to ours `key_mapping`.
"""

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError

from molmo_ros.backends.device import out_of_memory_guard
from molmo_ros.backends.molmoe.checkpoint_reader import CheckpointReader
from molmo_ros.backends.molmoe.checkpoint_source import CheckpointSource, resolve_checkpoint
from molmo_ros.backends.molmoe.config import MolmoConfig
from molmo_ros.backends.molmoe.key_mapping import load_reference_model
from molmo_ros.backends.molmoe.modeling import MolmoEForPointing
from molmo_ros.backends.molmoe.weights_cache import (
    CACHE_DIR_ENV_VAR,
    CACHEABLE_DTYPES,
    build_cache_entry,
    find_cache_entry,
    load_cached_model,
    pinned_hub_origin,
    source_origin,
    weights_cache_root,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedCheckpoint:
    model: MolmoEForPointing
    files_dir: Path  # config.json and tokenizer files for the preprocessor
    description: str  # for logs: what was loaded and from where


def load_model(
    source: CheckpointSource, device: torch.device, dtype: torch.dtype, quantization: str = "none"
) -> MolmoEForPointing:
    """Convert a reference checkpoint tensor by tensor into our model (built in eval mode) on `device`."""
    config = MolmoConfig.from_json_file(source.directory / "config.json")
    with (
        out_of_memory_guard(device, f"loading {source.describe()}"),
        CheckpointReader(source.weights) as reader,
    ):
        return load_reference_model(config, reader.get_tensor, reader.names, dtype, device, quantization)


def load_checkpoint(
    model: str,
    revision: str | None,
    device: torch.device,
    dtype: torch.dtype,
    *,
    use_cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    quantization: str = "none",
) -> LoadedCheckpoint:
    """Load through the weights cache when the dtype is a reduced one or the weights are quantized
    (converting on first use), else straight from the source. A hub id at a pinned commit that is
    already converted needs neither the network nor the HF cache any more."""
    caching = use_cache and (dtype in CACHEABLE_DTYPES or quantization != "none")
    root = weights_cache_root(cache_dir)
    pinned = pinned_hub_origin(model, revision)
    if (
        caching
        and pinned is not None
        and (entry := find_cache_entry(root, pinned, dtype, quantization)) is not None
    ):
        return _from_cache(entry, device, f"{model}@{pinned['revision']}")
    source = resolve_checkpoint(model, revision)
    if not caching:
        return LoadedCheckpoint(
            load_model(source, device, dtype, quantization), source.directory, source.describe()
        )
    entry = find_cache_entry(root, source_origin(source), dtype, quantization)
    if entry is None:
        log.info("converting %s to %s once; the result is kept in %s", source.describe(), dtype, root)
        try:
            entry = build_cache_entry(root, source, dtype, quantization)
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
            return LoadedCheckpoint(
                load_model(source, device, dtype, quantization), source.directory, source.describe()
            )
    return _from_cache(entry, device, source.describe())


def _from_cache(entry: Path, device: torch.device, description: str) -> LoadedCheckpoint:
    return LoadedCheckpoint(
        load_cached_model(entry, device), entry, f"{description} (converted weights in {entry})"
    )
