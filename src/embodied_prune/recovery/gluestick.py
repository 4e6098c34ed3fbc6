"""GLUESTICK: training-free recovery of pruned linear layers by a low-rank correction.

For each pruned linear layer, the gap ``ΔW = W_dense − W_pruned`` (``[d_out, d_in]``) is replaced by
its best rank-r approximation ``ΔW ≈ (U_r Σ_r) V_rᵀ``; inference computes

    y = W_pruned·x + (xᵀ V_r)(Σ_r U_rᵀ)      — i.e. ``base(x) + (x @ V) @ U``

with ``V = V_r`` (``[d_in, r]``) and ``U = Σ_r U_rᵀ`` (``[r, d_out]``), r·(d_in + d_out) extra
parameters per layer. One hyperparameter, r; no training; any pruning method that keeps the layer
shapes (unstructured or N:M). Factors are saved beside the pruned checkpoint in
``gluestick.safetensors``: tensors ``<module name>.V`` and ``<module name>.U``, metadata
``{"format": "gluestick-1", "method": "exact"|"randomized"}``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import EmbodiedPruneError

FACTORS_FILE = "gluestick.safetensors"
SVD_METHODS = ("exact", "randomized")


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
    gap = w_dense.detach().float() - w_pruned.detach().float()
    r = min(rank, *gap.shape)
    if method == "exact":
        u, s, vh = torch.linalg.svd(gap, full_matrices=False)
        v = vh.mT
    elif method == "randomized":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            u, s, v = torch.svd_lowrank(gap, q=min(r + oversample, *gap.shape), niter=niter)
    else:
        raise EmbodiedPruneError(f"unknown SVD method {method!r}; choose one of: {', '.join(SVD_METHODS)}.")
    return v[:, :r].contiguous(), (s[:r, None] * u[:, :r].mT).contiguous()


class GluestickLinear(nn.Module):
    """``base(x) + (x @ V) @ U``: a pruned linear layer with its low-rank correction beside it."""

    def __init__(self, base: nn.Linear, v: torch.Tensor, u: torch.Tensor) -> None:
        super().__init__()
        if v.shape[0] != base.in_features or u.shape[1] != base.out_features or v.shape[1] != u.shape[0]:
            raise EmbodiedPruneError(
                f"GLUESTICK factors V {tuple(v.shape)} and U {tuple(u.shape)} do not fit a linear layer "
                f"{base.in_features}→{base.out_features}; recompute them for this model."
            )
        self.base = base
        self.V = nn.Parameter(v.to(base.weight.dtype), requires_grad=False)
        self.U = nn.Parameter(u.to(base.weight.dtype), requires_grad=False)

    @property
    def rank(self) -> int:
        return self.V.shape[1]

    @property
    def weight(self) -> torch.Tensor:  # for code that inspects .weight (e.g. dtype/device probes)
        return self.base.weight

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def extra_parameters(self) -> int:
        return self.V.numel() + self.U.numel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.V) @ self.U


@dataclass
class LayerFactors:
    """One layer's correction: its module name, shape and factors."""

    name: str
    d_in: int
    d_out: int
    v: torch.Tensor
    u: torch.Tensor

    @property
    def rank(self) -> int:
        return self.v.shape[1]

    @property
    def extra_parameters(self) -> int:
        return self.rank * (self.d_in + self.d_out)


@dataclass
class GluestickReport:
    """Per-layer ranks and extra parameters, and the total overhead."""

    method: str
    requested_rank: int
    layers: list[LayerFactors] = field(default_factory=list)
    base_parameters: int = 0  # parameters of the corrected linear layers

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


def compute_factors(
    dense: nn.Module,
    pruned: nn.Module,
    rank: int,
    method: str = "exact",
    include: list[str] | None = None,
    exclude: tuple[str, ...] | list[str] = ("lm_head",),
    seed: int = 0,
) -> GluestickReport:
    """Factors for every pruned linear layer of ``pruned`` (a layer whose weight differs from the dense one).

    ``include``/``exclude`` are module-name patterns (glob, or a last-name component such as
    ``lm_head`` or ``down_proj``). The two models must have the same linear layers with the same
    shapes; otherwise the error names the first mismatch.
    """
    dense_l, pruned_l = _linears(dense), _linears(pruned)
    if dense_l.keys() != pruned_l.keys():
        only = sorted(dense_l.keys() ^ pruned_l.keys())
        raise EmbodiedPruneError(
            f"dense and pruned models do not match layer for layer (e.g. {only[0]} is in only one of them); "
            "pass the dense model the pruned one was made from."
        )
    report = GluestickReport(method=method, requested_rank=rank)
    for name, lin in pruned_l.items():
        dw = dense_l[name].weight
        if dw.shape != lin.weight.shape:
            raise EmbodiedPruneError(
                f"dense and pruned models do not match at {name}: {tuple(dw.shape)} vs {tuple(lin.weight.shape)}; "
                "GLUESTICK needs a pruned model with the dense model's shapes (unstructured or N:M pruning), "
                "made from this dense model."
            )
        if not _selected(name, include, list(exclude)) or torch.equal(dw, lin.weight):
            continue
        v, u = gap_factors(dw, lin.weight, rank, method, seed=seed)
        report.layers.append(LayerFactors(name, lin.in_features, lin.out_features, v, u))
        report.base_parameters += lin.weight.numel()
    if not report.layers:
        raise EmbodiedPruneError(
            "no linear layer of the pruned model differs from the dense model among the selected ones; "
            "check that --pruned is really a pruned copy of --dense and the include/exclude patterns."
        )
    return report


def attach_factors(model: nn.Module, factors: list[LayerFactors]) -> nn.Module:
    """Wrap each named linear layer of ``model`` in a :class:`GluestickLinear` (in place)."""
    for f in factors:
        parent_name, _, child = f.name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        base = getattr(parent, child)
        if isinstance(base, GluestickLinear):
            base = base.base
        if not isinstance(base, nn.Linear):
            raise EmbodiedPruneError(
                f"{f.name} is not a linear layer in this model; the factors belong to another model."
            )
        setattr(parent, child, GluestickLinear(base, f.v.to(base.weight.device), f.u.to(base.weight.device)))
    return model


def save_factors(factors: list[LayerFactors], folder: str | os.PathLike, method: str = "exact") -> Path:
    """Write ``gluestick.safetensors`` into ``folder``."""
    tensors = {}
    for f in factors:
        tensors[f"{f.name}.V"] = f.v.contiguous()
        tensors[f"{f.name}.U"] = f.u.contiguous()
    path = Path(folder) / FACTORS_FILE
    save_file(
        tensors,
        str(path),
        metadata={"format": "gluestick-1", "method": method, "layers": json.dumps([f.name for f in factors])},
    )
    return path


def read_factors(folder: str | os.PathLike) -> list[LayerFactors]:
    """Read ``gluestick.safetensors`` from ``folder``."""
    path = Path(folder) / FACTORS_FILE
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise EmbodiedPruneError(
            f"could not read GLUESTICK factors {path} ({e}); re-run `embodied-prune recover`."
        ) from e
    names = sorted({k.rsplit(".", 1)[0] for k in tensors})
    out = []
    for n in names:
        if f"{n}.V" not in tensors or f"{n}.U" not in tensors:
            raise EmbodiedPruneError(f"{path} holds only one factor of {n}; re-run `embodied-prune recover`.")
        v, u = tensors[f"{n}.V"], tensors[f"{n}.U"]
        out.append(LayerFactors(n, v.shape[0], u.shape[1], v, u))
    return out


def load_factors(model: nn.Module, folder: str | os.PathLike) -> nn.Module:
    """Attach the factors saved in ``folder`` to ``model``."""
    return attach_factors(model, read_factors(folder))


def gluestick_layers(model: nn.Module) -> dict[str, GluestickLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, GluestickLinear)}
