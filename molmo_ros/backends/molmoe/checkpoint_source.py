"""Where the MolmoE weights come from: a local directory, or a Hugging Face model id at a pinned commit
(fetched by `molmo_ros.backends.hub`, with metadata and ONE weight format)."""

from dataclasses import dataclass
from pathlib import Path

from molmo_ros.backends.hub import fetch_snapshot, is_hub_id, weights_not_found
from molmo_ros.backends.molmoe.checkpoint_reader import (
    SAFETENSORS_FILE,
    SAFETENSORS_INDEX,
    TORCH_FILE,
    TORCH_INDEX,
    WeightFiles,
    find_weight_files,
)
from molmo_ros.backends.molmoe.defaults import MOLMOE_DEFAULT

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


@dataclass(frozen=True)
class CheckpointSource:
    """A resolved checkpoint: the directory holding config, tokenizer and weights, and where it came from."""

    model: str
    revision: str | None  # None for a local directory
    directory: Path
    weights: WeightFiles

    def describe(self) -> str:
        return str(self.directory) if self.revision is None else f"{self.model}@{self.revision}"


def resolve_checkpoint(model: str, revision: str | None = MOLMOE_DEFAULT.revision) -> CheckpointSource:
    """A local directory as is, or a hub id fetched (or found in the cache) at `revision`."""
    if is_hub_id(model):
        revision = revision or MOLMOE_DEFAULT.revision
        snapshot = fetch_snapshot(
            model, revision, MOLMOE_DEFAULT, patterns=_download_patterns, is_complete=_is_complete
        )
        return CheckpointSource(model, revision, snapshot, find_weight_files(snapshot))
    return _local_checkpoint(model, Path(model).expanduser())


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
    raise weights_not_found(MOLMOE_DEFAULT, reason, model, None)


def _is_complete(snapshot: Path) -> bool:
    return (snapshot / "config.json").is_file() and find_weight_files(snapshot) is not None


def _download_patterns(repo_files: list[str]) -> list[str]:
    """Metadata plus ONE weight format (safetensors if published), so nothing is downloaded twice."""
    names = set(repo_files)
    if SAFETENSORS_INDEX in names or SAFETENSORS_FILE in names:
        weights = [SAFETENSORS_INDEX, "model*.safetensors"]
    else:
        weights = [TORCH_INDEX, "pytorch_model*.bin"]
    return [*METADATA_FILES, *weights]
