"""Where the engine's time goes, stage by stage, eager reference and fast path side by side: prints
figures, asserts nothing.

    .venv/bin/python bench/engine.py                 # (a) the tiny reference model on CPU
    .venv/bin/python bench/engine.py --full-random   # (b) real MolmoE-1B shape, random bf16 weights, CUDA
    .venv/bin/python bench/engine.py --full-random --quantization int8   # (b) with int8 weights
    .venv/bin/python bench/engine.py --backend molmo2  # (c) a tiny random Molmo2 (transformers) on CPU

For 640x480 and 1920x1080 frames it runs one prompt, then 8 prompts on the same frame, with every
answer forced to --tokens tokens (EOS ignored), and prints the median over --runs timed runs (after
--warmup untimed ones) of preprocess, vision, prefix prefill (BOS + image block), prompt prefill and
decode time, the decode time per token and the end-to-end time, for three paths:

- eager: the reference loop (generation.greedy_generate: one prefill of everything, dynamic cache);
- fast: what MolmoEngine.generate does, given a new frame each run (a fresh copy of the array);
- fast, same frame: the same array object again, as a standing query and a service request on one
  camera frame do; the engine reuses that frame's prefix and pays only for the prompts.

(b) needs no weights: it builds the real configuration (real_config.json of the reference data, or
--config) with random weights, so the figures are the real model's cost, not its answers. It also
reports the warm-up (CUDA-graph capture) time and peak GPU memory per case. It refuses to run
without CUDA: on CPU the full model would take minutes per frame. `--quantization int8` gives the
weights quantization.py quantizes random int8 values (each quantized from random values, one
parameter at a time, so the bf16 model never exists); `--experts` picks the MoE kernel and
`--no-cuda-graphs` decodes eagerly, for comparisons. bench/gpu_check.sh runs these.
"""

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import transformers

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from molmo_ros.backends.molmoe.config import MolmoConfig  # noqa: E402
from molmo_ros.backends.molmoe.engine import MolmoEngine  # noqa: E402
from molmo_ros.backends.molmoe.generation import greedy_generate  # noqa: E402
from molmo_ros.backends.molmoe.modeling import PADDING_ID, build_meta_model  # noqa: E402
from molmo_ros.backends.molmoe.preprocessing import MolmoPreprocessor  # noqa: E402
from molmo_ros.backends.molmoe.quantization import quantize_int8, quantized_weight_names  # noqa: E402
from molmo_ros.backends.settings import BackendSettings  # noqa: E402

FRAMES = ((640, 480), (1920, 1080))
PROMPT = "Point to the red mug"
PROMPTS_PER_FRAME = 8
PATHS = ("eager", "fast", "fast, same frame")


@dataclass(frozen=True)
class Stages:
    """Seconds per stage of one call; prefix_s is 0 where a path has no separate prefix prefill."""

    preprocess_s: float
    vision_s: float
    prefix_s: float
    prompt_s: float
    decode_s: float
    steps: int  # tokens per answer: the prefill's plus one per decode step

    @property
    def total_s(self) -> float:
        return self.preprocess_s + self.vision_s + self.prefix_s + self.prompt_s + self.decode_s


@dataclass(frozen=True)
class Row:
    case: str
    path: str
    stages: Stages  # medians per stage
    total_s: float  # median of the end-to-end times (not the sum of the medians)
    peak_gib: float | None  # peak GPU memory of the case, CUDA only


def default_reference_dir() -> Path:
    return Path(os.environ.get("MOLMO_REFERENCE_DIR", REPO_ROOT.parent / "shared" / "molmo_reference"))


def tiny_engine(reference_dir: Path, tokens: int) -> MolmoEngine:
    settings = BackendSettings(
        model=str(reference_dir / "tiny"), device="cpu", dtype="float32", max_new_tokens=tokens
    )
    return MolmoEngine.load(settings, cache_weights=False, stop_at_eos=False)


def random_full_engine(
    config_path: Path,
    tokenizer_dir: Path,
    tokens: int,
    experts: str | None,
    device: torch.device,
    quantization: str = "none",
    use_cuda_graphs: bool | None = None,
) -> MolmoEngine:
    """The given architecture with random bfloat16 (or int8) weights, made one parameter at a time on
    `device`, so no full-precision copy of the model exists."""
    model = build_meta_model(MolmoConfig.from_json_file(config_path))
    quantized = quantized_weight_names(model) if quantization == "int8" else set()
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, parameter in list(model.named_parameters()):
            if parameter.ndim == 1:  # norm scales 1, biases 0: keeps activations in a realistic range
                value = 1.0 if name.endswith("weight") and "norm" in name else 0.0
                weight = torch.full(parameter.shape, value, dtype=torch.bfloat16, device=device)
            else:
                weight = torch.empty(parameter.shape, device=device).normal_(0.0, 0.02, generator=generator)
                weight = quantize_int8(weight, torch.bfloat16) if name in quantized else weight.bfloat16()
            module_name, _, attribute = name.rpartition(".")
            parameter = torch.nn.Parameter(weight, requires_grad=False)
            setattr(model.get_submodule(module_name), attribute, parameter)
    model.init_non_persistent_buffers(device)
    model.set_experts_implementation(experts or model.llm.config._experts_implementation)
    model.eval()
    preprocessor = MolmoPreprocessor.from_pretrained(tokenizer_dir, device=device)
    return MolmoEngine(
        model,
        preprocessor,
        device=device,
        dtype=torch.bfloat16,
        model_name=f"{config_path} shape, random {'int8' if quantized else 'bf16'} weights",
        max_new_tokens=tokens,
        stop_at_eos=False,
        use_cuda_graphs=use_cuda_graphs,
    )


def frame(width: int, height: int) -> np.ndarray:
    return np.random.default_rng(width * height).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def eager_call(engine: MolmoEngine, image: np.ndarray, prompts: list[str], tokens: int) -> Stages:
    """The eager reference on the engine's model: preprocess, then one greedy_generate over everything."""
    started = time.perf_counter()
    inputs = engine.preprocessor.encode_image(image)
    rows = [engine.preprocessor.build_input_ids(prompt, inputs) for prompt in prompts]
    length = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), length), PADDING_ID, dtype=torch.long)
    for index, row in enumerate(rows):
        input_ids[index, : len(row)] = torch.from_numpy(row)
    preprocess_s = time.perf_counter() - started
    output = greedy_generate(
        engine.model,
        input_ids,
        images=inputs.images[None],
        image_masks=inputs.image_masks[None],
        image_input_idx=inputs.image_input_idx[None],
        max_new_tokens=tokens,
        eos_token_id=None,
    )
    timings = output.timings
    return Stages(preprocess_s, timings.vision_s, 0.0, timings.prefill_s, timings.decode_s, timings.steps)


def fast_call(engine: MolmoEngine, image: np.ndarray, prompts: list[str]) -> Stages:
    timings = engine.generate(image, prompts).timings
    return Stages(
        timings.preprocess_s,
        timings.vision_s,
        timings.prefix_prefill_s,
        timings.prefill_s,
        timings.decode_s,
        timings.steps,
    )


def summarize(case: str, path: str, results: list[Stages], peak_gib: float | None) -> Row:
    def median(name: str) -> float:
        return statistics.median(getattr(result, name) for result in results)

    stages = Stages(
        *(median(name) for name in ("preprocess_s", "vision_s", "prefix_s", "prompt_s", "decode_s")),
        steps=results[0].steps,
    )
    return Row(case, path, stages, statistics.median(r.total_s for r in results), peak_gib)


def path_calls(
    engine: MolmoEngine, image: np.ndarray, prompts: list[str], tokens: int
) -> dict[str, Callable[[], Stages]]:
    return {
        "eager": lambda: eager_call(engine, image, prompts, tokens),
        "fast": lambda: fast_call(engine, image.copy(), prompts),  # a new frame every run
        "fast, same frame": lambda: same_frame_call(engine, image, prompts),
    }


def same_frame_call(engine: MolmoEngine, image: np.ndarray, prompts: list[str]) -> Stages:
    """A second request about the frame the engine has just answered about (untimed first)."""
    fast_call(engine, image, prompts)
    return fast_call(engine, image, prompts)


def run_cases(engine: MolmoEngine, tokens: int, warmup: int, runs: int) -> list[Row]:
    """The paths take turns within each run, so a slow spell of a shared machine hits them alike."""
    cuda = engine.device.type == "cuda"
    rows = []
    for width, height in FRAMES:
        image = frame(width, height)
        for count in (1, PROMPTS_PER_FRAME):
            calls = path_calls(engine, image, [PROMPT] * count, tokens)
            results: dict[str, list[Stages]] = {path: [] for path in PATHS}
            peaks = dict.fromkeys(PATHS, 0.0)
            for run in range(warmup + runs):
                for path in PATHS:
                    if cuda:
                        torch.cuda.reset_peak_memory_stats()
                    stages = calls[path]()
                    if run >= warmup:
                        results[path].append(stages)
                        if cuda:
                            peaks[path] = max(peaks[path], torch.cuda.max_memory_allocated() / 2**30)
            case = f"{width}x{height} x{count}"
            rows.extend(summarize(case, path, results[path], peaks[path] if cuda else None) for path in PATHS)
    return rows


def print_table(rows: list[Row]) -> None:
    show_memory = any(row.peak_gib is not None for row in rows)
    header = (
        f"{'case':<18}{'path':<18}{'preproc':>9}{'vision':>9}{'prefix':>9}{'prompt':>9}{'decode':>9}"
        f"{'ms/token':>10}{'total':>9}" + (f"{'peak GiB':>10}" if show_memory else "")
    )
    print("milliseconds; prefix = BOS + image block prefill, prompt = the prompts' own tokens")
    print(header)
    print("-" * len(header))
    for row in rows:
        s = row.stages
        per_token = s.decode_s * 1e3 / max(1, s.steps - 1)  # the prefill yields the first token
        stages_ms = (s.preprocess_s, s.vision_s, s.prefix_s, s.prompt_s, s.decode_s)
        print(
            f"{row.case:<18}{row.path:<18}"
            + "".join(f"{seconds * 1e3:>9.1f}" for seconds in stages_ms)
            + f"{per_token:>10.2f}{row.total_s * 1e3:>9.1f}"
            + (f"{row.peak_gib:>10.2f}" if show_memory else "")
        )


def describe_environment(engine: MolmoEngine) -> None:
    device = engine.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    print(f"device: {device} ({name}{threads}), dtype {str(engine.dtype).removeprefix('torch.')}")
    versions = f"torch {torch.__version__}, transformers {transformers.__version__}"
    print(f"python {platform.python_version()}, {versions}")
    print(f"model: {engine.model_name}")


def run_molmo2(tokens: int, warmup: int, runs: int) -> int:
    """(c): the molmo2 backend on the tiny random Molmo2 of the tests, stage by stage (long: one table,
    its three cases and their stages read best in one place).

    Cases: one and eight prompts about one frame (the eight share one vision pass), one prompt about two
    frames, and eight prompts through the library's plain path (pixels into every `generate`, no
    sharing) to show what the sharing saves. Answers are forced to `tokens` tokens (min_new_tokens).
    """
    import tempfile

    sys.path.insert(0, str(REPO_ROOT / "test"))
    from molmo2_tiny import build_tiny_molmo2

    from molmo_ros.backends.molmo2 import Molmo2Backend
    from molmo_ros.backends.settings import BackendSettings

    with tempfile.TemporaryDirectory(prefix="tiny_molmo2_") as directory:
        build_tiny_molmo2(Path(directory))
        settings = BackendSettings(backend="molmo2", model=directory, device="cpu", max_new_tokens=tokens)
        backend = Molmo2Backend.load(settings)
    backend.model.generation_config.min_new_tokens = tokens  # EOS ignored, as in (a) and (b)
    print(f"device: cpu ({platform.processor() or 'CPU'}, {torch.get_num_threads()} threads), float32")
    versions = f"torch {torch.__version__}, transformers {transformers.__version__}"
    print(f"python {platform.python_version()}, {versions}")
    print(
        f"model: tiny random Molmo2 (test/molmo2_tiny.py); median of {runs} runs after {warmup} warm-up runs"
    )
    print(f"{tokens} tokens per answer\n")
    header = (
        f"{'case':<36}{'preproc ms':>11}{'vision ms':>11}{'prefill ms':>11}{'decode ms':>11}"
        f"{'tokens':>8}{'ms/token':>9}{'total ms':>10}"
    )
    print(header)
    print("-" * len(header))
    for width, height in FRAMES:
        image = frame(width, height)
        cases = [
            (f"molmo2 {width}x{height} x1", [image], 1),
            (f"molmo2 {width}x{height} x{PROMPTS_PER_FRAME} shared", [image], PROMPTS_PER_FRAME),
            (f"molmo2 2 x {width}x{height} x1", [image, image[::-1].copy()], 1),
        ]
        for case, images, prompts in cases:
            rows = []
            for run in range(warmup + runs):
                started = time.perf_counter()
                backend.generate(images, [PROMPT] * prompts)
                total = time.perf_counter() - started
                t = backend.last_timings
                if run >= warmup:
                    steps = sum(max(1, count - 1) for count in t.new_tokens)
                    rows.append(
                        (
                            t.preprocess_s,
                            t.vision_s,
                            sum(t.prefill_s),
                            sum(t.decode_s),
                            sum(t.new_tokens),
                            steps,
                            total,
                        )
                    )
            preprocess, vision, prefill, decode, new_tokens, steps, total = (
                statistics.median(column) for column in zip(*rows, strict=True)
            )
            print(
                f"{case:<36}"
                + "".join(f"{seconds * 1e3:>11.1f}" for seconds in (preprocess, vision, prefill, decode))
                + f"{int(new_tokens):>8d}{decode * 1e3 / steps:>9.2f}{total * 1e3:>10.1f}"
            )
        plain = []
        for run in range(warmup + runs):
            started = time.perf_counter()
            for _ in range(PROMPTS_PER_FRAME):
                inputs = backend._prompt_inputs([PIL.Image.fromarray(image)], PROMPT)
                backend.model.generate(**inputs, max_new_tokens=tokens, do_sample=False)
            if run >= warmup:
                plain.append(time.perf_counter() - started)
        plain_case = f"plain {width}x{height} x{PROMPTS_PER_FRAME} (no sharing)"
        print(f"{plain_case:<36}{'':>52}{statistics.median(plain) * 1e3:>18.1f}")
    backend.close()
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--full-random", action="store_true", help="(b): real model shape, random bf16, CUDA")
    parser.add_argument("--reference-dir", type=Path, default=default_reference_dir())
    parser.add_argument("--config", type=Path, help="config for --full-random (default: real_config.json)")
    parser.add_argument("--experts", help="MoE kernel for --full-random: grouped_mm, batched_mm or eager")
    parser.add_argument(
        "--quantization", choices=("none", "int8"), default="none", help="weights for --full-random"
    )
    parser.add_argument(
        "--no-cuda-graphs", action="store_true", help="--full-random: decode eagerly, without CUDA graphs"
    )
    parser.add_argument("--tokens", type=int, default=16, help="tokens per answer (EOS ignored)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per case (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per case first")
    parser.add_argument("--backend", choices=("molmoe", "molmo2"), default="molmoe", help="molmo2: (c)")
    return parser.parse_args(argv)


def build_engine(args: argparse.Namespace) -> MolmoEngine | None:
    """The engine the arguments ask for, or None (with the reason on stderr) where it cannot run here."""
    if not args.full_random:
        return tiny_engine(args.reference_dir, args.tokens)
    if not torch.cuda.is_available():
        print(
            "bench/engine.py --full-random needs a CUDA GPU (the full model in bfloat16 takes ~15 GB "
            "and minutes per frame on CPU); run it on a GPU machine, or drop --full-random for the "
            "tiny model.",
            file=sys.stderr,
        )
        return None
    config = args.config or args.reference_dir / "real_config.json"
    return random_full_engine(
        config,
        args.reference_dir / "tiny",
        args.tokens,
        args.experts,
        torch.device("cuda"),
        args.quantization,
        use_cuda_graphs=False if args.no_cuda_graphs else None,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.backend == "molmo2":
        return run_molmo2(args.tokens, args.warmup, args.runs)
    engine = build_engine(args)
    if engine is None:
        return 2
    describe_environment(engine)
    if engine.device.type == "cuda":
        weights = torch.cuda.memory_allocated(engine.device) / 2**30
        print(f"GPU memory after loading the weights: {weights:.2f} GiB")
        print(f"experts kernel: {engine.model.llm.config._experts_implementation}")
        print(f"decode: {'eager' if args.no_cuda_graphs else 'CUDA graphs'}")
        torch.cuda.reset_peak_memory_stats(engine.device)
    warm_up_s = engine.warm_up()
    if warm_up_s is not None:
        print(f"warm-up at load (static caches, CUDA-graph capture): {warm_up_s:.2f} s")
    print(f"median of {args.runs} runs after {args.warmup} warm-up runs; {args.tokens} tokens per answer\n")
    print_table(run_cases(engine, args.tokens, args.warmup, args.runs))
    if engine.device.type == "cuda":
        print(f"\npeak GPU memory overall: {torch.cuda.max_memory_allocated(engine.device) / 2**30:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
