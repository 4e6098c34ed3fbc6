"""Structured pruning, LLM-Pruner style: coupled groups ranked by importance and physically removed.

Coupled groups (named by the architecture adapter, see :mod:`embodied_prune.models.adapters`):

* **KV group** — one key/value head with every query head that shares it (grouped-query attention),
  i.e. rows of ``k_proj``/``v_proj`` for that head, rows of ``q_proj`` and columns of ``o_proj`` for
  its query heads.
* **query head** — one query head inside its KV group: rows of ``q_proj`` and columns of ``o_proj``.
  Models with very few KV heads (Qwen2.5-1.5B/3B have 2) cannot lose whole KV groups at a fine
  granularity, so query heads are removed within each group, the same number per group, which keeps
  the grouped-query layout valid.
* **MLP channel** — one intermediate channel: a row of ``gate_proj`` and ``up_proj`` and a column of
  ``down_proj``.

A group's importance is the sum of its member channels' scores (:mod:`.importance`). The head
layout ``(kept KV heads, query heads per KV head)`` is chosen per layer to come closest to the
requested sparsity of query heads; with ``attention="auto"`` every layout is considered, and among
equally close ones the one removing more KV heads wins (smaller KV cache). Layouts whose head count
divides ``hidden_size`` are preferred, because transformers 5 refuses to save any other config.

The plan (which indices survive) is computed apart from its application, so training-time pruning
can slice optimizer state with the same indices.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..choices import ATTENTION_MODES
from ..errors import EmbodiedPruneError
from ..models.adapters import ROLES, DecoderAdapter, LayerShape, adapter_for
from .importance import Importance, TaylorAccumulator, TaylorImportance, make_importance
from .masks import check_sparsity
from .unstructured import layer_indices


@dataclass(frozen=True)
class LayerPlan:
    """The surviving heads and channels of one decoder layer (original indices, ascending)."""

    index: int
    kv_keep: tuple[int, ...]
    q_keep: tuple[int, ...]
    mlp_keep: tuple[int, ...]


@dataclass
class StructuredResult:
    """Per-layer plans and the shapes before and after."""

    plans: list[LayerPlan]
    shapes_before: list[LayerShape]
    shapes_after: list[LayerShape] = field(default_factory=list)


# --- pure helpers -----------------------------------------------------------------------------------


def head_rows(heads: tuple[int, ...] | list[int], head_dim: int) -> torch.Tensor:
    """Row indices of the listed heads in a ``[heads·head_dim, ...]`` projection."""
    return torch.tensor([h * head_dim + d for h in heads for d in range(head_dim)], dtype=torch.long)


def choose_head_layout(
    n_kv: int,
    group: int,
    sparsity: float,
    hidden_size: int,
    mode: str = "auto",
    reference_heads: int | None = None,
) -> tuple[int, int]:
    """``(kept KV heads, query heads per KV head)`` whose query-head count is closest to the target.

    The target is ``(1 − sparsity) · reference_heads`` (default: the current ``n_kv · group``). Only
    layouts no larger than the current one are considered; ``mode`` restricts them to whole KV
    groups (``kv_group``) or query heads within groups (``query_head``). Ties go to fewer KV heads.
    """
    if mode == "none":
        return n_kv, group
    target = (1 - sparsity) * (reference_heads or n_kv * group)
    kv_range = range(1, n_kv + 1) if mode in ("auto", "kv_group") else [n_kv]
    g_range = range(1, group + 1) if mode in ("auto", "query_head") else [group]
    layouts = [(kv, g) for kv in kv_range for g in g_range]
    exportable = [(kv, g) for kv, g in layouts if hidden_size % (kv * g) == 0]
    return min(exportable or layouts, key=lambda kg: (abs(kg[0] * kg[1] - target), kg[0], -kg[1]))


def mlp_keep_count(current: int, sparsity: float, reference: int | None = None, round_to: int = 1) -> int:
    """Kept MLP channels: ``(1 − sparsity) · reference`` rounded to a multiple of ``round_to``, at most ``current``."""
    target = (1 - sparsity) * (reference or current)
    kept = max(round_to, round(target / round_to) * round_to)
    return min(current, kept)


def slice_linear(
    linear: nn.Linear, out_idx: torch.Tensor | None = None, in_idx: torch.Tensor | None = None
) -> nn.Linear:
    """A new ``nn.Linear`` holding only the listed output rows and input columns.

    Written here rather than taken from torch-pruning: its ``prune_linear_*_channels`` do the same
    slicing, but pull in a dependency for two ``index_select`` calls.
    """
    w = linear.weight.data
    if out_idx is not None:
        w = w.index_select(0, out_idx.to(w.device))
    if in_idx is not None:
        w = w.index_select(1, in_idx.to(w.device))
    new = nn.Linear(w.shape[1], w.shape[0], bias=linear.bias is not None, device=w.device, dtype=w.dtype)
    new.weight.data.copy_(w)
    if linear.bias is not None:
        b = linear.bias.data
        new.bias.data.copy_(b.index_select(0, out_idx.to(b.device)) if out_idx is not None else b)
    new.weight.requires_grad_(linear.weight.requires_grad)
    return new


# --- scoring ----------------------------------------------------------------------------------------


@dataclass
class GroupScores:
    """Importance of every query head, KV head (its own k/v rows only) and MLP channel of a layer."""

    query: torch.Tensor
    kv: torch.Tensor
    mlp: torch.Tensor


def score_layer(
    adapter: DecoderAdapter,
    layer: nn.Module,
    shape: LayerShape,
    criterion: Importance,
    prefix: str,
    grads: dict[str, torch.Tensor] | None = None,
    grad_sq: dict[str, torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    taylor: TaylorAccumulator | None = None,
) -> GroupScores:
    """Sum channel scores into group scores for one layer (``prefix`` = the layer's parameter-name prefix).

    Gradient criteria read either full gradients (``grads``, ``grad_sq``: the pruning callback's) or a
    :class:`TaylorAccumulator` that gathered the channel scores during the calibration pass (``taylor``)."""

    def channel(role: str, dim: int) -> torch.Tensor:
        w = adapter.linear(layer, role).weight
        key = f"{prefix}{getattr(adapter, role)}.weight"
        if taylor is not None:
            return taylor.scores(key, w, dim).float().cpu()
        g = grads.get(key) if grads else None
        gs = grad_sq.get(key) if grad_sq else None
        return criterion(w, dim, grad=g, grad_sq=gs, generator=generator).float().cpu()

    hd = shape.head_dim

    def per_head(scores: torch.Tensor) -> torch.Tensor:
        return scores.reshape(-1, hd).sum(1)

    query = per_head(channel("q_proj", 0)) + per_head(channel("o_proj", 1))
    kv = per_head(channel("k_proj", 0)) + per_head(channel("v_proj", 0))
    mlp = channel("gate_proj", 0) + channel("up_proj", 0) + channel("down_proj", 1)
    return GroupScores(query, kv, mlp)


def plan_layer(
    index: int,
    shape: LayerShape,
    scores: GroupScores,
    layout: tuple[int, int],
    mlp_keep: int,
) -> LayerPlan:
    """Keep the best ``layout = (kv, g)`` heads and the ``mlp_keep`` best MLP channels."""
    kv_keep, g_keep = layout
    group = shape.group_size
    query = scores.query.reshape(shape.num_kv_heads, group)
    best_q = torch.topk(query, g_keep, dim=1).indices.sort(dim=1).values  # per KV group
    kv_score = scores.kv + query.gather(1, best_q).sum(1)
    kept_kv = sorted(torch.topk(kv_score, kv_keep).indices.tolist())
    q_keep = tuple(kv * group + int(q) for kv in kept_kv for q in best_q[kv].tolist())
    mlp = tuple(sorted(torch.topk(scores.mlp, mlp_keep).indices.tolist()))
    return LayerPlan(index, tuple(kept_kv), q_keep, mlp)


Cut = tuple[torch.Tensor | None, torch.Tensor | None]


def layer_cuts(plan: LayerPlan, head_dim: int) -> dict[str, Cut]:
    """``role → (kept output rows, kept input columns)`` of every linear of a layer under ``plan``
    (None = all kept); the same indices slice weights, biases and optimizer state."""
    q_rows = head_rows(plan.q_keep, head_dim)
    kv_rows = head_rows(plan.kv_keep, head_dim)
    mlp = torch.tensor(plan.mlp_keep, dtype=torch.long)
    return {
        "q_proj": (q_rows, None),
        "k_proj": (kv_rows, None),
        "v_proj": (kv_rows, None),
        "o_proj": (None, q_rows),
        "gate_proj": (mlp, None),
        "up_proj": (mlp, None),
        "down_proj": (None, mlp),
    }


def apply_layer_plan(adapter: DecoderAdapter, layer: nn.Module, shape: LayerShape, plan: LayerPlan) -> None:
    """Physically remove everything ``plan`` does not keep from ``layer``."""
    for role, (out_idx, in_idx) in layer_cuts(plan, shape.head_dim).items():
        adapter.set_linear(layer, role, slice_linear(adapter.linear(layer, role), out_idx, in_idx))


# --- lifecycle --------------------------------------------------------------------------------------


def plan_structured(
    model: nn.Module,
    sparsity: float,
    criterion: Importance,
    attention: str = "auto",
    mlp: bool = True,
    layers: tuple[int, int] | None = None,
    grads: dict[str, torch.Tensor] | None = None,
    grad_sq: dict[str, torch.Tensor] | None = None,
    reference: list[LayerShape] | None = None,
    round_to: int = 1,
    seed: int = 0,
    adapter: DecoderAdapter | None = None,
    taylor: TaylorAccumulator | None = None,
) -> list[LayerPlan]:
    """Which heads and channels survive in each pruned layer.

    ``reference`` holds the layer shapes that ``sparsity`` is measured against (default: the current
    ones); training-time pruning passes the dense shapes so a sequence of cuts lands exactly on the
    target.
    """
    check_sparsity(sparsity)
    if attention not in ATTENTION_MODES:
        raise EmbodiedPruneError(f"unknown attention mode {attention!r}; choose one of: {', '.join(ATTENTION_MODES)}.")
    adapter = adapter or adapter_for(model)
    shapes = adapter.layer_shapes(model)
    reference = reference or shapes
    hidden = adapter.get_config(model).hidden_size
    generator = torch.Generator().manual_seed(seed)
    plans = []
    for i in layer_indices(len(shapes), layers):
        shape, ref = shapes[i], reference[i]
        layer = adapter.get_layers(model)[i]
        prefix = f"{adapter.layers}.{i}."
        scores = score_layer(adapter, layer, shape, criterion, prefix, grads, grad_sq, generator, taylor)
        layout = choose_head_layout(shape.num_kv_heads, shape.group_size, sparsity, hidden, attention, ref.num_heads)
        keep = (
            mlp_keep_count(shape.intermediate_size, sparsity, ref.intermediate_size, round_to)
            if mlp
            else shape.intermediate_size
        )
        plans.append(plan_layer(i, shape, scores, layout, keep))
    return plans


def apply_structured(
    model: nn.Module, plans: list[LayerPlan], adapter: DecoderAdapter | None = None
) -> list[LayerShape]:
    """Apply ``plans`` in place and update the config; returns the new layer shapes."""
    adapter = adapter or adapter_for(model)
    layers = adapter.get_layers(model)
    for plan in plans:
        apply_layer_plan(adapter, layers[plan.index], adapter.layer_shape(model, plan.index), plan)
    return adapter.sync(model)


def prune_structured(
    model: nn.Module,
    sparsity: float,
    importance: str | Importance = "l2",
    taylor: str = "param_first",
    attention: str = "auto",
    mlp: bool = True,
    layers: tuple[int, int] | None = None,
    calibration: torch.Tensor | None = None,
    round_to: int = 1,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
    grad_dtype: torch.dtype = torch.float32,
) -> StructuredResult:
    """One-shot structured pruning in place (LLM-Pruner's block-wise strategy, uniform per layer).

    ``importance`` is a criterion name (l1, l2, taylor, random) or an :class:`Importance`; Taylor
    needs ``calibration`` token ids, whose LM-loss gradients it uses. Its backward passes (``batch_size``
    sequences each) run where the model is, in its dtype; only the pruned layers' projections take gradients,
    folded into per-channel scores as they arrive (:func:`~.calibration.taylor_pass`; where a variant needs the
    summed gradient itself, it is kept in ``grad_dtype``). Weights are sliced layer by layer where they lie: no
    second copy of the model is made.
    """
    criterion = make_importance(importance, taylor) if isinstance(importance, str) else importance
    adapter = adapter_for(model)
    before = adapter.layer_shapes(model)
    scores = grads = grad_sq = None
    if criterion.needs_gradients:
        if calibration is None:
            raise EmbodiedPruneError("taylor importance needs calibration data; pass --calibration (e.g. a text file).")
        from .calibration import accumulate_gradients, taylor_pass

        if isinstance(criterion, TaylorImportance):
            chosen = layer_indices(len(before), layers)
            names = [f"{adapter.layers}.{i}.{getattr(adapter, r)}.weight" for i in chosen for r in ROLES]
            scores = taylor_pass(
                model, calibration, names, criterion.variant, batch_size, grad_dtype, progress=progress
            )
        else:  # a criterion of the caller's own gets the full gradients
            grads, grad_sq = accumulate_gradients(model, calibration, batch_size, progress)
    plans = plan_structured(
        model,
        sparsity,
        criterion,
        attention,
        mlp,
        layers,
        grads,
        grad_sq,
        round_to=round_to,
        seed=seed,
        adapter=adapter,
        taylor=scores,
    )
    with torch.no_grad():
        after = apply_structured(model, plans, adapter)
    return StructuredResult(plans, before, after)
