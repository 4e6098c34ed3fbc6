"""Importance criteria for structured pruning, as pure functions of tensors.

A criterion scores *channels* of one weight matrix: rows (``dim=0``, output channels, e.g. the rows of
``q_proj``) or columns (``dim=1``, input channels, e.g. the columns of ``o_proj``). Coupled groups
(a head, an MLP channel) add up the scores of their member channels across matrices, as LLM-Pruner
does with its ``sum`` group reduction.

Taylor variants follow LLM-Pruner's definitions, with ``g`` the gradient of the calibration loss
summed over batches and ``G`` the sum of per-batch squared gradients (a diagonal Fisher estimate of
the Hessian)::

    vectorize     |Σ w·g|                      (first order, vector-wise)
    param_first   Σ |w·g|                      (first order, element-wise)
    param_second  Σ |w·G·w|                    (second order, element-wise)
    param_mix     Σ |w·g − ½·w·G·w|            (first + second order)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..choices import TAYLOR_VARIANTS
from ..errors import EmbodiedPruneError
from ..registry import Registry


def _reduce_dim(dim: int) -> int:
    if dim not in (0, 1):
        raise ValueError(f"dim must be 0 (rows) or 1 (columns), got {dim}")
    return 1 - dim


def l1_scores(weight: torch.Tensor, dim: int) -> torch.Tensor:
    """Σ|w| over each channel."""
    return weight.detach().float().abs().sum(_reduce_dim(dim))


def l2_scores(weight: torch.Tensor, dim: int) -> torch.Tensor:
    """Σw² over each channel (squared L2 norm, so group sums are sums of energies)."""
    return weight.detach().float().pow(2).sum(_reduce_dim(dim))


def taylor_scores(
    weight: torch.Tensor,
    dim: int,
    grad: torch.Tensor,
    grad_sq: torch.Tensor | None = None,
    variant: str = "param_first",
) -> torch.Tensor:
    """LLM-Pruner's Taylor importance of each channel (see the module docstring)."""
    w = weight.detach().float()
    g = grad.to(device=w.device, dtype=torch.float32)
    red = _reduce_dim(dim)
    if variant == "vectorize":
        return (w * g).sum(red).abs()
    if variant == "param_first":
        return (w * g).abs().sum(red)
    if variant in ("param_second", "param_mix"):
        if grad_sq is None:
            raise ValueError(f"taylor variant {variant!r} needs accumulated squared gradients")
        second = w * grad_sq.to(device=w.device, dtype=torch.float32) * w
        if variant == "param_second":
            return second.abs().sum(red)
        return (w * g - 0.5 * second).abs().sum(red)
    raise EmbodiedPruneError(f"unknown taylor variant {variant!r}; choose one of: {', '.join(TAYLOR_VARIANTS)}.")


class Importance:
    """A channel-scoring criterion: ``criterion(weight, dim, grad=, grad_sq=, generator=)`` → scores.

    ``needs_gradients`` tells the pruner to run calibration backward passes first.
    """

    needs_gradients = False

    def __call__(
        self,
        weight: torch.Tensor,
        dim: int,
        grad: torch.Tensor | None = None,
        grad_sq: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        raise NotImplementedError


class L1Importance(Importance):
    def __call__(self, weight, dim, grad=None, grad_sq=None, generator=None):
        return l1_scores(weight, dim)


class L2Importance(Importance):
    def __call__(self, weight, dim, grad=None, grad_sq=None, generator=None):
        return l2_scores(weight, dim)


class RandomImportance(Importance):
    """Uniform random scores (a baseline); reproducible through the pruner's seeded generator."""

    def __call__(self, weight, dim, grad=None, grad_sq=None, generator=None):
        return torch.rand(weight.shape[dim], generator=generator)


@dataclass(frozen=True)
class TaylorImportance(Importance):
    variant: str = "param_first"
    needs_gradients = True

    def __post_init__(self) -> None:
        if self.variant not in TAYLOR_VARIANTS:
            raise EmbodiedPruneError(
                f"unknown taylor variant {self.variant!r}; choose one of: {', '.join(TAYLOR_VARIANTS)}."
            )

    def __call__(self, weight, dim, grad=None, grad_sq=None, generator=None):
        if grad is None:
            raise EmbodiedPruneError("taylor importance needs gradients; pass calibration data to the pruner.")
        return taylor_scores(weight, dim, grad, grad_sq, self.variant)


CRITERIA: Registry[type[Importance]] = Registry("importance criterion")
CRITERIA.add("l1", L1Importance)
CRITERIA.add("l2", L2Importance)
CRITERIA.add("taylor", TaylorImportance)
CRITERIA.add("random", RandomImportance)


def make_importance(name: str, taylor: str = "param_first") -> Importance:
    """The criterion registered as ``name`` (l1, l2, taylor, random); ``taylor`` picks the Taylor variant."""
    cls = CRITERIA.get(name)
    return cls(variant=taylor) if cls is TaylorImportance else cls()


# --- Taylor scores accumulated batch by batch (bounded memory) ---------------------------------------------------

LINEAR_IN_BATCHES = ("vectorize", "param_second")


def taylor_batch_terms(weight: torch.Tensor, grad: torch.Tensor, variant: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel terms of one batch's gradient ``g_b`` for rows and for columns, ``(rows [d_out], cols [d_in])``.

    For ``vectorize`` (Σ w·g_b) and ``param_second`` (Σ w²·g_b², the diagonal-Fisher term of that batch) the terms
    of all batches add up to the variant's score (after an absolute value for vectorize), so they can be summed
    as the gradients arrive and the gradient itself dropped. ``param_first``'s Σ|w·g_b| equals its score only when
    the whole calibration set is one batch (the absolute value is taken of the summed gradient)."""
    w = weight.detach().float()
    wg = w * grad.to(device=w.device, dtype=torch.float32)
    if variant == "vectorize":
        t = wg
    elif variant == "param_second":
        t = wg * wg
    elif variant == "param_first":
        t = wg.abs()
    else:
        raise ValueError(f"taylor variant {variant!r} has no per-batch terms")
    return t.sum(1), t.sum(0)


class TaylorAccumulator:
    """Taylor importance of chosen weights, gathered while calibration gradients arrive one batch at a time.

    Instead of every weight's summed gradient and summed squared gradient (two float32 copies of the model, the
    memory that kept Taylor pruning of a 1.5 B model off a 24 GB machine), it keeps per-channel sums wherever the
    variant allows (:func:`taylor_batch_terms`: vectorize and param_second always, param_first when there is one
    batch). Otherwise (param_first over several batches, param_mix) it keeps the summed gradient, and for
    param_mix the summed squared gradient, in ``grad_dtype`` (float32, or bfloat16 at half the memory).
    ``add(name, weight, grad)`` takes one batch's gradient; ``scores(name, weight, dim)`` gives the channel scores
    exactly as :func:`taylor_scores` would from the full sums."""

    def __init__(self, variant: str, batches: int, grad_dtype: torch.dtype = torch.float32) -> None:
        if variant not in TAYLOR_VARIANTS:
            raise EmbodiedPruneError(
                f"unknown taylor variant {variant!r}; choose one of: {', '.join(TAYLOR_VARIANTS)}."
            )
        self.variant = variant
        self.streaming = variant in LINEAR_IN_BATCHES or (variant == "param_first" and batches == 1)
        self.grad_dtype = grad_dtype
        self.terms: dict[str, list[torch.Tensor]] = {}
        self.grad: dict[str, torch.Tensor] = {}
        self.grad_sq: dict[str, torch.Tensor] = {}

    def add(self, name: str, weight: torch.Tensor, grad: torch.Tensor) -> None:
        if self.streaming:
            rows, cols = taylor_batch_terms(weight, grad, self.variant)
            if name in self.terms:
                self.terms[name][0] += rows
                self.terms[name][1] += cols
            else:
                self.terms[name] = [rows, cols]
            return
        g = grad.detach()
        _add_into(self.grad, name, g, self.grad_dtype)
        if self.variant == "param_mix":
            g32 = g.float()
            _add_into(self.grad_sq, name, g32 * g32, self.grad_dtype)

    def scores(self, name: str, weight: torch.Tensor, dim: int) -> torch.Tensor:
        if name not in self.terms and name not in self.grad:
            raise EmbodiedPruneError(f"no calibration gradient reached {name}; check the calibration data.")
        if self.streaming:
            s = self.terms[name][dim]  # rows (dim 0) first, then columns (dim 1)
            return s.abs() if self.variant == "vectorize" else s
        return taylor_scores(weight, dim, self.grad[name], self.grad_sq.get(name), self.variant)

    def nbytes(self) -> int:
        """Bytes held (the accumulator's whole memory cost)."""
        kept = [t for pair in self.terms.values() for t in pair] + [*self.grad.values(), *self.grad_sq.values()]
        return sum(t.numel() * t.element_size() for t in kept)


def _add_into(store: dict[str, torch.Tensor], name: str, value: torch.Tensor, dtype: torch.dtype) -> None:
    if name in store:
        store[name].add_(value.to(dtype))
    else:
        store[name] = value.to(dtype=dtype, copy=True)
