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

from molmo_ros.engine.checkpoint import (
    DEFAULT_MODEL_ID,
    DEFAULT_REVISION,
    load_checkpoint,
    out_of_memory_guard,
)
from molmo_ros.engine.errors import EngineError
from molmo_ros.engine.generation import greedy_generate
from molmo_ros.engine.modeling import PADDING_ID, MolmoEForPointing
from molmo_ros.engine.preprocessing import ImageInputs, MolmoPreprocessor

Image = np.ndarray | PIL.Image.Image

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


@dataclass(frozen=True)
class EngineSettings:
    """What to load and how. `device`/`dtype` "auto": CUDA in bfloat16 if present, else CPU in float32."""

    model: str = DEFAULT_MODEL_ID  # Hugging Face id or local checkpoint directory
    revision: str = DEFAULT_REVISION  # commit of a hub id; ignored for a local directory
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    dtype: str = "auto"  # auto, float32, bfloat16, float16
    max_new_tokens: int = 200
    cache_dir: str | None = None  # converted-weights cache; see checkpoint.weights_cache_root
    cache_weights: bool = True  # keep a one-time bfloat16/float16 conversion for fast later starts
    stop_at_eos: bool = True  # False forces max_new_tokens tokens (benchmarks)

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model is empty: give a Hugging Face model id or a checkpoint directory")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if self.dtype != "auto" and self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be auto or one of {', '.join(_DTYPES)}, got {self.dtype!r}")
        if self.device != "auto":
            _parse_device(self.device)


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


def _parse_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as error:
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}") from error
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    return device


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = _parse_device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise EngineError(
                f"device {name!r} was asked for but CUDA is not available here; use device cpu or auto"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise EngineError(
                f"device {name!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s)"
            )
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[name]


class MolmoEngine:
    """Load once with `MolmoEngine.load`, then call `generate`; calls are serialized by a lock."""

    def __init__(
        self,
        model: MolmoEForPointing,
        preprocessor: MolmoPreprocessor,
        *,
        device: torch.device,
        dtype: torch.dtype,
        model_name: str,
        max_new_tokens: int = 200,
        stop_at_eos: bool = True,
    ) -> None:
        self.model = model
        self.preprocessor = preprocessor
        self._device = device
        self._dtype = dtype
        self._model_name = model_name
        self.max_new_tokens = max_new_tokens
        self.stop_at_eos = stop_at_eos
        self._lock = threading.Lock()

    @classmethod
    def load(cls, settings: EngineSettings) -> "MolmoEngine":
        device = resolve_device(settings.device)
        dtype = resolve_dtype(settings.dtype, device)
        loaded = load_checkpoint(
            settings.model,
            settings.revision,
            device,
            dtype,
            use_cache=settings.cache_weights,
            cache_dir=settings.cache_dir,
        )
        preprocessor = MolmoPreprocessor.from_pretrained(loaded.files_dir, device=device)
        return cls(
            loaded.model,
            preprocessor,
            device=device,
            dtype=dtype,
            model_name=loaded.description,
            max_new_tokens=settings.max_new_tokens,
            stop_at_eos=settings.stop_at_eos,
        )

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
