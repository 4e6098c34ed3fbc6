"""Estimated backbone FLOPs of a policy query from the visual tokens each layer processed."""

from __future__ import annotations


def layer_flops(tokens: int, hidden: int, q_dim: int, kv_dim: int, intermediate: int) -> float:
    """Multiply-adds ×2 of one Llama-style decoder layer over ``tokens`` tokens (no cache): the q, k, v,
    o projections, the gated MLP, and the two attention products (scores and weighted values, full
    square: SDPA computes the causal half at about the same cost on the CPU)."""
    linear = tokens * (hidden * (q_dim + 2 * kv_dim) + q_dim * hidden + 3 * hidden * intermediate)
    attention = 2 * tokens * tokens * q_dim
    return 2.0 * (linear + attention)


def relative_backbone_flops(model, visual_per_layer: list[int]) -> float:
    """Backbone FLOPs of a query of our VLA (``model``) that kept ``visual_per_layer`` visual tokens, relative to
    the dense query."""
    lay = model.layout()
    visual = lay.visual[1] - lay.visual[0]
    return relative_flops(model.backbone.config, visual, lay.length - visual, visual_per_layer)


def relative_flops(cfg, visual: int, other: int, visual_per_layer: list[int]) -> float:
    """Decoder FLOPs (config ``cfg``) of a query of ``visual`` visual and ``other`` other tokens that kept
    ``visual_per_layer`` visual tokens, relative to the same query unpruned."""
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    dims = (cfg.hidden_size, cfg.num_attention_heads * head_dim, cfg.num_key_value_heads * head_dim)

    def f(n: int) -> float:
        return layer_flops(n + other, *dims, cfg.intermediate_size)

    return sum(f(n) for n in visual_per_layer) / (len(visual_per_layer) * f(visual))


__all__ = ["layer_flops", "relative_backbone_flops", "relative_flops"]
