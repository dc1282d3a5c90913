"""MolmoE-1B as a composition of transformers' maintained CLIP ViT and OLMoE language model.

Only what has no library counterpart is written here: the vision connector (ViT layer concat, CLS drop,
invalid-crop zeroing, pad embeddings, 2x2 attention pooling, SwiGLU projector), the embedding of image
features into the token sequence, the untied 50,304-row head and position ids that skip -1 padding.
The semantics follow AI2's MolmoE-1B remote code (modeling_molmoe.py): the connector mirrors
`MolmoPretrainedVisionBackbone.forward`, the embedding of image features and the position ids
`Molmo.forward`. docs/ENGINE.md ("The model") spells them out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionModel, OlmoeModel
from transformers.models.olmoe.modeling_olmoe import OlmoeRotaryEmbedding

from molmo_ros.backends.molmoe.config import MolmoConfig
from molmo_ros.backends.molmoe.quantization import experts_are_int8, experts_implementation

PADDING_ID = -1  # fills prompts (right padding) and padded crops in a batch
PADDING_EMBEDDING_ID = 0  # the token a PADDING_ID is embedded as (its value is masked out of attention)
# Rows of the connector's pad_embed: added to patches with no real pixel / with some padding pixels.
FULLY_PADDED_ROW, PARTIALLY_PADDED_ROW = 0, 1


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions count only real tokens, so a right-padded row is positioned as if it stood alone."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def patches_to_pixels(patches: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[N, G*G, p*p*3] patches, each flattened as (row, column, channel) -> pixel_values [N, 3, G*p, G*p]."""
    n, num_patches, _ = patches.shape
    grid = int(num_patches**0.5)
    pixels = patches.reshape(n, grid, grid, patch_size, patch_size, 3).permute(0, 5, 1, 3, 2, 4)
    return pixels.reshape(n, 3, grid * patch_size, grid * patch_size)


class MolmoAttentionPooling(nn.Module):
    """Pools each window of patches to one token by attention, queried with the window mean.

    The attention itself runs in fp32 whatever the weight dtype, as the reference does (float32_attention).
    """

    def __init__(self, input_dim: int, num_heads: int, width: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(input_dim, width)
        self.k_proj = nn.Linear(input_dim, width)
        self.v_proj = nn.Linear(input_dim, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, query: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        """query [M, 1, C], windows [M, W, C] -> [M, 1, width]."""

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2).float()

        q, k, v = heads(self.q_proj(query)), heads(self.k_proj(windows)), heads(self.v_proj(windows))
        pooled = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        return self.out_proj(pooled.to(query.dtype))


class MolmoImageProjector(nn.Module):
    """SwiGLU MLP from the pooled ViT width to the LLM width (reference w1 = gate, w3 = up, w2 = down)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(input_dim, hidden_dim, bias=False)
        self.up_proj = nn.Linear(input_dim, hidden_dim, bias=False)
        self.down_proj = nn.Linear(hidden_dim, output_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MolmoVisionConnector(nn.Module):
    """Turns per-crop ViT patch features into one language-model vector per pooled 2x2 window."""

    def __init__(self, config: MolmoConfig) -> None:
        super().__init__()
        self.config = config
        feature_dim = len(config.vit_layers) * config.vit_width
        # Two rows: FULLY_PADDED_ROW and PARTIALLY_PADDED_ROW.
        self.pad_embed = nn.Parameter(torch.zeros(2, feature_dim))
        self.pooling = MolmoAttentionPooling(feature_dim, config.vit_heads, config.vit_width)
        self.projector = MolmoImageProjector(config.vit_width, config.expert_hidden_size, config.d_model)

    def forward(
        self, features: torch.Tensor, crop_is_valid: torch.Tensor, image_masks: torch.Tensor
    ) -> torch.Tensor:
        """features [B, N, G*G, C] (no CLS), crop_is_valid [B, N], image_masks [B, N, G*G] -> [B, N, T, d]."""
        batch, crops, _, channels = features.shape
        features = features * crop_is_valid[:, :, None, None].to(features.dtype)
        fully_padded = (image_masks == 0).to(features.dtype).unsqueeze(-1)
        partially_padded = ((image_masks < 1) & (image_masks != 0)).to(features.dtype).unsqueeze(-1)
        features = features + self.pad_embed[FULLY_PADDED_ROW] * fully_padded
        features = features + self.pad_embed[PARTIALLY_PADDED_ROW] * partially_padded

        grid, ph, pw = self.config.patches_per_side, self.config.pooling_h, self.config.pooling_w
        windows = features.reshape(batch * crops, grid // ph, ph, grid // pw, pw, channels)
        windows = windows.permute(0, 1, 3, 2, 4, 5).reshape(-1, ph * pw, channels)
        pooled = self.pooling(windows.mean(dim=1, keepdim=True), windows)
        return self.projector(pooled).reshape(batch, crops, self.config.tokens_per_crop, self.config.d_model)


@dataclass
class MolmoEOutput:
    logits: torch.Tensor  # [B, T, embedding_size]
    image_features: torch.Tensor | None  # [B, N, tokens_per_crop, d], what was added to the embeddings
    # With output_hidden_states: the input of every language-model block (the first is the embeddings with
    # image features added), as the library reports them.
    hidden_states: tuple[torch.Tensor, ...] | None
    last_hidden_state: torch.Tensor  # after the final RMSNorm: logits = last_hidden_state @ lm_head.T


def build_meta_model(config: MolmoConfig, **model_options: str | None) -> MolmoEForPointing:
    """The model skeleton without memory for weights (no random init); loading fills it by assignment.
    model_options go to MolmoEForPointing (e.g. experts_implementation)."""
    with torch.device("meta"):
        return MolmoEForPointing(config, **model_options)


class MolmoEForPointing(nn.Module):
    """MolmoE-1B: CLIP ViT -> connector -> image features added to OLMoE token embeddings -> untied head."""

    def __init__(
        self,
        config: MolmoConfig,
        *,
        attn_implementation: str = "sdpa",
        experts_implementation: str | None = None,
    ) -> None:
        """experts_implementation: None lets transformers pick (grouped_mm where the torch build has it, else
        eager); "batched_mm" and "eager" are the other choices transformers 5.23 offers for any device."""
        super().__init__()
        self.config = config
        self.vision = CLIPVisionModel(config.vision_config(attn_implementation))
        # CLIP's post_layernorm only normalizes the pooled CLS output, which Molmo never uses; the
        # checkpoint has no weights for it.
        self.vision.post_layernorm = nn.Identity()
        self.connector = MolmoVisionConnector(config)
        self.llm = OlmoeModel(config.text_config(attn_implementation, experts_implementation))
        self.lm_head = nn.Linear(config.d_model, config.embedding_size, bias=False)
        self.eval()  # inference only: every way of loading the model relies on this being its mode

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def quantization(self) -> str:
        """The weights' quantization: "int8" after a weight-only int8 load (quantization.py), else "none"."""
        return "int8" if experts_are_int8(self.llm.layers[0].mlp.experts) else "none"

    def experts_kernel(self, name: str) -> str:
        """The experts implementation transformers runs for `name` with this model's expert weights."""
        return experts_implementation(name, self.quantization == "int8")

    def set_experts_implementation(self, name: str) -> None:
        """Switch the MoE kernel strategy at run time ("grouped_mm", "batched_mm", "eager"; int8 weights
        have their own grouped and batched kernels, chosen here by the same names)."""
        self.llm.set_experts_implementation(self.experts_kernel(name))

    def match_experts_kernel_to_weights(self) -> None:
        """After loading: int8 expert weights need the int8 kernel of the implementation chosen."""
        self.set_experts_implementation(self.llm.config._experts_implementation)

    def init_non_persistent_buffers(self, device: torch.device | str) -> None:
        """(Re)create the buffers no checkpoint holds, e.g. after building on the meta device.

        They are computed in fp32 on purpose: the RoPE frequencies must not be rounded to the weight dtype.
        """
        with torch.device(device):
            embeddings = self.vision.embeddings
            embeddings.position_ids = torch.arange(embeddings.num_positions).expand((1, -1))
            # In the model's mode: a fresh module would start in training mode.
            self.llm.rotary_emb = OlmoeRotaryEmbedding(self.llm.config).train(self.training)

    def encode_images(self, images: torch.Tensor, image_masks: torch.Tensor) -> torch.Tensor:
        """images [B, N, G*G, p*p*3], image_masks [B, N, G*G] -> image features [B, N, tokens_per_crop, d].

        The ViT runs block by block (the model holds only the blocks up to the deepest one used) and keeps
        only the outputs of the blocks the connector reads, not every block's output as
        output_hidden_states would (about 350 MB at 13 crops of the real model).

        A crop counts as valid only if NONE of its values is exactly -1, as in AI2's MolmoE code
        (`torch.all(images != -1)`): batch-padding crops (all -1) are zeroed, but so is any real crop in
        which one normalized value happens to be exactly -1.0 (the reference data's first case has such
        crops). We keep this quirk so outputs match the released model's behaviour.
        """
        batch, crops = images.shape[:2]
        pixel_values = patches_to_pixels(images.flatten(0, 1), self.config.patch_size).to(self.dtype)
        vision = self.vision
        hidden = vision.pre_layrnorm(vision.embeddings(pixel_values))
        wanted = set(self.config.vit_blocks_used)
        kept: dict[int, torch.Tensor] = {}
        for index, block in enumerate(vision.encoder.layers):
            hidden = block(hidden, None)
            if index in wanted:
                kept[index] = hidden
        features = torch.cat([kept[k] for k in self.config.vit_blocks_used], dim=-1)
        features = features[:, 1:].unflatten(0, (batch, crops))
        crop_is_valid = (images != PADDING_ID).flatten(2).all(dim=-1)
        return self.connector(features, crop_is_valid, image_masks)

    def embed_inputs(
        self,
        input_ids: torch.Tensor,
        image_features: torch.Tensor | None = None,
        image_input_idx: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings with image features ADDED at image_input_idx; negative slots (the
        preprocessor's DROPPED_SLOT, PADDING_ID in a padded batch) are dropped.

        input_ids [B, T] may hold PADDING_ID (embedded as PADDING_EMBEDDING_ID). image_features
        [B or 1, N, tokens, d] and image_input_idx [B or 1, N, tokens]; a batch of 1 is shared by every row
        (one image, many prompts).
        """
        embeddings = self.llm.embed_tokens(
            input_ids.masked_fill(input_ids == PADDING_ID, PADDING_EMBEDDING_ID)
        )
        if image_features is None:
            return embeddings
        batch, width = input_ids.shape[0], embeddings.shape[-1]
        features = image_features.reshape(image_features.shape[0], -1, width).expand(batch, -1, -1)
        positions = image_input_idx.reshape(image_input_idx.shape[0], -1).expand(batch, -1).long()
        is_kept = (positions >= 0).unsqueeze(-1)
        # Dropped slots add an exact zero at position 0; this avoids a data-dependent (host-syncing) gather.
        features = torch.where(is_kept, features.to(embeddings.dtype), 0)
        index = positions.clamp(min=0).unsqueeze(-1).expand(-1, -1, width)
        return embeddings.scatter_add(1, index, features)

    def forward(
        self,
        input_ids: torch.Tensor,
        images: torch.Tensor | None = None,
        image_masks: torch.Tensor | None = None,
        image_input_idx: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> MolmoEOutput:
        """Full-sequence forward without cache (tests and scoring); generation lives in generation.py."""
        image_features = self.encode_images(images, image_masks) if images is not None else None
        inputs_embeds = self.embed_inputs(input_ids, image_features, image_input_idx)
        attention_mask = input_ids != PADDING_ID
        llm = self.llm(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            use_cache=False,
            output_hidden_states=output_hidden_states,
        )
        return MolmoEOutput(
            logits=self.lm_head(llm.last_hidden_state),
            image_features=image_features,
            hidden_states=llm.hidden_states,
            last_hidden_state=llm.last_hidden_state,
        )
