"""MolmoEngine end to end on the tiny reference model (CPU, float32) against the reference goldens."""

import ast
import json
import shutil
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.numpy import load_file

from molmo_ros.backends.device import DTYPES, resolve_device, resolve_dtype
from molmo_ros.backends.errors import (
    BackendError,
    DeviceOutOfMemoryError,
    IncompatibleCheckpointError,
    InvalidImageError,
    InvalidSettingError,
)
from molmo_ros.backends.molmoe.engine import MolmoEngine
from molmo_ros.backends.settings import DTYPES as SETTING_DTYPES
from molmo_ros.backends.settings import BackendSettings
from molmo_ros.nodes.parameters import with_parameter_names

EOS = 50279


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> MolmoEngine:
    return MolmoEngine.load(BackendSettings(model=str(tiny_model_dir), device="cpu"))


@pytest.fixture(scope="module")
def summary(reference_dir: Path) -> dict:
    return json.loads((reference_dir / "model" / "summary.json").read_text())


def _case(reference_dir: Path, name: str) -> tuple[np.ndarray, str]:
    """The exact pixels and prompt the reference processor was given."""
    arrays = load_file(reference_dir / "preprocess" / f"{name}.safetensors")
    meta = json.loads((reference_dir / "preprocess" / f"{name}.json").read_text())
    assert meta["mode"] == "RGB"
    return arrays["input_image_uint8"], meta["prompt"]


def _until_eos(ids) -> list[int]:
    ids = [int(i) for i in ids]
    return ids[: ids.index(EOS)] if EOS in ids else ids


def test_settings_resolve_to_cpu_float32_for_the_tiny_model(engine):
    assert engine.device == torch.device("cpu")
    assert engine.dtype == torch.float32
    assert "tiny" in engine.model_name


@pytest.mark.parametrize("case", ["case_00", "case_02"])
def test_generate_reproduces_the_reference_greedy_answer(engine, reference_dir, summary, case):
    image, prompt = _case(reference_dir, case)
    golden = summary["cases"][case]["generate"]
    result = engine.generate(image, [prompt], max_new_tokens=16)
    assert result.token_ids == [_until_eos(golden["generated_ids"])]
    # The reference decoded with transformers' tokenizer (skip_special_tokens); our text must match it.
    assert result.texts == [ast.literal_eval(golden["generated_text_repr"])]


def test_pil_image_gives_the_same_answer_as_its_array(engine, reference_dir):
    image, prompt = _case(reference_dir, "case_00")
    from_array = engine.generate(image, [prompt], max_new_tokens=6)
    from_pil = engine.generate(PIL.Image.fromarray(image), [prompt], max_new_tokens=6)
    assert from_pil.token_ids == from_array.token_ids


def test_several_prompts_encode_the_image_once_and_match_single_runs(engine, reference_dir, monkeypatch):
    image, first_prompt = _case(reference_dir, "case_00")
    prompts = [first_prompt, "Describe this image.", 'pointing: Point to all occurrences of "apple"']
    singles = [engine.generate(image, [prompt], max_new_tokens=8).token_ids[0] for prompt in prompts]

    calls = []
    encode_images = engine.model.encode_images

    def counting_encode_images(*args, **kwargs):
        calls.append(args[0].shape)
        return encode_images(*args, **kwargs)

    monkeypatch.setattr(engine.model, "encode_images", counting_encode_images)
    # A new array object: the engine reuses the prefill of the object it saw last (test_fast_generation).
    result = engine.generate(image.copy(), prompts, max_new_tokens=8)
    assert len(calls) == 1 and calls[0][0] == 1  # one image in the vision batch, shared by 3 prompts
    assert result.token_ids == singles
    assert len(result.texts) == 3


def test_generate_batch_matches_the_reference_batched_run(engine, reference_dir, summary):
    (image_a, prompt_a), (image_b, prompt_b) = (
        _case(reference_dir, "case_00"),
        _case(reference_dir, "case_02"),
    )
    result = engine.generate_batch([image_a, image_b], [prompt_a, prompt_b], max_new_tokens=16)
    assert result.token_ids == [_until_eos(row) for row in summary["batched"]["generated_ids"]]


def test_timings_are_measured_and_tokens_counted(engine, reference_dir):
    image, prompt = _case(reference_dir, "case_00")
    result = engine.generate(image, [prompt, "Describe this image."], max_new_tokens=5)
    timings = result.timings
    stages = (
        timings.preprocess_s,
        timings.vision_s,
        timings.prefix_prefill_s,
        timings.prefill_s,
        timings.decode_s,
    )
    assert min(stages) > 0
    # The same floats summed in another order: pytest.approx's 1e-6 relative covers the rounding.
    assert timings.total_s == pytest.approx(sum(stages))
    assert timings.new_tokens == sum(len(ids) for ids in result.token_ids)
    assert 1 <= timings.steps <= 5


def test_max_new_tokens_limits_and_stop_at_eos_off_forces_the_length(engine, reference_dir):
    image, prompt = _case(reference_dir, "case_00")
    assert len(engine.generate(image, [prompt], max_new_tokens=3).token_ids[0]) <= 3
    forced = MolmoEngine(
        engine.model,
        engine.preprocessor,
        device=engine.device,
        dtype=engine.dtype,
        model_name=engine.model_name,
        max_new_tokens=7,
        stop_at_eos=False,
    )
    result = forced.generate(image, [prompt, "Describe this image."])
    assert [len(ids) for ids in result.token_ids] == [7, 7]
    assert result.timings.steps == 7


@pytest.mark.parametrize(
    "bad_image",
    [
        np.zeros((0, 10, 3), dtype=np.uint8),
        np.zeros((10, 10, 2), dtype=np.uint8),
        np.zeros((10, 10, 3), dtype=np.float32),
        np.zeros((10, 10, 3, 1), dtype=np.uint8),
        "not an image",
    ],
    ids=["empty", "two-channels", "float", "four-dims", "string"],
)
def test_invalid_images_raise_invalid_image_error(engine, bad_image):
    with pytest.raises(InvalidImageError):
        engine.generate(bad_image, ["Describe this image."])


def test_bad_prompt_arguments_are_rejected(engine, reference_dir):
    image, _ = _case(reference_dir, "case_00")
    with pytest.raises(TypeError):
        engine.generate(image, "Describe this image.")
    with pytest.raises(ValueError):
        engine.generate(image, [])
    with pytest.raises(ValueError):
        engine.generate(image, ["  "])
    with pytest.raises(ValueError):
        engine.generate_batch([image, image], ["only one prompt"])


def test_out_of_memory_becomes_engine_out_of_memory_error(engine, reference_dir, monkeypatch):
    image, prompt = _case(reference_dir, "case_00")

    def exhausted(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(engine.model, "encode_images", exhausted)
    with pytest.raises(DeviceOutOfMemoryError, match="cpu.*bfloat16"):
        engine.generate(image, [prompt])


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [(dict(dtype="int8"), "'int8'"), (dict(max_new_tokens=0), "max_new_tokens")],
)
def test_invalid_settings_are_rejected_saying_what_is_wrong(settings, fragment):
    with pytest.raises(ValueError, match=fragment):
        BackendSettings(**settings)


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "cpu:zero"])
def test_a_device_torch_cannot_use_is_refused_at_load_naming_the_setting(tmp_path, device):
    """BackendSettings is torch-free, so the device is checked when the engine loads, before any file."""
    with pytest.raises(InvalidSettingError, match=f"device setting.*'{device}'") as failure:
        MolmoEngine.load(BackendSettings(model=str(tmp_path / "not-read"), device=device))
    assert with_parameter_names(failure.value).endswith("(parameter engine.device)")


def test_empty_model_and_revision_mean_the_default_model_at_its_pinned_revision(monkeypatch):
    from molmo_ros.backends.molmoe import engine as engine_module
    from molmo_ros.backends.molmoe.defaults import MOLMOE_DEFAULT
    from molmo_ros.backends.settings import MODEL_ENV_VAR

    asked = {}

    def record_and_stop(model, revision, device, dtype, *, use_cache, cache_dir, quantization):
        asked.update(
            model=model,
            revision=revision,
            use_cache=use_cache,
            cache_dir=cache_dir,
            quantization=quantization,
        )
        raise BackendError("stop after recording what was asked for")

    monkeypatch.setattr(engine_module, "load_checkpoint", record_and_stop)
    monkeypatch.delenv(MODEL_ENV_VAR, raising=False)
    with pytest.raises(BackendError, match="stop after"):
        MolmoEngine.load(BackendSettings(device="cpu"), cache_weights=False)
    assert asked == dict(
        model=MOLMOE_DEFAULT.model_id,
        revision=MOLMOE_DEFAULT.revision,
        use_cache=False,
        cache_dir=None,
        quantization="none",
    )
    monkeypatch.setenv(MODEL_ENV_VAR, "acme/other-molmo")
    with pytest.raises(BackendError, match="stop after"):
        MolmoEngine.load(
            BackendSettings(device="cpu", revision="abc", cache_dir="/tmp/converted", quantization="int8")
        )
    assert asked == dict(
        model="acme/other-molmo",
        revision="abc",
        use_cache=True,
        cache_dir="/tmp/converted",
        quantization="int8",
    )


def test_close_frees_the_model_and_later_calls_say_the_engine_is_closed(tiny_model_dir, reference_dir):
    engine = MolmoEngine.load(BackendSettings(model=str(tiny_model_dir), device="cpu"))
    parameter = weakref.ref(engine.model.lm_head.weight)
    image, prompt = _case(reference_dir, "case_00")
    engine.generate(image, [prompt], max_new_tokens=2)
    engine.close()
    assert engine.closed and parameter() is None  # nothing in the engine keeps the weights alive
    with pytest.raises(BackendError, match="closed"):
        engine.generate(image, [prompt], max_new_tokens=2)
    engine.close()  # a second close is harmless


def test_device_and_dtype_resolution():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    assert {"auto", *DTYPES} == set(SETTING_DTYPES)  # every dtype the setting accepts resolves
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(InvalidSettingError, match="CUDA is not available"):
            resolve_device("cuda")


@pytest.mark.parametrize(
    "broken", ["config.json", "preprocessor_config.json", "tokenizer_config.json", "tokenizer.json"]
)
def test_malformed_json_is_an_incompatible_checkpoint_naming_the_file(tmp_path, tiny_model_dir, broken):
    directory = shutil.copytree(tiny_model_dir, tmp_path / "tiny_copy")
    (directory / broken).write_text('{"model_type": "molmo",')
    with pytest.raises(IncompatibleCheckpointError, match=broken):
        MolmoEngine.load(BackendSettings(model=str(directory), device="cpu"))


def test_unsupported_preprocessor_settings_are_an_incompatible_checkpoint(tmp_path, tiny_model_dir):
    directory = shutil.copytree(tiny_model_dir, tmp_path / "tiny_copy")
    settings_file = directory / "preprocessor_config.json"
    settings = json.loads(settings_file.read_text()) if settings_file.is_file() else {}
    settings["overlap_margins"] = [3, 3]
    settings_file.write_text(json.dumps(settings))
    with pytest.raises(IncompatibleCheckpointError, match="preprocessor_config.json"):
        MolmoEngine.load(BackendSettings(model=str(directory), device="cpu"))


def test_engine_package_errors_and_defaults_import_without_torch():
    """Code that only catches engine errors (the pointing service, the CLI's argument parsing) stays light."""
    code = (
        "import sys; import molmo_ros.backends.molmoe, molmo_ros.backends.errors, "
        "molmo_ros.backends.molmoe.defaults; "
        "heavy = {'torch', 'transformers'} & set(sys.modules); assert not heavy, heavy"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
