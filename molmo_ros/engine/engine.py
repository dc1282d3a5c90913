"""The engine the ROS node and the CLI use: load MolmoE once, then answer prompts about images.

One image with several prompts is preprocessed and run through the vision encoder once; the
prompts are decoded together as one right-padded batch (greedy, KV cache, stop at EOS).
"""

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch

from molmo_ros.backends.settings import BackendSettings
from molmo_ros.engine.checkpoint import load_checkpoint
from molmo_ros.engine.defaults import DEFAULT_REVISION, default_model
from molmo_ros.engine.device import out_of_memory_guard, release_device_memory, resolve_device, resolve_dtype
from molmo_ros.engine.errors import EngineError
from molmo_ros.engine.generation import greedy_generate
from molmo_ros.engine.modeling import PADDING_ID, MolmoEForPointing
from molmo_ros.engine.preprocessing import ImageInputs, MolmoPreprocessor

Image = np.ndarray | PIL.Image.Image


@dataclass(frozen=True)
class StageTimings:
    """Seconds per stage of one call.

    `new_tokens` counts the answer tokens of all prompts together (EOS not included); `steps` is the
    number of tokens generated per prompt: the longest answer plus its EOS, or max_new_tokens when that
    limit stopped generation first. The prefill yields the first token, so `decode_s` covers
    `steps - 1` batched steps.
    """

    preprocess_s: float
    vision_s: float
    prefill_s: float
    decode_s: float
    new_tokens: int
    steps: int = 1

    @property
    def total_s(self) -> float:
        return self.preprocess_s + self.vision_s + self.prefill_s + self.decode_s


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
    ) -> None:
        self._model: MolmoEForPointing | None = model
        self.preprocessor = preprocessor
        self._device = device
        self._dtype = dtype
        self._model_name = model_name
        self.max_new_tokens = max_new_tokens
        self.stop_at_eos = stop_at_eos
        self._lock = threading.Lock()

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
        model = settings.model or default_model()
        loaded = load_checkpoint(
            model,
            settings.revision or DEFAULT_REVISION,
            device,
            dtype,
            use_cache=cache_weights,
            cache_dir=settings.cache_dir or None,
        )
        preprocessor = MolmoPreprocessor.from_pretrained(loaded.files_dir, device=device)
        return cls(
            loaded.model,
            preprocessor,
            device=device,
            dtype=dtype,
            model_name=loaded.description,
            max_new_tokens=settings.max_new_tokens,
            stop_at_eos=stop_at_eos,
        )

    @property
    def model(self) -> MolmoEForPointing:
        if self._model is None:
            raise EngineError(
                f"the engine for {self._model_name} is closed (its model was freed); load a new one"
            )
        return self._model

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
            self._model = None
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
        self, image: Image, prompts: Sequence[str], max_new_tokens: int | None = None
    ) -> EngineResult:
        """Answer every prompt about one image; the image is preprocessed and encoded once."""
        prompts = _check_prompts(prompts)
        with self._lock, torch.inference_mode(), out_of_memory_guard(self._device, "answering"):
            started = time.perf_counter()
            image_inputs = self.preprocessor.encode_image(image)
            input_ids = [self.preprocessor.build_input_ids(prompt, image_inputs) for prompt in prompts]
            preprocess_s = time.perf_counter() - started
            return self._run([image_inputs], input_ids, preprocess_s, max_new_tokens)

    def generate_batch(
        self, images: Sequence[Image], prompts: Sequence[str], max_new_tokens: int | None = None
    ) -> EngineResult:
        """One prompt per image, all decoded as one batch."""
        prompts = _check_prompts(prompts)
        if len(images) != len(prompts):
            raise ValueError(
                f"generate_batch needs one prompt per image: {len(images)} images, {len(prompts)} prompts"
            )
        with self._lock, torch.inference_mode(), out_of_memory_guard(self._device, "answering a batch"):
            started = time.perf_counter()
            image_inputs = [self.preprocessor.encode_image(image) for image in images]
            input_ids = [
                self.preprocessor.build_input_ids(p, inputs)
                for p, inputs in zip(prompts, image_inputs, strict=True)
            ]
            preprocess_s = time.perf_counter() - started
            return self._run(image_inputs, input_ids, preprocess_s, max_new_tokens)

    def _run(
        self,
        image_inputs: list[ImageInputs],
        input_ids: list[np.ndarray],
        preprocess_s: float,
        max_new_tokens: int | None,
    ) -> EngineResult:
        """Encode the images (one per row, or one shared by all rows) and decode all rows together."""
        images, masks, positions = self._stack_images(image_inputs)
        output = greedy_generate(
            self.model,
            _right_pad(input_ids).to(self._device),
            image_input_idx=positions,
            images=images,
            image_masks=masks,
            max_new_tokens=self.max_new_tokens if max_new_tokens is None else max_new_tokens,
            # argmax never yields -1, so with stop_at_eos off every answer runs to the limit.
            eos_token_id=self.preprocessor.eos_token_id if self.stop_at_eos else PADDING_ID,
        )
        timings = StageTimings(
            preprocess_s=preprocess_s,
            vision_s=output.timings.vision_s,
            prefill_s=output.timings.prefill_s,
            decode_s=output.timings.decode_s,
            new_tokens=sum(len(row) for row in output.token_ids),
            steps=output.timings.steps,
        )
        texts = [self.preprocessor.decode(row) for row in output.token_ids]
        return EngineResult(texts, timings, output.token_ids)

    def _stack_images(
        self, image_inputs: list[ImageInputs]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[B, N, ...] tensors on the preprocessor's device. One image only gains the batch axis (no copy);
        images with fewer crops are padded with -1, the reference's batch padding (an all -1 crop is
        encoded like any other and its features zeroed, a -1 position receives no feature)."""
        names = ("images", "image_masks", "image_input_idx")
        if len(image_inputs) == 1:
            images, masks, positions = (getattr(image_inputs[0], name)[None] for name in names)
            return images, masks, positions
        crops = max(inputs.images.shape[0] for inputs in image_inputs)

        def stacked(name: str) -> torch.Tensor:
            rows = [getattr(inputs, name) for inputs in image_inputs]
            return torch.stack(
                [
                    row
                    if row.shape[0] == crops
                    else torch.cat([row, row.new_full((crops - row.shape[0], *row.shape[1:]), -1)])
                    for row in rows
                ]
            )

        images, masks, positions = (stacked(name) for name in names)
        return images, masks, positions


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


def _right_pad(rows: list[np.ndarray]) -> torch.Tensor:
    """[B, T] int64, shorter rows padded with -1 on the right (the reference treats -1 as padding)."""
    length = max(len(row) for row in rows)
    padded = np.full((len(rows), length), -1, dtype=np.int64)
    for i, row in enumerate(rows):
        padded[i, : len(row)] = row
    return torch.from_numpy(padded)
