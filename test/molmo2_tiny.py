"""A tiny random Molmo2 checkpoint built on the spot, so the molmo2 backend is tested with no download.

`build_tiny_molmo2(directory)` writes what `Molmo2Backend.load` reads from a hub snapshot: config.json and
weights (transformers' own `Molmo2ForConditionalGeneration`, with small sizes), the processor's image and
video settings, a byte-level tokenizer made with the `tokenizers` library carrying Molmo2's special tokens,
and a small chat template. Its answers are random text: the pipeline is what the tests check.
"""

from pathlib import Path

import torch
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


def special_token_id(token: str) -> int:
    return BYTE_TOKENS + SPECIAL_TOKENS.index(token)


def tiny_config() -> Molmo2Config:
    return Molmo2Config(
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 3,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "head_dim": 16,
        },
        adapter_config={
            "vision_feature_layer": [-1, -2],
            "hidden_size": 32,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "intermediate_size": 64,
            "text_hidden_size": 32,
        },
        text_config={
            "hidden_size": 32,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "vocab_size": BYTE_TOKENS,
            "additional_vocab_size": ADDITIONAL_VOCAB,
            "num_hidden_layers": 2,
            "intermediate_size": 64,
            "max_position_embeddings": 4096,
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


def build_tiny_molmo2(directory: Path) -> Path:
    """Writes the tiny checkpoint into `directory` (created if needed) and returns it."""
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
