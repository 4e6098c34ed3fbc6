"""The driving controllers' size ladder: Qwen2 config fields per size (head_dim 32 everywhere; tied embeddings).

The smaller members are the "smaller dense model" baselines of the BPF study; sizes are kept small so that the
shipped checkpoints stay a few MB and training fits a 2-core CPU budget. Construction and training:
:mod:`embodied_prune.training.controller`.
"""

from __future__ import annotations

SIZES: dict[str, dict] = {
    "s": dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1, intermediate_size=256),
    "m": dict(
        hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, intermediate_size=512
    ),
    "l": dict(
        hidden_size=192, num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=2, intermediate_size=768
    ),
}

SIZE_NOTES = {
    name: f"Qwen2, hidden {f['hidden_size']}, {f['num_hidden_layers']} layers, {f['num_attention_heads']} heads / "
    f"{f['num_key_value_heads']} KV heads, MLP {f['intermediate_size']}"
    for name, f in SIZES.items()
}
