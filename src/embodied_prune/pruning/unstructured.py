"""One-shot unstructured and N:M pruning of the decoder's linear layers (magnitude, Wanda, SparseGPT).

The maths is in :mod:`embodied_prune.pruning.masks`; this module decides where and when: it walks
the decoder layer by layer over the calibration set (:class:`LayerwiseRunner`), collects each linear
layer's input statistics with forward hooks, prunes the layer, and feeds the pruned layer's outputs
to the next one, as Wanda and SparseGPT do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import EmbodiedPruneError
from ..models.adapters import ROLES, DecoderAdapter, adapter_for
from ..models.devices import module_device, on_device
from ..registry import Registry
from .calibration import LayerwiseRunner
from .masks import check_sparsity, magnitude_scores, select_mask, sparsegpt_prune, wanda_scores


class InputStats:
    """Running statistics of one linear layer's inputs: Σx² per channel (float64), and XᵀX when asked (float32,
    as SparseGPT's and llm-compressor's own implementations accumulate it: float64 would double the cost of the
    largest product of the whole method, ``d_in² · tokens`` per layer, for no change in the masks)."""

    def __init__(self, d_in: int, hessian: bool, device: torch.device | str | None = None) -> None:
        self.sq_sum = torch.zeros(d_in, dtype=torch.float64, device=device)
        self.xtx = torch.zeros(d_in, d_in, dtype=torch.float32, device=device) if hessian else None
        self.rows = 0

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1])
        self.sq_sum += x.double().pow(2).sum(0)
        if self.xtx is not None:
            xf = x.float()
            self.xtx.addmm_(xf.T, xf)
        self.rows += x.shape[0]

    @property
    def sq_mean(self) -> torch.Tensor:
        return (self.sq_sum / max(self.rows, 1)).float()

    @property
    def hessian(self) -> torch.Tensor:
        return self.xtx / max(self.rows, 1)


class UnstructuredMethod:
    """How one linear layer is pruned, given its input statistics."""

    needs_calibration = True
    needs_hessian = False

    def prune(self, weight: torch.Tensor, stats: InputStats | None, sparsity: float, pattern) -> torch.Tensor:
        """Return the pruned weight (same shape, zeros where removed)."""
        raise NotImplementedError


class Magnitude(UnstructuredMethod):
    needs_calibration = False

    def prune(self, weight, stats, sparsity, pattern):
        mask = select_mask(magnitude_scores(weight), sparsity, pattern, rowwise=False)
        return weight * mask


class Wanda(UnstructuredMethod):
    def prune(self, weight, stats, sparsity, pattern):
        mask = select_mask(wanda_scores(weight, stats.sq_mean), sparsity, pattern, rowwise=True)
        return weight * mask


@dataclass
class SparseGPT(UnstructuredMethod):
    block_size: int = 128
    damp: float = 0.01
    needs_hessian = True

    def prune(self, weight, stats, sparsity, pattern):
        return sparsegpt_prune(weight, stats.hessian, sparsity, pattern, self.block_size, self.damp)


METHODS: Registry[type[UnstructuredMethod]] = Registry("unstructured pruning method")
METHODS.add("magnitude", Magnitude)
METHODS.add("wanda", Wanda)
METHODS.add("sparsegpt", SparseGPT)


@dataclass
class UnstructuredResult:
    """What was pruned: per-layer sparsity actually reached, keyed by qualified module name."""

    method: str
    sparsity: float
    pattern: tuple[int, int] | None
    layer_sparsity: dict[str, float] = field(default_factory=dict)


def layer_indices(n_layers: int, layers: tuple[int, int] | None) -> range:
    """Decoder layers to prune: ``layers=(start, end)`` (end exclusive) or all of them."""
    if layers is None:
        return range(n_layers)
    start, end = layers
    if not 0 <= start < end <= n_layers:
        raise EmbodiedPruneError(
            f"layer range {start}:{end} is not inside the model's {n_layers} layers; "
            f"use START:END with 0 <= START < END <= {n_layers}."
        )
    return range(start, end)


@torch.no_grad()
def prune_unstructured(
    model: nn.Module,
    method: str,
    sparsity: float,
    pattern: tuple[int, int] | None = None,
    calibration: torch.Tensor | None = None,
    layers: tuple[int, int] | None = None,
    roles: tuple[str, ...] = ROLES,
    adapter: DecoderAdapter | None = None,
    batch_size: int = 8,
    progress: bool = True,
    device: torch.device | str | None = None,
) -> UnstructuredResult:
    """Prune the decoder's linear layers in place to ``sparsity`` (or the N:M ``pattern``).

    ``calibration`` (token ids ``[n, seq]``) is required by Wanda and SparseGPT. ``roles`` picks
    which projections (q_proj ... down_proj) are pruned; ``lm_head`` and embeddings never are. Each decoder
    layer is processed on ``device`` (default: where the layers are) in float32, one layer at a time, and put back
    where and in the dtype it was (see :class:`LayerwiseRunner`).
    """
    impl = METHODS.get(method)()
    sparsity = 1 - pattern[0] / pattern[1] if pattern is not None else check_sparsity(sparsity)
    adapter = adapter or adapter_for(model)
    decoder = adapter.get_layers(model)
    device = torch.device(device) if device is not None else module_device(decoder[0])
    chosen = set(layer_indices(len(decoder), layers))
    result = UnstructuredResult(method, sparsity, pattern)

    def prune_layer(index: int, layer: nn.Module, stats: dict[str, InputStats] | None) -> None:
        if index not in chosen:
            return
        for role in roles:
            linear = adapter.linear(layer, role)
            new = impl.prune(linear.weight.data, stats[role] if stats else None, sparsity, pattern)
            linear.weight.data.copy_(new)
            name = f"{adapter.layers}.{index}.{getattr(adapter, role)}"
            result.layer_sparsity[name] = float((new == 0).sum()) / new.numel()

    if not impl.needs_calibration:
        for i in tqdm(range(len(decoder)), desc="layers", disable=not progress, leave=False):
            if i in chosen:
                with on_device(decoder[i], device, torch.float32) as layer:
                    prune_layer(i, layer, None)
        return result
    if calibration is None:
        raise EmbodiedPruneError(f"{method} needs calibration data; pass --calibration (e.g. 'random' or a text file).")

    def visit(index: int, layer: nn.Module, forward) -> None:
        if index not in chosen:
            return
        stats, handles = {}, []
        for group in adapter.shared_inputs:  # q/k/v read one input, gate/up another: one set of statistics each
            members = [r for r in group if r in roles]
            if not members:
                continue
            first = adapter.linear(layer, members[0])
            shared = InputStats(first.in_features, impl.needs_hessian, first.weight.device)
            stats |= dict.fromkeys(members, shared)
            handles.append(first.register_forward_hook(lambda _m, inp, _out, s=shared: s.update(inp[0])))
        try:
            forward()
        finally:
            for h in handles:
                h.remove()
        prune_layer(index, layer, stats)

    LayerwiseRunner(model, adapter, calibration, batch_size, device=device).run(visit, progress=progress)
    return result
