"""Weight-only int8 (engine.quantization int8): the expert matmuls, the loader and its cache, the settings,
the molmo2 backend and the CLI.

Tolerances. The int8 expert matmuls compute x @ q^T in the activation dtype and then scale each output
channel; mathematically that is x @ (s q)^T, the product with the dequantized weight. In fp32 the only
difference is rounding, bounded by the standard dot-product bound gamma_n * sum_h |x_h| |w_h| with
gamma_n = n u / (1 - n u), u = 2^-24 and n the inner size plus one for the scaling. Against the original
(unquantized) weight, round-to-nearest int8 moves each weight by at most half a step, s/2, so an output
moves by at most s_o / 2 * sum_h |x_h|, plus the same rounding bound.
"""

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torchao.quantization import Int8Tensor
from transformers import OlmoeConfig
from transformers.models.olmoe.modeling_olmoe import OlmoeExperts

from molmo_ros.backends.errors import IncompatibleCheckpointError
from molmo_ros.backends.interface import GenerationControl, Stage
from molmo_ros.backends.molmoe import checkpoint, checkpoint_source, weights_cache
from molmo_ros.backends.molmoe.config import MolmoConfig
from molmo_ros.backends.molmoe.fast_generation import FastGenerator
from molmo_ros.backends.molmoe.key_mapping import load_reference_model
from molmo_ros.backends.molmoe.quantization import (
    expert_groups,
    int8_batched_linear,
    int8_batched_mm_experts_forward,
    int8_grouped_linear,
    int8_grouped_mm_experts_forward,
    quantize_int8,
    quantized_weight_names,
)
from molmo_ros.backends.settings import BackendSettings
from molmo_ros.cli import point as cli

CPU = torch.device("cpu")
UNIT_ROUNDOFF = 2.0**-24  # fp32
EXPERTS, OUT, IN, PAIRS = 10, 24, 40, 60
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")),
]


def gamma(n: int) -> float:
    return n * UNIT_ROUNDOFF / (1 - n * UNIT_ROUNDOFF)


@pytest.fixture
def expert_case(request):
    """Random fp32 expert weights [E, out, in], their int8 form, and (token, expert) pairs sorted by expert
    (every expert used except one, so the grouped kernel meets an empty group)."""
    generator = torch.Generator().manual_seed(7)
    weight = torch.randn(EXPERTS, OUT, IN, generator=generator)
    x = torch.randn(PAIRS, IN, generator=generator)
    expert_ids = torch.sort(torch.randint(0, EXPERTS - 1, (PAIRS,), generator=generator)).values
    return weight, quantize_int8(weight, torch.float32), x, expert_ids


def run_kernel(kind: str, x: torch.Tensor, quantized: Int8Tensor, expert_ids: torch.Tensor) -> torch.Tensor:
    if kind == "batched":
        return int8_batched_linear(x, quantized, expert_ids)
    return int8_grouped_linear(x, quantized, expert_ids, expert_groups(expert_ids, EXPERTS))


@pytest.fixture
def no_tf32():
    """fp32 matmuls in fp32 on CUDA (TF32 rounds far coarser than the bounds below), restored after."""
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["batched", "grouped"])
def test_int8_expert_matmul_equals_the_dequantized_weight_within_fp32_rounding(
    expert_case, kind, device, no_tf32
):
    weight, quantized, x, expert_ids = expert_case
    got = run_kernel(kind, x.to(device), quantized.to(device), expert_ids.to(device)).cpu().double()
    dequantized = (quantized.qdata.double() * quantized.scale.double())[
        expert_ids
    ]  # s q, exactly: [S, out, in]
    exact = torch.einsum("soi,si->so", dequantized, x.double())
    bound = gamma(IN + 1) * torch.einsum("soi,si->so", dequantized.abs(), x.double().abs())
    assert (got - exact).abs().le(bound).all(), (got - exact).abs().max()
    assert (got - exact).abs().max() > 0 or kind == "grouped", "fp32 rounding is expected somewhere"


@pytest.mark.parametrize("kind", ["batched", "grouped"])
def test_int8_moves_each_output_by_at_most_half_a_step_per_input(expert_case, kind):
    weight, quantized, x, expert_ids = expert_case
    got = run_kernel(kind, x, quantized, expert_ids).double()
    exact = torch.einsum("soi,si->so", weight[expert_ids].double(), x.double())
    step = quantized.scale.squeeze(-1).double()[expert_ids]  # [S, out]
    rounding = gamma(IN + 1) * torch.einsum(
        "soi,si->so", weight[expert_ids].double().abs() + step[..., None], x.abs().double()
    )
    bound = step / 2 * x.abs().double().sum(-1, keepdim=True) + rounding
    error = (got - exact).abs()
    assert error.le(bound).all()
    assert error.max() > bound.max() / 100, "int8 rounding must show: otherwise this test proves nothing"


def test_quantization_gives_one_scale_per_expert_and_output_channel(expert_case):
    weight, quantized, _, _ = expert_case
    assert quantized.qdata.dtype == torch.int8 and quantized.qdata.shape == weight.shape
    assert quantized.scale.shape == (EXPERTS, OUT, 1)
    # torchao's symmetric int8 maps each channel's largest magnitude to 127.5 steps (to -128 or to 127)
    assert quantized.qdata.int().abs().amax(-1).ge(127).all(), (
        "symmetric: each channel's largest weight maps to 127"
    )


def meta_experts(
    num_tokens: int, top_k: int
) -> tuple[OlmoeExperts, torch.Tensor, torch.Tensor, torch.Tensor]:
    """OLMoE experts with int8 weights and inputs on the meta device: shapes only, no data at all."""
    config = OlmoeConfig(hidden_size=32, intermediate_size=16, num_experts=8, num_experts_per_tok=top_k)
    with torch.device("meta"):
        experts = OlmoeExperts(config)
        for name in ("gate_up_proj", "down_proj"):
            shape = getattr(experts, name).shape
            quantized = Int8Tensor(
                torch.empty(shape, dtype=torch.int8),
                torch.empty(*shape[:-1], 1),
                [1, 1, shape[-1]],
                torch.float32,
            )
            setattr(experts, name, torch.nn.Parameter(quantized, requires_grad=False))
        hidden = torch.empty(num_tokens, 32)
        index = torch.empty(num_tokens, top_k, dtype=torch.long)
        weights = torch.empty(num_tokens, top_k)
    return experts, hidden, index, weights


def test_decode_kernel_never_reads_device_data_on_the_host_so_a_cuda_graph_can_hold_it():
    """As far as a CPU can show graph safety: on the meta device any host read (.tolist(), .item(),
    a data-dependent shape) fails, and the batched kernel runs; the grouped one, which reads the
    per-expert counts, fails, so the check can tell them apart."""
    experts, hidden, index, weights = meta_experts(num_tokens=3, top_k=2)
    out = int8_batched_mm_experts_forward(experts, hidden, index, weights)
    assert out.shape == (3, 32) and out.is_meta
    with pytest.raises((NotImplementedError, RuntimeError)):
        int8_grouped_mm_experts_forward(experts, hidden, index, weights)


# ------------------------------------------------------------------ the model and the loader


def load_tiny(tiny_model_dir: Path, dtype: torch.dtype, quantization: str, **options) -> torch.nn.Module:
    config = MolmoConfig.from_json_file(tiny_model_dir / "config.json")
    weights = load_file(tiny_model_dir / "model.safetensors")
    return load_reference_model(
        config, weights.__getitem__, weights.keys(), dtype, quantization=quantization, **options
    )


def golden_inputs(reference_dir: Path, case: str = "case_00") -> dict[str, torch.Tensor]:
    tensors = load_file(reference_dir / "preprocess" / f"{case}.safetensors")
    return {name: tensors[name][None] for name in ("input_ids", "images", "image_masks", "image_input_idx")}


@pytest.mark.parametrize("experts", ["grouped_mm", "batched_mm"])
def test_int8_model_in_fp32_equals_its_dequantized_weights(tiny_model_dir, reference_dir, experts):
    """Bound: 1e-4 on logits, the project's bound for fp32 logits (docs/ENGINE.md, measured fp32 error
    levels); here both sides hold the same weights, so only fp32 rounding differs."""
    model = load_tiny(tiny_model_dir, torch.float32, "int8", experts_implementation=experts)
    assert model.quantization == "int8"
    assert model.llm.config._experts_implementation == f"int8_{experts}"
    reference = copy.deepcopy(model)
    for name in quantized_weight_names(reference):
        module_name, _, attribute = name.rpartition(".")
        module = reference.get_submodule(module_name)
        setattr(
            module,
            attribute,
            torch.nn.Parameter(getattr(module, attribute).dequantize(), requires_grad=False),
        )
    reference.set_experts_implementation("grouped_mm")
    assert reference.quantization == "none"
    inputs = golden_inputs(reference_dir)
    with torch.inference_mode():
        got, expected = model(**inputs).logits, reference(**inputs).logits
    assert (got - expected).abs().max() <= 1e-4
    assert torch.equal(got.argmax(-1), expected.argmax(-1))


def test_int8_weights_are_the_language_model_and_head_while_vision_stays_in_the_dtype(tiny_model_dir):
    model = load_tiny(tiny_model_dir, torch.bfloat16, "int8")
    int8 = {name for name, parameter in model.named_parameters() if isinstance(parameter, Int8Tensor)}
    assert int8 == quantized_weight_names(model)
    assert "lm_head.weight" in int8 and "llm.layers.0.mlp.experts.gate_up_proj" in int8
    assert not any(name.startswith(("vision.", "connector.")) for name in int8)
    assert "llm.embed_tokens.weight" not in int8 and "llm.layers.0.mlp.gate.weight" not in int8
    others = [parameter.dtype for name, parameter in model.named_parameters() if name not in int8]
    assert set(others) == {torch.bfloat16}


def test_eager_experts_are_refused_with_int8_weights_naming_the_choices(tiny_model_dir):
    model = load_tiny(tiny_model_dir, torch.float32, "int8")
    with pytest.raises(ValueError, match="grouped_mm, batched_mm"):
        model.set_experts_implementation("eager")


def test_fast_path_with_int8_experts_gives_the_eager_reference_tokens(tiny_model_dir, reference_dir):
    """The fast path's decode uses the graph-safe kernel (int8_batched_mm), the prefills int8_grouped_mm;
    run the CUDA settings (batch buckets, EOS checked every few steps) on the CPU, without the graph."""
    from molmo_ros.backends.molmoe.generation import greedy_generate

    model = load_tiny(tiny_model_dir, torch.float32, "int8")
    inputs = golden_inputs(reference_dir)
    prompt_length = 8
    prefix_ids = inputs["input_ids"][0, :-prompt_length]
    prompt = inputs["input_ids"][0, -prompt_length:].tolist()
    expected = greedy_generate(model, max_new_tokens=12, eos_token_id=None, **inputs).token_ids
    fast = FastGenerator(model, use_cuda_graphs=False, batch_buckets=True, eos_check_interval=4)
    prefix = fast.prefill_prefix(
        prefix_ids, inputs["images"][0], inputs["image_masks"][0], inputs["image_input_idx"][0]
    )
    output = fast.generate([prefix], [prompt, prompt, prompt], max_new_tokens=12, eos_token_id=None)
    assert output.token_ids == expected * 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: int8 experts in a CUDA graph")
def test_cuda_graph_decode_with_int8_experts_equals_eager_decode(tiny_model_dir, reference_dir, no_tf32):
    model = load_tiny(tiny_model_dir, torch.float32, "int8").to("cuda")
    inputs = golden_inputs(reference_dir)
    prefix_ids, prompt = inputs["input_ids"][0, :-8], inputs["input_ids"][0, -8:].tolist()
    answers = []
    for graphs in (True, False):
        fast = FastGenerator(model, use_cuda_graphs=graphs)
        prefix = fast.prefill_prefix(
            prefix_ids, inputs["images"][0], inputs["image_masks"][0], inputs["image_input_idx"][0]
        )
        answers.append(fast.generate([prefix], [prompt] * 2, max_new_tokens=12, eos_token_id=None).token_ids)
        assert fast.graphs_captured == (1 if graphs else 0)
    assert answers[0] == answers[1]


def test_int8_cache_round_trip_loads_the_same_weights_without_converting_again(
    tiny_model_dir, tmp_path, monkeypatch
):
    source = checkpoint_source.resolve_checkpoint(str(tiny_model_dir), None)
    direct = checkpoint.load_model(source, CPU, torch.bfloat16, "int8")
    first = checkpoint.load_checkpoint(
        str(tiny_model_dir), None, CPU, torch.bfloat16, cache_dir=tmp_path, quantization="int8"
    )
    entry = first.files_dir
    assert entry.parent == tmp_path and "-int8-bfloat16-" in entry.name
    assert (
        weights_cache.find_cache_entry(tmp_path, weights_cache.source_origin(source), torch.bfloat16) is None
    )
    monkeypatch.setattr(
        weights_cache, "convert_weights", lambda *args, **kwargs: pytest.fail("converted again")
    )
    second = checkpoint.load_checkpoint(
        str(tiny_model_dir), None, CPU, torch.bfloat16, cache_dir=tmp_path, quantization="int8"
    )
    assert second.files_dir == entry and second.model.quantization == "int8"
    loaded = dict(second.model.named_parameters())
    for name, parameter in direct.named_parameters():
        other = loaded[name]
        assert type(other) is type(parameter), name
        if isinstance(parameter, Int8Tensor):
            assert torch.equal(other.qdata, parameter.qdata) and torch.equal(other.scale, parameter.scale), (
                name
            )
            assert other.dtype == torch.bfloat16
        else:
            assert torch.equal(other, parameter), name
    assert second.model.llm.config._experts_implementation == "int8_grouped_mm"


def test_unquantized_cache_entries_keep_their_identity(tiny_model_dir):
    """Entries made before int8 existed must still be found: no quantization field unless quantized."""
    source = checkpoint_source.resolve_checkpoint(str(tiny_model_dir), None)
    origin = weights_cache.source_origin(source)
    assert set(weights_cache._identity(origin, torch.bfloat16, "none")) == {
        "format_version",
        "source",
        "dtype",
    }
    int8 = weights_cache._identity(origin, torch.bfloat16, "int8")
    assert int8["quantization"] == "int8" and int8["quantization_scheme"]["full_precision"] == [
        "vision.",
        "connector.",
    ], "an entry made with other layers kept in full precision is another entry"


def test_an_int8_entry_without_int8_weights_is_refused(tiny_model_dir, tmp_path):
    """An entry that says int8 but holds full-precision weights would silently cost bf16 memory."""
    loaded = checkpoint.load_checkpoint(
        str(tiny_model_dir), None, CPU, torch.bfloat16, cache_dir=tmp_path, quantization="none"
    )
    manifest_path = loaded.files_dir / weights_cache.CACHE_MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["identity"]["quantization"] = "int8"
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(IncompatibleCheckpointError, match="where this version does not put them, or lacks"):
        weights_cache.load_cached_model(loaded.files_dir, CPU)


def test_an_int8_entry_with_int8_where_this_version_puts_none_is_refused(
    tiny_model_dir, tmp_path, monkeypatch
):
    checkpoint.load_checkpoint(
        str(tiny_model_dir), None, CPU, torch.bfloat16, cache_dir=tmp_path, quantization="int8"
    )
    # As if this version kept the attention projections in full precision: the entry no longer fits.
    fewer = weights_cache.quantized_weight_names

    def without_attention(model):
        return {name for name in fewer(model) if "self_attn" not in name}

    monkeypatch.setattr(weights_cache, "quantized_weight_names", without_attention)
    with pytest.raises(
        IncompatibleCheckpointError, match="int8 weights where this version does not put them"
    ):
        checkpoint.load_checkpoint(
            str(tiny_model_dir), None, CPU, torch.bfloat16, cache_dir=tmp_path, quantization="int8"
        )


# ------------------------------------------------------------------ settings, CLI, molmo2


def test_openai_backend_refuses_int8_saying_the_server_quantizes():
    with pytest.raises(ValueError, match=r"server .*quantizes.*vLLM.*--quantization"):
        BackendSettings(backend="openai", quantization="int8")
    with pytest.raises(ValueError, match="quantization setting must be one of none, int8"):
        BackendSettings(quantization="int4")


@pytest.fixture(scope="module")
def png(tmp_path_factory) -> Path:
    import PIL.Image

    path = tmp_path_factory.mktemp("images") / "noise.png"
    PIL.Image.fromarray(np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path)
    return path


def test_molmo_point_answers_with_int8_weights_from_their_cache(tiny_model_dir, png, tmp_path, capsys):
    args = ["--image", str(png), "--model", str(tiny_model_dir), "--device", "cpu", "--max-new-tokens", "4"]
    args += ["--quantization", "int8", "--cache-dir", str(tmp_path), "--format", "json"]
    assert cli.main(["--query", "red mug", *args]) == cli.EXIT_OK
    report = json.loads(capsys.readouterr().out)
    assert report["answer"].strip()
    entries = [path.name for path in tmp_path.iterdir()]
    assert len(entries) == 1 and "-int8-float32-" in entries[0], "the int8 weights have their own cache entry"


def test_molmo_point_refuses_int8_for_the_openai_backend(png, capsys):
    code = cli.main(["--image", str(png), "--query", "mug", "--backend", "openai", "--quantization", "int8"])
    assert code == cli.EXIT_USAGE
    assert "server" in capsys.readouterr().err


def test_molmo2_int8_quantizes_the_language_model_and_keeps_the_vision_tower(tiny_molmo2_dir):
    from molmo_ros.backends.molmo2 import FULL_PRECISION_PREFIXES, Molmo2Backend

    settings = {"backend": "molmo2", "model": str(tiny_molmo2_dir), "device": "cpu", "max_new_tokens": 4}
    plain = Molmo2Backend.load(BackendSettings(**settings)).model
    backend = Molmo2Backend.load(BackendSettings(**settings, quantization="int8"))
    original = dict(plain.named_parameters())
    quantized = 0
    for name, module in backend.model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        weight = module.weight
        if name.startswith(FULL_PRECISION_PREFIXES):
            assert not isinstance(weight, Int8Tensor) and torch.equal(weight, original[f"{name}.weight"]), (
                name
            )
            continue
        assert isinstance(weight, Int8Tensor), name
        # Each weight within half a step of the checkpoint's: the right weights were quantized (transformers'
        # TorchAoConfig would leave k, v and gate randomly initialised, far outside this).
        error = (weight.dequantize() - original[f"{name}.weight"]).abs()
        # Half a step, plus fp32 rounding of w / s (at most 128 u steps) and of q s (u |w|).
        slack = 256 * UNIT_ROUNDOFF
        assert error.le(weight.scale * (0.5 + slack)).all(), name
        quantized += 1
    assert quantized > 0
    frame = np.random.default_rng(2).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    decoded = []
    control = GenerationControl(
        lambda stage, tokens: decoded.append(tokens) if stage is Stage.DECODING else None
    )
    backend.generate([frame], ["Point to the mug"], control)
    assert decoded and decoded[-1] >= 1, "the int8 model decoded tokens"
