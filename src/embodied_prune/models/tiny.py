"""Factories for tiny random models of every supported family (for tests, demos and benchmarks)."""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from ..errors import EmbodiedPruneError
from .adapters import ADAPTERS

TINY_DEFAULTS = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    vocab_size=384,
    max_position_embeddings=512,
    tie_word_embeddings=False,
)


def tiny_config(family: str = "llama", **overrides) -> PretrainedConfig:
    """A small config of ``family`` (llama, mistral, qwen2, qwen3); keyword arguments override fields.

    ``head_dim`` is always set explicitly, so pruning heads never changes the rotary embedding size.
    """
    if family not in ADAPTERS:
        raise EmbodiedPruneError(f"unknown model family {family!r}; choose one of: {', '.join(ADAPTERS.names())}.")
    fields = {**TINY_DEFAULTS, **overrides}
    fields.setdefault("head_dim", fields["hidden_size"] // fields["num_attention_heads"])
    return AutoConfig.for_model(family, **fields)


def build_tiny(
    family: str = "llama", seed: int = 0, dtype: torch.dtype = torch.float32, **overrides
) -> PreTrainedModel:
    """A randomly initialised ``*ForCausalLM`` of ``family``, deterministic for a given ``seed``."""
    config = tiny_config(family, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()
