"""Pure functions behind visual-token pruning: attention scores, top-k, frame differences, the controller.

Nothing here keeps state; the pruners in :mod:`.pruners` hold the per-episode state and call these.

Attention scores are computed only where a pruner needs them, as OpenVLA-style models allow: from a
decoder layer's *input*, the queries of a few rows (the instruction tokens) against the keys of all
tokens, softmax-normalised over each row's full causal span, then averaged over heads and rows at
the visual columns. This costs one key projection and an (rows × sequence) score matrix per layer,
so the layers themselves keep running transformers' SDPA attention, which returns no weights.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from transformers.models.llama.modeling_llama import rotate_half


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding as Llama/Qwen2 apply it, to queries and keys of different rows (transformers'
    ``apply_rotary_pos_emb`` takes one cos/sin for both); ``cos``/``sin`` (B, n, head_dim)."""
    return x * cos.unsqueeze(1) + rotate_half(x) * sin.unsqueeze(1)


def row_attention(
    layer: nn.Module,
    hidden: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    rows: torch.Tensor,
    key_valid: torch.Tensor,
) -> torch.Tensor:
    """Attention probabilities of ``rows`` over all keys at ``layer``, computed from the layer's input.

    ``hidden`` (1, n, d) is the input of a Llama/Qwen2-style decoder layer (``input_layernorm`` and
    ``self_attn.{q,k}_proj``; Qwen3's ``q_norm``/``k_norm`` are applied when present);
    ``position_embeddings`` the (cos, sin) of the current tokens' positions; ``rows`` the indices (in
    the current sequence) of the query rows; ``key_valid`` (n,) bool, False for padding keys. Causality
    follows the current sequence order. Returns (heads, len(rows), n) probabilities.
    """
    attn = layer.self_attn
    hd = attn.head_dim
    x = layer.input_layernorm(hidden)
    n = x.shape[1]
    q = attn.q_proj(x[:, rows]).view(1, len(rows), -1, hd)
    k = attn.k_proj(x).view(1, n, -1, hd)
    if hasattr(attn, "q_norm"):
        q, k = attn.q_norm(q), attn.k_norm(k)
    cos, sin = position_embeddings
    q = _rope(q.transpose(1, 2), cos[:, rows], sin[:, rows])[0]  # (H, r, hd)
    k = _rope(k.transpose(1, 2), cos, sin)[0]  # (KV, n, hd)
    heads, kv = q.shape[0], k.shape[0]
    # grouped-query attention: query head h reads key head h // (heads / kv), as transformers' repeat_kv has
    # it; each group's heads are stacked into one product with their shared keys instead of copying the keys
    grouped = q.float().reshape(kv, heads // kv * len(rows), hd)
    logits = (grouped @ k.float().transpose(-1, -2)).view(heads, len(rows), n) * attn.scaling
    allowed = (torch.arange(n, device=rows.device)[None, :] <= rows[:, None]) & key_valid[None, :]
    logits = logits.masked_fill(~allowed, float("-inf"))
    return torch.softmax(logits, dim=-1)


def visual_scores(probs: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
    """Mean attention each visual column (indices ``visual``) receives, over heads and rows: (len(visual),)."""
    return probs[..., visual].mean(dim=(0, 1))


def top_k(scores: torch.Tensor, k: int, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Indices of the ``k`` highest ``scores`` (ties by lower index), skipping the bool mask ``exclude``."""
    s = scores.double().clone()
    if exclude is not None:
        s[exclude] = -math.inf
    k = max(0, min(k, int(torch.isfinite(s).sum())))
    order = torch.argsort(-s, stable=True)
    return order[:k]


def patch_directions(image: np.ndarray, patch: int) -> np.ndarray:
    """Unit vectors of the ``patch``×``patch`` patches of a uint8 image (H, W, 3), pixels centred to
    [−1, 1] first, in row-major patch order (the visual tokens' order): (H/p · W/p, p·p·3). A patch of
    zero norm gets the zero vector."""
    h, w, c = image.shape
    gh, gw = h // patch, w // patch
    x = image.astype(np.float32) / 127.5 - 1.0
    x = x.reshape(gh, patch, gw, patch, c).transpose(0, 2, 1, 3, 4).reshape(gh * gw, -1)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-8) * (norm > 1e-8)


def direction_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of corresponding rows of two :func:`patch_directions` results; 1 where either patch
    has zero norm (nothing to compare)."""
    flat = ~(a.any(axis=1) & b.any(axis=1))
    return np.where(flat, 1.0, (a * b).sum(axis=1))


def patch_similarity(current: np.ndarray, previous: np.ndarray, patch: int) -> np.ndarray:
    """Cosine similarity of corresponding ``patch``×``patch`` patches of two uint8 images (H, W, 3),
    pixels centred to [−1, 1] first, in row-major patch order (the visual tokens' order): (H/p · W/p,)."""
    return direction_similarity(patch_directions(current, patch), patch_directions(previous, patch))


def changed_tokens(similarity: np.ndarray, threshold: float, k: int) -> np.ndarray:
    """Indices of at most ``k`` tokens whose similarity is below ``threshold``, least similar first."""
    below = np.flatnonzero(similarity < threshold)
    order = below[np.argsort(similarity[below], kind="stable")]
    return order[: max(0, k)]


def frame_gap(speed: float, max_speed: float, gap_slow: int = 11, gap_fast: int = 6) -> int:
    """Steps back to the frame compared for changed patches: ``gap_slow`` at rest, shrinking linearly to
    ``gap_fast`` at ``max_speed`` (SpecPrune-VLA's T = ⌊−16/3·v/6 + 22/3⌋ + 4 with v rescaled so that
    its v = 6 is ``max_speed``; 11 → 6 steps)."""
    v = min(max(speed / max_speed, 0.0), 1.0)
    return math.floor((gap_slow - (gap_slow - gap_fast) * v) + 1e-9)


def rank_confidence(scores: torch.Tensor) -> torch.Tensor:
    """Layer-specific importance: rank weight (1 for the top token … 1/n for the last) × the layer's
    confidence (mean / std of its attention scores): a layer whose attention is peaked counts less."""
    n = scores.numel()
    if n == 0:
        return scores
    ranks = torch.empty(n, dtype=torch.float64)
    ranks[torch.argsort(-scores.double(), stable=True)] = torch.arange(n, dtype=torch.float64)
    weight = 1.0 - ranks / n
    std = scores.double().std() if n > 1 else torch.tensor(0.0, dtype=torch.float64)
    confidence = scores.double().mean() / std if std > 0 else torch.tensor(1.0, dtype=torch.float64)
    return weight * confidence


def is_fine_motion(speed: float, previous_speed: float | None, fine_speed: float) -> bool:
    """The action-aware controller's test: the hand moves slowly (below ``fine_speed``) and not faster
    than at the previous query."""
    return speed < fine_speed and (previous_speed is None or speed <= previous_speed + 1e-9)


__all__ = [
    "changed_tokens",
    "direction_similarity",
    "frame_gap",
    "is_fine_motion",
    "patch_directions",
    "patch_similarity",
    "rank_confidence",
    "row_attention",
    "top_k",
    "visual_scores",
]
