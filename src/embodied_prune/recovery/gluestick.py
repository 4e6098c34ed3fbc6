"""GLUESTICK: training-free recovery of pruned linear layers by a low-rank correction.

For each pruned linear layer, the gap ``ΔW = W_dense − W_pruned`` (``[d_out, d_in]``) is replaced by
its best rank-r approximation ``ΔW ≈ (U_r Σ_r) V_rᵀ``; inference computes

    y = W_pruned·x + (xᵀ V_r)(Σ_r U_rᵀ)      — i.e. ``base(x) + (x @ V) @ U``

with ``V = V_r`` (``[d_in, r]``) and ``U = Σ_r U_rᵀ`` (``[r, d_out]``), r·(d_in + d_out) extra
parameters per layer. One hyperparameter, r; no training; any pruning method that keeps the layer
shapes (unstructured or N:M). Instead of one global r, :func:`allocate_ranks` spends a budget of extra
parameters layer by layer where each rank buys the most per parameter — measured either on the weights
(``"energy"``: the gap's σ², no data) or, given calibration inputs, on the layer's output (``"output"``:
the share of the layer's dense output energy the rank restores, :func:`output_gains`). Weight energy
favours the layers with the largest weights: on the shipped VLA it starved every value projection
(ranks 0–2) and recovered less than one global rank at the same parameters; the output share does not
depend on a layer's scale (measured in BENCHMARKS.md, GLUESTICK on the VLA).

The corrected layer (:class:`~embodied_prune.models.lowrank.GluestickLinear`) and the factor file live in
:mod:`embodied_prune.models.lowrank`, so that loading a recovered checkpoint needs nothing of this module.
Factors are saved beside the pruned checkpoint in ``gluestick.safetensors``: tensors
``<module name>.V`` and ``<module name>.U`` (float32, bfloat16, float16, or int8 with scalar
``<module name>.V_scale`` / ``.U_scale``: symmetric per-tensor quantisation, value = int8 × scale;
each entry is within half a step of its float value, and on random 2:4 layers with heavy-tailed inputs
the layer output moves by less than 2 % of the dense output's norm — tested),
metadata ``{"format": "gluestick-1", "method": "exact"|"randomized"}``.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatch

import torch
from torch import nn
from tqdm.auto import tqdm

from ..choices import SVD_METHODS
from ..errors import EmbodiedPruneError
from ..models.checkpoint import CheckpointWeights
from ..models.lowrank import (
    FACTOR_DTYPES,
    LayerFactors,
)

ALLOCATIONS = ("energy", "output")


def allocate_ranks(
    spectra: list[torch.Tensor], costs: list[int], budget: int, gains: list[torch.Tensor] | None = None
) -> list[int]:
    """Per-layer ranks that spend at most ``budget`` extra parameters where they buy the most.

    ``spectra[i]`` are layer i's singular values (descending) and ``costs[i]`` its parameters per rank
    (d_in + d_out). What rank j of layer i buys is ``gains[i][j]`` when given (e.g. :func:`output_gains`),
    else the gap energy it captures, σ_j². Greedy by gain per parameter, one rank at a time in each layer's
    order — with gains falling with rank, as σ² do, this is the water-filling answer up to one rank step.
    Stops when no layer's next rank fits: the parameters left are then fewer than the cheapest next step.
    """
    gains = [s.double() ** 2 for s in spectra] if gains is None else [g.double() for g in gains]
    ranks = [0] * len(spectra)
    heap = [(-float(g[0]) / c, i) for i, (g, c) in enumerate(zip(gains, costs, strict=True)) if len(g)]
    heapq.heapify(heap)
    left = budget
    while heap:
        _, i = heapq.heappop(heap)
        if costs[i] > left:
            continue  # this layer's next rank does not fit; cheaper layers may still grow
        ranks[i] += 1
        left -= costs[i]
        if ranks[i] < len(gains[i]):
            heapq.heappush(heap, (-float(gains[i][ranks[i]]) / costs[i], i))
    return ranks


def output_gains(s: torch.Tensor, projected: torch.Tensor, output_energy: float) -> torch.Tensor:
    """What each rank of a layer's correction restores of its output, as a share of the dense output.

    ``s`` are the gap's singular values, ``projected[j]`` the calibration inputs' summed squares along
    right singular vector j (Σ (v_jᵀx)²) and ``output_energy`` the dense layer's summed squared outputs
    (Σ ‖W x‖²) over the same inputs. Rank j puts back σ_j u_j (v_jᵀx) of the output: σ_j² Σ (v_jᵀx)²
    of squared error (cross terms between directions ignored), divided by the output energy so that
    layers of any scale compete on equal terms."""
    return s.double() ** 2 * projected.double() / max(float(output_energy), 1e-30)


def output_statistics(
    model: nn.Module, directions: dict[str, torch.Tensor], feed: Callable[[nn.Module], None]
) -> dict[str, tuple[torch.Tensor, float]]:
    """For each linear layer named in ``directions`` (``[d_in, k]`` right singular vectors of its gap), the
    summed squares of its inputs along each direction and of its outputs, while ``feed(model)`` runs the
    calibration inputs through ``model`` (the dense one): ``{name: (projected (k,), output_energy)}``."""
    stats: dict[str, list] = {
        name: [torch.zeros(v.shape[1], dtype=torch.float64), 0.0] for name, v in directions.items()
    }
    modules = dict(model.named_modules())

    def hook(name: str):
        def record(_module, args, out) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            stats[name][0] += (x @ directions[name].to(x.device)).double().pow(2).sum(0).cpu()
            stats[name][1] += float(out.detach().float().pow(2).sum())

        return record

    handles = [modules[name].register_forward_hook(hook(name)) for name in directions]
    try:
        with torch.no_grad():
            feed(model)
    finally:
        for h in handles:
            h.remove()
    if any(e == 0.0 for _, e in stats.values()):
        raise EmbodiedPruneError(
            "the calibration inputs never reached some corrected layers (or all their outputs were zero); "
            "check that the calibration data fit the model."
        )
    return {name: (p, e) for name, (p, e) in stats.items()}


def gap_factors(
    w_dense: torch.Tensor,
    w_pruned: torch.Tensor,
    rank: int,
    method: str = "exact",
    oversample: int = 8,
    niter: int = 4,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-``rank`` factors ``(V [d_in, r], U [r, d_out])`` of ``w_dense − w_pruned`` (truncated SVD).

    ``method="exact"`` uses a full SVD; ``"randomized"`` uses ``torch.svd_lowrank`` (Halko et al.)
    with ``oversample`` extra directions and ``niter`` power iterations, seeded for reproducibility.
    ``rank`` is clipped to ``min(d_out, d_in)``.
    """
    if w_dense.shape != w_pruned.shape:
        raise EmbodiedPruneError(
            f"dense weight {tuple(w_dense.shape)} and pruned weight {tuple(w_pruned.shape)} differ in shape."
        )
    if rank < 1:
        raise EmbodiedPruneError(f"GLUESTICK rank must be at least 1, got {rank}.")
    return _factors_of_gap(w_dense.detach().float() - w_pruned.detach().float(), rank, method, oversample, niter, seed)


def _factors_of_gap(
    gap: torch.Tensor, rank: int, method: str, oversample: int = 8, niter: int = 4, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`gap_factors` of an already computed float32 gap ``W_dense − W_pruned``."""
    r = min(rank, *gap.shape)
    if method == "exact":
        u, s, vh = torch.linalg.svd(gap, full_matrices=False)
        v = vh.mT
    elif method == "randomized":
        with torch.random.fork_rng(devices=[gap.device] if gap.is_cuda else []):
            torch.manual_seed(seed)
            u, s, v = torch.svd_lowrank(gap, q=min(r + oversample, *gap.shape), niter=niter)
    else:
        raise EmbodiedPruneError(f"unknown SVD method {method!r}; choose one of: {', '.join(SVD_METHODS)}.")
    return truncated_factors(u, s, v, r)


def truncated_factors(u: torch.Tensor, s: torch.Tensor, v: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(V [d_in, r], U [r, d_out])`` of the SVD ``u · diag(s) · vᵀ`` cut to rank ``r`` (Σ folded into U)."""
    return v[:, :r].contiguous(), (s[:r, None] * u[:, :r].mT).contiguous()


@dataclass
class GluestickReport:
    """Per-layer ranks and extra parameters, and the total overhead."""

    method: str
    requested_rank: int | None
    layers: list[LayerFactors] = field(default_factory=list)
    base_parameters: int = 0  # parameters of the corrected linear layers
    budget: float | None = None  # extra parameters allowed, as a fraction of base_parameters
    energy: float | None = None  # captured fraction of the gaps' total squared Frobenius norm
    allocation: str | None = None  # how a budget was spent: "energy" or "output" (None: one global rank)

    @property
    def extra_parameters(self) -> int:
        return sum(f.extra_parameters for f in self.layers)

    @property
    def overhead(self) -> float:
        """Extra parameters as a fraction of the corrected layers' parameters."""
        return self.extra_parameters / max(self.base_parameters, 1)

    def summary(self) -> dict:
        return {
            "method": self.method,
            "rank": self.requested_rank,
            "budget": self.budget,
            "allocation": self.allocation,
            "energy": self.energy,
            "layers": len(self.layers),
            "extra_parameters": self.extra_parameters,
            "overhead": self.overhead,
            "per_layer": [
                {
                    "name": f.name,
                    "rank": f.rank,
                    "d_in": f.d_in,
                    "d_out": f.d_out,
                    "extra_parameters": f.extra_parameters,
                }
                for f in self.layers
            ],
        }


def _linears(model: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def _selected(name: str, include: list[str] | None, exclude: list[str]) -> bool:
    if include and not any(fnmatch(name, p) or name.endswith(p) for p in include):
        return False
    return not any(fnmatch(name, p) or name.split(".")[-1] == p for p in exclude)


class _DenseSource:
    """The dense weights, from a model in memory or read one tensor at a time from its checkpoint
    (:class:`~embodied_prune.models.checkpoint.CheckpointWeights`)."""

    def __init__(self, dense: nn.Module | CheckpointWeights) -> None:
        self.module = dense if isinstance(dense, nn.Module) else None
        self.file = dense if isinstance(dense, CheckpointWeights) else None
        self.linears = _linears(dense) if self.module is not None else None

    def check_names(self, pruned: dict[str, nn.Linear]) -> None:
        if self.linears is not None and self.linears.keys() != pruned.keys():
            only = sorted(self.linears.keys() ^ pruned.keys())
            raise EmbodiedPruneError(
                f"dense and pruned models do not match layer for layer (e.g. {only[0]} is in only one of them); "
                "pass the dense model the pruned one was made from."
            )

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.linears[name].weight.shape) if self.linears is not None else self.file.shape(name)

    def has(self, name: str) -> bool:
        return name in self.linears if self.linears is not None else name in self.file

    def weight(self, name: str) -> torch.Tensor:
        return self.linears[name].weight.detach() if self.linears is not None else self.file[name]


def compute_factors(
    dense: nn.Module | CheckpointWeights,
    pruned: nn.Module,
    rank: int | None = None,
    method: str = "exact",
    include: list[str] | None = None,
    exclude: tuple[str, ...] | list[str] = ("lm_head",),
    seed: int = 0,
    budget: float | None = None,
    dtype: str = "float32",
    feed: Callable[[nn.Module], None] | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> GluestickReport:
    """Factors for every pruned linear layer of ``pruned`` (a layer whose weight differs from the dense one).

    Either one ``rank`` for every layer, or a ``budget`` of extra parameters as a fraction of the
    corrected layers' parameters, spent per layer by :func:`allocate_ranks` (needs the exact SVD; a
    layer may get rank 0 and no factors): by each rank's share of its layer's dense output when
    ``feed`` is given (a function running calibration inputs through a model; see :func:`output_gains`),
    else by the gap energy σ² it captures. ``dtype`` stores the factors in float32, bfloat16, float16
    or int8. ``include``/``exclude`` are module-name patterns (glob, or a last-name component such as
    ``lm_head`` or ``down_proj``). The two models must have the same linear layers with the same
    shapes; otherwise the error names the first mismatch.

    ``dense`` is a model in memory or, to keep one model's memory, its checkpoint's weights read layer by layer
    (:class:`~embodied_prune.models.checkpoint.CheckpointWeights`; not with ``feed``, which runs the dense model).
    Each gap is formed and decomposed on ``device`` (default: the pruned layer's) in float32, one layer at a time;
    with one ``rank`` only the factors are kept, so memory is bounded by one layer. The factors live on the CPU.
    """
    if (rank is None) == (budget is None):
        raise EmbodiedPruneError("give GLUESTICK either a rank (--rank) or a budget of extra parameters (--budget).")
    if budget is not None and not budget > 0:
        raise EmbodiedPruneError(f"--budget is a fraction of the corrected layers' parameters (> 0), got {budget}.")
    if budget is not None and method != "exact":
        raise EmbodiedPruneError("per-layer ranks need each gap's full spectrum: use --svd exact with --budget.")
    if feed is not None and budget is None:
        raise EmbodiedPruneError(
            "calibration data steer how --budget spreads ranks over the layers; with one --rank for every layer "
            "they are not used: drop --calibration or give --budget."
        )
    if feed is not None and not isinstance(dense, nn.Module):
        raise EmbodiedPruneError("a budget spent by calibration outputs needs the dense model itself, not its weights.")
    if dtype not in FACTOR_DTYPES:
        raise EmbodiedPruneError(f"unknown factor dtype {dtype!r}; choose one of: {', '.join(FACTOR_DTYPES)}.")
    if rank is not None and rank < 1:
        raise EmbodiedPruneError(f"GLUESTICK rank must be at least 1, got {rank}.")
    source, pruned_l = _DenseSource(dense), _linears(pruned)
    source.check_names(pruned_l)
    report = GluestickReport(method=method, requested_rank=rank, budget=budget)
    selected = [(n, lin) for n, lin in pruned_l.items() if _selected(n, include, list(exclude))]
    selected_names = {n for n, _ in selected}
    for name, lin in pruned_l.items():
        if source.linears is None and not source.has(name):
            if name in selected_names:
                raise EmbodiedPruneError(
                    f"the dense checkpoint has no weight for {name}; pass the dense model the pruned one was made from."
                )
            continue
        if source.shape(name) != tuple(lin.weight.shape):
            raise EmbodiedPruneError(
                f"dense and pruned models do not match at {name}: {source.shape(name)} vs "
                f"{tuple(lin.weight.shape)}; GLUESTICK needs a pruned model with the dense model's shapes "
                "(unstructured or N:M pruning), made from this dense model."
            )

    def gap_of(name: str, lin: nn.Linear) -> torch.Tensor | None:
        """``W_dense − W_pruned`` in float32 on the computing device, or None where the layer was not pruned
        (compared in the pruned model's dtype, so a float32 dense model and its bf16 pruned copy agree)."""
        w = lin.weight.detach()
        dw = source.weight(name).to(device=w.device, dtype=w.dtype)
        if torch.equal(dw, w):
            return None
        where = torch.device(device) if device is not None else w.device
        return dw.to(where, torch.float32) - w.to(where, torch.float32)

    total_energy = captured = 0.0
    svds, chosen = [], []
    bar = tqdm(selected, desc="GLUESTICK factors", disable=not progress, leave=False)
    for name, lin in bar:
        gap = gap_of(name, lin)
        if gap is None:
            continue
        report.base_parameters += lin.weight.numel()
        chosen.append((name, lin))
        if budget is None:  # one rank: factor now, keep only the factors
            v, u = _factors_of_gap(gap, rank, method, seed=seed)
            report.layers.append(LayerFactors(name, lin.in_features, lin.out_features, v.cpu(), u.cpu()))
            total_energy += float(gap.pow(2).sum())
            captured += float(u.pow(2).sum())  # U = Σ_r U_rᵀ with orthonormal rows: ‖U‖² = Σ σ²
        else:
            svds.append(tuple(t.cpu() for t in torch.linalg.svd(gap, full_matrices=False)))
        del gap
    if not chosen:
        raise EmbodiedPruneError(
            "no linear layer of the pruned model differs from the dense model among the selected ones; "
            "check that --pruned is really a pruned copy of --dense and the include/exclude patterns."
        )
    if budget is not None:
        costs = [lin.in_features + lin.out_features for _, lin in chosen]
        allowed = int(budget * report.base_parameters)
        if allowed < min(costs):
            raise EmbodiedPruneError(
                f"--budget {budget:g} allows {allowed:,} extra parameters, less than the cheapest rank-1 correction "
                f"({min(costs):,}); raise the budget."
            )
        gains = None
        report.allocation = "energy"
        if feed is not None:
            report.allocation = "output"
            directions = {name: vh.mT for (name, _), (_, _, vh) in zip(chosen, svds, strict=True)}
            stats = output_statistics(dense, directions, feed)
            gains = [output_gains(s, *stats[name]) for (name, _), (_, s, _) in zip(chosen, svds, strict=True)]
        ranks = allocate_ranks([s for _, s, _ in svds], costs, allowed, gains)
        for (name, lin), (u, s, vh), r in zip(chosen, svds, ranks, strict=True):
            total_energy += float(s.pow(2).sum())
            captured += float(s[:r].pow(2).sum())
            if r:
                v_r, u_r = truncated_factors(u, s, vh.mT, r)
                report.layers.append(LayerFactors(name, lin.in_features, lin.out_features, v_r, u_r))
    report.energy = captured / total_energy if total_energy > 0 else 1.0
    if dtype != "float32":
        report.layers = [f.cast(dtype) for f in report.layers]
    return report
