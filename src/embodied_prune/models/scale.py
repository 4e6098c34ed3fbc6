"""The shapes users prune at — Qwen2.5-1.5B/3B/7B(-Instruct), the RobotxR1 controllers, and Llama-2-7B, OpenVLA's
language backbone — as configs written down here (no hub), and random-weight checkpoints of them written one
tensor at a time, so a 7 B checkpoint is made in a few GB of memory.

The configs copy the published ``config.json`` fields that decide the shapes (hidden size, MLP width, layers,
heads, KV heads, vocabulary, tied embeddings, biases); ``tests/test_scale.py`` checks their parameter counts against
the published ones (1.54 B, 3.09 B, 7.62 B, 6.74 B). Random weights make the timings and memory of pruning
real at those sizes; they say nothing about what pruning does to a trained model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import EmbodiedPruneError
from ..io import atomic_dir

_QWEN2 = {
    "model_type": "qwen2",
    "architectures": ["Qwen2ForCausalLM"],
    "hidden_act": "silu",
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
}
REFERENCE_CONFIGS: dict[str, dict] = {
    "qwen2.5-1.5b": _QWEN2
    | {
        "vocab_size": 151936,
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "tie_word_embeddings": True,
    },
    "qwen2.5-3b": _QWEN2
    | {
        "vocab_size": 151936,
        "hidden_size": 2048,
        "intermediate_size": 11008,
        "num_hidden_layers": 36,
        "num_attention_heads": 16,
        "num_key_value_heads": 2,
        "tie_word_embeddings": True,
    },
    "qwen2.5-7b": _QWEN2
    | {
        "vocab_size": 152064,
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "tie_word_embeddings": False,
    },
    "llama-2-7b": {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_act": "silu",
        "vocab_size": 32000,
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
    },
}
# parameters of the published checkpoints, for the check above
PUBLISHED_PARAMETERS = {
    "qwen2.5-1.5b": 1_543_714_304,
    "qwen2.5-3b": 3_085_938_688,
    "qwen2.5-7b": 7_615_616_512,
    "llama-2-7b": 6_738_415_616,
}


def reference_config(name: str):
    """The transformers config of reference shape ``name`` (a key of :data:`REFERENCE_CONFIGS`)."""
    from transformers import AutoConfig

    if name not in REFERENCE_CONFIGS:
        raise EmbodiedPruneError(f"unknown reference shape {name!r}; choose one of: {', '.join(REFERENCE_CONFIGS)}.")
    fields = dict(REFERENCE_CONFIGS[name])
    return AutoConfig.for_model(fields.pop("model_type"), **fields)


def meta_model(name: str, dtype: torch.dtype = torch.bfloat16):
    """A model of reference shape ``name`` on the meta device: shapes and code paths without any memory."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(reference_config(name), dtype=dtype)


def write_random_checkpoint(
    name: str,
    out: str | os.PathLike,
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
    shard_bytes: int = 2 * 2**30,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write a checkpoint of reference shape ``name`` with random weights (normal, std 0.02; norms 1, biases 0.02
    normal) as safetensors shards of about ``shard_bytes`` plus index and config, atomically. Memory: one shard."""
    from safetensors.torch import save_file

    model = meta_model(name, dtype)
    tied = set(getattr(model, "_tied_weights_keys", None) or []) if model.config.tie_word_embeddings else set()
    tensors = [(k, v.shape) for k, v in model.state_dict().items() if k not in tied and not k.endswith("inv_freq")]
    gen = torch.Generator().manual_seed(seed)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        weight_map: dict[str, str] = {}
        shard: dict[str, torch.Tensor] = {}
        size, files = 0, []

        def flush() -> None:
            nonlocal shard, size
            if shard:
                fname = f"model-{len(files) + 1:05d}.safetensors"
                save_file(shard, str(tmp / fname), metadata={"format": "pt"})
                files.append(fname)
                weight_map.update(dict.fromkeys(shard, fname))
                shard, size = {}, 0

        for key, shape in tqdm(tensors, desc=f"random {name}", disable=not progress, leave=False):
            if key.endswith("norm.weight"):
                t = torch.ones(shape, dtype=dtype)
            else:
                t = (torch.randn(shape, generator=gen) * 0.02).to(dtype)
            shard[key] = t
            size += t.numel() * t.element_size()
            if size >= shard_bytes:
                flush()
        flush()
        total = sum(torch.Size(s).numel() * dtype.itemsize for _, s in tensors)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        config = reference_config(name)
        config.dtype = dtype
        config.save_pretrained(tmp)
    return Path(out)
