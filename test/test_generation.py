"""Greedy generation against the reference `generate_from_batch` goldens (tiny model, fp32, CPU)."""

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from molmo_ros.backends.molmoe.config import MolmoConfig
from molmo_ros.backends.molmoe.generation import greedy_generate
from molmo_ros.backends.molmoe.key_mapping import load_reference_model
from molmo_ros.backends.molmoe.modeling import MolmoEForPointing

EOS = 50279
MAX_NEW_TOKENS = 16


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir: Path) -> MolmoEForPointing:
    config = MolmoConfig.from_json_file(tiny_model_dir / "config.json")
    with safe_open(tiny_model_dir / "model.safetensors", "pt") as checkpoint:
        return load_reference_model(config, checkpoint.get_tensor, checkpoint.keys(), torch.float32)


@pytest.fixture(scope="module")
def goldens(reference_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(reference_dir / "model" / "generate.safetensors")


def processed(reference_dir: Path, case: str) -> dict[str, torch.Tensor]:
    return load_file(reference_dir / "preprocess" / f"case_{case}.safetensors")


def pad_to(tensor: torch.Tensor, length: int, dim: int = 0) -> torch.Tensor:
    """Pad with -1 at the end of dim, as AI2's generate_from_batch batches prompts and crops."""
    padding = list(tensor.shape)
    padding[dim] = length - tensor.shape[dim]
    return torch.cat([tensor, torch.full(padding, -1, dtype=tensor.dtype)], dim=dim)


@pytest.mark.parametrize("case", ["00", "01", "02", "03", "04", "05", "06"])
def test_single_prompt_matches_reference(tiny_model, reference_dir, goldens, case):
    tensors = processed(reference_dir, case)
    image_inputs = {}
    if "images" in tensors:
        image_inputs = {name: tensors[name][None] for name in ("images", "image_masks", "image_input_idx")}
    out = greedy_generate(
        tiny_model,
        tensors["input_ids"].long()[None],
        max_new_tokens=MAX_NEW_TOKENS,
        eos_token_id=EOS,
        **image_inputs,
    )
    assert out.token_ids == [goldens[f"case_{case}.generated_ids"].tolist()]
    assert out.finished == [False]
    assert out.timings.steps == MAX_NEW_TOKENS
    assert (out.timings.vision_s > 0) == bool(image_inputs)


def test_right_padded_batch_matches_reference(tiny_model, reference_dir, goldens):
    rows = [processed(reference_dir, "00"), processed(reference_dir, "02")]
    length = max(row["input_ids"].shape[0] for row in rows)
    crops = max(row["images"].shape[0] for row in rows)
    input_ids = torch.stack([pad_to(row["input_ids"].long(), length) for row in rows])
    assert torch.equal(input_ids, goldens["batch_case_00_case_02.input_ids_padded"])
    batch = {
        name: torch.stack([pad_to(row[name], crops) for row in rows]) for name in ("images", "image_masks")
    }
    image_input_idx = torch.stack([pad_to(row["image_input_idx"], crops) for row in rows])

    out = greedy_generate(
        tiny_model,
        input_ids,
        image_input_idx=image_input_idx,
        max_new_tokens=MAX_NEW_TOKENS,
        eos_token_id=EOS,
        **batch,
    )
    assert out.token_ids == goldens["batch_case_00_case_02.generated_ids"].tolist()


def test_prompts_sharing_one_encoded_image_match_separate_runs(tiny_model, reference_dir, goldens):
    """case_04's prompt has the same 1x1 image token layout as case_00, so it can ask about case_00's image;
    it is one token longer, so the batch needs padding too."""
    image = processed(reference_dir, "00")
    prompts = [image["input_ids"].long(), processed(reference_dir, "04")["input_ids"].long()]
    assert prompts[0].shape[0] != prompts[1].shape[0]
    with torch.inference_mode():
        features = tiny_model.encode_images(image["images"][None], image["image_masks"][None])
    image_input_idx = image["image_input_idx"][None]

    def generate(input_ids: torch.Tensor) -> list[list[int]]:
        return greedy_generate(
            tiny_model, input_ids, features, image_input_idx, max_new_tokens=MAX_NEW_TOKENS, eos_token_id=EOS
        ).token_ids

    length = max(prompt.shape[0] for prompt in prompts)
    together = generate(torch.stack([pad_to(prompt, length) for prompt in prompts]))
    alone = [generate(prompt[None])[0] for prompt in prompts]
    assert together == alone
    assert together[0] == goldens["case_00.generated_ids"].tolist()


def test_stops_at_eos_and_excludes_it(tiny_model, reference_dir, goldens):
    """Declaring the third golden token to be EOS must stop after it, with only the first two returned."""
    expected = goldens["case_06.generated_ids"].tolist()
    assert expected[2] not in expected[:2]
    out = greedy_generate(
        tiny_model,
        processed(reference_dir, "06")["input_ids"].long()[None],
        max_new_tokens=MAX_NEW_TOKENS,
        eos_token_id=expected[2],
    )
    assert out.token_ids == [expected[:2]]
    assert out.finished == [True]
    assert out.timings.steps == 3


def test_finished_row_waits_for_the_others(tiny_model, reference_dir, goldens):
    """A batch stops only when every row has finished; a finished row keeps its tokens up to EOS."""
    rows = [
        processed(reference_dir, "06")["input_ids"].long(),
        processed(reference_dir, "00")["input_ids"].long(),
    ]
    stop_token = goldens["case_06.generated_ids"][2].item()
    assert stop_token not in goldens["case_00.generated_ids"].tolist()
    image = processed(reference_dir, "00")
    # Row 0 is text only: its image slots are all dropped (-1), like a padded crop.
    image_input_idx = torch.stack([torch.full_like(image["image_input_idx"], -1), image["image_input_idx"]])
    with torch.inference_mode():
        features = tiny_model.encode_images(image["images"][None], image["image_masks"][None]).expand(
            2, -1, -1, -1
        )
    length = max(row.shape[0] for row in rows)
    out = greedy_generate(
        tiny_model,
        torch.stack([pad_to(row, length) for row in rows]),
        features,
        image_input_idx,
        max_new_tokens=MAX_NEW_TOKENS,
        eos_token_id=stop_token,
    )
    assert out.token_ids == [
        goldens["case_06.generated_ids"][:2].tolist(),
        goldens["case_00.generated_ids"].tolist(),
    ]
    assert out.finished == [True, False]
    assert out.timings.steps == MAX_NEW_TOKENS


@pytest.mark.parametrize("limit", [0, -1])
def test_max_new_tokens_below_one_is_rejected(tiny_model, reference_dir, limit):
    with pytest.raises(ValueError, match="max_new_tokens"):
        greedy_generate(
            tiny_model,
            processed(reference_dir, "06")["input_ids"].long()[None],
            max_new_tokens=limit,
            eos_token_id=EOS,
        )
