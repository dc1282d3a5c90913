"""Molmo2Backend on a tiny random Molmo2 in the hub's layout (conftest's `tiny_molmo2_dir`): the real loader
without remote code, token-for-token agreement with transformers' own save, one and two images, shared vision
work, cancel and progress, and the errors for a wrong checkpoint, an incomplete config or missing weights.
Its text is random."""

import importlib.util
import json
import shutil
import sys

import numpy as np
import PIL.Image
import pytest
import torch
from molmo2_tiny import AUTO_MAP, REMOTE_CODE_MARKER, WEIGHTS_FILE, build_native_molmo2, write_remote_code
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageTextToText, AutoProcessor

from molmo_ros.backends.errors import (
    GenerationCancelledError,
    IncompatibleCheckpointError,
    UnsupportedRequestError,
    WeightsNotFoundError,
)
from molmo_ros.backends.interface import GenerationControl, Stage
from molmo_ros.backends.molmo2 import MOLMO2_DEFAULT, Molmo2Backend, missing_config_fields
from molmo_ros.backends.settings import BackendSettings
from molmo_ros.nodes.parameters import with_parameter_names

MAX_NEW_TOKENS = 5
COMPARED_TOKENS = 12  # greedy tokens compared between two saves of the same weights
DYNAMIC_MODULES = "transformers_modules"  # the package transformers imports remote code into


@pytest.fixture(scope="module")
def backend(tiny_molmo2_dir):
    settings = BackendSettings(
        backend="molmo2", model=str(tiny_molmo2_dir), device="cpu", max_new_tokens=MAX_NEW_TOKENS
    )
    return Molmo2Backend.load(settings)


def frame(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def plain_answer(backend: Molmo2Backend, images, prompt: str) -> str:
    """The library's own path: processor inputs with pixels straight into generate, no shared features."""
    inputs = backend._prompt_inputs([PIL.Image.fromarray(image) for image in images], prompt)
    output = backend.model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    new_tokens = output[:, inputs["input_ids"].shape[1] :]
    return backend.processor.post_process_image_text_to_text(new_tokens, skip_special_tokens=True)[0]


def test_loads_through_the_real_loader_in_float32_on_cpu(backend, tiny_molmo2_dir):
    assert backend.name == "molmo2" and backend.max_concurrent_calls == 1 and backend.max_images > 1
    assert backend.device.type == "cpu" and backend.dtype == torch.float32
    assert backend.model_name == str(tiny_molmo2_dir)
    assert type(backend.model).__name__ == "Molmo2ForConditionalGeneration"


def test_hub_checkpoint_loads_without_its_remote_code(tiny_molmo2_dir, monkeypatch):
    """The checkpoint names remote code in auto_map, as the hub's do; the files it names leave a marker and
    fail when imported. Loading never asks for remote code and never imports them."""
    config = json.loads((tiny_molmo2_dir / "config.json").read_text())
    assert config["auto_map"] == AUTO_MAP and "vit_config" in config and "vision_config" not in config
    calls = []
    for loader in (AutoModelForImageTextToText, AutoProcessor):
        original = loader.from_pretrained.__func__

        def recording(cls, *args, _original=original, **kwargs):
            calls.append(kwargs)
            return _original(cls, *args, **kwargs)

        monkeypatch.setattr(loader, "from_pretrained", classmethod(recording))
    loaded = Molmo2Backend.load(BackendSettings(backend="molmo2", model=str(tiny_molmo2_dir), device="cpu"))
    assert len(calls) == 2 and not any(kwargs.get("trust_remote_code") for kwargs in calls)
    assert not (tiny_molmo2_dir / REMOTE_CODE_MARKER).exists()
    assert not [name for name in sys.modules if name.startswith(DYNAMIC_MODULES)]
    assert type(loaded.model).__module__.startswith("transformers.models.molmo2")
    loaded.close()


@pytest.mark.parametrize("remote_file", sorted({target.split(".")[0] for target in AUTO_MAP.values()}))
def test_remote_code_marker_appears_when_remote_code_is_imported(tmp_path, remote_file):
    """The control for the test above, without trust_remote_code (the project never passes it): each file
    auto_map names, imported from a copy elsewhere as a loader's modules cache would hold it, leaves its
    marker in the checkpoint's directory and fails."""
    checkpoint, cache = tmp_path / "checkpoint", tmp_path / "modules"
    checkpoint.mkdir()
    cache.mkdir()
    write_remote_code(checkpoint)
    copy = cache / f"{remote_file}.py"
    shutil.copy(checkpoint / f"{remote_file}.py", copy)
    module_name = f"remote_code_copy.{remote_file}"
    spec = importlib.util.spec_from_file_location(module_name, copy)
    with pytest.raises(ImportError, match="remote code was imported"):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    assert (checkpoint / REMOTE_CODE_MARKER).read_text() == module_name


def greedy_tokens(directory, image: np.ndarray, prompt: str) -> tuple[list[int], torch.Tensor]:
    """The greedy answer tokens and the first step's logits of the checkpoint in `directory`."""
    loaded = Molmo2Backend.load(BackendSettings(backend="molmo2", model=str(directory), device="cpu"))
    inputs = loaded._prompt_inputs([PIL.Image.fromarray(image)], prompt)
    with torch.inference_mode():
        logits = loaded.model(**inputs).logits[0, -1]
        output = loaded.model.generate(**inputs, max_new_tokens=COMPARED_TOKENS, do_sample=False)
    loaded.close()
    return output[0, inputs["input_ids"].shape[1] :].tolist(), logits


def test_hub_layout_answers_token_for_token_as_the_native_save(tiny_molmo2_dir, tmp_path):
    """Same weights, two layouts: the hub's config and embedding split must give the native save's answer.

    Both loads pass transformers' key check, so only the output catches a wrong half order in the fused
    `ff_proj` (gate and up): the same checkpoint with the halves swapped, built here, loads just as well and
    answers differently. The logits are compared exactly: the same weights run the same operations."""
    image, prompt = frame(48, 64, 7), "Point to the mug"
    native_tokens, native_logits = greedy_tokens(build_native_molmo2(tmp_path / "native"), image, prompt)
    hub_tokens, hub_logits = greedy_tokens(tiny_molmo2_dir, image, prompt)
    assert hub_tokens == native_tokens and len(hub_tokens) == COMPARED_TOKENS
    assert torch.equal(hub_logits, native_logits)

    swapped = tmp_path / "swapped"
    shutil.copytree(tiny_molmo2_dir, swapped)
    weights = load_file(swapped / WEIGHTS_FILE)
    for name in [name for name in weights if name.endswith("mlp.ff_proj.weight")]:
        first, second = weights[name].chunk(2)
        weights[name] = torch.cat([second, first])
    save_file(weights, swapped / WEIGHTS_FILE, metadata={"format": "pt"})
    swapped_tokens, swapped_logits = greedy_tokens(swapped, image, prompt)
    assert swapped_tokens != native_tokens
    assert not torch.allclose(swapped_logits, native_logits)


@pytest.mark.parametrize(
    "path, reported",
    [
        (("text_config",), "text_config"),
        (("vit_config",), "vit_config (or vision_config)"),
        (("adapter_config",), "adapter_config"),
        (("image_patch_id",), "image_patch_id"),
        (("text_config", "rope_theta"), "text_config.rope_theta (or rope_parameters)"),
        (("text_config", "qk_norm_type"), "text_config.qk_norm_type"),
        (("adapter_config", "vit_layers"), "adapter_config.vit_layers (or vision_feature_layer)"),
        (("vit_config", "num_hidden_layers"), "vit_config.num_hidden_layers"),
    ],
)
def test_config_missing_what_molmo2_needs_is_refused_naming_it(tiny_molmo2_dir, tmp_path, path, reported):
    """Without the check, transformers fills these with Molmo2-8B's values: an 8B model built in memory (no
    text_config), a failure at the first image (no image_patch_id), or wrong answers with no error."""
    checkpoint = tmp_path / "incomplete"
    shutil.copytree(tiny_molmo2_dir, checkpoint)
    config = json.loads((checkpoint / "config.json").read_text())
    section = config
    for key in path[:-1]:
        section = section[key]
    del section[path[-1]]
    (checkpoint / "config.json").write_text(json.dumps(config))
    with pytest.raises(IncompatibleCheckpointError) as failure:
        Molmo2Backend.load(BackendSettings(backend="molmo2", model=str(checkpoint), device="cpu"))
    message = str(failure.value)
    assert f"lacks what Molmo2 needs: {reported}" in message
    assert "original config.json" in message, "the message says how to fix it"


def test_native_save_passes_the_config_check(tmp_path):
    """transformers' own names (vision_config, vision_feature_layer, rope_parameters) are accepted too."""
    checkpoint = build_native_molmo2(tmp_path / "native")
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["model_type"] == "molmo2"
    assert "vision_config" in config and "vit_config" not in config, "a save with transformers' names"
    assert missing_config_fields(config) == []
    loaded = Molmo2Backend.load(BackendSettings(backend="molmo2", model=str(checkpoint), device="cpu"))
    try:
        assert type(loaded.model).__name__ == "Molmo2ForConditionalGeneration"
    finally:
        loaded.close()


@pytest.mark.parametrize(
    "images",
    [[frame(48, 64, 0)], [frame(48, 64, 0), frame(60, 40, 1)]],
    ids=["one-image", "two-images"],
)
def test_answers_every_prompt_as_the_library_would_without_sharing(backend, images):
    prompts = ["Point to the mug", "How many cups?"]
    answer = backend.generate(images, prompts)
    assert answer.texts == [plain_answer(backend, images, prompt) for prompt in prompts]
    assert all(1 <= tokens <= MAX_NEW_TOKENS for tokens in backend.last_timings.new_tokens)


def test_two_images_give_a_longer_prompt_than_one(backend):
    one = backend._prompt_inputs([PIL.Image.fromarray(frame(48, 64, 0))], "p")
    two = backend._prompt_inputs([PIL.Image.fromarray(frame(48, 64, 0))] * 2, "p")
    image_token = backend.model.config.image_token_id
    assert (two["input_ids"] == image_token).sum() == 2 * (one["input_ids"] == image_token).sum()


def test_vision_runs_once_for_all_prompts_of_a_call(backend, monkeypatch):
    calls = []
    original = backend.model.base_model.get_image_features

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(backend.model.base_model, "get_image_features", counting)
    backend.generate([frame(48, 64, 2)], ["a", "b", "c"])
    assert len(calls) == 1
    assert len(backend.last_timings.prefill_s) == 3


def test_shared_image_features_give_the_same_logits_as_pixels(backend):
    inputs = backend._prompt_inputs([PIL.Image.fromarray(frame(48, 64, 3))], "Point to the mug")
    with torch.inference_mode():
        from_pixels = backend.model(**inputs).logits
        features = backend.model.base_model.get_image_features(
            inputs["pixel_values"], inputs["image_token_pooling"], inputs["image_grids"], return_dict=True
        )
        shared = backend.model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            mm_token_type_ids=inputs["mm_token_type_ids"],
            mm_encoder_outputs={"image": features},
        ).logits
    assert torch.equal(from_pixels, shared)  # the same operations on the same values


def test_progress_reports_vision_then_each_decoded_token(backend):
    reports = []
    backend.generate([frame(48, 64, 0)], ["p"], GenerationControl(lambda *report: reports.append(report)))
    assert reports[0] == (Stage.VISION, 0)
    decoded = [tokens for stage, tokens in reports[1:] if stage == Stage.DECODING]
    assert decoded == list(range(1, len(decoded) + 1)) and len(decoded) == backend.last_timings.new_tokens[0]


def test_cancel_during_decoding_stops_and_raises(backend):
    reports = []

    def cancel_at_first_token(stage, tokens):
        reports.append((stage, tokens))
        if stage == Stage.DECODING:
            control.cancel()

    control = GenerationControl(cancel_at_first_token)
    with pytest.raises(GenerationCancelledError):
        backend.generate([frame(48, 64, 0)], ["first", "second"], control)
    assert [tokens for stage, tokens in reports if stage == Stage.DECODING] == [1]


def test_cancel_before_start_does_no_image_work(backend):
    reports = []
    control = GenerationControl(lambda *report: reports.append(report))
    control.cancel()
    with pytest.raises(GenerationCancelledError):
        backend.generate([frame(48, 64, 0)], ["p"], control)
    assert reports == []


def test_more_images_than_the_model_takes_are_refused(backend):
    with pytest.raises(UnsupportedRequestError, match="at most 8"):
        backend.generate([frame(8, 8, 0)] * 9, ["p"])


def test_model_comes_from_the_environment_when_the_setting_is_empty(tiny_molmo2_dir, monkeypatch):
    monkeypatch.setenv("MOLMO_MODEL", str(tiny_molmo2_dir))
    loaded = Molmo2Backend.load(BackendSettings(backend="molmo2", device="cpu"))
    assert loaded.model_name == str(tiny_molmo2_dir)
    loaded.close()
    assert loaded.model is None, "close() frees the model"


def test_molmoe_checkpoint_names_the_molmoe_backend(tiny_model_dir):
    with pytest.raises(IncompatibleCheckpointError, match="molmoe backend") as failure:
        Molmo2Backend.load(BackendSettings(backend="molmo2", model=str(tiny_model_dir), device="cpu"))
    assert "(parameter engine.backend)" in with_parameter_names(failure.value)


def test_molmo_7b_checkpoint_names_the_openai_backend(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "molmo", "architectures": ["MolmoForCausalLM"]})
    )
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(IncompatibleCheckpointError, match="MolmoForCausalLM.*openai backend") as failure:
        Molmo2Backend.load(BackendSettings(backend="molmo2", model=str(tmp_path), device="cpu"))
    assert "(parameter engine.backend, engine.url)" in with_parameter_names(failure.value)


def test_missing_directory_names_what_to_set(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(WeightsNotFoundError) as failure:
        Molmo2Backend.load(BackendSettings(backend="molmo2", model=str(missing)))
    message = with_parameter_names(failure.value)
    assert str(missing) in message
    assert all(name in message for name in ("engine.model", "MOLMO_MODEL", "HF_HOME"))


def test_directory_without_weights_is_weights_not_found(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "molmo2"}))
    with pytest.raises(WeightsNotFoundError, match="safetensors"):
        Molmo2Backend.load(BackendSettings(backend="molmo2", model=str(tmp_path)))


def test_uncached_hub_model_offline_names_model_revision_and_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(WeightsNotFoundError) as failure:
        Molmo2Backend.load(BackendSettings(backend="molmo2", model="allenai/Molmo2-8B"))
    message = with_parameter_names(failure.value)
    assert "allenai/Molmo2-8B" in message and f"revision {MOLMO2_DEFAULT.revision}" in message
    assert all(name in message for name in ("engine.model", "MOLMO_MODEL", "HF_HOME", "HF_HUB_OFFLINE"))
