"""A tiny stand-in for an OpenVLA checkpoint's own code (``modeling_prismatic.py`` + its processor).

Same module names and sequence as OpenVLA's Prismatic model: ``vision_backbone.featurizer.patch_embed``
(a ViT's patch embedding), ``projector`` (``fc1``, ``fc2``), ``language_model`` (a ``LlamaForCausalLM``),
the sequence ``[BOS, patch tokens, prompt tokens]``, action tokens at the end of the vocabulary, greedy
``predict_action`` with de-normalisation by ``norm_stats[unnorm_key]``. Saved into a checkpoint folder
and loaded from there through the config's ``auto_map``, exactly like a hub checkpoint's remote code.
Test-only: random weights, no claim about behaviour.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import (
    BatchFeature,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)


class StandInConfig(PretrainedConfig):
    model_type = "openvla"
    sub_configs = {"text_config": LlamaConfig}  # noqa: RUF012

    def __init__(
        self,
        text_config=None,
        image_sizes=(32, 32),
        patch_size=8,
        vision_dim=32,
        action_dim=4,
        n_action_bins=32,
        norm_stats=None,
        **kwargs,
    ):
        if isinstance(text_config, dict):
            text_config = LlamaConfig(**text_config)
        self.text_config = text_config or LlamaConfig()
        self.image_sizes = list(image_sizes)
        self.patch_size = patch_size
        self.vision_dim = vision_dim
        self.action_dim = action_dim
        self.n_action_bins = n_action_bins
        self.norm_stats = norm_stats or {}
        super().__init__(**kwargs)


class PatchEmbed(nn.Module):
    def __init__(self, size, patch, dim):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)
        self.num_patches = (size // patch) ** 2

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class Featurizer(nn.Module):
    def __init__(self, size, patch, dim):
        super().__init__()
        self.patch_embed = PatchEmbed(size, patch, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        return self.norm(self.patch_embed(x))


class VisionBackbone(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.featurizer = Featurizer(config.image_sizes[0], config.patch_size, config.vision_dim)
        self.num_images_in_input = 1

    def forward(self, pixel_values):
        return self.featurizer(pixel_values)


class Projector(nn.Module):
    def __init__(self, vision_dim, llm_dim):
        super().__init__()
        self.fc1 = nn.Linear(vision_dim, llm_dim)
        self.act_fn1 = nn.GELU()
        self.fc2 = nn.Linear(llm_dim, llm_dim)

    def forward(self, x):
        return self.fc2(self.act_fn1(self.fc1(x)))


class StandInVLA(PreTrainedModel):
    config_class = StandInConfig
    base_model_prefix = "standin"
    main_input_name = "input_ids"

    def __init__(self, config):
        super().__init__(config)
        self.vision_backbone = VisionBackbone(config)
        self.projector = Projector(config.vision_dim, config.text_config.hidden_size)
        self.language_model = LlamaForCausalLM(config.text_config)
        self.norm_stats = config.norm_stats
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def forward(self, input_ids, attention_mask=None, pixel_values=None, **kwargs):
        patches = self.projector(self.vision_backbone(pixel_values))
        embeds = self.get_input_embeddings()(input_ids)
        x = torch.cat([embeds[:, :1], patches.to(embeds.dtype), embeds[:, 1:]], dim=1)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        ones = torch.ones(input_ids.shape[0], patches.shape[1], dtype=attention_mask.dtype)
        mask = torch.cat([attention_mask[:, :1], ones, attention_mask[:, 1:]], dim=1)
        return self.language_model(inputs_embeds=x, attention_mask=mask, use_cache=False)

    @torch.no_grad()
    def predict_action(self, input_ids, attention_mask=None, pixel_values=None, unnorm_key=None, **kwargs):
        vocab = self.config.text_config.vocab_size
        bins = self.config.n_action_bins
        ids = input_ids
        for _ in range(self.config.action_dim):  # greedy decoding over the action tokens only
            logits = self(ids, None, pixel_values).logits[:, -1, vocab - bins :]
            ids = torch.cat([ids, (logits.argmax(-1) + vocab - bins)[:, None]], dim=1)
        index = vocab - ids[0, -self.config.action_dim :].numpy()  # 1 … bins, as OpenVLA's action tokenizer
        centers = np.linspace(-1.0, 1.0, bins)
        normalised = centers[np.clip(index - 1, 0, bins - 1)]
        stats = self.norm_stats[unnorm_key]["action"]
        low, high = np.asarray(stats["q01"]), np.asarray(stats["q99"])
        return 0.5 * (normalised + 1.0) * (high - low) + low


class StandInProcessor:
    """Prompt → ids (with BOS first), image → normalised pixels; returns a BatchFeature like OpenVLA's."""

    def __init__(self, tokenizer, image_size):
        self.tokenizer = tokenizer
        self.image_size = image_size

    @classmethod
    def from_pretrained(cls, path, **kwargs):
        size = json.loads((Path(path) / "config.json").read_text())["image_sizes"][0]
        return cls(PreTrainedTokenizerFast.from_pretrained(path), size)

    def __call__(self, text, images):
        image = images.convert("RGB").resize((self.image_size, self.image_size))
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
        ids = [self.tokenizer.bos_token_id, *self.tokenizer(text, add_special_tokens=False)["input_ids"]]
        input_ids = torch.tensor([ids])
        mask = torch.ones_like(input_ids)
        return BatchFeature({"input_ids": input_ids, "attention_mask": mask, "pixel_values": pixels})
