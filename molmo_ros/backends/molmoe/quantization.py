"""Weight-only int8 for MolmoE: what is quantized, how, and the expert matmuls that read int8 weights.

torchao (PyTorch's quantization library) does the quantizing: `Int8Tensor.from_hp` with `PerRow`
granularity gives symmetric int8 with one fp32 scale per output channel, and on a 3-D expert tensor
[E, out, in] one scale per expert and output channel. Its `Int8Tensor` runs `F.linear`, so every
`nn.Linear` (attention projections, head, connector, ViT) needs nothing more. None of transformers'
experts kernels runs on it under `torch.inference_mode` (measured with torchao 0.18): `batched_mm` needs
`aten.bmm` and `grouped_mm` `aten.transpose`, which `Int8Tensor` does not implement, and the `eager`
loop's per-expert `select` fails ("Cannot set version_counter for inference tensor"); that loop also
waits for the host at every layer, so no CUDA graph could hold it. This module adds the two missing
kernels, registered with transformers' `ExpertsInterface` under their own names: each multiplies by the
int8 values converted to the activation dtype (exact: every int8 value fits the mantissa of bf16, fp16
and fp32) and scales each output channel afterwards, which equals multiplying by the dequantized weight.

Kept in the activation dtype, by measurement (README, "Weight-only int8"): the token embedding (a lookup
reads a few rows; torchao would dequantize the whole table per call), the MoE router (its logits choose
the experts), norms, biases and the vision tower with its connector.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torchao
from torch import nn
from torchao.quantization import Int8Tensor
from torchao.quantization.granularity import PerRow
from transformers.integrations.moe import ExpertsInterface, _grouped_mm

# The experts kernel that reads int8 weights, for each of transformers' kernels for full-precision weights.
INT8_EXPERTS_IMPLEMENTATIONS = {
    "grouped_mm": "int8_grouped_mm",
    "batched_mm": "int8_batched_mm",
}
# Experts converted to the activation dtype at once in the grouped kernel: 8 of MolmoE's gate_up
# [2048, 2048] take 64 MiB in bf16, against 512 MiB for all 64 of a layer.
EXPERTS_PER_CHUNK = 8
EXPERT_WEIGHTS = ("gate_up_proj", "down_proj")
# Modules under these prefixes keep full-precision weights (see the module docstring).
FULL_PRECISION_PREFIXES = ("vision.", "connector.")
# What int8 weights are, for the weights cache's identity: an entry made another way (other layers kept
# in full precision, another torchao storage format) is not taken for this one.
INT8_SCHEME = {
    "granularity": "symmetric, one scale per output channel",
    "full_precision": list(FULL_PRECISION_PREFIXES),
    "torchao": torchao.__version__,
}


def quantize_int8(weight: torch.Tensor, dtype: torch.dtype) -> Int8Tensor:
    """Symmetric int8 with one scale per output channel (the last dimension is reduced), computed from
    the weight's own values (quantize the fp32 checkpoint, not a bf16 copy); `dtype` is the dtype the
    layer computes in, which torchao's linear and `Int8Tensor.dtype` report."""
    quantized = Int8Tensor.from_hp(weight, PerRow())
    return Int8Tensor(quantized.qdata, quantized.scale, quantized.block_size, dtype, quantized.zero_point)


def quantized_weight_names(model: nn.Module) -> set[str]:
    """The parameters int8 replaces: every nn.Linear weight of the language model and head, and the
    fused expert tensors. Works on a model built on the meta device."""
    names = set()
    for module_name, module in model.named_modules():
        if module_name.startswith(FULL_PRECISION_PREFIXES):
            continue
        if isinstance(module, nn.Linear):
            names.add(f"{module_name}.weight")
        elif all(isinstance(getattr(module, attr, None), nn.Parameter) for attr in EXPERT_WEIGHTS):
            names.update(f"{module_name}.{attr}" for attr in EXPERT_WEIGHTS)
    return names


def experts_are_int8(experts: nn.Module) -> bool:
    return isinstance(getattr(experts, EXPERT_WEIGHTS[0]), Int8Tensor)


def quantize_tensors(
    tensors: Iterable[tuple[str, torch.Tensor]],
    quantized: set[str],
    dtype: torch.dtype,
    device: torch.device | str | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Stream (name, tensor) pairs: int8 for the names in `quantized`, `dtype` for the others, on `device`
    (None: where they are). Quantizing happens where the tensor is, so a CPU checkpoint is quantized on
    the CPU and only int8 weights reach a GPU."""
    for name, tensor in tensors:
        if name in quantized:
            yield name, quantize_int8(tensor, dtype).to(device or tensor.device)
        else:
            yield name, tensor.to(device=device, dtype=dtype)


def experts_implementation(name: str, quantized: bool) -> str:
    """The experts kernel transformers dispatches to for `name` ("grouped_mm", "batched_mm", "eager")."""
    if not quantized or name in INT8_EXPERTS_IMPLEMENTATIONS.values():
        return name
    if name not in INT8_EXPERTS_IMPLEMENTATIONS:
        raise ValueError(
            f"the {name!r} experts kernel cannot run int8 weights; use one of "
            f"{', '.join(INT8_EXPERTS_IMPLEMENTATIONS)} (or set the quantization setting to none)"
        )
    return INT8_EXPERTS_IMPLEMENTATIONS[name]


def int8_batched_linear(x: torch.Tensor, weight: Int8Tensor, expert_ids: torch.Tensor) -> torch.Tensor:
    """x [S, in] @ weight[expert_ids[s]]^T for each row s: the int8 rows of each pair's expert, converted to
    x's dtype, then each output channel times its scale. No host sync, so a CUDA graph can hold it."""
    product = torch.bmm(weight.qdata[expert_ids].to(x.dtype), x.unsqueeze(-1)).squeeze(-1)
    return product * weight.scale[expert_ids].squeeze(-1).to(x.dtype)


def expert_groups(expert_ids: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, list[int]]:
    """For (token, expert) pairs sorted by expert: each expert's cumulative row count (int32, for
    grouped_mm's offsets) and the same counts on the host, after a 0 (the one host read, and sync, of a
    layer's prefill)."""
    ends = torch.bincount(expert_ids, minlength=num_experts).cumsum(0).to(torch.int32)
    return ends, [0, *ends.tolist()]


def int8_grouped_linear(
    x: torch.Tensor, weight: Int8Tensor, expert_ids: torch.Tensor, groups: tuple[torch.Tensor, list[int]]
) -> torch.Tensor:
    """x [S, in] with rows sorted by expert_ids, `groups` from expert_groups: each row times its expert's
    weight^T, EXPERTS_PER_CHUNK experts at a time converted to x's dtype and multiplied as one grouped
    matmul, then each output channel times its scale."""
    ends, bounds = groups
    num_experts = weight.shape[0]
    out = x.new_empty(x.shape[0], weight.shape[1])
    for first in range(0, num_experts, EXPERTS_PER_CHUNK):
        last = min(first + EXPERTS_PER_CHUNK, num_experts)
        start, stop = bounds[first], bounds[last]
        if start == stop:
            continue
        offsets = ends[first:last] - start
        chunk = weight.qdata[first:last].to(x.dtype).transpose(-2, -1)
        out[start:stop] = _grouped_mm(x[start:stop], chunk, offs=offsets)
    return out * weight.scale.squeeze(-1)[expert_ids].to(x.dtype)


def int8_batched_mm_experts_forward(
    self: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
) -> torch.Tensor:
    """transformers' batched_mm experts with int8 weights (decode steps; CUDA-graph safe)."""
    num_tokens, hidden_dim = hidden_states.shape
    top_k = top_k_index.shape[-1]
    expert_ids = top_k_index.reshape(-1)
    inputs = hidden_states.repeat_interleave(top_k, dim=0)
    gated = self._apply_gate(int8_batched_linear(inputs, self.gate_up_proj, expert_ids))
    projected = int8_batched_linear(gated, self.down_proj, expert_ids)
    weighted = projected * top_k_weights.reshape(-1, 1).to(projected.dtype)
    return weighted.view(num_tokens, top_k, hidden_dim).sum(dim=1).to(hidden_states.dtype)


def int8_grouped_mm_experts_forward(
    self: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
) -> torch.Tensor:
    """transformers' grouped_mm experts with int8 weights (prefills): (token, expert) pairs sorted by
    expert, one host read of the counts per layer, so not for CUDA graphs."""
    num_tokens, hidden_dim = hidden_states.shape
    top_k = top_k_index.shape[-1]
    expert_ids, order = torch.sort(top_k_index.reshape(-1))
    inputs = hidden_states[order // top_k]
    groups = expert_groups(expert_ids, self.num_experts)
    gated = self._apply_gate(int8_grouped_linear(inputs, self.gate_up_proj, expert_ids, groups))
    projected = int8_grouped_linear(gated, self.down_proj, expert_ids, groups)
    weighted = projected * top_k_weights.reshape(-1)[order].unsqueeze(-1).to(projected.dtype)
    unsorted = torch.empty_like(weighted)
    unsorted[order] = weighted
    return unsorted.view(num_tokens, top_k, hidden_dim).sum(dim=1).to(hidden_states.dtype)


ExpertsInterface.register(INT8_EXPERTS_IMPLEMENTATIONS["batched_mm"], int8_batched_mm_experts_forward)
ExpertsInterface.register(INT8_EXPERTS_IMPLEMENTATIONS["grouped_mm"], int8_grouped_mm_experts_forward)
