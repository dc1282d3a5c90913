"""The `molmo2` backend: AI2's Molmo2 through transformers' own classes, never remote code.

transformers 5.23 ships `Molmo2ForConditionalGeneration` and `Molmo2Processor`, so a hub checkpoint
(`allenai/Molmo2-4B`, `-8B`, `-O-7B`) or a local directory loads with `AutoModelForImageTextToText` and
`AutoProcessor`; only metadata and safetensors are fetched, never the repository's *.py files. The prompt
goes through the processor's chat template, images first, so one call can show the model several camera
frames (Molmo2 then names each point's image, see `molmo_ros.parsing`).

Several prompts about the same images share the vision work: the vision tower and adapter run once per
call (`get_image_features`) and every prompt's `generate` reuses the result through `mm_encoder_outputs`,
which transformers' generation accepts for this purpose. The processor still prepares the pixels for each
prompt (it expands the image placeholders of that prompt's text), which is CPU work only.
"""

import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, StoppingCriteria, StoppingCriteriaList

from molmo_ros.backends.device import (
    out_of_memory_guard,
    release_device_memory,
    resolve_device,
    resolve_dtype,
)
from molmo_ros.backends.errors import IncompatibleCheckpointError
from molmo_ros.backends.families import MOLMO2, check_family
from molmo_ros.backends.hub import fetch_snapshot, weights_not_found
from molmo_ros.backends.images import check_images
from molmo_ros.backends.interface import BackendAnswer, GenerationControl, Stage
from molmo_ros.backends.settings import BackendSettings, DefaultModel, chosen_model

log = logging.getLogger(__name__)

# The smallest Molmo2 (Qwen3-4B): about 10 GB of bfloat16 weights, the one that fits the most GPUs. No
# commit of the Molmo2 repositories could be verified from where this was written (no network to the
# hub, and no public source found names one: the public code that loads Molmo2-4B pins "main" too), so
# the default follows the repository's main branch; pin the revision setting to a commit for reproducible
# answers.
MOLMO2_DEFAULT = DefaultModel(family="Molmo2", model_id="allenai/Molmo2-4B", revision="main")
SUPPORTED = "allenai/Molmo2-4B, -8B or -O-7B"
# What a Molmo2 config.json must state itself, per section ("" = top level); a tuple holds the hub's name
# and transformers' own. transformers fills anything missing with Molmo2-8B's values, which fails late (no
# text_config builds an 8B-parameter model before the shape check; no image_patch_id fails at the first
# image) or never (another RoPE base, other ViT layers, another q/k norm: the model runs and answers
# wrongly).
REQUIRED_CONFIG_FIELDS = {
    "": (("text_config",), ("vit_config", "vision_config"), ("adapter_config",), ("image_patch_id",)),
    "text_config": (
        ("vocab_size",),
        ("hidden_size",),
        ("num_hidden_layers",),
        ("rope_theta", "rope_parameters"),
        ("qk_norm_type",),
    ),
    "vit_config|vision_config": (("hidden_size",), ("num_hidden_layers",)),
    "adapter_config": (("vit_layers", "vision_feature_layer"),),
}
# Molmo2 was trained on multi-image inputs. 8 frames covers a robot's camera set, and even 8 frames of
# 1920x1080 (9 crops, 1162 image tokens each with the processor's defaults) stay near 9,300 tokens, well
# inside the 36,864 positions of Molmo2's text model.
MAX_IMAGES_PER_PROMPT = 8
# What a hub snapshot needs besides the weights; the repository's *.py (remote code) is never fetched.
DOWNLOAD_PATTERNS = ("*.json", "*.jinja", "*.txt", "*.model", "*.safetensors")
WEIGHT_SUFFIX = ".safetensors"
# With int8 quantization these keep their weights in the dtype setting's dtype, as the molmoe backend
# keeps its vision tower and connector (README, "Weight-only int8").
FULL_PRECISION_PREFIXES = ("model.vision_tower.", "model.multi_modal_projector.")


@dataclass
class Molmo2Timings:
    """Where the time of the last `generate` call went, for logs and bench/engine.py."""

    preprocess_s: float = 0.0  # processor: chat template, pixels, placeholder expansion (all prompts)
    vision_s: float = 0.0  # vision tower + adapter, once per call
    prefill_s: list[float] = field(default_factory=list)  # per prompt: prompt pass and first token
    decode_s: list[float] = field(default_factory=list)  # per prompt: the tokens after the first
    new_tokens: list[int] = field(default_factory=list)


class _CancelAndReport(StoppingCriteria):
    """Called by `generate` after every step: reports decoded tokens and stops when cancelled."""

    def __init__(self, control: GenerationControl, prompt_tokens: int) -> None:
        self._control = control
        self._prompt_tokens = prompt_tokens
        self.first_step_at: float | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        if self.first_step_at is None:
            self.first_step_at = time.perf_counter()
        self._control.report(Stage.DECODING, input_ids.shape[1] - self._prompt_tokens)
        return torch.full(
            (input_ids.shape[0],), self._control.cancelled, dtype=torch.bool, device=input_ids.device
        )


class Molmo2Backend:
    """Load with `Molmo2Backend.load(settings)`; calls are serialized, a local GPU runs one at a time."""

    name = "molmo2"
    max_images = MAX_IMAGES_PER_PROMPT
    max_concurrent_calls = 1

    def __init__(self, model, processor, *, model_name: str, max_new_tokens: int) -> None:
        self.model = model
        self.processor = processor
        self.model_name = model_name
        self.max_new_tokens = max_new_tokens
        self.last_timings = Molmo2Timings()
        self._lock = threading.Lock()

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @classmethod
    def load(cls, settings: BackendSettings) -> "Molmo2Backend":
        model_id = chosen_model(settings.model, MOLMO2_DEFAULT)
        revision = settings.revision or MOLMO2_DEFAULT.revision
        directory = resolve_checkpoint(model_id, revision)
        check_model_type(directory, model_id)
        device = resolve_device(settings.device)
        dtype = resolve_dtype(settings.dtype, device)
        with out_of_memory_guard(device, f"loading {model_id}"):
            try:
                processor = AutoProcessor.from_pretrained(directory)
                model = AutoModelForImageTextToText.from_pretrained(directory, dtype=dtype)
            except (OSError, ValueError, KeyError) as error:
                raise IncompatibleCheckpointError(
                    f"{model_id} ({directory}) could not be loaded as Molmo2: {type(error).__name__}: {error}"
                ) from error
            if settings.quantization == "int8":
                quantize_int8(model)
            model = model.to(device).eval()
        name = (
            model_id
            if revision == MOLMO2_DEFAULT.revision or Path(model_id).is_dir()
            else f"{model_id}@{revision}"
        )
        log.info(
            "molmo2: loaded %s on %s in %s%s",
            name,
            device,
            dtype,
            " with int8 weights" if settings.quantization == "int8" else "",
        )
        return cls(model, processor, model_name=name, max_new_tokens=settings.max_new_tokens)

    def generate(
        self, images: Sequence[np.ndarray], prompts: Sequence[str], control: GenerationControl | None = None
    ) -> BackendAnswer:
        control = control or GenerationControl()
        check_images(images, self.max_images, self.name)
        pictures = [PIL.Image.fromarray(image) for image in images]
        with self._lock, torch.inference_mode(), out_of_memory_guard(self.device, "running Molmo2"):
            control.raise_if_cancelled()
            timings = Molmo2Timings()
            started = time.perf_counter()
            inputs = [self._prompt_inputs(pictures, prompt) for prompt in prompts]
            timings.preprocess_s = time.perf_counter() - started
            control.report(Stage.VISION)
            started = time.perf_counter()
            features = self.model.base_model.get_image_features(
                inputs[0]["pixel_values"].to(self.dtype),
                inputs[0]["image_token_pooling"],
                inputs[0]["image_grids"],
                return_dict=True,
            )
            timings.vision_s = time.perf_counter() - started
            texts = [self._decode(prompt_inputs, features, control, timings) for prompt_inputs in inputs]
            self.last_timings = timings
        return BackendAnswer(texts=texts)

    def close(self) -> None:
        """Frees the model (and its GPU memory) as the molmoe engine does; closing twice is harmless."""
        with self._lock:
            if self.model is None:
                return
            device = self.model.device
            self.model = None
            release_device_memory(device)

    def _prompt_inputs(self, pictures: list[PIL.Image.Image], prompt: str) -> dict[str, torch.Tensor]:
        content = [{"type": "image", "image": picture} for picture in pictures]
        messages = [{"role": "user", "content": [*content, {"type": "text", "text": prompt}]}]
        batch = self.processor.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=True, return_dict=True, return_tensors="pt"
        )
        return {key: value.to(self.device) for key, value in batch.items()}

    def _decode(self, inputs, features, control: GenerationControl, timings: Molmo2Timings) -> str:
        control.raise_if_cancelled()
        prompt_tokens = inputs["input_ids"].shape[1]
        watcher = _CancelAndReport(control, prompt_tokens)
        started = time.perf_counter()
        output = self.model.generate(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            mm_token_type_ids=inputs["mm_token_type_ids"],
            mm_encoder_outputs={"image": features},
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            stopping_criteria=StoppingCriteriaList([watcher]),
        )
        finished = time.perf_counter()
        control.raise_if_cancelled()
        new_tokens = output[:, prompt_tokens:]
        first_step = watcher.first_step_at or finished
        timings.prefill_s.append(first_step - started)
        timings.decode_s.append(finished - first_step)
        timings.new_tokens.append(new_tokens.shape[1])
        return self.processor.post_process_image_text_to_text(new_tokens, skip_special_tokens=True)[0]


def quantize_int8(model: torch.nn.Module) -> None:
    """Weight-only int8 (torchao, one scale per output channel) for every nn.Linear of the language model
    and head, in place, where the model was loaded (the CPU), so only int8 weights reach a GPU.

    Not through transformers' `TorchAoConfig` at load: with transformers 5.23 it keeps only the first
    part of the weights the hub layout fuses (q of `att_proj`, up of `ff_proj`) and leaves k, v and gate
    randomly initialised (measured on the tiny Molmo2 of the tests).
    """
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    def language_linear(module: torch.nn.Module, name: str) -> bool:
        return isinstance(module, torch.nn.Linear) and not name.startswith(FULL_PRECISION_PREFIXES)

    quantize_(model, Int8WeightOnlyConfig(), filter_fn=language_linear)


def resolve_checkpoint(model_id: str, revision: str) -> Path:
    """A local checkpoint directory as is, or the hub snapshot of `model_id` at `revision` (cache first)."""
    path = Path(model_id).expanduser()
    if path.is_dir():
        if not _is_complete(path):
            raise weights_not_found(
                MOLMO2_DEFAULT,
                f"the directory {path} lacks config.json or *{WEIGHT_SUFFIX} weights",
                model_id,
                None,
            )
        return path.resolve()
    if path.exists() or model_id.count("/") != 1 or model_id.startswith((".", "/", "~")):
        raise weights_not_found(
            MOLMO2_DEFAULT,
            f"{model_id!r} is neither a checkpoint directory nor a Hugging Face model id (owner/name)",
            model_id,
            None,
        )
    return fetch_snapshot(
        model_id,
        revision,
        MOLMO2_DEFAULT,
        patterns=lambda files: list(DOWNLOAD_PATTERNS),
        is_complete=_is_complete,
    )


def _is_complete(directory: Path) -> bool:
    return (directory / "config.json").is_file() and any(directory.glob(f"*{WEIGHT_SUFFIX}"))


def check_model_type(directory: Path, model_id: str) -> None:
    """Refuses a checkpoint that is not Molmo2, naming the backend that runs it, or whose config lacks
    what Molmo2 needs (REQUIRED_CONFIG_FIELDS)."""
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError) as error:
        raise IncompatibleCheckpointError(f"{model_id}: cannot read config.json ({error})") from error
    check_family(config, MOLMO2, model_id, SUPPORTED)
    missing = missing_config_fields(config)
    if missing:
        raise IncompatibleCheckpointError(
            f"{model_id}: its config.json lacks what Molmo2 needs: {', '.join(missing)}; transformers would "
            "put Molmo2-8B's values in their place. To fix: restore the checkpoint's original config.json "
            "(from the hub: hf download <model> config.json), or add those fields."
        )


def missing_config_fields(config: dict) -> list[str]:
    """The REQUIRED_CONFIG_FIELDS absent from a config.json's content, as `section.name (or other)`."""
    missing = []
    for section_names, fields in REQUIRED_CONFIG_FIELDS.items():
        section, prefix = config, ""
        if section_names:
            present = [name for name in section_names.split("|") if isinstance(config.get(name), dict)]
            if not present:
                continue  # the section itself is reported missing at the top level
            section, prefix = config[present[0]], f"{present[0]}."
        for alternatives in fields:
            if all(section.get(name) is None for name in alternatives):
                others = "".join(f" (or {name})" for name in alternatives[1:])
                missing.append(f"{prefix}{alternatives[0]}{others}")
    return missing
