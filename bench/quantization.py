"""How far weight-only int8 moves MolmoE's outputs, measured the way the bf16 engine was: prints figures,
asserts nothing.

    .venv/bin/python bench/quantization.py            # both parts below (about 10 minutes on 2 CPUs)
    .venv/bin/python bench/quantization.py --part widths
    .venv/bin/python bench/quantization.py --part tiny

widths: a model with every real width (ViT-L, the connector, d_model 2048, 64 experts of 1024, the
50,304-row head) but 2 language-model blocks, random weights (normal(0, 0.02), norm weights 1, as in
the reference data's checks), written as a reference-format safetensors checkpoint and loaded through
the real loader (`load_checkpoint`) in each setting. Input: the 336x336 image and prompt of the
reference preprocessing case_01 (2 crops, 326 tokens). Every setting is compared with the fp32 forward:
top-1 agreement over all positions, and the largest absolute error of the last position's logits. The
settings: bf16; int8 with bf16 activations; int8 with fp32 activations; and int8 with the vision tower
and connector quantized too (each nn.Linear there given int8 weights from its fp32 values), which is
how the choice to keep them in bf16 is made.

tiny: the tiny reference model (random weights) answers each golden preprocessing case (image and
prompt) with 16 greedy tokens in bf16 and in int8 (bf16 activations); it counts the cases whose ids
are identical. Random weights make the answers meaningless text: the count shows that int8 keeps the
tiny model's computation close enough not to flip its greedy choices, not that a real model's answers
survive int8.
"""

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import PIL.Image
import torch
from safetensors.numpy import load_file as load_numpy
from safetensors.torch import save_file

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from molmo_ros.backends.molmoe.checkpoint import load_checkpoint  # noqa: E402
from molmo_ros.backends.molmoe.config import MolmoConfig  # noqa: E402
from molmo_ros.backends.molmoe.engine import MolmoEngine  # noqa: E402
from molmo_ros.backends.molmoe.key_mapping import expected_reference_shapes  # noqa: E402
from molmo_ros.backends.molmoe.preprocessing import MolmoPreprocessor  # noqa: E402
from molmo_ros.backends.molmoe.quantization import FULL_PRECISION_PREFIXES, quantize_int8  # noqa: E402
from molmo_ros.backends.settings import BackendSettings  # noqa: E402

CPU = torch.device("cpu")
WIDTHS_CASE = "case_01"  # 336x336, 2 crops: the input of the reference's real-width checks
LLM_BLOCKS = 2
WEIGHT_STD = 0.02
TINY_TOKENS = 16


def default_reference_dir() -> Path:
    return Path(os.environ.get("MOLMO_REFERENCE_DIR", REPO_ROOT.parent / "shared" / "molmo_reference"))


def golden_case(reference_dir: Path, name: str) -> tuple[PIL.Image.Image | None, str]:
    """The image (None for text only) and prompt of a reference preprocessing case."""
    meta = json.loads((reference_dir / "preprocess" / f"{name}.json").read_text())
    tensors = load_numpy(reference_dir / "preprocess" / f"{name}.safetensors")
    pixels = tensors.get("input_image_uint8")
    image = None if pixels is None else PIL.Image.fromarray(pixels, meta["mode"])
    return image, meta["prompt"]


def write_widths_checkpoint(reference_dir: Path, directory: Path) -> MolmoConfig:
    """The real config with LLM_BLOCKS language-model blocks, random weights in reference key names."""
    config_dict = json.loads((reference_dir / "real_config.json").read_text())
    config_dict["n_layers"] = LLM_BLOCKS
    config = MolmoConfig.from_dict(config_dict)
    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for name, shape in expected_reference_shapes(config).items():
        is_norm = name.endswith("norm.weight") or name.endswith(("ln_f.weight", "pre_ln.weight"))
        tensors[name] = (
            torch.ones(shape) if is_norm else torch.empty(shape).normal_(0.0, WEIGHT_STD, generator=generator)
        )
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, directory / "model.safetensors")
    (directory / "config.json").write_text(json.dumps(config_dict))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"):
        source = reference_dir / "tiny" / name
        if source.is_file():
            (directory / name).write_bytes(source.read_bytes())
    return config


def widths_inputs(reference_dir: Path, checkpoint: Path) -> dict[str, torch.Tensor]:
    image, prompt = golden_case(reference_dir, WIDTHS_CASE)
    preprocessor = MolmoPreprocessor.from_pretrained(checkpoint, device=CPU)
    encoded = preprocessor.encode_image(image)
    input_ids = torch.from_numpy(preprocessor.build_input_ids(prompt, encoded))[None]
    return {
        "input_ids": input_ids,
        "images": encoded.images[None],
        "image_masks": encoded.image_masks[None],
        "image_input_idx": encoded.image_input_idx[None],
    }


def logits_of(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.inference_mode():
        return model(**inputs).logits[0].float()


def quantize_vision(model, vision_weights: dict[str, torch.Tensor], dtype: torch.dtype) -> int:
    """Give every nn.Linear of the vision tower and connector int8 weights from its fp32 values; returns
    the bytes this saves against `dtype` weights (int8 values and fp32 scales against dtype values)."""
    saved = 0
    for name, module in model.named_modules():
        if name.startswith(FULL_PRECISION_PREFIXES) and isinstance(module, torch.nn.Linear):
            weight = quantize_int8(vision_weights[f"{name}.weight"], dtype)
            before = module.weight.numel() * module.weight.element_size()
            after = weight.qdata.numel() * weight.qdata.element_size() + weight.scale.numel() * 4
            module.weight = torch.nn.Parameter(weight, requires_grad=False)
            saved += before - after
    return saved


def run_widths(reference_dir: Path, workdir: Path) -> None:
    checkpoint = workdir / "widths"
    started = time.perf_counter()
    config = write_widths_checkpoint(reference_dir, checkpoint)
    print(
        f"checkpoint: real widths, {config.n_layers} LLM blocks, "
        f"{(checkpoint / 'model.safetensors').stat().st_size / 2**30:.2f} GiB fp32, "
        f"written in {time.perf_counter() - started:.0f} s"
    )
    inputs = widths_inputs(reference_dir, checkpoint)
    print(f"input: {WIDTHS_CASE}, {inputs['images'].shape[1]} crops, {inputs['input_ids'].shape[1]} tokens")

    def load(dtype: torch.dtype, quantization: str):
        return load_checkpoint(
            str(checkpoint), None, CPU, dtype, use_cache=False, quantization=quantization
        ).model

    reference_model = load(torch.float32, "none")
    vision_weights = {
        name: parameter.detach().clone()
        for name, parameter in reference_model.named_parameters()
        if name.startswith(FULL_PRECISION_PREFIXES)
    }
    started = time.perf_counter()
    reference = logits_of(reference_model, inputs)
    print(f"fp32 forward: {time.perf_counter() - started:.1f} s")
    del reference_model
    gc.collect()

    settings = (
        ("bf16", torch.bfloat16, "none", False),
        ("int8, bf16 activations", torch.bfloat16, "int8", False),
        ("int8, fp32 activations", torch.float32, "int8", False),
        ("int8 with vision tower and connector, bf16 activations", torch.bfloat16, "int8", True),
        ("int8 with vision tower and connector, fp32 activations", torch.float32, "int8", True),
    )
    print("| weights | top-1 agreement with fp32 | last-position max abs logit error |")
    print("| --- | --- | --- |")
    for label, dtype, quantization, vision in settings:
        model = load(dtype, quantization)
        if vision:
            saved = quantize_vision(model, vision_weights, dtype)
            print(f"(int8 vision tower and connector: {saved / 1e9:.2f} GB less than in {dtype})", flush=True)
        logits = logits_of(model, inputs)
        agree = (logits.argmax(-1) == reference.argmax(-1)).float().mean().item()
        error = (logits[-1] - reference[-1]).abs().max().item()
        agreed = int((logits.argmax(-1) == reference.argmax(-1)).sum())
        print(f"| {label} | {100 * agree:.1f} % ({agreed}/{logits.shape[0]}) | {error:.4f} |", flush=True)
        del model
        gc.collect()
    print(f"(fp32 last-position logits: max abs {reference[-1].abs().max().item():.3f})")


TINY_SETTINGS = (  # label, engine.dtype, engine.quantization
    ("fp32", "float32", "none"),
    ("bf16", "bfloat16", "none"),
    ("int8, bf16 activations", "bfloat16", "int8"),
    ("int8, fp32 activations", "float32", "int8"),
)


def run_tiny(reference_dir: Path, workdir: Path) -> None:
    names = json.loads((reference_dir / "preprocess" / "index.json").read_text())["cases"]
    # The engine answers about an image: the text-only case is left out.
    cases = [name for name in names if golden_case(reference_dir, name)[0] is not None]
    answers: dict[str, dict[str, list[int]]] = {}
    for label, dtype, quantization in TINY_SETTINGS:
        engine = MolmoEngine.load(
            BackendSettings(
                model=str(reference_dir / "tiny"),
                device="cpu",
                dtype=dtype,
                quantization=quantization,
                cache_dir=str(workdir / "cache"),
                max_new_tokens=TINY_TOKENS,
            ),
            stop_at_eos=False,
        )
        answers[label] = {}
        for name in cases:
            image, prompt = golden_case(reference_dir, name)
            answers[label][name] = engine.generate(image, [prompt]).token_ids[0]
        engine.close()

    def first_difference(a: list[int], b: list[int]) -> str:
        index = next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), None)
        return "same" if index is None else f"from token {index}"

    print(f"tiny model, {TINY_TOKENS} greedy tokens for each of the {len(cases)} golden cases with an image")
    headers = [f"{label} vs fp32" for label, _, _ in TINY_SETTINGS[1:]] + ["int8 vs bf16"]
    print("| case | " + " | ".join(headers) + " |")
    print("| --- " * len(TINY_SETTINGS) + "| --- |")
    pairs = [(label, "fp32") for label, _, _ in TINY_SETTINGS[1:]] + [("int8, bf16 activations", "bf16")]
    for name in cases:
        cells = [first_difference(answers[a][name], answers[b][name]) for a, b in pairs]
        print(f"| {name} | " + " | ".join(cells) + " |")
    totals = [sum(answers[a][name] == answers[b][name] for name in cases) for a, b in pairs]
    print("| identical | " + " | ".join(f"{total} of {len(cases)}" for total in totals) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reference-dir", type=Path, default=default_reference_dir())
    parser.add_argument("--part", choices=("widths", "tiny", "all"), default="all")
    parser.add_argument("--workdir", type=Path, help="where the temporary checkpoint goes (default: tmp)")
    args = parser.parse_args()
    print(f"host: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory(prefix="molmo_quant_bench-", dir=args.workdir) as workdir:
        if args.part in ("tiny", "all"):
            run_tiny(args.reference_dir, Path(workdir))
        if args.part in ("widths", "all"):
            run_widths(args.reference_dir, Path(workdir))


if __name__ == "__main__":
    main()
