"""Molmo's multi-crop image preprocessing and prompt template, reproduced from the official processor.

It mirrors `MolmoProcessor.process` (preprocessing_molmo.py) and `MolmoImageProcessor.
image_to_patches_and_tokens` with its helpers `select_tiling` and `resize_and_pad`
(image_preprocessing_molmo.py) of AI2's MolmoE-1B remote code. The model was trained on exactly these
pixels and token layouts, so every quirk of the reference (float32 scale arithmetic, bilinear antialias
resize of /255 floats, mask rows offset by one, EXIF orientation ignored) is kept on purpose; docs/ENGINE.md
("Preprocessing") states them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import tokenizers
import torch
import torch.nn.functional as F

from molmo_ros.backends.errors import IncompatibleCheckpointError, InvalidImageError

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

IMAGE_START_TOKEN = "<im_start>"
IMAGE_END_TOKEN = "<im_end>"
IMAGE_PATCH_TOKEN = "<im_patch>"
IMAGE_COL_TOKEN = "<im_col>"
IMAGE_PROMPT_TOKEN = "<|image|>"
_IMAGE_TOKENS = (IMAGE_START_TOKEN, IMAGE_END_TOKEN, IMAGE_PATCH_TOKEN, IMAGE_COL_TOKEN, IMAGE_PROMPT_TOKEN)

# image_input_idx value of a pooled feature that is added nowhere (the overlap margin of inner crop edges).
DROPPED_SLOT = -100
# The reference appends one mask row of this value after the crop masks (its masks are offset by one row
# from the crops); the connector counts it as partially padded.
APPENDED_MASK_VALUE = -1.0
# select_tiling: stands in for scales below 1 when some tiling needs no downscaling, so it is never chosen.
_NOT_CHOSEN_SCALE = np.float32(1e10)

_PREPROCESSOR_SETTINGS = (
    "max_crops",
    "overlap_margins",
    "base_image_input_size",
    "image_patch_size",
    "image_token_length_h",
    "image_token_length_w",
    "image_mean",
    "image_std",
)


@dataclass(frozen=True)
class ImageInputs:
    """One image, preprocessed once, ready to be paired with any number of prompts.

    The image block always sits right after BOS, so `image_input_idx` (absolute positions in
    `input_ids`) does not depend on the prompt. The tensors stay on the preprocessor's device, so the
    engine can hand them to the model without a round trip through host memory.
    """

    images: torch.Tensor  # float32 [N, patches per crop, pixels per patch]; N = 1 + rows * cols
    image_masks: torch.Tensor  # float32 [N, patches per crop]; row t is crop t's mask, last row appended
    image_input_idx: torch.Tensor  # int32 [N, pooled tokens per crop]; DROPPED_SLOT where a slot is dropped
    image_token_ids: np.ndarray  # int64, the global block then the crop block
    tiling: tuple[int, int]  # (rows, cols) of crops
    original_size: tuple[int, int]  # (height, width) of the input image


def select_tiling(height: int, width: int, window: int, max_crops: int) -> tuple[int, int]:
    """Pick (rows, cols) of crop windows for an image of height x width (margins already removed).

    float32 arithmetic and the tie order (fewer crops first, then fewer rows) follow the reference;
    sizes that are zero or negative (tiny images) are not special-cased there either.
    """
    candidates = sorted(
        (
            (rows, cols)
            for rows in range(1, max_crops + 1)
            for cols in range(1, max_crops + 1)
            if rows * cols <= max_crops
        ),
        key=lambda tiling: (tiling[0] * tiling[1], tiling[0]),
    )
    tilings = np.array(candidates, dtype=np.int32)
    with np.errstate(divide="ignore"):
        scales = (tilings * window).astype(np.float32) / np.array([height, width], dtype=np.float32)
    scale = scales.min(axis=1)
    if np.all(scale < 1):
        best = int(np.argmax(scale))
    else:
        best = int(np.argmin(np.where(scale < 1, _NOT_CHOSEN_SCALE, scale)))
    return int(tilings[best, 0]), int(tilings[best, 1])


def _scaled_size(height: int, width: int, target_h: int, target_w: int) -> tuple[int, int]:
    scale = min(np.float32(target_h) / np.float32(height), np.float32(target_w) / np.float32(width))
    return int(np.float32(height) * scale), int(np.float32(width) * scale)


def _coverage(length: int, start: int, stop: int, patch: int) -> np.ndarray:
    """How many pixels of each patch along one axis lie in [start, stop)."""
    edges = np.arange(length // patch) * patch
    return np.clip(np.minimum(edges + patch, stop) - np.maximum(edges, start), 0, patch)


class MolmoPreprocessor:
    """Turns (image, prompt) into the model inputs exactly like AI2's `MolmoProcessor.process`.

    Differences, all deliberate: `input_ids` are int64 even without an image (the reference gives
    int32 there, a numpy accident), and numpy inputs may also be grayscale HxW or RGBA HxWx4 (handled
    as PIL's convert("RGB") would). `device` chooses where the resize, normalization and patch cutting
    run and where `encode_image`'s tensors live (`process` returns numpy either way); CPU is bit-exact
    with the reference, a GPU's resize kernel may round differently.
    """

    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        *,
        max_crops: int = 12,
        overlap_margins: Sequence[int] = (4, 4),
        base_image_input_size: Sequence[int] = (336, 336),
        image_patch_size: int = 14,
        image_token_length_h: int = 12,
        image_token_length_w: int = 12,
        image_mean: Sequence[float] = OPENAI_CLIP_MEAN,
        image_std: Sequence[float] = OPENAI_CLIP_STD,
        eos_token: str = "<|endoftext|>",
        pad_token: str = "<|padding|>",
        clean_up_tokenization_spaces: bool = True,
        device: torch.device | str = "cpu",
    ) -> None:
        _check_crop_geometry(
            base_image_input_size,
            image_patch_size,
            (image_token_length_h, image_token_length_w),
            overlap_margins,
        )
        crop_h = base_image_input_size[0]
        left_margin, right_margin = overlap_margins
        crop_patches = crop_h // image_patch_size
        self.tokenizer = tokenizer
        self.max_crops = max_crops
        self.patch_size = image_patch_size
        self.crop_size = crop_h
        self.crop_patches = crop_patches
        self.tokens_per_side = image_token_length_h
        self.margins = (left_margin, right_margin)
        self.window_patches = crop_patches - left_margin - right_margin
        self.device = torch.device(device)
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        self._mean = torch.tensor(image_mean, dtype=torch.float32, device=self.device)
        self._std = torch.tensor(image_std, dtype=torch.float32, device=self.device)

        self.eos_token_id = self._token_id(eos_token)
        self.pad_token_id = self._token_id(pad_token)
        # The tokenizer has no BOS; the reference uses EOS as the leading separator.
        self.bos_token_id = self.eos_token_id
        image_ids = tokenizer.encode("".join(_IMAGE_TOKENS), add_special_tokens=False).ids
        if len(image_ids) != len(_IMAGE_TOKENS):
            raise IncompatibleCheckpointError(
                f"the tokenizer does not know Molmo's image tokens {', '.join(_IMAGE_TOKENS)}"
            )
        (
            self.image_start_id,
            self.image_end_id,
            self.image_patch_id,
            self.image_col_id,
            self.image_prompt_id,
        ) = image_ids
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)

    def _token_id(self, token: str) -> int:
        token_id = self.tokenizer.token_to_id(token)
        if token_id is None:
            raise IncompatibleCheckpointError(f"the tokenizer has no token {token!r}")
        return token_id

    @classmethod
    def from_pretrained(
        cls, checkpoint_dir: str | Path, *, device: torch.device | str = "cpu"
    ) -> MolmoPreprocessor:
        """From a checkpoint dir: tokenizer.json, preprocessor_config.json, tokenizer_config.json."""
        checkpoint_dir = Path(checkpoint_dir)
        tokenizer_file = checkpoint_dir / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise IncompatibleCheckpointError(f"{tokenizer_file} is missing; a MolmoE checkpoint ships one")
        settings = _read_json(checkpoint_dir / "preprocessor_config.json")
        for flag in ("do_normalize", "image_padding_mask"):
            if settings.get(flag, True) is not True:
                raise IncompatibleCheckpointError(
                    f"preprocessor_config.json sets {flag}={settings[flag]!r}, "
                    "which this engine does not implement"
                )
        kwargs = {name: settings[name] for name in _PREPROCESSOR_SETTINGS if name in settings}
        tokenizer_config = _read_json(checkpoint_dir / "tokenizer_config.json")
        for name in ("eos_token", "pad_token"):
            token = tokenizer_config.get(name)
            if isinstance(token, dict):
                token = token.get("content")
            if isinstance(token, str):
                kwargs[name] = token
        if "clean_up_tokenization_spaces" in tokenizer_config:
            kwargs["clean_up_tokenization_spaces"] = bool(tokenizer_config["clean_up_tokenization_spaces"])
        try:
            tokenizer = tokenizers.Tokenizer.from_file(str(tokenizer_file))
        # The tokenizers library raises a bare Exception for unreadable or malformed files.
        except Exception as error:
            raise IncompatibleCheckpointError(
                f"{tokenizer_file} is not a readable tokenizer ({error}); restore it from the checkpoint "
                "(delete the download or the converted-weights entry so it is fetched or copied again)"
            ) from error
        try:
            return cls(tokenizer, device=device, **kwargs)
        except (ValueError, TypeError) as error:
            raise IncompatibleCheckpointError(
                f"{checkpoint_dir / 'preprocessor_config.json'} has settings this engine does not support: "
                f"{error}"
            ) from error

    # ------------------------------------------------------------------ text

    def prompt_token_ids(self, prompt: str) -> list[int]:
        """The text part of the input: the "role" message format with a leading space, as the reference."""
        return self.tokenizer.encode(" User: " + prompt + " Assistant:", add_special_tokens=False).ids

    def build_input_ids(self, prompt: str, image: ImageInputs | None) -> np.ndarray:
        """int64 [T]: BOS, then the image block (if any), then the prompt tokens."""
        parts = [np.array([self.bos_token_id], dtype=np.int64)]
        if image is not None:
            parts.append(image.image_token_ids)
        parts.append(np.array(self.prompt_token_ids(prompt), dtype=np.int64))
        return np.concatenate(parts)

    def decode(self, token_ids: Sequence[int]) -> str:
        """Text of generated ids, dropping special tokens (EOS, pad, image tokens), -1 padding and
        ids the model can emit but the tokenizer does not know (its head has 50304 rows)."""
        known = [int(i) for i in token_ids if 0 <= int(i) < self.vocab_size]
        text = self.tokenizer.decode(known, skip_special_tokens=True)
        if self.clean_up_tokenization_spaces:
            text = _clean_up_tokenization(text)
        return text

    def process(
        self, image: np.ndarray | PIL.Image.Image | ImageInputs | None, prompt: str
    ) -> dict[str, np.ndarray]:
        """Reference processor outputs, no batch axis: input_ids, images, image_input_idx, image_masks."""
        if image is None:
            return {"input_ids": self.build_input_ids(prompt, None)}
        if not isinstance(image, ImageInputs):
            image = self.encode_image(image)
        return {
            "input_ids": self.build_input_ids(prompt, image),
            "images": image.images.cpu().numpy(),
            "image_input_idx": image.image_input_idx.cpu().numpy(),
            "image_masks": image.image_masks.cpu().numpy(),
        }

    # ----------------------------------------------------------------- image

    def encode_image(self, image: np.ndarray | PIL.Image.Image) -> ImageInputs:
        """Crops, masks, token block and feature positions of one image.

        numpy input: HxWx3 uint8 RGB (also HxW gray, HxWx1, HxWx4 with alpha dropped; other integer
        dtypes are accepted when every value fits in 0..255). PIL input: convert("RGB"), EXIF
        orientation not applied (the reference ignores it too). The result is prompt-independent.
        """
        pixels = _to_rgb_uint8(image)
        height, width = pixels.shape[:2]
        patch = self.patch_size
        margin_pixels = patch * sum(self.margins)
        window = self.window_patches * patch
        rows, cols = select_tiling(height - margin_pixels, width - margin_pixels, window, self.max_crops)
        canvas_h, canvas_w = rows * window + margin_pixels, cols * window + margin_pixels

        source = self._to_float_tensor(pixels)
        n_crops = rows * cols
        images = torch.empty(
            (1 + n_crops, self.crop_patches**2, patch * patch * 3), dtype=torch.float32, device=self.device
        )
        global_image, _ = self._resize_and_pad(source, self.crop_size, self.crop_size)
        images[0].view(self.crop_patches, self.crop_patches, patch, patch, 3).copy_(
            self._patch_grid(global_image)
        )
        canvas, (top, left, new_h, new_w) = self._resize_and_pad(source, canvas_h, canvas_w)
        images[1:].view(rows, cols, self.crop_patches, self.crop_patches, patch, patch, 3).copy_(
            self._crop_patch_grids(canvas, rows, cols)
        )

        row_cover = _coverage(canvas_h, top, top + new_h, patch)
        col_cover = _coverage(canvas_w, left, left + new_w, patch)
        crop_masks = self._crop_windows(np.outer(row_cover, col_cover), rows, cols)
        image_masks = np.concatenate(
            [
                crop_masks.reshape(n_crops, -1).astype(np.float32) / np.float32(patch * patch),
                np.full((1, self.crop_patches**2), APPENDED_MASK_VALUE, dtype=np.float32),
            ]
        )
        return ImageInputs(
            images=images,
            image_masks=torch.from_numpy(image_masks).to(self.device),
            image_input_idx=torch.from_numpy(self._image_input_idx(rows, cols)).to(self.device),
            image_token_ids=self._image_token_ids(rows, cols),
            tiling=(rows, cols),
            original_size=(height, width),
        )

    def _to_float_tensor(self, pixels: np.ndarray) -> torch.Tensor:
        """[1, 3, H, W] float32 in 0..1, kept in HWC memory order like the reference (same kernel path)."""
        if not pixels.flags.writeable:
            pixels = pixels.copy()  # torch.from_numpy warns on read-only buffers (e.g. ROS messages)
        source = torch.from_numpy(pixels).to(self.device).permute(2, 0, 1).unsqueeze(0)
        return source.to(torch.float32).div_(255)

    def _resize_and_pad(
        self, source: torch.Tensor, target_h: int, target_w: int
    ) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
        """Normalized [target_h, target_w, 3] image, centered; padding holds normalized zeros."""
        height, width = source.shape[-2:]
        new_h, new_w = _scaled_size(height, width, target_h, target_w)
        if new_h == 0 or new_w == 0:
            raise InvalidImageError(
                f"image of {height}x{width} pixels is too thin to resize to {target_h}x{target_w}; "
                "crop it to a less extreme aspect ratio"
            )
        resized = F.interpolate(
            source, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True
        )
        resized = resized.clamp_(0.0, 1.0)[0].permute(1, 2, 0)
        top, left = (target_h - new_h) // 2, (target_w - new_w) // 2
        canvas = torch.empty((target_h, target_w, 3), dtype=torch.float32, device=self.device)
        canvas.copy_((-self._mean / self._std).expand_as(canvas))  # normalized zero padding
        canvas[top : top + new_h, left : left + new_w] = (resized - self._mean) / self._std
        return canvas, (top, left, new_h, new_w)

    def _patch_grid(self, image: torch.Tensor) -> torch.Tensor:
        """[rows, cols, patch, patch, 3] view of HWC pixels: patches row-major, pixels (row, col, channel)."""
        p = self.patch_size
        return image.view(image.shape[0] // p, p, image.shape[1] // p, p, 3).permute(0, 2, 1, 3, 4)

    def _crop_patch_grids(self, canvas: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        """[rows, cols, 24, 24, patch, patch, 3] view of the overlapping crops (stride = crop window)."""
        grid = self._patch_grid(canvas)
        step = self.window_patches
        s_y, s_x = grid.stride(0), grid.stride(1)
        return grid.as_strided(
            (rows, cols, self.crop_patches, self.crop_patches, *grid.shape[2:]),
            (step * s_y, step * s_x, s_y, s_x, *grid.stride()[2:]),
        )

    def _crop_windows(self, per_patch: np.ndarray, rows: int, cols: int) -> np.ndarray:
        """[rows, cols, 24, 24] overlapping crop windows of a per-canvas-patch array."""
        windows = np.lib.stride_tricks.sliding_window_view(per_patch, (self.crop_patches, self.crop_patches))
        step = self.window_patches
        return windows[::step, ::step][:rows, :cols]

    def _canvas_token_grid(self, rows: int, cols: int) -> tuple[int, int]:
        """Pooled token rows and columns covering the whole crop canvas."""
        margin_tokens = sum(self.margins) // 2
        window_tokens = self.window_patches // 2
        return rows * window_tokens + margin_tokens, cols * window_tokens + margin_tokens

    def _image_token_ids(self, rows: int, cols: int) -> np.ndarray:
        def block(token_rows: int, token_cols: int) -> list[int]:
            row = [self.image_patch_id] * token_cols + [self.image_col_id]
            return [self.image_start_id, *row * token_rows, self.image_end_id]

        side = self.tokens_per_side
        return np.array(block(side, side) + block(*self._canvas_token_grid(rows, cols)), dtype=np.int64)

    def _image_input_idx(self, rows: int, cols: int) -> np.ndarray:
        """Where each pooled feature is added in input_ids (BOS at 0), DROPPED_SLOT for overlap slots.

        Inner crop edges drop half the overlap margin so every <im_patch> gets exactly one feature.
        """
        side = self.tokens_per_side
        slot_y, slot_x = np.divmod(np.arange(side * side), side)
        global_idx = 2 + slot_y * (side + 1) + slot_x  # after BOS and <im_start>
        crop_start = 1 + (side * (side + 1) + 2) + 1  # BOS, global block, <im_start>
        _, canvas_cols = self._canvas_token_grid(rows, cols)
        window_tokens = self.window_patches // 2
        drop_before, drop_after = self.margins[0] // 2, self.margins[1] // 2

        crop_idx = np.full((rows, cols, side * side), DROPPED_SLOT, dtype=np.int64)
        for i in range(rows):
            y_lo, y_hi = (0 if i == 0 else drop_before), (side if i == rows - 1 else side - drop_after)
            for j in range(cols):
                x_lo, x_hi = (0 if j == 0 else drop_before), (side if j == cols - 1 else side - drop_after)
                kept = (slot_y >= y_lo) & (slot_y < y_hi) & (slot_x >= x_lo) & (slot_x < x_hi)
                y, x = window_tokens * i + slot_y, window_tokens * j + slot_x
                crop_idx[i, j, kept] = crop_start + y[kept] * (canvas_cols + 1) + x[kept]
        return np.concatenate([global_idx[None], crop_idx.reshape(rows * cols, -1)]).astype(np.int32)


def _to_rgb_uint8(image: np.ndarray | PIL.Image.Image) -> np.ndarray:
    """HxWx3 uint8 C-contiguous RGB, or InvalidImageError saying what was wrong."""
    if isinstance(image, PIL.Image.Image):
        if image.width == 0 or image.height == 0:
            raise InvalidImageError(f"image is empty ({image.width}x{image.height} pixels)")
        try:
            pixels = np.asarray(image.convert("RGB"))
        except (OSError, ValueError) as error:
            raise InvalidImageError(f"cannot read the image as RGB: {error}") from error
    elif isinstance(image, np.ndarray):
        pixels = _numpy_to_rgb(image)
    else:
        raise InvalidImageError(f"expected a numpy array or a PIL image, got {type(image).__name__}")
    return np.ascontiguousarray(pixels)


def _numpy_to_rgb(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise InvalidImageError(
            f"expected an HxWx3 RGB array (HxW gray or HxWx4 RGBA also work), got shape {array.shape}"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InvalidImageError(f"image is empty (shape {array.shape})")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.integer):
            raise InvalidImageError(
                f"expected uint8 pixels 0..255, got dtype {array.dtype}; convert (and scale) to uint8 first"
            )
        if array.min() < 0 or array.max() > 255:
            raise InvalidImageError(
                f"pixel values of dtype {array.dtype} span {array.min()}..{array.max()}, outside 0..255; "
                "scale them to uint8 first"
            )
        array = array.astype(np.uint8)
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    return array[:, :, :3]


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        with path.open(encoding="utf-8") as file:
            settings = json.load(file)
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        raise IncompatibleCheckpointError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(settings, dict):
        raise IncompatibleCheckpointError(f"{path} holds a {type(settings).__name__}, not a JSON object")
    return settings


def _clean_up_tokenization(text: str) -> str:
    """The space clean-up transformers applies when decoding for this tokenizer (its config enables it)."""
    for spaced, joined in (
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ):
        text = text.replace(spaced, joined)
    return text


def _check_crop_geometry(
    crop_size: Sequence[int], patch_size: int, token_grid: Sequence[int], margins: Sequence[int]
) -> None:
    """What the cropping and pooling below assume: square crops of an even number of patches, pooled 2x2
    to the token grid, with even overlap margins."""
    crop_h, crop_w = crop_size
    crop_patches = crop_h // patch_size
    if not (
        crop_h == crop_w
        and crop_h % patch_size == 0
        and crop_patches == 2 * token_grid[0] == 2 * token_grid[1]
        and all(margin % 2 == 0 for margin in margins)
    ):
        raise ValueError(
            "unsupported preprocessor settings: need square crops made of an even number of patches, "
            "2x2 pooling to the token grid and even overlap margins"
        )
