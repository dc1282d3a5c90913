"""Eager greedy decoding with a dynamic KV cache: the reference the fast path (fast_generation.py) is tested
against. One prefill over the whole prompt(s), then one token per step.

Semantics mirror AI2's `generate_from_batch` (MolmoE's modeling code): prompts are right-padded with -1,
positions count only real tokens, the padding stays masked for the whole generation, images are only
used in the prefill. Per step the only host synchronisation is the "all rows finished?" check.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from molmo_ros.backends.molmoe.modeling import PADDING_ID, MolmoEForPointing, position_ids_from_mask


@dataclass
class GenerationTimings:
    """Seconds per stage, measured after a device synchronisation so GPU work is attributed correctly."""

    vision_s: float = 0.0  # 0 when the caller passed already-encoded image features
    prefill_s: float = 0.0  # the prompt prefill (the fast path times its shared image prefix apart)
    decode_s: float = 0.0
    steps: int = 0  # tokens generated per row: the prefill's token plus the decode steps run


@dataclass
class GenerationOutput:
    token_ids: list[list[int]]  # new tokens per row, EOS and anything after it excluded
    finished: list[bool]  # the row produced EOS within max_new_tokens
    timings: GenerationTimings = field(default_factory=GenerationTimings)


class StageClock:
    """Wall-clock stage boundaries that wait for queued GPU work first."""

    def __init__(self, device: torch.device) -> None:
        self._device = device
        self._synchronize()
        self._last = time.perf_counter()

    def _synchronize(self) -> None:
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)

    def lap(self) -> float:
        self._synchronize()
        now = time.perf_counter()
        elapsed, self._last = now - self._last, now
        return elapsed


@torch.inference_mode()
def greedy_generate(
    model: MolmoEForPointing,
    input_ids: torch.Tensor,
    image_features: torch.Tensor | None = None,
    image_input_idx: torch.Tensor | None = None,
    *,
    max_new_tokens: int,
    eos_token_id: int | None,
    images: torch.Tensor | None = None,
    image_masks: torch.Tensor | None = None,
) -> GenerationOutput:
    """Greedy continuation of each row of input_ids [B, T] (right-padded with -1).

    Image input is either image_features [B or 1, N, tokens, d] from model.encode_images (a batch of 1 is
    one image shared by all B prompts, encoded once), or raw images/image_masks which are encoded here and
    timed as vision_s. image_input_idx [B or 1, N, tokens] says where features are added.
    eos_token_id None never stops early: every row gets max_new_tokens tokens.
    """
    if image_features is not None and images is not None:
        raise ValueError("pass either image_features or images, not both")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    device = model.device
    input_ids = input_ids.to(device=device, dtype=torch.long)
    batch, prompt_len = input_ids.shape
    clock = StageClock(device)
    timings = GenerationTimings()
    if images is not None:
        image_features = model.encode_images(images.to(device), image_masks.to(device))
        timings.vision_s = clock.lap()
    if image_input_idx is not None:
        image_input_idx = image_input_idx.to(device)
    is_token = input_ids != PADDING_ID
    prompt_lengths = is_token.sum(dim=-1)
    has_padding = bool((prompt_lengths != prompt_len).any())
    # Preallocated so each step takes a view instead of concatenating; new tokens are never padding.
    attention_mask = torch.ones(batch, prompt_len + max_new_tokens, dtype=torch.long, device=device)
    attention_mask[:, :prompt_len] = is_token
    positions = position_ids_from_mask(is_token)
    cache = DynamicCache(config=model.llm.config)
    hidden = model.llm(
        inputs_embeds=model.embed_inputs(input_ids, image_features, image_input_idx),
        attention_mask=attention_mask[:, :prompt_len] if has_padding else None,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
    ).last_hidden_state
    rows = torch.arange(batch, device=device)
    next_tokens = model.lm_head(hidden[rows, prompt_lengths - 1]).argmax(dim=-1)
    next_positions = prompt_lengths.unsqueeze(-1)  # the last real token sat at prompt_length - 1
    timings.prefill_s = clock.lap()
    mask = attention_mask if has_padding else None
    generated = _decode(model, cache, next_tokens, next_positions, mask, max_new_tokens, eos_token_id)
    tokens = torch.stack(generated, dim=1).tolist()
    timings.decode_s = clock.lap()
    timings.steps = len(generated)
    token_ids, finished_rows = trim_at_eos(tokens, eos_token_id)
    return GenerationOutput(token_ids=token_ids, finished=finished_rows, timings=timings)


def _decode(
    model: MolmoEForPointing,
    cache: DynamicCache,
    next_tokens: torch.Tensor,
    next_positions: torch.Tensor,
    attention_mask: torch.Tensor | None,
    max_new_tokens: int,
    eos_token_id: int | None,
) -> list[torch.Tensor]:
    """The first token and the greedy steps after it, until every row met EOS or max_new_tokens.
    `attention_mask` [B, prompt + max_new_tokens] is given only when some prompt is padded."""
    generated = [next_tokens]
    finished = _is_eos(next_tokens, eos_token_id)
    prompt_len = None if attention_mask is None else attention_mask.shape[1] - max_new_tokens
    for step in range(1, max_new_tokens):
        if eos_token_id is not None and bool(finished.all()):
            break
        hidden = model.llm(
            inputs_embeds=model.embed_inputs(next_tokens.unsqueeze(-1)),
            attention_mask=None if attention_mask is None else attention_mask[:, : prompt_len + step],
            position_ids=next_positions,
            past_key_values=cache,
            use_cache=True,
        ).last_hidden_state
        next_tokens = model.lm_head(hidden[:, -1]).argmax(dim=-1)
        next_positions = next_positions + 1
        generated.append(next_tokens)
        finished = finished | _is_eos(next_tokens, eos_token_id)
    return generated


def _is_eos(tokens: torch.Tensor, eos_token_id: int | None) -> torch.Tensor:
    if eos_token_id is None:
        return torch.zeros_like(tokens, dtype=torch.bool)
    return tokens == eos_token_id


def trim_at_eos(rows: list[list[int]], eos_token_id: int | None) -> tuple[list[list[int]], list[bool]]:
    """Each row up to (not including) its first EOS, and whether it had one; None keeps every row whole."""
    if eos_token_id is None:
        return rows, [False] * len(rows)
    trimmed = [row[: row.index(eos_token_id)] if eos_token_id in row else row for row in rows]
    return trimmed, [eos_token_id in row for row in rows]
