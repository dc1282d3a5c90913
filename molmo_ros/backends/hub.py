"""Which checkpoint a local backend loads, and fetching it from the Hugging Face hub: shared by molmoe and
molmo2, so both resolve "setting, else environment, else default" and report a missing checkpoint alike.

A hub id is looked up in the normal HF cache first; only when it is not there is it downloaded with
`huggingface_hub` (metadata and the weights the backend asks for, never the repository's *.py files).
Offline mode (HF_HUB_OFFLINE) is respected, and a hub that cannot be reached is found out with one quick
connection attempt before the hub client is used: the client retries network errors five times with
exponential backoff (`huggingface_hub.utils._http._http_backoff_base`), which made an offline start wait
~30 s for its error message.
"""

import os
import re
import socket
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from huggingface_hub import HfApi, constants, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from molmo_ros.backends.errors import WeightsNotFoundError
from molmo_ros.backends.settings import MODEL_ENV_VAR, DefaultModel, backend_setting

HUB_PROBE_TIMEOUT_S = 3.0  # one TCP connection to the hub; a reachable hub answers in far less
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_TRUE_VALUES = {"1", "ON", "YES", "TRUE"}  # how huggingface_hub reads its boolean variables


def weights_not_found(
    default: DefaultModel, reason: str, model: str, revision: str | None
) -> WeightsNotFoundError:
    """The one "no weights" error: what is missing, and the ways to provide it (names the model setting)."""
    hub = f"{model} at {revision}" if revision else f"{default.model_id} at {default.revision}"
    return WeightsNotFoundError(
        f"No {default.family} weights found: {reason}. To fix: set the model setting (or the environment "
        f"variable {MODEL_ENV_VAR}) to a local checkpoint directory holding config.json, the tokenizer files "
        f"and the weights, or let {hub} be found in the Hugging Face cache: set HF_HOME to a cache that "
        "already holds it, or go online (unset HF_HUB_OFFLINE) so it can be downloaded once.",
        [backend_setting("model")],
    )


def is_hub_id(model: str) -> bool:
    """owner/name that is not an existing path: a Hugging Face model id."""
    return bool(_HUB_ID.match(model)) and not Path(model).expanduser().exists()


def is_commit(revision: str) -> bool:
    return bool(_COMMIT.match(revision))


def fetch_snapshot(
    model_id: str,
    revision: str,
    default: DefaultModel,
    *,
    patterns: Callable[[list[str]], list[str]],
    is_complete: Callable[[Path], bool],
) -> Path:
    """The snapshot directory of `model_id` at `revision`: from the HF cache when it holds a complete one,
    else downloaded (only the files `patterns` picks from the repository's file list). Raises
    WeightsNotFoundError with the reason and the fix when neither works."""
    cache_dir = hub_cache_dir()
    try:
        cached = Path(
            snapshot_download(model_id, revision=revision, cache_dir=cache_dir, local_files_only=True)
        )
    except (LocalEntryNotFoundError, OSError):
        cached = None
    if cached is not None and is_complete(cached):
        return cached
    reason = _unavailable_reason(model_id, revision, cache_dir)
    if reason is None:
        endpoint = hub_endpoint()
        try:
            files = HfApi(endpoint=endpoint).list_repo_files(model_id, revision=revision)
            snapshot = Path(
                snapshot_download(
                    model_id,
                    revision=revision,
                    cache_dir=cache_dir,
                    allow_patterns=patterns(files),
                    endpoint=endpoint,
                )
            )
        except Exception as error:
            reason = _download_failure_reason(error, model_id, revision)
        else:
            if is_complete(snapshot):
                return snapshot
            reason = (
                f"the download of {model_id} at revision {revision} has no config.json or no weight files"
            )
    raise weights_not_found(default, reason, model_id, revision)


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


def _unavailable_reason(model_id: str, revision: str, cache_dir: Path) -> str | None:
    """Why a model that is not in the Hugging Face cache cannot be downloaded now (offline mode, or the hub
    is unreachable), or None."""
    not_cached = f"{model_id} at revision {revision} is not in the Hugging Face cache {cache_dir}"
    if hub_offline():
        return f"{not_cached}, and HF_HUB_OFFLINE is set so nothing can be downloaded"
    unreachable = hub_unreachable_reason(hub_endpoint())
    return None if unreachable is None else f"{not_cached}, and {unreachable}"


def _download_failure_reason(error: Exception, model_id: str, revision: str) -> str:
    """Why a hub download failed, in words for the user."""
    if isinstance(error, RepositoryNotFoundError | GatedRepoError):
        return f"the Hugging Face repository {model_id} does not exist or needs access rights ({error})"
    if isinstance(error, RevisionNotFoundError):
        return f"{model_id} has no revision {revision} ({error})"
    # Anything else is the network or the disk failing (DNS, timeouts, refused connections from the
    # hub's HTTP client, HTTP errors, disk full); its types vary with huggingface_hub versions.
    return f"{model_id} at revision {revision} could not be downloaded: {type(error).__name__}: {error}"
