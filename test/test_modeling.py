"""The composed MolmoE model against the forward goldens of AI2's reference code (tiny model, fp32, CPU).

Inputs are the reference processor's tensors from the golden files (not our preprocessing), so these tests
check only the model. Tolerances come from measured error levels (docs/ENGINE.md, "Numerics"):
- logits-scale tensors (logits, the final normalized hidden state, ViT block outputs) and text-only hidden
  states: 1e-4 absolute, the bound suggested for an independent fp32 implementation; transformers' CLIP
  and OLMoE modules were measured within 9.5e-6 (ViT blocks, values up to ~16) and 2.9e-6 (logits) of the
  reference, and this engine's logits and final hidden state within 1.3e-5 of every golden, at 1 and 2
  threads.
- hidden states that carry image features (connector activations, block inputs at image positions):
  2e-3 absolute, or 1e-5 of the tensor's largest magnitude where that is more. These reach ~175 in case_03,
  where the reference's own fp32 result was measured up to 4.6e-4 from a float64 run, and a correct fp32
  implementation 5.6e-4 (AMD EPYC) and 2.9e-4 (here) from the golden.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from molmo_ros.backends.errors import IncompatibleCheckpointError
from molmo_ros.backends.molmoe.config import MolmoConfig
from molmo_ros.backends.molmoe.key_mapping import load_reference_model
from molmo_ros.backends.molmoe.modeling import MolmoEForPointing

LOGITS_ATOL = 1e-4  # see the module docstring for the measurements behind each bound
IMAGE_HIDDEN_ATOL = 2e-3
IMAGE_HIDDEN_RELATIVE_TO_MAX = 1e-5
# bf16 weights against the fp32 goldens. Measured with this engine: the tiny model is 0.029 off
# logits_last8 of case_00 with 99.7 % top-1 agreement (0.11 and 94.9 % on the 13-crop case_03); at the real
# widths 0.043 and 95.4 % (docs/ENGINE.md). The bounds leave about twice the worst measured logit error and
# ask for the agreement measured at the real widths.
BF16_LOGITS_ATOL = 0.25
BF16_MIN_TOP1_AGREEMENT = 0.95


def assert_matches(actual: torch.Tensor, expected: torch.Tensor, name: str = "") -> None:
    """Logits-scale bound (LOGITS_ATOL)."""
    torch.testing.assert_close(actual, expected, atol=LOGITS_ATOL, rtol=0, msg=lambda m: f"{name}: {m}")


def assert_image_hidden_matches(actual: torch.Tensor, expected: torch.Tensor, name: str = "") -> None:
    """Bound for hidden states that carry image features (IMAGE_HIDDEN_*)."""
    atol = max(IMAGE_HIDDEN_ATOL, IMAGE_HIDDEN_RELATIVE_TO_MAX * expected.abs().max().item())
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0, msg=lambda m: f"{name}: {m}")


def load_tiny(tiny_model_dir: Path, dtype: torch.dtype, **model_options: str) -> MolmoEForPointing:
    config = MolmoConfig.from_json_file(tiny_model_dir / "config.json")
    with safe_open(tiny_model_dir / "model.safetensors", "pt") as checkpoint:
        return load_reference_model(config, checkpoint.get_tensor, checkpoint.keys(), dtype, **model_options)


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir: Path) -> MolmoEForPointing:
    return load_tiny(tiny_model_dir, torch.float32)


def model_inputs(reference_dir: Path, case: str) -> dict[str, torch.Tensor]:
    """The processor golden with a batch axis, as the reference forward was called."""
    tensors = load_file(reference_dir / "preprocess" / f"case_{case}.safetensors")
    inputs = {"input_ids": tensors["input_ids"].long()[None]}
    if "images" in tensors:
        inputs.update({name: tensors[name][None] for name in ("images", "image_masks", "image_input_idx")})
    return inputs


@pytest.mark.parametrize("case", ["00", "03", "06"])
def test_forward_matches_reference(tiny_model, reference_dir, case, torch_threads):
    golden = load_file(reference_dir / "model" / f"forward_case_{case}.safetensors")
    captured: dict[str, torch.Tensor] = {}

    def capture_pooling(module, args, output):
        captured.update(pooling_query_in=args[0], pooling_kv_in=args[1], pooling_out=output)

    hooks = [tiny_model.connector.pooling.register_forward_hook(capture_pooling)]
    for block in (0, 14, 21):
        hooks.append(
            tiny_model.vision.encoder.layers[block].register_forward_hook(
                lambda module, args, output, block=block: captured.update({f"vit_block_out_{block}": output})
            )
        )
    try:
        with torch.inference_mode():
            out = tiny_model(**model_inputs(reference_dir, case), output_hidden_states=True)
    finally:
        for hook in hooks:
            hook.remove()

    logits = out.logits[0]
    top5 = logits.topk(5, dim=-1)
    assert torch.equal(top5.indices[:, 0], golden["logits_top5_ids"][:, 0])
    assert_matches(top5.values, golden["logits_top5_values"], "logits_top5_values")
    assert_matches(logits[-8:], golden["logits_last8"], "logits_last8")
    assert_matches(logits.logsumexp(dim=-1), golden["logits_logsumexp"], "logits_logsumexp")
    as_f64 = logits.double()
    checksums = torch.stack([as_f64.sum(), as_f64.abs().sum(), as_f64.square().sum()])
    # Sums over T x 50304 fp32 logits: 1e-6 relative is ~100 fp32 roundings of the total; the absolute 1.0
    # covers the signed sum, whose terms cancel (its error is set by the sum of magnitudes, not by itself).
    torch.testing.assert_close(checksums, golden["logits_checksums_f64"], atol=1.0, rtol=1e-6)

    n_layers = tiny_model.config.n_layers
    block_inputs = torch.stack([hidden[0] for hidden in out.hidden_states[:n_layers]])
    assert_image_hidden_matches(block_inputs, golden["block_inputs"], "block_inputs")
    assert_matches(out.last_hidden_state[0], golden["final_hidden_after_ln_f"], "final_hidden_after_ln_f")

    vision_goldens = sorted(name for name in golden if name.startswith(("pooling_", "vit_block_out_")))
    if case == "06":
        assert out.image_features is None and not captured
    else:
        assert_image_hidden_matches(
            out.image_features, golden["image_features_connector_out"], "image_features_connector_out"
        )
        assert vision_goldens, "image cases carry pooling goldens"
    for name in vision_goldens:
        check = assert_matches if name.startswith("vit_block_out_") else assert_image_hidden_matches
        check(captured[name], golden[name], name)


def test_bfloat16_weights_stay_close_to_fp32_reference(tiny_model_dir, reference_dir):
    """bf16 weights; the pooling attention and RoPE tables stay fp32."""
    model = load_tiny(tiny_model_dir, torch.bfloat16)
    assert model.llm.rotary_emb.inv_freq.dtype == torch.float32
    golden = load_file(reference_dir / "model" / "forward_case_00.safetensors")
    with torch.inference_mode():
        logits = model(**model_inputs(reference_dir, "00")).logits[0].float()
    assert (logits[-8:] - golden["logits_last8"]).abs().max() < BF16_LOGITS_ATOL
    agreement = (logits.argmax(dim=-1) == golden["logits_top5_ids"][:, 0]).float().mean()
    assert agreement > BF16_MIN_TOP1_AGREEMENT


@pytest.mark.parametrize("experts_implementation", ["eager", "batched_mm", "grouped_mm"])
def test_every_experts_implementation_matches_reference(
    tiny_model_dir, reference_dir, experts_implementation, torch_threads
):
    model = load_tiny(tiny_model_dir, torch.float32, experts_implementation=experts_implementation)
    assert model.llm.config._experts_implementation == experts_implementation
    golden = load_file(reference_dir / "model" / "forward_case_06.safetensors")
    with torch.inference_mode():
        logits = model(**model_inputs(reference_dir, "06")).logits[0]
    assert_matches(logits[-8:], golden["logits_last8"], "logits_last8")


def test_builds_real_size_model_on_meta_device(reference_dir):
    config = MolmoConfig.from_json_file(reference_dir / "real_config.json")
    with torch.device("meta"):
        model = MolmoEForPointing(config)
    assert model.lm_head.weight.shape == (50304, 2048)
    assert model.llm.embed_tokens.weight.shape == (50304 + 128, 2048)
    # Block 22 of the ViT feeds nothing (the connector reads blocks 21 and 14), so it is not built.
    assert len(model.vision.encoder.layers) == 22


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("block_type", "sequential"),
        ("clip_qkv", 8.0),
        ("image_pooling_2d", "attention"),
        ("image_padding_embed", "pad_embed"),
        ("weight_tying", True),
        ("n_kv_heads", 4),
        ("vit_layers", [-30]),
    ],
)
def test_config_rejects_unsupported_settings_naming_the_field(reference_dir, field, value):
    settings = json.loads((reference_dir / "real_config.json").read_text())
    settings[field] = value
    with pytest.raises(IncompatibleCheckpointError, match=field):
        MolmoConfig.from_dict(settings)


def test_config_reports_missing_vision_field(reference_dir):
    settings = json.loads((reference_dir / "real_config.json").read_text())
    del settings["vision_backbone"]["image_emb_dim"]
    with pytest.raises(IncompatibleCheckpointError, match="vision_backbone.image_emb_dim"):
        MolmoConfig.from_dict(settings)
