"""Reference MolmoE checkpoint names and layouts -> the state_dict of MolmoEForPointing.

The real checkpoint is 28.9 GB in fp32, so conversion streams: one rule at a time reads its reference
tensors, builds our tensor(s) in the target dtype (and device) and yields them; nothing keeps a second
copy of the model. The per-expert tensors are fused into transformers' OlmoeExperts layout
(gate_up_proj [E, 2I, d] with gate rows first, down_proj [E, d, I]). docs/ENGINE.md ("Checkpoint keys")
lists the mapping and how it was verified.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from molmo_ros.backends.errors import IncompatibleCheckpointError
from molmo_ros.backends.molmoe.config import MolmoConfig
from molmo_ros.backends.molmoe.modeling import MolmoEForPointing, build_meta_model
from molmo_ros.backends.molmoe.quantization import quantize_tensors, quantized_weight_names

GetTensor = Callable[[str], torch.Tensor]
_LLM = "model.transformer"
_VISION = "model.vision_backbone"
_VIT = f"{_VISION}.image_vit"
_SHOWN = 5  # names listed in an error message before "... and N more"


def _vit_block_shapes(config: MolmoConfig, block: int) -> dict[str, tuple[int, ...]]:
    width, mlp = config.vit_width, config.vit_mlp_dim
    prefix = f"{_VIT}.transformer.resblocks.{block}"
    shapes: dict[str, tuple[int, ...]] = {}
    for proj in ("wq", "wk", "wv", "wo"):
        shapes[f"{prefix}.attention.{proj}.weight"] = (width, width)
        shapes[f"{prefix}.attention.{proj}.bias"] = (width,)
    for norm in ("attention_norm", "ffn_norm"):
        shapes[f"{prefix}.{norm}.weight"] = (width,)
        shapes[f"{prefix}.{norm}.bias"] = (width,)
    shapes[f"{prefix}.feed_forward.w1.weight"] = (mlp, width)
    shapes[f"{prefix}.feed_forward.w1.bias"] = (mlp,)
    shapes[f"{prefix}.feed_forward.w2.weight"] = (width, mlp)
    shapes[f"{prefix}.feed_forward.w2.bias"] = (width,)
    return shapes


def expected_reference_shapes(config: MolmoConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a reference checkpoint with this config holds, with its shape."""
    d, hidden, width = config.d_model, config.expert_hidden_size, config.vit_width
    feature_dim = len(config.vit_layers) * width
    num_positions = config.patches_per_side**2 + 1
    shapes: dict[str, tuple[int, ...]] = {
        f"{_LLM}.wte.embedding": (config.embedding_size, d),
        f"{_LLM}.wte.new_embedding": (config.additional_vocab_size, d),
        f"{_LLM}.ln_f.weight": (d,),
        "lm_head.weight": (config.embedding_size, d),
        f"{_VISION}.pad_embed": (2, feature_dim),
        f"{_VISION}.image_projector.w1.weight": (hidden, width),
        f"{_VISION}.image_projector.w3.weight": (hidden, width),
        f"{_VISION}.image_projector.w2.weight": (d, hidden),
        f"{_VIT}.class_embedding": (width,),
        f"{_VIT}.positional_embedding": (num_positions, width),
        f"{_VIT}.patch_embedding.weight": (width, config.patch_values),
        f"{_VIT}.pre_ln.weight": (width,),
        f"{_VIT}.pre_ln.bias": (width,),
    }
    for proj in ("wq", "wk", "wv"):
        shapes[f"{_VISION}.image_pooling_2d.{proj}.weight"] = (width, feature_dim)
        shapes[f"{_VISION}.image_pooling_2d.{proj}.bias"] = (width,)
    shapes[f"{_VISION}.image_pooling_2d.wo.weight"] = (width, width)
    shapes[f"{_VISION}.image_pooling_2d.wo.bias"] = (width,)
    for block in range(config.vit_num_layers):
        shapes.update(_vit_block_shapes(config, block))
    for layer in range(config.n_layers):
        prefix = f"{_LLM}.blocks.{layer}"
        shapes[f"{prefix}.attn.att_proj.weight"] = (3 * d, d)
        shapes[f"{prefix}.attn.attn_out.weight"] = (d, d)
        for norm in ("q_norm", "k_norm", "attn_norm"):
            shapes[f"{prefix}.attn.{norm}.weight"] = (d,)
        shapes[f"{prefix}.mlp.ff_norm.weight"] = (d,)
        shapes[f"{prefix}.mlp.gate.weight"] = (config.num_experts, d)
        for expert in range(config.num_experts):
            shapes[f"{prefix}.mlp.experts.{expert}.gate_proj.weight"] = (hidden, d)
            shapes[f"{prefix}.mlp.experts.{expert}.up_proj.weight"] = (hidden, d)
            shapes[f"{prefix}.mlp.experts.{expert}.down_proj.weight"] = (d, hidden)
    return shapes


def _listing(names: Iterable[str]) -> str:
    names = sorted(names)
    shown = ", ".join(names[:_SHOWN])
    return (
        shown
        + (f" ... and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")
        + f" ({len(names)} in all)"
    )


def check_reference_keys(names: Iterable[str], config: MolmoConfig) -> None:
    """Raise IncompatibleCheckpointError naming missing and unexpected reference keys."""
    names = set(names)
    expected = expected_reference_shapes(config)
    missing, unexpected = expected.keys() - names, names - expected.keys()
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if problems:
        raise IncompatibleCheckpointError(
            "checkpoint does not match the MolmoE config; " + "; ".join(problems)
        )


@dataclass(frozen=True)
class _Rule:
    """Our tensors `targets`, built by `build` from the reference tensors it reads."""

    targets: tuple[str, ...]
    build: Callable[[Callable[[str], torch.Tensor]], tuple[torch.Tensor, ...]]


def _renamed(source: str, target: str) -> _Rule:
    return _Rule((target,), lambda read: (read(source),))


def _vit_rules(config: MolmoConfig) -> list[_Rule]:
    width, patch = config.vit_width, config.patch_size

    def patch_embedding(read: Callable[[str], torch.Tensor]) -> tuple[torch.Tensor, ...]:
        # Reference patches are flattened as (row, column, channel); Conv2d wants [out, channel, row, col].
        weight = read(f"{_VIT}.patch_embedding.weight")
        return (weight.reshape(width, patch, patch, 3).permute(0, 3, 1, 2).contiguous(),)

    rules = [
        _Rule(
            ("vision.embeddings.patch_embedding.weight",),
            patch_embedding,
        ),
        _renamed(f"{_VIT}.class_embedding", "vision.embeddings.class_embedding"),
        _renamed(f"{_VIT}.positional_embedding", "vision.embeddings.position_embedding.weight"),
    ]
    for suffix in ("weight", "bias"):
        rules.append(_renamed(f"{_VIT}.pre_ln.{suffix}", f"vision.pre_layrnorm.{suffix}"))
    block_names = {
        "attention.wq": "self_attn.q_proj",
        "attention.wk": "self_attn.k_proj",
        "attention.wv": "self_attn.v_proj",
        "attention.wo": "self_attn.out_proj",
        "attention_norm": "layer_norm1",
        "ffn_norm": "layer_norm2",
        "feed_forward.w1": "mlp.fc1",
        "feed_forward.w2": "mlp.fc2",
    }
    for block in range(config.vit_layers_to_run):
        for ours_suffix in ("weight", "bias"):
            for reference, ours in block_names.items():
                rules.append(
                    _renamed(
                        f"{_VIT}.transformer.resblocks.{block}.{reference}.{ours_suffix}",
                        f"vision.encoder.layers.{block}.{ours}.{ours_suffix}",
                    )
                )
    return rules


def _connector_rules() -> list[_Rule]:
    rules = [_renamed(f"{_VISION}.pad_embed", "connector.pad_embed")]
    for reference, ours in (("wq", "q_proj"), ("wk", "k_proj"), ("wv", "v_proj"), ("wo", "out_proj")):
        for suffix in ("weight", "bias"):
            rules.append(
                _renamed(
                    f"{_VISION}.image_pooling_2d.{reference}.{suffix}", f"connector.pooling.{ours}.{suffix}"
                )
            )
    for reference, ours in (("w1", "gate_proj"), ("w3", "up_proj"), ("w2", "down_proj")):
        rules.append(
            _renamed(f"{_VISION}.image_projector.{reference}.weight", f"connector.projector.{ours}.weight")
        )
    return rules


def _stacked(sources: Sequence[Sequence[str]], read: Callable[[str], torch.Tensor]) -> torch.Tensor:
    """Concatenate each group of sources on rows and stack the groups, filling one preallocated tensor."""
    first = read(sources[0][0])
    rows = first.shape[0]
    out = torch.empty(
        (len(sources), rows * len(sources[0]), first.shape[1]), dtype=first.dtype, device=first.device
    )
    for index, group in enumerate(sources):
        for part, name in enumerate(group):
            out[index, part * rows : (part + 1) * rows].copy_(
                first if (index, part) == (0, 0) else read(name)
            )
    return out


def _llm_rules(config: MolmoConfig) -> list[_Rule]:
    d = config.d_model
    embedding_sources = (f"{_LLM}.wte.embedding", f"{_LLM}.wte.new_embedding")
    rules = [
        _Rule(
            ("llm.embed_tokens.weight",),
            lambda read: (torch.cat([read(n) for n in embedding_sources]),),
        ),
        _renamed(f"{_LLM}.ln_f.weight", "llm.norm.weight"),
        _renamed("lm_head.weight", "lm_head.weight"),
    ]
    for layer in range(config.n_layers):
        reference, ours = f"{_LLM}.blocks.{layer}", f"llm.layers.{layer}"
        att_proj = f"{reference}.attn.att_proj.weight"
        rules.append(
            _Rule(
                tuple(f"{ours}.self_attn.{p}_proj.weight" for p in "qkv"),
                lambda read, name=att_proj: tuple(part.clone() for part in read(name).split(d, dim=0)),
            )
        )
        rules += [
            _renamed(f"{reference}.attn.attn_out.weight", f"{ours}.self_attn.o_proj.weight"),
            _renamed(f"{reference}.attn.q_norm.weight", f"{ours}.self_attn.q_norm.weight"),
            _renamed(f"{reference}.attn.k_norm.weight", f"{ours}.self_attn.k_norm.weight"),
            _renamed(f"{reference}.attn.attn_norm.weight", f"{ours}.input_layernorm.weight"),
            _renamed(f"{reference}.mlp.ff_norm.weight", f"{ours}.post_attention_layernorm.weight"),
            _renamed(f"{reference}.mlp.gate.weight", f"{ours}.mlp.gate.weight"),
        ]
        experts = [f"{reference}.mlp.experts.{e}" for e in range(config.num_experts)]
        gate_up = [(f"{e}.gate_proj.weight", f"{e}.up_proj.weight") for e in experts]
        down = [(f"{e}.down_proj.weight",) for e in experts]
        rules.append(
            _Rule(
                (f"{ours}.mlp.experts.gate_up_proj",),
                lambda read, groups=gate_up: (_stacked(groups, read),),
            )
        )
        rules.append(
            _Rule(
                (f"{ours}.mlp.experts.down_proj",),
                lambda read, groups=down: (_stacked(groups, read),),
            )
        )
    return rules


def _conversion_rules(config: MolmoConfig) -> list[_Rule]:
    return _vit_rules(config) + _connector_rules() + _llm_rules(config)


def convert_reference_state_dict(
    get_tensor: GetTensor,
    names: Iterable[str],
    config: MolmoConfig,
    dtype: torch.dtype,
    device: torch.device | str | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (our state_dict name, tensor in dtype on device) one at a time from a reference checkpoint.

    names: every key the checkpoint holds; missing or unexpected keys raise before anything is read.
    ViT blocks after the last one the connector reads (block 22 of MolmoE) are expected but never read:
    the reference computes them and throws the result away, so the model does not have them.
    device: None keeps each tensor where get_tensor put it.
    """
    check_reference_keys(names, config)
    expected = expected_reference_shapes(config)

    def read(name: str) -> torch.Tensor:
        tensor = get_tensor(name)
        if tuple(tensor.shape) != expected[name]:
            raise IncompatibleCheckpointError(
                f"checkpoint tensor {name} has shape {tuple(tensor.shape)}, expected {expected[name]}"
            )
        return tensor.to(device=device, dtype=dtype)

    for rule in _conversion_rules(config):
        yield from zip(rule.targets, rule.build(read), strict=True)


def convert_weights(
    get_tensor: GetTensor,
    names: Iterable[str],
    config: MolmoConfig,
    dtype: torch.dtype,
    device: torch.device | str | None = None,
    quantization: str = "none",
) -> Iterator[tuple[str, torch.Tensor]]:
    """`convert_reference_state_dict`, with quantization "int8": the weights quantization.py names become
    int8 (quantized from the checkpoint's own values, where they were read) and the others `dtype`."""
    if quantization == "none":
        return convert_reference_state_dict(get_tensor, names, config, dtype, device)
    quantized = quantized_weight_names(build_meta_model(config))
    full_precision = convert_reference_state_dict(get_tensor, names, config, torch.float32)
    return quantize_tensors(full_precision, quantized, dtype, device)


def load_reference_weights(
    model: MolmoEForPointing,
    get_tensor: GetTensor,
    names: Iterable[str],
    dtype: torch.dtype,
    device: torch.device | str | None = None,
    quantization: str = "none",
) -> None:
    """Fill every parameter of a MolmoEForPointing from a reference checkpoint, strictly.

    Parameters still on the meta device are replaced by the loaded tensors (no second allocation);
    others are copied into. Buffers the checkpoint does not hold are then rebuilt on the weights' device.
    """
    expected = dict(model.named_parameters())
    loaded: set[str] = set()
    last_device = None
    converted = convert_weights(get_tensor, names, model.config, dtype, device, quantization)
    for name, tensor in converted:
        if name not in expected:
            raise IncompatibleCheckpointError(f"converted tensor {name} has no parameter in the model")
        parameter = expected[name]
        if tuple(parameter.shape) != tuple(tensor.shape):
            raise IncompatibleCheckpointError(
                f"converted tensor {name} has shape {tuple(tensor.shape)}, "
                f"the model expects {tuple(parameter.shape)}"
            )
        module_name, _, attribute = name.rpartition(".")
        module = model.get_submodule(module_name)
        if parameter.is_meta:
            setattr(module, attribute, nn.Parameter(tensor, requires_grad=False))
        else:
            with torch.no_grad():
                parameter.copy_(tensor)
        loaded.add(name)
        last_device = tensor.device
    not_loaded = expected.keys() - loaded
    if not_loaded:
        raise IncompatibleCheckpointError(f"model parameters left without weights: {_listing(not_loaded)}")
    if any(buffer.is_meta for buffer in model.buffers()):
        model.init_non_persistent_buffers(last_device)
    model.match_experts_kernel_to_weights()


def load_reference_model(
    config: MolmoConfig,
    get_tensor: GetTensor,
    names: Iterable[str],
    dtype: torch.dtype,
    device: torch.device | str | None = None,
    quantization: str = "none",
    **model_options: str | None,
) -> MolmoEForPointing:
    """Build the model on the meta device and fill it from a reference checkpoint: no random init, and
    the weights exist once, in dtype (or int8) on device. model_options go to MolmoEForPointing (e.g.
    experts_implementation)."""
    model = build_meta_model(config, **model_options)
    load_reference_weights(model, get_tensor, names, dtype, device, quantization)
    return model
