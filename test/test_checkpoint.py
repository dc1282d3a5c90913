"""Checkpoint sources, formats, the converted-weights cache and the errors when weights are missing.

The tiny reference checkpoint (reference key names, safetensors) is re-written here in the other
layouts the engine must accept; every layout must give exactly the same model parameters.
"""

import json
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from molmo_ros.backends import hub
from molmo_ros.backends.errors import IncompatibleCheckpointError, WeightsNotFoundError
from molmo_ros.backends.molmoe import (
    checkpoint,
    checkpoint_reader,
    checkpoint_source,
    weights_cache,
)
from molmo_ros.backends.molmoe.config import MolmoConfig
from molmo_ros.backends.molmoe.defaults import MOLMOE_DEFAULT
from molmo_ros.backends.settings import MODEL_ENV_VAR
from molmo_ros.cli.point import with_option_names
from molmo_ros.nodes.parameters import with_parameter_names

CPU = torch.device("cpu")
FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def reference_tensors(tiny_model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(tiny_model_dir / "model.safetensors")


@pytest.fixture(scope="module")
def fp32_parameters(tiny_model_dir: Path) -> dict[str, torch.Tensor]:
    model = checkpoint.load_model(
        checkpoint_source.resolve_checkpoint(str(tiny_model_dir)), CPU, torch.float32
    )
    return {name: parameter.detach().clone() for name, parameter in model.named_parameters()}


def _metadata_only_copy(tiny_model_dir: Path, target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for name in checkpoint_source.METADATA_FILES:
        if (tiny_model_dir / name).is_file():
            shutil.copyfile(tiny_model_dir / name, target / name)
    return target


def _split(tensors: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    names = sorted(tensors)
    half = len(names) // 2
    return [{name: tensors[name] for name in names[:half]}, {name: tensors[name] for name in names[half:]}]


def _write_index(directory: Path, index_name: str, shards: dict[str, dict[str, torch.Tensor]]) -> None:
    weight_map = {name: file for file, tensors in shards.items() for name in tensors}
    (directory / index_name).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def _assert_same_parameters(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    loaded = dict(model.named_parameters())
    assert loaded.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(loaded[name], tensor), name


def _load(directory: Path, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    return checkpoint.load_model(checkpoint_source.resolve_checkpoint(str(directory)), CPU, dtype)


def test_local_safetensors_directory_loads_every_parameter(tiny_model_dir, reference_tensors):
    source = checkpoint_source.resolve_checkpoint(str(tiny_model_dir))
    assert source.revision is None and source.weights.format == "safetensors"
    model = checkpoint.load_model(source, CPU, torch.float32)
    assert not any(p.is_meta for p in model.parameters()) and not any(b.is_meta for b in model.buffers())
    assert not model.training
    # Spot-check the mapping independently of key_mapping: the untied head and the final norm are renames.
    assert torch.equal(model.lm_head.weight, reference_tensors["lm_head.weight"])
    assert torch.equal(model.llm.norm.weight, reference_tensors["model.transformer.ln_f.weight"])


def test_pytorch_bin_single_file(tmp_path, tiny_model_dir, reference_tensors, fp32_parameters):
    directory = _metadata_only_copy(tiny_model_dir, tmp_path / "bin")
    torch.save(reference_tensors, directory / "pytorch_model.bin")
    source = checkpoint_source.resolve_checkpoint(str(directory))
    assert source.weights.format == "torch"
    _assert_same_parameters(checkpoint.load_model(source, CPU, torch.float32), fp32_parameters)


def test_pytorch_bin_sharded_with_index(tmp_path, tiny_model_dir, reference_tensors, fp32_parameters):
    directory = _metadata_only_copy(tiny_model_dir, tmp_path / "bin_sharded")
    shards = {
        f"pytorch_model-0000{i + 1}-of-00002.bin": part for i, part in enumerate(_split(reference_tensors))
    }
    for file, tensors in shards.items():
        torch.save(tensors, directory / file)
    _write_index(directory, checkpoint_reader.TORCH_INDEX, shards)
    source = checkpoint_source.resolve_checkpoint(str(directory))
    assert len(source.weights.paths) == 2
    _assert_same_parameters(checkpoint.load_model(source, CPU, torch.float32), fp32_parameters)


def test_safetensors_sharded_with_index(tmp_path, tiny_model_dir, reference_tensors, fp32_parameters):
    directory = _metadata_only_copy(tiny_model_dir, tmp_path / "st_sharded")
    shards = {
        f"model-0000{i + 1}-of-00002.safetensors": part for i, part in enumerate(_split(reference_tensors))
    }
    for file, tensors in shards.items():
        save_file(tensors, directory / file)
    _write_index(directory, checkpoint_reader.SAFETENSORS_INDEX, shards)
    _assert_same_parameters(_load(directory), fp32_parameters)


def test_bin_holding_code_is_refused_not_unpickled(tmp_path, tiny_model_dir):
    directory = _metadata_only_copy(tiny_model_dir, tmp_path / "evil")
    torch.save(
        {"lm_head.weight": torch.zeros(2), "payload": Path("/etc/passwd")}, directory / "pytorch_model.bin"
    )
    with pytest.raises(IncompatibleCheckpointError, match="weights_only"):
        _load(directory)


@pytest.mark.parametrize("change", ["missing", "extra"])
def test_checkpoint_with_wrong_keys_is_incompatible(tmp_path, tiny_model_dir, reference_tensors, change):
    directory = _metadata_only_copy(tiny_model_dir, tmp_path / change)
    tensors = dict(reference_tensors)
    if change == "missing":
        del tensors["model.transformer.blocks.0.attn.att_proj.weight"]
    else:
        tensors["model.transformer.blocks.0.attn.surprise.weight"] = torch.zeros(3)
    save_file(tensors, directory / "model.safetensors")
    with pytest.raises(IncompatibleCheckpointError, match="att_proj" if change == "missing" else "surprise"):
        _load(directory)


def test_missing_directory_names_the_path_and_the_fix(tmp_path):
    missing = tmp_path / "no" / "such" / "checkpoint"
    with pytest.raises(WeightsNotFoundError) as raised:
        checkpoint_source.resolve_checkpoint(str(missing))
    assert str(missing) in str(raised.value) and MODEL_ENV_VAR in str(raised.value)
    assert "(parameter engine.model)" in with_parameter_names(raised.value)
    assert "(option --model)" in with_option_names(raised.value)


def test_directory_without_weights_says_so(tmp_path, tiny_model_dir):
    directory = _metadata_only_copy(tiny_model_dir, tmp_path / "config_only")
    with pytest.raises(WeightsNotFoundError, match="no weight files"):
        checkpoint_source.resolve_checkpoint(str(directory))


def test_hub_id_offline_with_empty_cache_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError) as raised:
        checkpoint_source.resolve_checkpoint(MOLMOE_DEFAULT.model_id, MOLMOE_DEFAULT.revision)
    message = with_option_names(raised.value)
    for expected in (
        MOLMOE_DEFAULT.model_id,
        MOLMOE_DEFAULT.revision,
        "HF_HUB_OFFLINE",
        "HF_HOME",
        "--model",
        MODEL_ENV_VAR,
        str(tmp_path / "hf" / "hub"),
    ):
        assert expected in message


def test_hub_id_found_in_the_hf_cache_while_offline(tmp_path, monkeypatch, tiny_model_dir, fp32_parameters):
    snapshot = tmp_path / "hf" / "hub" / "models--acme--tiny-molmo" / "snapshots" / FAKE_COMMIT
    snapshot.mkdir(parents=True)
    for file in tiny_model_dir.iterdir():
        (snapshot / file.name).symlink_to(file)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = checkpoint_source.resolve_checkpoint("acme/tiny-molmo", FAKE_COMMIT)
    assert source.directory == snapshot and source.revision == FAKE_COMMIT
    _assert_same_parameters(checkpoint.load_model(source, CPU, torch.float32), fp32_parameters)


def test_bfloat16_cache_is_built_once_then_loaded_directly(
    tmp_path, monkeypatch, tiny_model_dir, fp32_parameters
):
    cache_root = tmp_path / "cache"
    first = checkpoint.load_checkpoint(str(tiny_model_dir), None, CPU, torch.bfloat16, cache_dir=cache_root)
    (entry,) = [path for path in cache_root.iterdir() if not path.name.startswith(".")]
    assert first.files_dir == entry
    manifest = json.loads((entry / weights_cache.CACHE_MANIFEST).read_text())
    assert manifest["identity"]["dtype"] == "bfloat16"
    assert manifest["identity"]["source"]["model"] == str(tiny_model_dir)
    assert (entry / "config.json").is_file() and (entry / "tokenizer.json").is_file()
    # The cache holds exactly the fp32 weights rounded to bfloat16, in our key names.
    _assert_same_parameters(first.model, {k: v.to(torch.bfloat16) for k, v in fp32_parameters.items()})

    def no_conversion(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(weights_cache, "convert_weights", no_conversion)
    monkeypatch.setattr(checkpoint, "load_reference_model", no_conversion)
    second = checkpoint.load_checkpoint(str(tiny_model_dir), None, CPU, torch.bfloat16, cache_dir=cache_root)
    assert second.files_dir == entry
    _assert_same_parameters(second.model, dict(first.model.named_parameters()))
    assert not any(module.training for module in (*first.model.modules(), *second.model.modules()))


def test_cached_bfloat16_model_computes_like_the_fp32_model(tmp_path, tiny_model_dir, reference_dir):
    case = load_file(reference_dir / "preprocess" / "case_00.safetensors")
    inputs = dict(
        input_ids=case["input_ids"].long()[None],
        images=case["images"][None],
        image_masks=case["image_masks"][None],
        image_input_idx=case["image_input_idx"][None],
    )
    fp32 = _load(tiny_model_dir)
    cached = checkpoint.load_checkpoint(
        str(tiny_model_dir), None, CPU, torch.bfloat16, cache_dir=tmp_path
    ).model
    with torch.inference_mode():
        expected = fp32(**inputs).logits[0, -8:]
        actual = cached(**inputs).logits[0, -8:].float()
    # Measured: the bf16 cache is 0.66 % of the largest logit off the fp32 logits here, with top-1 agreeing
    # at all 8 positions (bf16 rounding is 0.4 % per operation). The bounds test that it is bf16 of the same
    # weights, not a different model; test_modeling holds the precise bf16 bounds.
    scale = expected.abs().max()
    assert (actual - expected).abs().max() < 0.05 * scale
    assert (actual.argmax(-1) == expected.argmax(-1)).float().mean() >= 0.75


def test_cache_is_rebuilt_when_the_local_weights_change(tmp_path, tiny_model_dir):
    directory = shutil.copytree(tiny_model_dir, tmp_path / "tiny_copy")
    cache_root = tmp_path / "cache"
    checkpoint.load_checkpoint(str(directory), None, CPU, torch.bfloat16, cache_dir=cache_root)
    weights = directory / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    checkpoint.load_checkpoint(str(directory), None, CPU, torch.bfloat16, cache_dir=cache_root)
    entries = [path for path in cache_root.iterdir() if not path.name.startswith(".")]
    assert len(entries) == 2


@pytest.mark.parametrize("edited", ["config.json", "tokenizer.json", "tokenizer_config.json"])
def test_cache_is_rebuilt_when_the_local_config_or_tokenizer_changes(tmp_path, tiny_model_dir, edited):
    directory = shutil.copytree(tiny_model_dir, tmp_path / "tiny_copy")
    cache_root = tmp_path / "cache"
    first = checkpoint.load_checkpoint(str(directory), None, CPU, torch.bfloat16, cache_dir=cache_root)
    changed = directory / edited
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    second = checkpoint.load_checkpoint(str(directory), None, CPU, torch.bfloat16, cache_dir=cache_root)
    assert second.files_dir != first.files_dir


def test_float32_skips_the_cache(tmp_path, tiny_model_dir):
    loaded = checkpoint.load_checkpoint(
        str(tiny_model_dir), None, CPU, torch.float32, cache_dir=tmp_path / "c"
    )
    assert loaded.files_dir == tiny_model_dir
    assert not (tmp_path / "c").exists()


def test_cache_root_defaults(monkeypatch, tmp_path):
    monkeypatch.delenv(weights_cache.CACHE_DIR_ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights_cache.weights_cache_root() == tmp_path / "xdg" / "molmo_ros"
    monkeypatch.setenv(weights_cache.CACHE_DIR_ENV_VAR, str(tmp_path / "env"))
    assert weights_cache.weights_cache_root() == tmp_path / "env"
    assert weights_cache.weights_cache_root(tmp_path / "explicit") == tmp_path / "explicit"


@pytest.fixture
def hub_env(tmp_path, monkeypatch) -> None:
    """An empty HF cache, online mode, no proxy (a proxy would be probed instead of the endpoint)."""
    for scheme in ("http", "https", "all"):
        monkeypatch.delenv(f"{scheme}_proxy", raising=False)
        monkeypatch.delenv(f"{scheme.upper()}_PROXY", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")


def test_hub_download_failure_online_is_weights_not_found(hub_env, monkeypatch):
    class FakeFailingHub:
        def __init__(self, endpoint=None):
            pass

        def list_repo_files(self, repo_id, revision=None):
            raise RuntimeError("Read timed out")  # what an HTTP client raises varies

    monkeypatch.setattr(hub, "HfApi", FakeFailingHub)
    with socket.create_server(("127.0.0.1", 0)) as reachable_hub:  # the probe's connection is queued
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{reachable_hub.getsockname()[1]}")
        with pytest.raises(
            WeightsNotFoundError, match="could not be downloaded: RuntimeError: Read timed out"
        ):
            checkpoint_source.resolve_checkpoint("acme/tiny-molmo", FAKE_COMMIT)


def _closed_local_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as server:
        return server.getsockname()[1]


@pytest.mark.parametrize(
    ("endpoint", "why"),
    [
        (f"http://127.0.0.1:{_closed_local_port()}", "ConnectionRefusedError"),
        ("http://molmo-ros-test.invalid", "gaierror"),  # .invalid never resolves (RFC 2606)
    ],
    ids=["connection-refused", "unresolvable"],
)
def test_unreachable_hub_fails_at_once_without_the_hub_clients_retries(hub_env, monkeypatch, endpoint, why):
    """The hub client retries network errors five times with backoff (~30 s); one probe must decide."""
    import huggingface_hub.utils._http as hub_http

    retried = []

    def record_backoff(*args, **kwargs):
        retried.append(args)
        raise OSError("the hub client's retry loop was entered")

    monkeypatch.setattr(hub_http, "_http_backoff_base", record_backoff)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    with pytest.raises(WeightsNotFoundError, match=f"cannot be reached \\({why}") as raised:
        checkpoint_source.resolve_checkpoint("acme/tiny-molmo", FAKE_COMMIT)
    assert retried == []
    assert endpoint in str(raised.value) and MODEL_ENV_VAR in str(raised.value)


def test_converted_pinned_hub_commit_loads_without_the_hf_cache(tmp_path, monkeypatch, tiny_model_dir):
    hf_home = tmp_path / "hf"
    snapshot = hf_home / "hub" / "models--acme--tiny-molmo" / "snapshots" / FAKE_COMMIT
    snapshot.mkdir(parents=True)
    for file in tiny_model_dir.iterdir():
        (snapshot / file.name).symlink_to(file)
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache_root = tmp_path / "cache"
    first = checkpoint.load_checkpoint(
        "acme/tiny-molmo", FAKE_COMMIT, CPU, torch.bfloat16, cache_dir=cache_root
    )
    shutil.rmtree(hf_home)  # e.g. the 29 GB download deleted after the conversion
    second = checkpoint.load_checkpoint(
        "acme/tiny-molmo", FAKE_COMMIT, CPU, torch.bfloat16, cache_dir=cache_root
    )
    assert second.files_dir == first.files_dir and "acme/tiny-molmo@" + FAKE_COMMIT in second.description
    _assert_same_parameters(second.model, dict(first.model.named_parameters()))
    with pytest.raises(WeightsNotFoundError):  # another dtype was never converted
        checkpoint.load_checkpoint("acme/tiny-molmo", FAKE_COMMIT, CPU, torch.float16, cache_dir=cache_root)


def test_unwritable_cache_falls_back_to_loading_from_the_source(
    tmp_path, tiny_model_dir, fp32_parameters, caplog
):
    (tmp_path / "afile").write_text("a file, so no directory can be made under it")
    cache_root = tmp_path / "afile" / "sub"
    with caplog.at_level("WARNING", logger=checkpoint.__name__):
        loaded = checkpoint.load_checkpoint(
            str(tiny_model_dir), None, CPU, torch.bfloat16, cache_dir=cache_root
        )
    assert loaded.files_dir == tiny_model_dir
    assert str(cache_root) in caplog.text and "without the weights cache" in caplog.text
    _assert_same_parameters(loaded.model, {k: v.to(torch.bfloat16) for k, v in fp32_parameters.items()})


def test_failed_shard_write_falls_back_and_leaves_no_entry(tmp_path, monkeypatch, tiny_model_dir):
    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(weights_cache, "save_file", disk_full)
    cache_root = tmp_path / "cache"
    loaded = checkpoint.load_checkpoint(str(tiny_model_dir), None, CPU, torch.bfloat16, cache_dir=cache_root)
    assert loaded.files_dir == tiny_model_dir
    assert list(cache_root.iterdir()) == []


def test_entry_completed_by_another_process_during_conversion_is_used(tmp_path, monkeypatch, tiny_model_dir):
    """Two processes convert at once; the one that finishes second keeps the first one's entry."""
    cache_root = tmp_path / "cache"
    source = checkpoint_source.resolve_checkpoint(str(tiny_model_dir))
    first = weights_cache.build_cache_entry(cache_root, source, torch.bfloat16)
    manifest_before = (first / weights_cache.CACHE_MANIFEST).stat().st_mtime_ns

    def must_not_delete(*args, **kwargs):
        raise AssertionError("a complete entry must not be deleted")

    rmtree = shutil.rmtree
    monkeypatch.setattr(
        weights_cache.shutil,
        "rmtree",
        lambda path, *args, **kwargs: (must_not_delete if Path(path) == first else rmtree)(
            path, *args, **kwargs
        ),
    )
    second = weights_cache.build_cache_entry(cache_root, source, torch.bfloat16)
    assert second == first
    assert (first / weights_cache.CACHE_MANIFEST).stat().st_mtime_ns == manifest_before
    assert [path.name for path in cache_root.iterdir()] == [first.name]


def test_hub_behind_a_proxy_is_probed_through_the_proxy(hub_env, monkeypatch):
    """The hub client honours HTTPS_PROXY, so a hub reachable only through a proxy is not refused."""
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    with socket.create_server(("127.0.0.1", 0)) as proxy:
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.getsockname()[1]}")
        assert hub.hub_unreachable_reason("https://molmo-ros-test.invalid") is None
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{_closed_local_port()}")
    reason = hub.hub_unreachable_reason("https://molmo-ros-test.invalid")
    assert reason is not None and "proxy" in reason and "ConnectionRefusedError" in reason


# Hand-written excerpts of the config.json of the other public Molmo checkpoints (only the fields the
# check reads, plus a few that show what kind of model it is).
MOLMO2_CONFIG = {
    "architectures": ["Molmo2ForConditionalGeneration"],
    "model_type": "molmo2",
    "text_config": {"hidden_size": 4096, "model_type": "molmo2_text"},
}
MOLMO_7B_D_CONFIG = {
    "architectures": ["MolmoForCausalLM"],
    "model_type": "molmo",
    "hidden_size": 3584,
    "num_attention_heads": 28,
    "num_hidden_layers": 28,
    "qkv_bias": True,
    "vocab_size": 152064,
}


@pytest.mark.parametrize(
    ("config", "backend"),
    [(MOLMO2_CONFIG, "molmo2 backend"), (MOLMO_7B_D_CONFIG, "openai backend")],
    ids=["molmo2", "molmo-7b-d"],
)
def test_other_molmo_checkpoints_are_refused_naming_the_backend_that_runs_them(tmp_path, config, backend):
    directory = tmp_path / config["model_type"]
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(config))
    save_file({"unused": torch.zeros(1)}, directory / "model.safetensors")
    with pytest.raises(IncompatibleCheckpointError, match=backend):
        _load(directory)


def test_molmoe_config_is_not_mistaken_for_another_molmo(reference_dir):
    config = json.loads((reference_dir / "real_config.json").read_text())
    assert config["model_type"] == "molmo"  # MolmoE shares the model type with the dense Molmo-7B models
    assert MolmoConfig.from_dict(config).num_experts == 64
