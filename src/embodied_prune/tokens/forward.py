"""A policy query whose visual tokens can be dropped between decoder layers, without patching transformers.

:func:`pruned_query` runs the VLA's backbone layer by layer — the same calls, in the same order, as
``LlamaModel.forward`` — and before each layer asks a :class:`~.pruners.TokenPruner` which visual
tokens go on. Dropped tokens leave the sequence (their hidden states, their mask entries); kept tokens
keep their original RoPE positions. The layers run transformers' own attention (SDPA by default);
scores are computed beside them, by :func:`.scores.row_attention`, only when a pruner asks.
With a pruner that keeps everything the result is bit-identical to ``TinyVLA.forward`` (tested).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers.masking_utils import create_causal_mask

from ..choices import SCORE_ROWS
from .scores import row_attention, visual_scores


def _is_visual(positions: torch.Tensor, span: tuple[int, int]) -> torch.Tensor:
    """Which of the tokens at original ``positions`` lie in the visual ``span``."""
    return (positions >= span[0]) & (positions < span[1])


@dataclass
class QueryState:
    """What a pruner may look at before layer ``layer`` of one policy query (batch of one).

    ``positions`` are the original positions of the tokens still in the sequence; ``visual`` the
    original indices (0-based within the visual span) of the visual tokens still in it.
    """

    layer: int
    num_layers: int
    hidden: torch.Tensor
    positions: torch.Tensor
    key_valid: torch.Tensor
    visual_span: tuple[int, int]
    instruction_span: tuple[int, int]
    position_embeddings: tuple[torch.Tensor, torch.Tensor]
    layer_module: torch.nn.Module
    visual_total: int
    _cache: dict = field(default_factory=dict)

    @property
    def visual(self) -> torch.Tensor:
        """The original visual indices still in the sequence, on the CPU: pruners keep their bookkeeping there
        (a few hundred numbers per query), whatever device the model runs on."""
        if "visual" not in self._cache:
            self._cache["visual"] = (self.positions[self._visual_mask()] - self.visual_span[0]).cpu()
        return self._cache["visual"]

    def _visual_mask(self) -> torch.Tensor:
        if "visual_mask" not in self._cache:
            self._cache["visual_mask"] = _is_visual(self.positions, self.visual_span)
        return self._cache["visual_mask"]

    def _rows(self, which: str) -> torch.Tensor:
        lo, hi = self.instruction_span
        p = self.positions
        if which == "instruction":
            sel = (p >= lo) & (p < hi) & self.key_valid
        elif which == "after_visual":  # FastV: every token after the image (instruction and action queries)
            sel = (p >= lo) & self.key_valid
        elif which == "action":  # the action queries (OFT-style parallel decoding): every token after the instruction
            sel = (p >= hi) & self.key_valid
        else:
            raise ValueError(f"unknown rows {which!r}")
        return torch.nonzero(sel).flatten()

    def scores(self, rows: str = "instruction") -> torch.Tensor:
        """Mean attention the current visual tokens receive from ``rows`` (``instruction``, ``action``: the tokens
        after the instruction, or ``after_visual``: both) at this layer: (len(visual),), float32 on the CPU (see
        :attr:`visual`)."""
        if rows not in self._cache:
            vis_idx = torch.nonzero(self._visual_mask()).flatten()
            probs = row_attention(
                self.layer_module, self.hidden, self.position_embeddings, self._rows(rows), self.key_valid
            )
            self._cache[rows] = visual_scores(probs, vis_idx).float().cpu()
        return self._cache[rows]


def _kept_rows(positions: torch.Tensor, span: tuple[int, int], keep: torch.Tensor) -> torch.Tensor:
    """Rows of the current sequence that go on: every non-visual token and the visual tokens whose original
    index (0-based within ``span``) is in ``keep``. A lookup table over the visual span, not ``torch.isin``
    (which sorts, and costs more than a small layer on the CPU)."""
    wanted = torch.zeros(span[1] - span[0] + 1, dtype=torch.bool, device=positions.device)
    wanted[keep.to(positions.device)] = True
    wanted[-1] = True  # the slot every non-visual token looks up
    slot = torch.where(_is_visual(positions, span), positions - span[0], span[1] - span[0])
    return torch.nonzero(wanted[slot]).flatten()


@dataclass
class QueryStats:
    """Visual tokens processed by each layer of the last query, and the query's kept-token count."""

    visual_per_layer: list[int]

    @property
    def kept_tokens_mean(self) -> float:
        return sum(self.visual_per_layer) / len(self.visual_per_layer)


def pruned_query(model, pruner, images, input_ids, attention_mask, proprio, bos_id: int) -> torch.Tensor:
    """One policy query of a :class:`~embodied_prune.models.vla.TinyVLA`-shaped model with ``pruner``
    choosing the visual tokens before each layer. Returns the action chunk (1, chunk, action_dim)."""
    if input_ids.shape[0] != 1:
        raise ValueError("token pruning keeps a different token set per query: query one observation at a time.")
    x, mask = model.build_inputs(images, input_ids, attention_mask, proprio, bos_id)
    lay = model.layout(input_ids.shape[1])
    bb = model.backbone
    positions = torch.arange(x.shape[1], device=x.device)
    key_valid = mask[0].bool()
    hidden = x
    position_ids = positions.unsqueeze(0)
    # positional: the cache argument (none here) was renamed from past_key_values to cache within transformers 5
    causal = create_causal_mask(bb.config, hidden, mask, None, position_ids=position_ids)
    pe = bb.rotary_emb(hidden, position_ids=position_ids)
    counts = []
    layers = bb.layers[: bb.config.num_hidden_layers]
    visual_total = n_visual = lay.visual[1] - lay.visual[0]
    for i, layer in enumerate(layers):
        state = QueryState(
            i, len(layers), hidden, positions, key_valid, lay.visual, lay.instruction, pe, layer, visual_total
        )
        keep = pruner.select(state)
        if keep is not None:
            sel = _kept_rows(positions, lay.visual, keep)
            hidden, positions, key_valid = hidden[:, sel], positions[sel], key_valid[sel]
            position_ids = positions.unsqueeze(0)
            # the kept tokens' rows and columns of the mask and their own rotary angles: original positions
            if isinstance(causal, torch.Tensor):
                causal = causal[:, :, sel][:, :, :, sel]
            elif causal is not None:
                raise ValueError(
                    f"token pruning needs a dense attention mask; {bb.config._attn_implementation!r} attention "
                    f"gave a {type(causal).__name__}: load the policy with attn_implementation='sdpa'."
                )
            pe = (pe[0][:, sel], pe[1][:, sel])
            n_visual = int(_is_visual(positions, lay.visual).sum())
        counts.append(n_visual)
        hidden = layer(hidden, attention_mask=causal, position_embeddings=pe, position_ids=position_ids)
    pruner.finish(QueryStats(counts))
    hidden = bb.norm(hidden)
    head = model.action_head
    return head(hidden[:, -model.config.chunk :].to(next(head.parameters()).dtype)).float()


__all__ = ["SCORE_ROWS", "QueryState", "QueryStats", "pruned_query"]
