"""The MolmoE checkpoint's config.json, reduced to what our model needs and checked against what it supports.

The checkpoint config describes many training-time and alternative settings; every one that would change
the numerics of inference is checked here, so an unsupported checkpoint fails at load time with the field
named instead of producing wrong answers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import CLIPVisionConfig, OlmoeConfig

from molmo_ros.backends.errors import IncompatibleCheckpointError
from molmo_ros.backends.families import MOLMOE, check_family

# Settings whose other values would change inference numerics; (field, required value).
_REQUIRED_TOP_LEVEL: tuple[tuple[str, Any], ...] = (
    ("block_type", "moe"),
    ("activation_type", "swiglu"),
    ("layer_norm_type", "rms"),
    ("layer_norm_with_affine", True),
    ("attention_layer_norm", True),
    ("attention_layer_norm_with_affine", True),
    ("clip_qkv", None),
    ("rope", True),
    ("rope_impl", "llama"),
    ("alibi", False),
    ("qkv_bias", False),
    ("include_bias", False),
    ("norm_after", False),
    ("weight_tying", False),
    ("scale_logits", False),
    ("attn_logit_softcapping", None),
    ("final_logit_softcapping", None),
    ("normalize_input_embeds", False),
    ("moe_shared_expert", False),
    ("image_pooling_2d", "attention-meanq"),
    ("image_projector", "mlp"),
    ("image_padding_embed", "pad_and_partial_pad"),
    ("use_cls_feature", False),
)
_REQUIRED_VISION: tuple[tuple[str, Any], ...] = (
    ("image_model_type", "openai"),
    ("image_mlp_activations", "quick_gelu"),
)


def _incompatible(field: str, problem: str) -> IncompatibleCheckpointError:
    return IncompatibleCheckpointError(
        f"checkpoint config field '{field}' {problem}; this engine supports MolmoE-1B"
    )


def _vision_shapes(d: dict[str, Any], vision_field: Callable[[str], Any]) -> dict[str, Any]:
    """The ViT's and the pooling connector's shapes, checked against each other."""
    vit_width, vit_heads = int(vision_field("image_emb_dim")), int(vision_field("image_num_heads"))
    if vision_field("image_num_key_value_heads") != vit_heads:
        raise _incompatible("vision_backbone.image_num_key_value_heads", "must equal image_num_heads")
    if int(vision_field("image_head_dim")) * vit_heads != vit_width:
        raise _incompatible(
            "vision_backbone.image_head_dim", "times image_num_heads must equal image_emb_dim"
        )
    height, width = vision_field("image_default_input_size")
    patch = int(vision_field("image_patch_size"))
    if height != width or height % patch:
        raise _incompatible(
            "vision_backbone.image_default_input_size", "must be square and a multiple of the patch"
        )
    if vision_field("image_pos_patch_size") != patch:
        raise _incompatible("vision_backbone.image_pos_patch_size", "must equal image_patch_size")
    if vision_field("image_num_pos") != (height // patch) ** 2 + 1:
        raise _incompatible("vision_backbone.image_num_pos", "must be the patch count plus one (CLS)")
    vit_num_layers = int(vision_field("image_num_layers"))
    vit_layers = tuple(int(i) for i in _field(d, "vit_layers"))
    if not vit_layers or any(not -vit_num_layers <= i < vit_num_layers for i in vit_layers):
        raise _incompatible("vit_layers", f"must name blocks of the {vit_num_layers}-block ViT")
    pooling_h, pooling_w = int(_field(d, "image_pooling_h")), int(_field(d, "image_pooling_w"))
    if (height // patch) % pooling_h or (width // patch) % pooling_w:
        raise _incompatible("image_pooling_h", "must divide the patch grid")
    return dict(
        vit_width=vit_width,
        vit_heads=vit_heads,
        vit_num_layers=vit_num_layers,
        vit_layers=vit_layers,
        image_size=int(height),
        patch_size=patch,
        pooling_h=pooling_h,
        pooling_w=pooling_w,
    )


def _field(d: dict[str, Any], name: str, prefix: str = "") -> Any:
    if name not in d:
        raise _incompatible(prefix + name, "is missing")
    return d[name]


@dataclass(frozen=True)
class MolmoConfig:
    """Shapes and constants of a MolmoE checkpoint: the single source of sizes for model and key mapping."""

    d_model: int
    n_heads: int
    n_layers: int
    expert_hidden_size: int  # also the hidden size of the image projector
    num_experts: int
    experts_per_token: int
    embedding_size: int  # rows of wte.embedding, also the number of logits
    additional_vocab_size: int  # rows of wte.new_embedding
    layer_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    pad_token_id: int
    vit_width: int
    vit_heads: int
    vit_mlp_dim: int
    vit_num_layers: int  # blocks in the checkpoint; we run only as many as vit_layers needs
    vit_layers: tuple[int, ...]  # block indices (possibly negative) whose outputs feed the connector
    vit_norm_eps: float
    image_size: int
    patch_size: int
    pooling_h: int
    pooling_w: int

    @classmethod
    def from_json_file(cls, path: str | Path) -> MolmoConfig:
        try:
            with open(path, encoding="utf-8") as f:
                settings = json.load(f)
        except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
            raise IncompatibleCheckpointError(f"{path} is not valid JSON: {error}") from error
        if not isinstance(settings, dict):
            raise IncompatibleCheckpointError(f"{path} holds a {type(settings).__name__}, not a JSON object")
        return cls.from_dict(settings)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MolmoConfig:
        check_family(d, MOLMOE, "the checkpoint")
        for name, required in _REQUIRED_TOP_LEVEL:
            if _field(d, name) != required:
                raise _incompatible(name, f"is {d[name]!r}, only {required!r} is supported")
        vision = _field(d, "vision_backbone")

        def vision_field(name: str) -> Any:
            return _field(vision, name, "vision_backbone.")

        for name, required in _REQUIRED_VISION:
            if vision_field(name) != required:
                raise _incompatible(
                    f"vision_backbone.{name}", f"is {vision[name]!r}, only {required!r} is supported"
                )

        d_model, n_heads = int(_field(d, "d_model")), int(_field(d, "n_heads"))
        if d.get("n_kv_heads") not in (None, n_heads) or d.get("multi_query_attention"):
            raise _incompatible("n_kv_heads", "asks for grouped-query attention, which MolmoE does not use")
        if d.get("head_dim") not in (None, d_model // n_heads) or d_model % n_heads:
            raise _incompatible("head_dim", "must be d_model / n_heads")
        mlp_hidden = d.get("mlp_hidden_size") or int(_field(d, "mlp_ratio")) * d_model

        vision_shapes = _vision_shapes(d, vision_field)

        return cls(
            d_model=d_model,
            n_heads=n_heads,
            n_layers=int(_field(d, "n_layers")),
            expert_hidden_size=mlp_hidden // 2,
            num_experts=int(_field(d, "moe_num_experts")),
            experts_per_token=int(_field(d, "moe_top_k")),
            embedding_size=int(_field(d, "embedding_size")),
            additional_vocab_size=int(_field(d, "additional_vocab_size")),
            layer_norm_eps=float(_field(d, "layer_norm_eps")),
            rope_theta=float(_field(d, "rope_theta")),
            max_position_embeddings=int(_field(d, "max_position_embeddings")),
            pad_token_id=int(_field(d, "pad_token_id")),
            vit_mlp_dim=int(vision_field("image_mlp_dim")),
            vit_norm_eps=float(vision_field("image_norm_eps")),
            **vision_shapes,
        )

    @property
    def vit_blocks_used(self) -> tuple[int, ...]:
        """0-based ViT block indices in vit_layers order (the connector concatenates them in this order)."""
        return tuple(i % self.vit_num_layers for i in self.vit_layers)

    @property
    def vit_layers_to_run(self) -> int:
        """Blocks after the last one the connector reads are never needed, so they are not built or run."""
        return max(self.vit_blocks_used) + 1

    @property
    def patches_per_side(self) -> int:
        return self.image_size // self.patch_size

    @property
    def patch_values(self) -> int:
        """Values per flattened patch: patch rows x patch columns x RGB."""
        return self.patch_size * self.patch_size * 3

    @property
    def tokens_per_crop(self) -> int:
        return (self.patches_per_side // self.pooling_h) * (self.patches_per_side // self.pooling_w)

    @property
    def input_vocab_size(self) -> int:
        """Rows of the combined embedding table (ids the model accepts, more than it can predict)."""
        return self.embedding_size + self.additional_vocab_size

    def vision_config(self, attn_implementation: str = "sdpa") -> CLIPVisionConfig:
        return CLIPVisionConfig(
            hidden_size=self.vit_width,
            intermediate_size=self.vit_mlp_dim,
            num_hidden_layers=self.vit_layers_to_run,
            num_attention_heads=self.vit_heads,
            image_size=self.image_size,
            patch_size=self.patch_size,
            num_channels=3,
            hidden_act="quick_gelu",
            layer_norm_eps=self.vit_norm_eps,
            attention_dropout=0.0,
            attn_implementation=attn_implementation,
        )

    def text_config(
        self, attn_implementation: str = "sdpa", experts_implementation: str | None = None
    ) -> OlmoeConfig:
        return OlmoeConfig(
            vocab_size=self.input_vocab_size,
            hidden_size=self.d_model,
            intermediate_size=self.expert_hidden_size,
            num_hidden_layers=self.n_layers,
            num_attention_heads=self.n_heads,
            num_key_value_heads=self.n_heads,
            hidden_act="silu",
            rms_norm_eps=self.layer_norm_eps,
            rope_theta=self.rope_theta,
            max_position_embeddings=self.max_position_embeddings,
            attention_bias=False,
            attention_dropout=0.0,
            clip_qkv=None,
            num_experts=self.num_experts,
            num_experts_per_tok=self.experts_per_token,
            norm_topk_prob=False,
            tie_word_embeddings=False,
            pad_token_id=self.pad_token_id,
            attn_implementation=attn_implementation,
            experts_implementation=experts_implementation,
        )
