"""Reference checkpoint names -> our state_dict, checked against the real model's key list on the meta device
(no weights needed) and, for the numeric layout changes, against the tiny checkpoint."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from molmo_ros.backends.errors import IncompatibleCheckpointError
from molmo_ros.backends.molmoe.config import MolmoConfig
from molmo_ros.backends.molmoe.key_mapping import (
    convert_reference_state_dict,
    expected_reference_shapes,
    load_reference_weights,
)
from molmo_ros.backends.molmoe.modeling import MolmoEForPointing


@pytest.fixture(scope="module")
def real_config(reference_dir: Path) -> MolmoConfig:
    return MolmoConfig.from_json_file(reference_dir / "real_config.json")


@pytest.fixture(scope="module")
def real_shapes(reference_dir: Path) -> dict[str, tuple[int, ...]]:
    listing = json.loads((reference_dir / "real_checkpoint_keys.json").read_text())
    return {entry["key"]: tuple(entry["shape"]) for entry in listing["keys"]}


def meta_reader(shapes: dict[str, tuple[int, ...]]):
    return lambda name: torch.empty(shapes[name], device="meta")


def test_expected_shapes_are_exactly_the_real_checkpoint(real_config, real_shapes):
    assert len(real_shapes) == 3573
    assert expected_reference_shapes(real_config) == real_shapes


def test_every_model_parameter_is_produced_once_with_its_shape(real_config, real_shapes):
    with torch.device("meta"):
        model = MolmoEForPointing(real_config)
    converted = list(
        convert_reference_state_dict(meta_reader(real_shapes), real_shapes, real_config, torch.bfloat16)
    )
    names = [name for name, _ in converted]
    assert len(names) == len(set(names))
    parameters = dict(model.named_parameters())
    assert set(names) == set(parameters) == set(model.state_dict())
    for name, tensor in converted:
        assert tensor.shape == parameters[name].shape, name
        assert tensor.dtype == torch.bfloat16, name
    # Only the ViT block after the last one the connector reads (22) is read by nothing.
    assert sum(tensor.numel() for tensor in parameters.values()) == 7_221_875_712 - 12_596_224


def test_load_fills_a_meta_model_and_rebuilds_buffers(real_config, real_shapes):
    with torch.device("meta"):
        model = MolmoEForPointing(real_config)
    load_reference_weights(model, meta_reader(real_shapes), real_shapes, torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert model.llm.rotary_emb.inv_freq.dtype == torch.float32


def test_missing_and_unexpected_keys_are_named(real_config, real_shapes):
    names = set(real_shapes) - {"model.transformer.blocks.3.mlp.experts.17.up_proj.weight"}
    names.add("model.transformer.blocks.3.mlp.shared_expert.weight")
    with pytest.raises(IncompatibleCheckpointError) as error:
        next(convert_reference_state_dict(meta_reader(real_shapes), names, real_config, torch.float32))
    message = str(error.value)
    assert "missing keys: model.transformer.blocks.3.mlp.experts.17.up_proj.weight (1 in all)" in message
    assert "unexpected keys: model.transformer.blocks.3.mlp.shared_expert.weight (1 in all)" in message


def test_many_missing_keys_are_summarised_with_a_count(real_config, real_shapes):
    names = [name for name in real_shapes if ".experts." not in name]  # 16 layers x 64 experts x 3
    with pytest.raises(IncompatibleCheckpointError, match=r"\.\.\. and 3067 more \(3072 in all\)"):
        next(convert_reference_state_dict(meta_reader(real_shapes), names, real_config, torch.float32))


def test_wrong_shapes_are_named(real_config, real_shapes):
    shapes = dict(real_shapes)
    shapes["lm_head.weight"] = (50280, 2048)
    with pytest.raises(IncompatibleCheckpointError, match=r"lm_head.weight has shape \(50280, 2048\)"):
        list(convert_reference_state_dict(meta_reader(shapes), shapes, real_config, torch.float32))


def test_layout_changes_on_tiny_weights(tiny_model_dir):
    """Fused experts, split attention projection, joined embeddings and the conv patch embedding, each
    rebuilt independently from the reference tensors."""
    config = MolmoConfig.from_json_file(tiny_model_dir / "config.json")
    with safe_open(tiny_model_dir / "model.safetensors", "pt") as checkpoint:
        ours = dict(
            convert_reference_state_dict(checkpoint.get_tensor, checkpoint.keys(), config, torch.float32)
        )
        reference = {name: checkpoint.get_tensor(name) for name in checkpoint.keys()}
    block = "model.transformer.blocks.1"
    for expert in (0, 17, 63):
        gate = reference[f"{block}.mlp.experts.{expert}.gate_proj.weight"]
        up = reference[f"{block}.mlp.experts.{expert}.up_proj.weight"]
        down = reference[f"{block}.mlp.experts.{expert}.down_proj.weight"]
        assert torch.equal(ours["llm.layers.1.mlp.experts.gate_up_proj"][expert], torch.cat([gate, up]))
        assert torch.equal(ours["llm.layers.1.mlp.experts.down_proj"][expert], down)
    q, k, v = reference[f"{block}.attn.att_proj.weight"].chunk(3)
    assert torch.equal(ours["llm.layers.1.self_attn.q_proj.weight"], q)
    assert torch.equal(ours["llm.layers.1.self_attn.k_proj.weight"], k)
    assert torch.equal(ours["llm.layers.1.self_attn.v_proj.weight"], v)
    embeddings = ours["llm.embed_tokens.weight"]
    assert torch.equal(embeddings[:50304], reference["model.transformer.wte.embedding"])
    assert torch.equal(embeddings[50304:], reference["model.transformer.wte.new_embedding"])
    # Conv2d over a patch must equal the reference linear over the patch flattened as (row, col, channel).
    patch = torch.randn(14, 14, 3)
    conv_weight = ours["vision.embeddings.patch_embedding.weight"]
    conv = torch.nn.functional.conv2d(patch.permute(2, 0, 1)[None], conv_weight).flatten()
    linear = reference["model.vision_backbone.image_vit.patch_embedding.weight"] @ patch.flatten()
    # The two sum the same 588 fp32 products in different orders; over 2,000 random patches the largest
    # difference measured was 1.7e-6 x (1 + |value|), so 1e-5 absolute and relative leaves a 5x margin.
    torch.testing.assert_close(conv, linear, atol=1e-5, rtol=1e-5)
