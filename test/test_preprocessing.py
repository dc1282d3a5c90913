"""MolmoPreprocessor against the official processor's goldens (docs/ENGINE.md, "Preprocessing")."""

import io
import json
import warnings
from functools import cache
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.numpy import load_file

from molmo_ros.backends.errors import IncompatibleCheckpointError, InvalidImageError
from molmo_ros.backends.molmoe.preprocessing import DROPPED_SLOT, MolmoPreprocessor, select_tiling

CASES = [f"case_{i:02d}" for i in range(7)]
IMAGE_CASES = [case for case in CASES if case != "case_06"]
# The special-token table of docs/ENGINE.md, "Preprocessing".
EXPECTED_TOKEN_IDS = {
    "eos": 50279,
    "pad": 1,
    "start": 50280,
    "end": 50281,
    "patch": 50282,
    "col": 50283,
    "prompt": 50284,
}


@pytest.fixture(scope="module")
def preprocessor(tiny_model_dir: Path) -> MolmoPreprocessor:
    return MolmoPreprocessor.from_pretrained(tiny_model_dir)


@cache
def _load_case(reference_dir: Path, case: str) -> tuple[dict, dict[str, np.ndarray]]:
    directory = reference_dir / "preprocess"
    meta = json.loads((directory / f"{case}.json").read_text())
    return meta, load_file(directory / f"{case}.safetensors")


@cache
def _processed(
    preprocessor: MolmoPreprocessor, reference_dir: Path, case: str, path: str
) -> dict[str, np.ndarray]:
    meta, golden = _load_case(reference_dir, case)
    if "input_image_uint8" not in golden:
        return preprocessor.process(None, meta["prompt"])
    pixels = golden["input_image_uint8"]
    image = PIL.Image.fromarray(pixels, meta["mode"]) if path == "pil" else pixels
    return preprocessor.process(image, meta["prompt"])


@pytest.mark.parametrize("path", ["pil", "numpy"])
@pytest.mark.parametrize("case", CASES)
def test_outputs_match_reference(preprocessor, reference_dir, case, path):
    _, golden = _load_case(reference_dir, case)
    ours = _processed(preprocessor, reference_dir, case, path)
    expected_keys = set(golden) - {"input_image_uint8"}
    assert set(ours) == expected_keys
    for key in expected_keys:
        np.testing.assert_array_equal(ours[key], golden[key], err_msg=f"{case} {key}")
        if key == "input_ids":
            # Deliberate deviation: always int64 (the reference gives int32 for text-only input).
            assert ours[key].dtype == np.int64
        else:
            assert ours[key].dtype == golden[key].dtype, key


@pytest.mark.parametrize("case", IMAGE_CASES)
def test_tiling_and_size_match_sidecar(preprocessor, reference_dir, case):
    meta, golden = _load_case(reference_dir, case)
    encoded = preprocessor.encode_image(golden["input_image_uint8"])
    assert encoded.tiling == tuple(meta["tiling_rows_cols"])
    assert encoded.original_size == (meta["h"], meta["w"])
    assert encoded.images.shape[0] == meta["n_crops_plus_global"]


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [
        (32, 24, (1, 1)),
        (700, 100, (1, 1)),
        (100, 900, (1, 1)),
        (300, 500, (1, 2)),
        (720, 1280, (3, 4)),
        (1080, 1920, (3, 4)),
        (480, 640, (2, 3)),
        (336, 336, (1, 1)),
    ],
)
def test_tiling_choice(height, width, expected):
    # Margins of 8 patches of 14 px removed, windows of 16 patches (docs/ENGINE.md, "Preprocessing", step 2).
    assert select_tiling(height - 112, width - 112, 224, 12) == expected


@pytest.mark.parametrize(("height", "width"), [(480, 640), (1080, 1920), (1000, 150)])
def test_token_block_and_feature_positions_are_consistent(preprocessor, height, width):
    encoded = preprocessor.encode_image(np.zeros((height, width, 3), dtype=np.uint8))
    rows, cols = encoded.tiling
    crops = rows * cols
    assert encoded.images.shape == (1 + crops, 576, 588)
    assert encoded.image_masks.shape == (1 + crops, 576)
    np.testing.assert_array_equal(encoded.image_masks[-1], -1)
    input_ids = preprocessor.build_input_ids("Point to the mug", encoded)
    text_length = len(preprocessor.prompt_token_ids("Point to the mug"))
    assert len(input_ids) == 1 + 158 + 2 + (8 * rows + 4) * (8 * cols + 5) + text_length
    assert input_ids[0] == preprocessor.bos_token_id
    # Every <im_patch> token receives exactly one pooled feature, and nothing else does.
    image_input_idx = encoded.image_input_idx.numpy()
    positions = image_input_idx[image_input_idx >= 0]
    assert np.all(image_input_idx[image_input_idx < 0] == DROPPED_SLOT)
    assert len(np.unique(positions)) == len(positions)
    np.testing.assert_array_equal(
        np.sort(positions), np.flatnonzero(input_ids == preprocessor.image_patch_id)
    )


def test_encoded_image_stays_a_tensor_on_the_preprocessor_device(preprocessor):
    encoded = preprocessor.encode_image(np.zeros((60, 80, 3), dtype=np.uint8))
    for name in ("images", "image_masks", "image_input_idx"):
        tensor = getattr(encoded, name)
        assert isinstance(tensor, torch.Tensor), name
        assert tensor.device == preprocessor.device, name
    processed = preprocessor.process(encoded, "a")
    assert all(isinstance(value, np.ndarray) for value in processed.values())


def test_one_encoded_image_serves_every_prompt(preprocessor, reference_dir):
    meta, golden = _load_case(reference_dir, "case_02")
    encoded = preprocessor.encode_image(golden["input_image_uint8"])
    for prompt in ("a", meta["prompt"], "Point to the red mug on the left side of the table, please."):
        direct = preprocessor.process(golden["input_image_uint8"], prompt)
        reused = preprocessor.process(encoded, prompt)
        for key in direct:
            np.testing.assert_array_equal(reused[key], direct[key])
    np.testing.assert_array_equal(
        preprocessor.process(encoded, meta["prompt"])["input_ids"], golden["input_ids"]
    )


def test_special_token_ids_match_the_reference_table(preprocessor):
    ids = {
        "eos": preprocessor.eos_token_id,
        "pad": preprocessor.pad_token_id,
        "start": preprocessor.image_start_id,
        "end": preprocessor.image_end_id,
        "patch": preprocessor.image_patch_id,
        "col": preprocessor.image_col_id,
        "prompt": preprocessor.image_prompt_id,
    }
    assert ids == EXPECTED_TOKEN_IDS
    assert preprocessor.bos_token_id == EXPECTED_TOKEN_IDS["eos"]


def test_prompt_template_example(preprocessor):
    # The tokens of this prompt as the reference tokenizer gives them.
    expected = [11447, 27, 3666, 19268, 436, 2460, 15, 17762, 27]
    assert preprocessor.prompt_token_ids("Describe this image.") == expected


def test_decode_matches_transformers_with_the_reference_cleanup(preprocessor, tiny_model_dir):
    transformers = pytest.importorskip("transformers")
    # transformers 4.50 (the reference environment) applied this clean-up; 5.x needs it forced.
    library = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(tiny_model_dir / "tokenizer.json"),
        clean_up_tokenization_spaces=True,
        clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output=True,
    )
    text = ' <point x="61.5" y="40.2" alt="red mug">red mug</point> . It \'s here , isn\'t it ?'
    ids = library.encode(text, add_special_tokens=False) + [preprocessor.eos_token_id]
    assert preprocessor.decode(ids) == library.decode(ids, skip_special_tokens=True)


def test_decode_drops_special_padding_and_unknown_ids(preprocessor):
    words = preprocessor.tokenizer.encode(" red mug", add_special_tokens=False).ids
    noisy = [
        preprocessor.image_start_id,
        *words,
        preprocessor.image_patch_id,
        preprocessor.pad_token_id,
        50290,
        preprocessor.eos_token_id,
        -1,
        -1,
    ]
    assert preprocessor.decode(noisy) == " red mug"


def test_exif_orientation_is_ignored_like_the_reference(preprocessor):
    pixels = np.random.default_rng(3).integers(0, 256, (40, 70, 3), dtype=np.uint8)
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees" orientation tag
    buffer = io.BytesIO()
    PIL.Image.fromarray(pixels).save(buffer, format="PNG", exif=exif)
    reopened = PIL.Image.open(buffer)
    assert reopened.getexif()[0x0112] == 6
    np.testing.assert_array_equal(
        preprocessor.encode_image(reopened).images, preprocessor.encode_image(pixels).images
    )


def test_equivalent_numpy_inputs(preprocessor):
    rng = np.random.default_rng(5)
    gray = rng.integers(0, 256, (50, 60), dtype=np.uint8)
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    baseline = preprocessor.encode_image(rgb).images
    np.testing.assert_array_equal(preprocessor.encode_image(gray).images, baseline)
    np.testing.assert_array_equal(preprocessor.encode_image(gray[:, :, None]).images, baseline)
    np.testing.assert_array_equal(preprocessor.encode_image(rgb.astype(np.uint16)).images, baseline)
    rgba = np.concatenate([rgb, rng.integers(0, 256, (50, 60, 1), dtype=np.uint8)], axis=2)
    np.testing.assert_array_equal(preprocessor.encode_image(rgba).images, baseline)
    bgr_view = rgb[:, :, ::-1]  # negative strides, as cv2-to-RGB code often produces
    np.testing.assert_array_equal(preprocessor.encode_image(bgr_view).images, baseline)


def test_read_only_buffer_is_accepted_without_warnings(preprocessor):
    pixels = np.random.default_rng(7).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    read_only = np.frombuffer(pixels.tobytes(), dtype=np.uint8).reshape(pixels.shape)
    assert not read_only.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encoded = preprocessor.encode_image(read_only)
    np.testing.assert_array_equal(encoded.images, preprocessor.encode_image(pixels).images)


@pytest.mark.parametrize(
    "bad_image",
    [
        np.zeros((10, 10, 3), dtype=np.float32),
        np.zeros((10, 10, 2), dtype=np.uint8),
        np.zeros((2, 10, 10, 3), dtype=np.uint8),
        np.zeros((10,), dtype=np.uint8),
        np.zeros((0, 10, 3), dtype=np.uint8),
        np.zeros((10, 0), dtype=np.uint8),
        np.full((10, 10, 3), 300, dtype=np.int32),
        np.full((10, 10, 3), -1, dtype=np.int16),
        np.zeros((10, 10, 3), dtype=bool),
        np.zeros((1, 2000, 3), dtype=np.uint8),  # too thin: the global image would be 0 pixels tall
        [[0, 0, 0]],
        PIL.Image.new("RGB", (0, 5)),
    ],
    ids=[
        "float",
        "two-channels",
        "batch-axis",
        "1d",
        "zero-height",
        "zero-width",
        "out-of-range",
        "negative",
        "bool",
        "too-thin",
        "list",
        "empty-pil",
    ],
)
def test_invalid_images_are_rejected(preprocessor, bad_image):
    with pytest.raises(InvalidImageError):
        preprocessor.encode_image(bad_image)


@pytest.mark.parametrize("content", ['{"version": "1.0", "trunc', "{}"], ids=["truncated", "no-model"])
def test_corrupt_tokenizer_is_an_incompatible_checkpoint_naming_the_file(tmp_path, tiny_model_dir, content):
    for name in ("preprocessor_config.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((tiny_model_dir / name).read_bytes())
    (tmp_path / "tokenizer.json").write_text(content)
    with pytest.raises(IncompatibleCheckpointError, match=str(tmp_path / "tokenizer.json")):
        MolmoPreprocessor.from_pretrained(tmp_path)
