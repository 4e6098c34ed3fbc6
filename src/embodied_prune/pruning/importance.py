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
    return weight.detach().abs().sum(_reduce_dim(dim))


def l2_scores(weight: torch.Tensor, dim: int) -> torch.Tensor:
    """Σw² over each channel (squared L2 norm, so group sums are sums of energies)."""
    return weight.detach().pow(2).sum(_reduce_dim(dim))


def taylor_scores(
    weight: torch.Tensor,
    dim: int,
    grad: torch.Tensor,
    grad_sq: torch.Tensor | None = None,
    variant: str = "param_first",
) -> torch.Tensor:
    """LLM-Pruner's Taylor importance of each channel (see the module docstring)."""
    w = weight.detach().float()
    g = grad.float()
    red = _reduce_dim(dim)
    if variant == "vectorize":
        return (w * g).sum(red).abs()
    if variant == "param_first":
        return (w * g).abs().sum(red)
    if variant in ("param_second", "param_mix"):
        if grad_sq is None:
            raise ValueError(f"taylor variant {variant!r} needs accumulated squared gradients")
        second = w * grad_sq.float() * w
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
