"""The engine the ROS node and the CLI use: load MolmoE once, then answer prompts about images.

One image with several prompts is preprocessed, run through the vision encoder and prefilled (BOS and
image block) once; the prompts are then decoded together as one batch on the fast path
(fast_generation.py: shared prefix, static cache, CUDA graphs on CUDA; greedy, stop at EOS). The last
frame's prefix is kept, keyed by the identity of the image object, so a second request about the same
frame skips all image work.
"""

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch

from molmo_ros.backends.device import (
    out_of_memory_guard,
    release_device_memory,
    resolve_device,
    resolve_dtype,
)
from molmo_ros.backends.errors import BackendError
from molmo_ros.backends.interface import GenerationControl, Stage
from molmo_ros.backends.molmoe.checkpoint import load_checkpoint
from molmo_ros.backends.molmoe.defaults import MOLMOE_DEFAULT
from molmo_ros.backends.molmoe.fast_generation import FastGenerator, PrefixCache
from molmo_ros.backends.molmoe.modeling import MolmoEForPointing
from molmo_ros.backends.molmoe.preprocessing import MolmoPreprocessor
from molmo_ros.backends.settings import BackendSettings, chosen_model

Image = np.ndarray | PIL.Image.Image

logger = logging.getLogger(__name__)

# The request shape warm_up prepares (CUDA graphs are per batch size and cache length): a 1080p frame,
# one prompt and a batch of several prompts about it.
WARM_UP_FRAME_SIZE = (1080, 1920)  # height, width
WARM_UP_PROMPT = "Point to the red mug"
WARM_UP_BATCHES = (1, 8)


@dataclass(frozen=True)
class StageTimings:
    """Seconds per stage of one call.

    `new_tokens` counts the answer tokens of all prompts together (EOS not included); `steps` is the
    number of tokens generated per prompt: the longest answer plus its EOS, or max_new_tokens when that
    limit stopped generation first. The prefill yields the first token, so `decode_s` covers
    `steps - 1` batched steps. `prefill_s` is the prompts' own tokens; `prefix_prefill_s` the shared BOS
    and image block. preprocess, vision and prefix prefill are 0 when the frame's prefix was cached.
    """

    preprocess_s: float
    vision_s: float
    prefill_s: float
    decode_s: float
    new_tokens: int
    steps: int = 1
    prefix_prefill_s: float = 0.0

    @property
    def total_s(self) -> float:
        return self.preprocess_s + self.vision_s + self.prefix_prefill_s + self.prefill_s + self.decode_s


@dataclass(frozen=True)
class _FramePrefix:
    """The last frame's prefill, reused while the caller passes the very same image object again."""

    image: object  # the caller's object, compared with `is` (callers never modify a frame they passed)
    prefix: PrefixCache
    preprocess_s: float


@dataclass(frozen=True)
class EngineResult:
    texts: list[str]  # one decoded answer per prompt (special tokens removed)
    timings: StageTimings
    token_ids: list[list[int]]  # the generated ids per prompt, EOS and anything after it excluded


class MolmoEngine:
    """Load once with `MolmoEngine.load`, then call `generate`; calls are serialized by a lock.
    `close` frees the model (and its GPU memory); the engine cannot answer afterwards."""

    def __init__(
        self,
        model: MolmoEForPointing,
        preprocessor: MolmoPreprocessor,
        *,
        device: torch.device,
        dtype: torch.dtype,
        model_name: str,
        max_new_tokens: int = BackendSettings.max_new_tokens,
        stop_at_eos: bool = True,
        use_cuda_graphs: bool | None = None,
    ) -> None:
        """use_cuda_graphs: None means on CUDA (FastGenerator's default); False decodes eagerly."""
        self._model: MolmoEForPointing | None = model
        self.preprocessor = preprocessor
        self._device = device
        self._dtype = dtype
        self._model_name = model_name
        self.max_new_tokens = max_new_tokens
        self.stop_at_eos = stop_at_eos
        self._lock = threading.Lock()
        self._fast: FastGenerator | None = FastGenerator(model, use_cuda_graphs=use_cuda_graphs)
        self._last_frame: _FramePrefix | None = None

    @classmethod
    def load(
        cls, settings: BackendSettings, *, cache_weights: bool = True, stop_at_eos: bool = True
    ) -> "MolmoEngine":
        """Load the checkpoint `settings.model` names (empty: $MOLMO_MODEL, else MolmoE-1B at its pinned
        revision). cache_weights keeps a one-time bfloat16/float16 conversion for fast later starts;
        stop_at_eos False forces max_new_tokens tokens (benchmarks). A device or dtype this machine cannot
        use raises InvalidSettingError before anything is read."""
        device = resolve_device(settings.device)
        dtype = resolve_dtype(settings.dtype, device)
        loaded = load_checkpoint(
            chosen_model(settings.model, MOLMOE_DEFAULT),
            settings.revision or MOLMOE_DEFAULT.revision,
            device,
            dtype,
            use_cache=cache_weights,
            cache_dir=settings.cache_dir or None,
            quantization=settings.quantization,
        )
        preprocessor = MolmoPreprocessor.from_pretrained(loaded.files_dir, device=device)
        engine = cls(
            loaded.model,
            preprocessor,
            device=device,
            dtype=dtype,
            model_name=loaded.description,
            max_new_tokens=settings.max_new_tokens,
            stop_at_eos=stop_at_eos,
        )
        engine.warm_up()
        return engine

    @property
    def model(self) -> MolmoEForPointing:
        if self._model is None:
            raise BackendError(
                f"the engine for {self._model_name} is closed (its model was freed); load a new one"
            )
        return self._model

    @property
    def _generator(self) -> FastGenerator:
        if self._fast is None:
            raise BackendError(
                f"the engine for {self._model_name} is closed (its model was freed); load a new one"
            )
        return self._fast

    @property
    def closed(self) -> bool:
        return self._model is None

    def close(self) -> None:
        """Drop the model so its memory is given back (on CUDA, to the driver, visible in nvidia-smi).

        Waits for a running generate call to finish. Whoever still holds the model object itself (not
        this engine) keeps it alive. Closing twice is harmless."""
        with self._lock:
            if self._model is None:
                return
            # The fast path's caches, graphs and the last frame's prefix hold the model and device memory too.
            self._model = self._fast = self._last_frame = None
            release_device_memory(self._device)

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def model_name(self) -> str:
        return self._model_name

    def generate(
        self,
        image: Image,
        prompts: Sequence[str],
        max_new_tokens: int | None = None,
        control: GenerationControl | None = None,
    ) -> EngineResult:
        """Answer every prompt about one image; the image is preprocessed, encoded and prefilled once.

        Passing the same image object as the previous call reuses that frame's prefill: an image must
        not be modified after it was passed in. `control` is told the stage (VISION, then DECODING with
        the tokens so far) and checked for cancellation between decode steps (GenerationCancelledError).
        """
        prompts = _check_prompts(prompts)
        with self._lock, torch.inference_mode(), out_of_memory_guard(self._device, "answering"):
            if control is not None:
                control.raise_if_cancelled()
                control.report(Stage.VISION)
            prompt_ids = [self.preprocessor.prompt_token_ids(prompt) for prompt in prompts]
            cached = self._last_frame is not None and self._last_frame.image is image
            if not cached:
                self._last_frame = None  # never keep a prefix beside a newer one: frees its memory first
                self._last_frame = self._prefill_frame(image, prompts[0])
            frame = self._last_frame
            image_stages = (
                (0.0, 0.0, 0.0)
                if cached
                else (frame.preprocess_s, frame.prefix.vision_s, frame.prefix.prefill_s)
            )
            return self._decode([frame.prefix], prompt_ids, max_new_tokens, control, image_stages)

    def generate_batch(
        self,
        images: Sequence[Image],
        prompts: Sequence[str],
        max_new_tokens: int | None = None,
        control: GenerationControl | None = None,
    ) -> EngineResult:
        """One prompt per image, all decoded as one batch (each distinct image object prefilled once)."""
        prompts = _check_prompts(prompts)
        if len(images) != len(prompts):
            raise ValueError(
                f"generate_batch needs one prompt per image: {len(images)} images, {len(prompts)} prompts"
            )
        with self._lock, torch.inference_mode(), out_of_memory_guard(self._device, "answering a batch"):
            if control is not None:
                control.raise_if_cancelled()
                control.report(Stage.VISION)
            frames: dict[int, _FramePrefix] = {}
            for image, prompt in zip(images, prompts, strict=True):
                if id(image) not in frames:
                    frames[id(image)] = self._prefill_frame(image, prompt)
            prefixes = [frames[id(image)].prefix for image in images]
            unique = frames.values()
            stages = (
                sum(frame.preprocess_s for frame in unique),
                sum(frame.prefix.vision_s for frame in unique),
                sum(frame.prefix.prefill_s for frame in unique),
            )
            prompt_ids = [self.preprocessor.prompt_token_ids(prompt) for prompt in prompts]
            return self._decode(prefixes, prompt_ids, max_new_tokens, control, stages)

    def warm_up(self) -> float | None:
        """On CUDA, allocate the static caches and capture the decode graphs a 1080p request with 1 and 8
        prompts uses, so the first real request is fast; logs and returns the seconds it took. Nothing
        to prepare on CPU (returns None)."""
        if self._device.type != "cuda":
            return None
        started = time.perf_counter()
        frame = np.zeros((*WARM_UP_FRAME_SIZE, 3), dtype=np.uint8)
        for batch in WARM_UP_BATCHES:
            self.generate(frame, [WARM_UP_PROMPT] * batch)
        with self._lock:
            self._last_frame = None
        seconds = time.perf_counter() - started
        logger.info(
            "engine warm-up (1080p frame, batches %s, %d CUDA graphs captured) took %.2f s",
            WARM_UP_BATCHES,
            self._generator.graphs_captured,
            seconds,
        )
        return seconds

    def _prefill_frame(self, image: Image, prompt: str) -> _FramePrefix:
        """Preprocess one image and prefill BOS + its image block (everything before the prompt's tokens)."""
        started = time.perf_counter()
        image_inputs = self.preprocessor.encode_image(image)
        input_ids = self.preprocessor.build_input_ids(prompt, image_inputs)
        prefix_ids = input_ids[: len(input_ids) - len(self.preprocessor.prompt_token_ids(prompt))]
        preprocess_s = time.perf_counter() - started
        prefix = self._generator.prefill_prefix(
            torch.from_numpy(prefix_ids),
            image_inputs.images,
            image_inputs.image_masks,
            image_inputs.image_input_idx,
        )
        return _FramePrefix(image=image, prefix=prefix, preprocess_s=preprocess_s)

    def _decode(
        self,
        prefixes: list[PrefixCache],
        prompt_ids: list[list[int]],
        max_new_tokens: int | None,
        control: GenerationControl | None,
        image_stages: tuple[float, float, float],
    ) -> EngineResult:
        """Decode every prompt after its prefix; image_stages: preprocess, vision, prefix prefill seconds."""
        if control is not None:
            control.raise_if_cancelled()
        output = self._generator.generate(
            prefixes,
            prompt_ids,
            max_new_tokens=self.max_new_tokens if max_new_tokens is None else max_new_tokens,
            eos_token_id=self.preprocessor.eos_token_id if self.stop_at_eos else None,
            control=control,
        )
        preprocess_s, vision_s, prefix_prefill_s = image_stages
        timings = StageTimings(
            preprocess_s=preprocess_s,
            vision_s=vision_s,
            prefill_s=output.timings.prefill_s,
            decode_s=output.timings.decode_s,
            new_tokens=sum(len(row) for row in output.token_ids),
            steps=output.timings.steps,
            prefix_prefill_s=prefix_prefill_s,
        )
        texts = [self.preprocessor.decode(row) for row in output.token_ids]
        return EngineResult(texts, timings, output.token_ids)


def _check_prompts(prompts: Sequence[str]) -> list[str]:
    if isinstance(prompts, str):
        raise TypeError("prompts must be a sequence of strings, not one string; wrap it in a list")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts given")
    for prompt in prompts:
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"every prompt must be a non-empty string, got {prompt!r}")
    return prompts
