"""A tiny random Molmo2 checkpoint built on the spot, in the layout the Hugging Face hub ships.

Real Molmo2 checkpoints (allenai/Molmo2-4B, -8B, -O-7B) keep AI2's original layout, which transformers 5.23
and vLLM both read (round3-facts):
- config.json has `vit_config` (not `vision_config`) with the original field names (`image_patch_size`,
  `image_default_input_size`, `image_num_pos`), an `adapter_config` with `vit_layers` and
  `pooling_attention_mask`, a `text_config` with `rope_theta`, `qkv_bias`, `layer_norm_eps` and `use_qk_norm`,
  the token ids `image_col_id`, `image_low_res_id`, ..., and an `auto_map` to the repository's remote code;
  its ViT declares more layers than the weights hold (the adapter reads none past the last one stored);
- the weights use the original names (fused `att_proj` and `ff_proj`), and the embedding is split as the
  hub splits it: `vocab_size` rows in `wte.embedding`, `additional_vocab_size` rows in `wte.new_embedding`.

`build_tiny_molmo2(directory)` writes such a checkpoint: the weights of transformers' own
`Molmo2ForConditionalGeneration` at small sizes (seeded), re-split and under the hub's config. It also writes
the two Python files `auto_map` names; importing either leaves a marker file (`REMOTE_CODE_MARKER`, in the
checkpoint directory) and fails, so a test can prove no loader ran them. `build_native_molmo2(directory)`
writes the same model as transformers' `save_pretrained` writes it, the reference the hub layout must
reproduce token for token.

Both carry the processor as transformers' `Molmo2Processor.save_pretrained` writes it (the hub's own
processor files were not available to copy their layout), a byte-level tokenizer made with the `tokenizers`
library carrying Molmo2's special tokens, and a small chat template. Every head is 32 wide: vLLM's CPU
attention takes head sizes 32, 64, 80, ... and a 16-wide head kills its server at the first request.
Answers are random text: the pipeline is what the tests check.
"""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    Molmo2Config,
    Molmo2ForConditionalGeneration,
    Molmo2ImageProcessor,
    Molmo2Processor,
    Molmo2VideoProcessor,
    PreTrainedTokenizerFast,
)

BYTE_TOKENS = 256  # the text vocabulary: one token per byte
ADDITIONAL_VOCAB = 128  # Molmo2's extra embedding rows, where its special tokens live
SEED = 0
TINY_MAX_CROPS = 2  # fewer crops than the real 8 keep a CPU test fast; the crop logic is the same
HEAD_DIM = 32  # the smallest head size vLLM's CPU attention runs
WIDTH = 64  # two heads of HEAD_DIM, in the ViT, the adapter and the text model
VIT_LAYERS_STORED = 3
# The hub's config declares a deeper ViT than its weights hold (27 declared, 25 stored for Molmo2-4B); the
# loaders trim it to the deepest layer `vit_layers` reads. One extra declared layer keeps that path tested.
VIT_LAYERS_DECLARED = VIT_LAYERS_STORED + 1
VIT_FEATURE_LAYERS = (VIT_LAYERS_STORED - 1, VIT_LAYERS_STORED - 2)  # the two last stored layers
# The spread of the random weights. At transformers' default (0.02) the tiny model's next-token log-probs
# are nearly flat (top-2 gap 0.0025 nats) and its answer ignores the MLPs: with the halves of every fused
# ff_proj swapped, 12 greedy tokens stayed the same. At 0.2 the answer changes from the first token, so
# token-for-token comparisons can catch a wrong weight layout.
INIT_STD = 0.2
END_OF_TEXT = "<|endoftext|>"
# Special tokens in id order from BYTE_TOKENS; the config's *_token_id values below point at these ids.
SPECIAL_TOKENS = (
    "<im_start>",
    "<im_end>",
    "<im_patch>",
    "<im_col>",
    "<low_res_im_start>",
    "<|image|>",
    "<im_low>",
    "<frame_start>",
    "<frame_end>",
    "<|video|>",
    "<|im_start|>",
    "<|im_end|>",
    END_OF_TEXT,
)
# Qwen-style turns, as Molmo2's chat template writes them: the images of a message, then its text.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<|image|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# What the hub's config.json names as remote code; the files written for it refuse to run.
AUTO_MAP = {
    "AutoConfig": "configuration_molmo2.Molmo2Config",
    "AutoModelForImageTextToText": "modeling_molmo2.Molmo2ForConditionalGeneration",
}
REMOTE_CODE_MARKER = "remote_code_was_imported"
WEIGHTS_FILE = "model.safetensors"
EMBEDDING = "model.transformer.wte.embedding"
NEW_EMBEDDING = "model.transformer.wte.new_embedding"


def special_token_id(token: str) -> int:
    return BYTE_TOKENS + SPECIAL_TOKENS.index(token)


def tiny_config() -> Molmo2Config:
    """transformers' native config of the tiny model (what `build_native_molmo2` saves)."""
    heads = {"num_attention_heads": WIDTH // HEAD_DIM, "head_dim": HEAD_DIM, "initializer_range": INIT_STD}
    return Molmo2Config(
        initializer_range=INIT_STD,
        vision_config={
            "hidden_size": WIDTH,
            "intermediate_size": 2 * WIDTH,
            "num_hidden_layers": VIT_LAYERS_STORED,
            "num_key_value_heads": WIDTH // HEAD_DIM,
            **heads,
        },
        adapter_config={
            "vision_feature_layer": list(VIT_FEATURE_LAYERS),
            "hidden_size": WIDTH,
            "num_key_value_heads": WIDTH // HEAD_DIM,
            "intermediate_size": 2 * WIDTH,
            "text_hidden_size": WIDTH,
            **heads,
        },
        text_config={
            "hidden_size": WIDTH,
            "num_key_value_heads": 1,
            "vocab_size": BYTE_TOKENS,
            "additional_vocab_size": ADDITIONAL_VOCAB,
            "num_hidden_layers": 2,
            "intermediate_size": 2 * WIDTH,
            "max_position_embeddings": 4096,
            **heads,
        },
        image_start_token_id=special_token_id("<im_start>"),
        low_res_image_start_token_id=special_token_id("<low_res_im_start>"),
        image_end_token_id=special_token_id("<im_end>"),
        image_patch_id=special_token_id("<im_patch>"),
        frame_start_token_id=special_token_id("<frame_start>"),
        frame_end_token_id=special_token_id("<frame_end>"),
        bos_token_id=special_token_id(END_OF_TEXT),
        eos_token_id=special_token_id(END_OF_TEXT),
        pad_token_id=special_token_id(END_OF_TEXT),
    )


def hub_config(native: dict) -> dict:
    """The native config.json (`native`) rewritten with the hub's names and structure. Long: one literal
    per section, field for field, so that it reads like the hub's config.json."""
    vision, adapter, text = native["vision_config"], native["adapter_config"], native["text_config"]
    vit_config = {
        "hidden_size": vision["hidden_size"],
        "intermediate_size": vision["intermediate_size"],
        "num_hidden_layers": VIT_LAYERS_DECLARED,
        "num_attention_heads": vision["num_attention_heads"],
        "num_key_value_heads": vision["num_key_value_heads"],
        "head_dim": vision["head_dim"],
        "hidden_act": vision["hidden_act"],
        "layer_norm_eps": vision["layer_norm_eps"],
        "image_default_input_size": vision["image_size"],
        "image_patch_size": vision["patch_size"],
        "image_num_pos": vision["num_position_embeddings"],
        "float32_attention": True,
        "attention_dropout": 0.0,
        "residual_dropout": 0.0,
        "initializer_range": vision["initializer_range"],
    }
    adapter_config = {
        # Counted from the declared depth, as the hub counts them ([-3, -9] of 27 for Molmo2-4B).
        "vit_layers": [layer - VIT_LAYERS_DECLARED for layer in adapter["vision_feature_layer"]],
        "pooling_attention_mask": True,
        "hidden_size": adapter["hidden_size"],
        "num_attention_heads": adapter["num_attention_heads"],
        "num_key_value_heads": adapter["num_key_value_heads"],
        "head_dim": adapter["head_dim"],
        "hidden_act": adapter["hidden_act"],
        "intermediate_size": adapter["intermediate_size"],
        "text_hidden_size": adapter["text_hidden_size"],
        "float32_attention": True,
        "attention_dropout": 0.0,
        "residual_dropout": 0.0,
        "image_feature_dropout": 0.0,
        "initializer_range": adapter["initializer_range"],
    }
    text_config = {
        "model_type": "molmo2_text",
        "hidden_size": text["hidden_size"],
        "num_attention_heads": text["num_attention_heads"],
        "num_key_value_heads": text["num_key_value_heads"],
        "head_dim": text["head_dim"],
        "vocab_size": text["vocab_size"],
        "additional_vocab_size": text["additional_vocab_size"],
        "qkv_bias": text["attention_bias"],
        "num_hidden_layers": text["num_hidden_layers"],
        "intermediate_size": text["intermediate_size"],
        "hidden_act": text["hidden_act"],
        "max_position_embeddings": text["max_position_embeddings"],
        "rope_theta": text["rope_parameters"]["rope_theta"],
        "rope_scaling": None,
        "rope_scaling_layers": None,
        "layer_norm_eps": text["rms_norm_eps"],
        "norm_after": text["norm_after"],
        "use_qk_norm": True,
        "qk_norm_type": text["qk_norm_type"],
        "embedding_dropout": 0.0,
        "attention_dropout": 0.0,
        "residual_dropout": 0.0,
        "initializer_range": text["initializer_range"],
        "use_cache": True,
        "tie_word_embeddings": False,
    }
    return {
        "architectures": ["Molmo2ForConditionalGeneration"],
        "auto_map": dict(AUTO_MAP),
        "model_type": "molmo2",
        "vit_config": vit_config,
        "adapter_config": adapter_config,
        "text_config": text_config,
        "image_start_token_id": native["image_start_token_id"],
        "low_res_image_start_token_id": native["low_res_image_start_token_id"],
        "image_end_token_id": native["image_end_token_id"],
        "image_low_res_id": special_token_id("<im_low>"),
        "image_patch_id": native["image_patch_id"],
        "image_col_id": special_token_id("<im_col>"),
        "frame_start_token_id": native["frame_start_token_id"],
        "frame_end_token_id": native["frame_end_token_id"],
        "use_frame_special_tokens": True,
        "initializer_range": native["initializer_range"],
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": "4.57.1",  # what the hub's Molmo2 configs say
    }


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE without merges: every byte is a token, so any prompt encodes."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: index for index, symbol in enumerate(sorted(alphabet))}
    assert len(vocab) == BYTE_TOKENS
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(
        [AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS]
    )
    for token in SPECIAL_TOKENS:
        assert tokenizer.token_to_id(token) == special_token_id(token), token
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=END_OF_TEXT,
        eos_token=END_OF_TEXT,
        pad_token=END_OF_TEXT,
        extra_special_tokens={"image_token": "<|image|>", "video_token": "<|video|>"},
    )


def build_native_molmo2(directory: Path) -> Path:
    """Writes the tiny model as transformers' `save_pretrained` does into `directory`; returns it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    model = Molmo2ForConditionalGeneration(tiny_config()).eval()
    model.generation_config.eos_token_id = special_token_id(END_OF_TEXT)
    model.generation_config.pad_token_id = special_token_id(END_OF_TEXT)
    model.save_pretrained(directory)
    processor = Molmo2Processor(
        image_processor=Molmo2ImageProcessor(max_crops=TINY_MAX_CROPS),
        video_processor=Molmo2VideoProcessor(),
        tokenizer=tiny_tokenizer(),
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(directory)
    return directory


def build_tiny_molmo2(directory: Path) -> Path:
    """Writes the tiny model in the hub's layout into `directory` (created if needed) and returns it."""
    directory = build_native_molmo2(directory)
    config_file = directory / "config.json"
    config_file.write_text(json.dumps(hub_config(json.loads(config_file.read_text())), indent=2))
    weights = load_file(directory / WEIGHTS_FILE)
    # save_pretrained splits the vocabulary in two halves; the hub keeps the text vocabulary in the first
    # table and Molmo2's additional tokens in the second.
    table = torch.cat([weights.pop(EMBEDDING), weights.pop(NEW_EMBEDDING)])
    weights[EMBEDDING], weights[NEW_EMBEDDING] = table[:BYTE_TOKENS].clone(), table[BYTE_TOKENS:].clone()
    save_file(weights, directory / WEIGHTS_FILE, metadata={"format": "pt"})
    write_remote_code(directory)
    return directory


def write_remote_code(directory: Path) -> None:
    """The files `auto_map` names. Importing one writes its module name into `directory/REMOTE_CODE_MARKER`
    (an absolute path: loaders import remote code from a copy in their own cache) and fails."""
    marker = (Path(directory) / REMOTE_CODE_MARKER).resolve()
    for target in AUTO_MAP.values():
        module = target.split(".")[0]
        (Path(directory) / f"{module}.py").write_text(
            "from pathlib import Path\n"
            f"Path({str(marker)!r}).write_text(__name__)\n"
            "raise ImportError('the test checkpoint remote code was imported: trust_remote_code was set')\n"
        )
