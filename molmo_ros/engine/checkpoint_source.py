"""Where the MolmoE weights come from: a local directory, or a Hugging Face model id at a pinned commit.

A hub id is looked up in the normal HF cache first; only when it is not there is it downloaded with
`huggingface_hub` (metadata and ONE weight format, never the repo's *.py files). Offline mode
(HF_HUB_OFFLINE) is respected, and a hub that cannot be reached is found out with one quick connection
attempt before the hub client is used: the client retries network errors five times with exponential
backoff (`huggingface_hub.utils._http._http_backoff_base`), which made an offline start wait ~30 s for its
error message.
"""

import os
import re
import socket
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from huggingface_hub import HfApi, constants, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from molmo_ros.engine.checkpoint_reader import (
    SAFETENSORS_FILE,
    SAFETENSORS_INDEX,
    TORCH_FILE,
    TORCH_INDEX,
    WeightFiles,
    find_weight_files,
)
from molmo_ros.engine.defaults import DEFAULT_MODEL_ID, DEFAULT_REVISION, MODEL_ENV_VAR
from molmo_ros.engine.errors import WeightsNotFoundError

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
HUB_PROBE_TIMEOUT_S = 3.0  # one TCP connection to the hub; a reachable hub answers in far less
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_TRUE_VALUES = {"1", "ON", "YES", "TRUE"}  # how huggingface_hub reads its boolean variables


@dataclass(frozen=True)
class CheckpointSource:
    """A resolved checkpoint: the directory holding config, tokenizer and weights, and where it came from."""

    model: str
    revision: str | None  # None for a local directory
    directory: Path
    weights: WeightFiles

    def describe(self) -> str:
        return str(self.directory) if self.revision is None else f"{self.model}@{self.revision}"


def is_hub_id(model: str) -> bool:
    """owner/name that is not an existing path: a Hugging Face model id."""
    return bool(_HUB_ID.match(model)) and not Path(model).expanduser().exists()


def is_commit(revision: str) -> bool:
    return bool(_COMMIT.match(revision))


def fix_hint(model: str, revision: str | None) -> str:
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
    return value.strip().upper() in _TRUE_VALUES


def hub_endpoint() -> str:
    """The hub's base URL, read from the environment now (huggingface_hub reads HF_ENDPOINT at import)."""
    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def hub_unreachable_reason(endpoint: str) -> str | None:
    """Why the hub cannot be reached (name not resolved, connection refused or timed out), or None.

    One connection attempt, bounded by HUB_PROBE_TIMEOUT_S, so an offline machine gets its error at once
    instead of after the hub client's retries. Where a proxy is configured for the endpoint (HTTPS_PROXY
    and friends, which the hub's HTTP client honours), the proxy is what must be reachable."""
    url = urlsplit(endpoint)
    if not url.hostname:
        return f"HF_ENDPOINT {endpoint!r} is not a URL"
    proxies = urllib.request.getproxies()
    proxy = proxies.get(url.scheme) or proxies.get("all")
    target = urlsplit(proxy) if proxy and not urllib.request.proxy_bypass(url.hostname) else url
    what = (
        f"the proxy {proxy} for the Hugging Face hub"
        if target is not url
        else f"the Hugging Face hub {endpoint}"
    )
    if not target.hostname:
        return f"{what} is not a URL"
    port = target.port or _DEFAULT_PORTS.get(target.scheme, _DEFAULT_PORTS["http"])
    try:
        with socket.create_connection((target.hostname, port), timeout=HUB_PROBE_TIMEOUT_S):
            return None
    except OSError as error:  # socket.gaierror (no DNS), ConnectionRefusedError, TimeoutError, ...
        return f"{what} cannot be reached ({type(error).__name__}: {error})"


def resolve_checkpoint(model: str, revision: str | None = DEFAULT_REVISION) -> CheckpointSource:
    """A local directory as is, or a hub id fetched (or found in the cache) at `revision`."""
    if is_hub_id(model):
        return _hub_checkpoint(model, revision or DEFAULT_REVISION)
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
    raise WeightsNotFoundError(f"No MolmoE weights found: {reason}. {fix_hint(model, None)}")


def _hub_checkpoint(model_id: str, revision: str) -> CheckpointSource:
    cache_dir = hub_cache_dir()
    cached = _cached_snapshot(model_id, revision, cache_dir)
    if cached is not None:
        return cached
    unavailable = hub_unavailable_reason(model_id, revision, cache_dir)
    if unavailable is not None:
        raise WeightsNotFoundError(f"No MolmoE weights found: {unavailable}. " + fix_hint(model_id, revision))
    endpoint = hub_endpoint()
    try:
        files = HfApi(endpoint=endpoint).list_repo_files(model_id, revision=revision)
        snapshot = snapshot_download(
            model_id,
            revision=revision,
            cache_dir=cache_dir,
            allow_patterns=_download_patterns(files),
            endpoint=endpoint,
        )
    except Exception as error:
        reason = download_failure_reason(error, model_id, revision)
    else:
        source = _snapshot_source(model_id, revision, Path(snapshot))
        if source is not None:
            return source
        reason = f"the download of {model_id} at revision {revision} has no config.json or no weight files"
    raise WeightsNotFoundError(f"No MolmoE weights found: {reason}. {fix_hint(model_id, revision)}")


def hub_unavailable_reason(model_id: str, revision: str, cache_dir: Path) -> str | None:
    """Why a model that is not in the Hugging Face cache cannot be downloaded now (offline mode, or the hub
    is unreachable: found with one short connection attempt instead of the hub client's retries), or None.
    Shared by every backend that loads from the hub."""
    not_cached = f"{model_id} at revision {revision} is not in the Hugging Face cache {cache_dir}"
    if hub_offline():
        return f"{not_cached}, and HF_HUB_OFFLINE is set so nothing can be downloaded"
    unreachable = hub_unreachable_reason(hub_endpoint())
    return None if unreachable is None else f"{not_cached}, and {unreachable}"


def download_failure_reason(error: Exception, model_id: str, revision: str) -> str:
    """Why a hub download failed, in words for the user."""
    if isinstance(error, RepositoryNotFoundError | GatedRepoError):
        return f"the Hugging Face repository {model_id} does not exist or needs access rights ({error})"
    if isinstance(error, RevisionNotFoundError):
        return f"{model_id} has no revision {revision} ({error})"
    # Anything else is the network or the disk failing (DNS, timeouts, refused connections from the
    # hub's HTTP client, HTTP errors, disk full); its types vary with huggingface_hub versions.
    return f"{model_id} at revision {revision} could not be downloaded: {type(error).__name__}: {error}"


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
