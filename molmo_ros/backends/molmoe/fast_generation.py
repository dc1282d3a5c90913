"""Real-time greedy decoding: the image prefix is prefilled once, the KV cache is preallocated, and on CUDA
each decode step is one replayed CUDA graph.

Every prompt about a frame starts with the same tokens: BOS and the image block (about 1,200 of the
~1,215 tokens of a 1080p request). `FastGenerator.prefill_prefix` runs the vision features and that
prefix through the language model once; `FastGenerator.generate` copies its keys and values into each
row of a preallocated `StaticCache` and prefills only the prompts' own tokens. The result is the same
greedy ids as `generation.greedy_generate`, the eager reference (which mirrors AI2's
`generate_from_batch`): positions count only real tokens, padded slots stay masked for the whole
generation. The tests compare both paths token for token.

Cache layout of row i (prefix length P_i, longest prefix P, prompt length S_i, longest prompt S):
slots [0, P_i) hold the prefix, [P_i, P) are masked gaps, [P, P + S) the prompt (padding masked), and
generated tokens follow from P + S. Row i's positions run 0..P_i - 1, then P_i.. for its prompt and
answer, as if it stood alone.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache, StaticCache

from molmo_ros.backends.interface import GenerationControl, Stage
from molmo_ros.backends.molmoe.generation import GenerationOutput, GenerationTimings, StageClock, trim_at_eos
from molmo_ros.backends.molmoe.modeling import MolmoEForPointing

logger = logging.getLogger(__name__)

CACHE_LENGTH_STEP = 256  # static caches come in lengths that are multiples of this, so shapes repeat
# Static caches (and their CUDA graphs) kept for reuse, least recently used dropped first. Each holds KV
# memory: for the real MolmoE-1B in bf16, 8 rows of a 1536-slot cache (a 1080p frame, 200 new tokens)
# take 16 layers x 2 x 8 x 1536 x 2048 x 2 bytes = 1.6 GB; one row 0.2 GB.
MAX_CACHED_SHAPES = 4
# On CUDA the host asks "every row finished?" (a device sync) only every this many steps, so the GPU
# never waits for the host; at most this many minus one steps are wasted after the last EOS.
CUDA_EOS_CHECK_INTERVAL = 8
GRAPH_WARMUP_STEPS = 3  # eager steps on a side stream before capture, as torch.cuda.graph requires
# batched_mm is the experts implementation transformers marks as CUDA-graph safe (grouped_mm is not).
GRAPH_SAFE_EXPERTS = "batched_mm"


@dataclass(frozen=True)
class PrefixCache:
    """The keys and values of one image prefix (BOS + image block), prefilled once for any number of
    prompts. Tensors are [1, heads, length, head_dim] per language-model layer."""

    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]
    length: int
    vision_s: float  # time spent encoding the image (0 for a text-only prefix)
    prefill_s: float  # time spent prefilling the prefix


@dataclass
class _DecodeState:
    """Preallocated buffers for one (batch, cache length) shape; a CUDA graph replays on these addresses."""

    cache: StaticCache
    key_is_valid: torch.Tensor  # bool [B, L]: slot holds a real token (prefix, prompt) or a future answer
    slots: torch.Tensor  # long [L]: 0..L-1
    tokens: torch.Tensor  # long [B]: the last generated token, input of the next step
    positions: torch.Tensor  # long [B, 1]: its position
    finished: torch.Tensor  # bool [B]
    eos: torch.Tensor  # long []: the stop token
    stops_at_eos: torch.Tensor  # bool []: False means never stop (eos_token_id None)
    generated: torch.Tensor  # long [B, L]: generated tokens by step
    step: torch.Tensor  # long [1]: index of the next column of `generated`
    graph: torch.cuda.CUDAGraph | None = None


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


class FastGenerator:
    """Greedy generation with a shared image prefix and a static cache; CUDA graphs on CUDA devices.

    Not thread-safe: the engine serializes calls. `use_cuda_graphs` defaults to True on CUDA.
    """

    def __init__(
        self,
        model: MolmoEForPointing,
        *,
        use_cuda_graphs: bool | None = None,
        batch_buckets: bool | None = None,
        eos_check_interval: int | None = None,
    ) -> None:
        """The defaults depend on the device: on CUDA, graphs, batches padded to a power of two (one graph
        per bucket) and an EOS check every CUDA_EOS_CHECK_INTERVAL steps; elsewhere none of these and an
        EOS check every step. Tests set them explicitly to run the CUDA logic on a CPU."""
        self.model = model
        self.device = model.device
        on_cuda = self.device.type == "cuda"
        self.use_cuda_graphs = on_cuda if use_cuda_graphs is None else use_cuda_graphs
        if self.use_cuda_graphs and not on_cuda:
            raise ValueError(f"CUDA graphs need a CUDA device; the model is on {self.device}")
        self.batch_buckets = self.use_cuda_graphs if batch_buckets is None else batch_buckets
        if eos_check_interval is None:
            eos_check_interval = CUDA_EOS_CHECK_INTERVAL if on_cuda else 1
        if eos_check_interval < 1:
            raise ValueError(f"eos_check_interval must be at least 1, got {eos_check_interval}")
        self.eos_check_interval = eos_check_interval
        self._states: OrderedDict[tuple[int, int], _DecodeState] = OrderedDict()
        self.graphs_captured = 0
        # One memory pool for all graphs: they never run at the same time, so their temporaries can share.
        self._graph_pool = torch.cuda.graph_pool_handle() if self.use_cuda_graphs else None

    # ------------------------------------------------------------------ prefix

    @torch.inference_mode()
    def prefill_prefix(
        self,
        prefix_ids: torch.Tensor,
        images: torch.Tensor | None = None,
        image_masks: torch.Tensor | None = None,
        image_input_idx: torch.Tensor | None = None,
    ) -> PrefixCache:
        """prefix_ids [P]: BOS and the image block; images [N, patches, pixels], image_masks [N, patches] and
        image_input_idx [N, tokens] of one image (absolute positions, all inside the prefix), or None."""
        model, device = self.model, self.device
        clock = StageClock(device)
        features = None
        vision_s = 0.0
        if images is not None:
            features = model.encode_images(images[None].to(device), image_masks[None].to(device))
            image_input_idx = image_input_idx[None].to(device)
            vision_s = clock.lap()
        prefix_ids = prefix_ids.to(device=device, dtype=torch.long)[None]
        cache = DynamicCache(config=model.llm.config)
        model.llm(
            inputs_embeds=model.embed_inputs(prefix_ids, features, image_input_idx),
            position_ids=torch.arange(prefix_ids.shape[1], device=device)[None],
            past_key_values=cache,
            use_cache=True,
        )
        layers = cache.layers
        return PrefixCache(
            keys=tuple(layer.keys for layer in layers),
            values=tuple(layer.values for layer in layers),
            length=prefix_ids.shape[1],
            vision_s=vision_s,
            prefill_s=clock.lap(),
        )

    # ---------------------------------------------------------------- generate

    @torch.inference_mode()
    def generate(
        self,
        prefixes: Sequence[PrefixCache],
        prompts: Sequence[Sequence[int]],
        *,
        max_new_tokens: int,
        eos_token_id: int | None,
        control: GenerationControl | None = None,
    ) -> GenerationOutput:
        """Greedy continuation of prefix + prompt for each prompt. `prefixes` has one entry per prompt, or
        one shared by all. eos_token_id None never stops early (every row gets max_new_tokens tokens).
        Between decode steps `control` is checked for cancellation and told the tokens so far."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        rows = len(prompts)
        prefixes, prompts = self._batch_rows(prefixes, prompts)
        batch = len(prompts)
        clock = StageClock(self.device)
        prefix_span = max(prefix.length for prefix in prefixes)
        prompt_span = max(len(prompt) for prompt in prompts)
        answer_start = prefix_span + prompt_span
        state = self._state(batch, _round_up(answer_start + max_new_tokens, CACHE_LENGTH_STEP))
        self._load_prefixes(state, prefixes, prompts, prefix_span)
        state.eos.fill_(0 if eos_token_id is None else eos_token_id)
        state.stops_at_eos.fill_(eos_token_id is not None)

        first_tokens = self._prefill_prompts(state, prefixes, prompts, prefix_span)
        state.tokens.copy_(first_tokens)
        state.finished.copy_(state.stops_at_eos & (first_tokens == state.eos))
        state.generated[:, 0] = first_tokens
        state.step.fill_(1)
        prefill_s = clock.lap()
        if control is not None:
            control.report(Stage.DECODING, 1)

        steps = 1
        checks_eos = eos_token_id is not None
        while steps < max_new_tokens:
            if control is not None:
                control.raise_if_cancelled()
            if checks_eos and steps % self.eos_check_interval == 0 and bool(state.finished.all()):
                break
            self._run_step(state)
            steps += 1
            if control is not None:
                control.report(Stage.DECODING, steps)
        tokens = state.generated[:rows, :steps].tolist()
        decode_s = clock.lap()
        token_ids, finished = trim_at_eos(tokens, eos_token_id)
        if eos_token_id is not None and all(finished):
            # The EOS check may run only every few steps: count only the steps up to the last EOS.
            steps = max(len(row) for row in token_ids) + 1
        timings = GenerationTimings(prefill_s=prefill_s, decode_s=decode_s, steps=steps)
        return GenerationOutput(token_ids=token_ids, finished=finished, timings=timings)

    # --------------------------------------------------------------- internals

    def _batch_rows(
        self, prefixes: Sequence[PrefixCache], prompts: Sequence[Sequence[int]]
    ) -> tuple[list[PrefixCache], list[list[int]]]:
        """One prefix and one prompt per batch row. With batch buckets the batch is the next power of two:
        rows beyond the real ones repeat the first request, and their output is dropped."""
        if len(prefixes) not in (1, len(prompts)):
            raise ValueError(f"give one prefix or one per prompt, not {len(prefixes)} for {len(prompts)}")
        if not prompts or any(len(prompt) == 0 for prompt in prompts):
            raise ValueError("every prompt needs at least one token after the prefix")
        rows = len(prompts)
        rows_prefixes = list(prefixes) * rows if len(prefixes) == 1 else list(prefixes)
        rows_prompts = [list(prompt) for prompt in prompts]
        batch = 1 << (rows - 1).bit_length() if self.batch_buckets else rows
        rows_prefixes += [rows_prefixes[0]] * (batch - rows)
        rows_prompts += [rows_prompts[0]] * (batch - rows)
        return rows_prefixes, rows_prompts

    def _state(self, batch: int, length: int) -> _DecodeState:
        key = (batch, length)
        state = self._states.get(key)
        if state is not None:
            self._states.move_to_end(key)
            return state
        while len(self._states) >= MAX_CACHED_SHAPES:
            self._states.popitem(last=False)
        config = self.model.llm.config
        cache = StaticCache(config=config, max_cache_len=length)
        # As OlmoeAttention sizes its heads.
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        cache.early_initialization(batch, config.num_key_value_heads, head_dim, self.model.dtype, self.device)
        device = self.device
        state = _DecodeState(
            cache=cache,
            key_is_valid=torch.zeros(batch, length, dtype=torch.bool, device=device),
            slots=torch.arange(length, device=device),
            tokens=torch.zeros(batch, dtype=torch.long, device=device),
            positions=torch.zeros(batch, 1, dtype=torch.long, device=device),
            finished=torch.zeros(batch, dtype=torch.bool, device=device),
            eos=torch.zeros((), dtype=torch.long, device=device),
            stops_at_eos=torch.zeros((), dtype=torch.bool, device=device),
            generated=torch.zeros(batch, length, dtype=torch.long, device=device),
            step=torch.zeros(1, dtype=torch.long, device=device),
        )
        if self.use_cuda_graphs:
            self._capture(state)
        self._states[key] = state
        return state

    def _set_write_slot(self, state: _DecodeState, slot: int) -> None:
        for layer in state.cache.layers:
            layer.cumulative_length.fill_(slot)

    def _load_prefixes(
        self,
        state: _DecodeState,
        prefixes: list[PrefixCache],
        prompts: list[list[int]],
        prefix_span: int,
    ) -> None:
        """Copy each row's prefix into its cache row and mark which slots hold real tokens."""
        state.key_is_valid.fill_(True)  # answer slots; the causal bound hides those not yet written
        state.key_is_valid[:, : prefix_span + max(len(prompt) for prompt in prompts)] = False
        # One copy per distinct prefix object (usually one for the whole batch) into all its rows.
        for prefix in dict.fromkeys(prefixes):
            rows = [row for row, other in enumerate(prefixes) if other is prefix]
            index = torch.tensor(rows, device=self.device)
            for layer, keys, values in zip(state.cache.layers, prefix.keys, prefix.values, strict=True):
                layer.keys[:, :, : prefix.length].index_copy_(0, index, keys.expand(len(rows), -1, -1, -1))
                layer.values[:, :, : prefix.length].index_copy_(
                    0, index, values.expand(len(rows), -1, -1, -1)
                )
        for row, (prefix, prompt) in enumerate(zip(prefixes, prompts, strict=True)):
            state.key_is_valid[row, : prefix.length] = True
            state.key_is_valid[row, prefix_span : prefix_span + len(prompt)] = True

    def _prefill_prompts(
        self,
        state: _DecodeState,
        prefixes: list[PrefixCache],
        prompts: list[list[int]],
        prefix_span: int,
    ) -> torch.Tensor:
        """Run every prompt's own tokens (right-padded) after its prefix; returns each row's first token."""
        model, device = self.model, self.device
        prompt_span = max(len(prompt) for prompt in prompts)
        ids = torch.zeros(len(prompts), prompt_span, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, : len(prompt)] = torch.tensor(prompt, dtype=torch.long)
        ids = ids.to(device)
        starts = torch.tensor([prefix.length for prefix in prefixes], device=device)
        lengths = torch.tensor([len(prompt) for prompt in prompts], device=device)
        offsets = torch.arange(prompt_span, device=device)
        positions = starts[:, None] + offsets[None]
        query_slots = prefix_span + offsets
        visible = state.key_is_valid[:, None, :] & (state.slots[None, None, :] <= query_slots[None, :, None])
        self._set_write_slot(state, prefix_span)
        hidden = model.llm(
            inputs_embeds=model.embed_inputs(ids),
            attention_mask=visible[:, None],
            position_ids=positions,
            past_key_values=state.cache,
            use_cache=True,
        ).last_hidden_state
        rows = torch.arange(len(prompts), device=device)
        state.positions.copy_((starts + lengths)[:, None])
        self._set_write_slot(state, prefix_span + prompt_span)
        return model.lm_head(hidden[rows, lengths - 1]).argmax(dim=-1)

    def _decode_step(self, state: _DecodeState) -> None:
        """One token per row, entirely on the device (no host sync): the body a CUDA graph captures."""
        model = self.model
        write_slot = state.cache.layers[0].cumulative_length
        visible = state.key_is_valid & (state.slots[None] <= write_slot)
        hidden = model.llm(
            inputs_embeds=model.embed_inputs(state.tokens[:, None]),
            attention_mask=visible[:, None, None],
            position_ids=state.positions,
            past_key_values=state.cache,
            use_cache=True,
        ).last_hidden_state
        next_tokens = model.lm_head(hidden[:, -1]).argmax(dim=-1)
        state.tokens.copy_(next_tokens)
        state.positions.add_(1)
        state.finished.logical_or_(state.stops_at_eos & (next_tokens == state.eos))
        state.generated.index_copy_(1, state.step, next_tokens[:, None])
        state.step.add_(1)

    def _run_step(self, state: _DecodeState) -> None:
        if state.graph is not None:
            state.graph.replay()
        else:
            self._decode_step(state)

    def _capture(self, state: _DecodeState) -> None:
        """Record one decode step as a CUDA graph on the state's buffers (transformers' graph-safe MoE)."""
        started = time.perf_counter()
        config = self.model.llm.config
        experts = config._experts_implementation
        # The experts read this at call time, so only the captured step uses it; prefills keep the default.
        config._experts_implementation = self.model.experts_kernel(GRAPH_SAFE_EXPERTS)
        try:
            self._set_write_slot(state, 0)
            state.step.zero_()
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(GRAPH_WARMUP_STEPS):
                    self._decode_step(state)
            torch.cuda.current_stream(self.device).wait_stream(side)
            self._set_write_slot(state, 0)
            state.step.zero_()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._graph_pool):
                self._decode_step(state)
            state.graph = graph
        finally:
            config._experts_implementation = experts
        self.graphs_captured += 1
        logger.info(
            "captured the decode step as a CUDA graph for batch %d, cache length %d in %.2f s",
            state.tokens.shape[0],
            state.slots.shape[0],
            time.perf_counter() - started,
        )
