"""Unstructured and N:M sparsity, as pure functions of tensors.

Conventions: ``weight`` is ``[d_out, d_in]`` (``nn.Linear`` layout); a *mask* is a boolean tensor of
the same shape, True where a weight is **kept**. ``sparsity`` is the fraction removed. An ``N:M``
pattern keeps at most N non-zeros in every group of M consecutive inputs of a row (2:4 = 50 %).
"""

from __future__ import annotations

import math

import torch

from ..errors import EmbodiedPruneError


def parse_pattern(pattern: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"2:4"`` → ``(2, 4)``; None stays None. N must be in [1, M)."""
    if pattern is None:
        return None
    if isinstance(pattern, str):
        try:
            n, m = (int(p) for p in pattern.split(":"))
        except ValueError:
            raise EmbodiedPruneError(f"pattern {pattern!r} is not of the form N:M (e.g. 2:4).") from None
    else:
        n, m = pattern
    if not 0 < n < m:
        raise EmbodiedPruneError(
            f"N:M pattern {n}:{m} is invalid: N non-zeros are kept out of every M, "
            "so N must satisfy 1 <= N < M (e.g. 2:4)."
        )
    return n, m


def check_sparsity(sparsity: float) -> float:
    """Raise a clear error unless ``0 <= sparsity < 1``."""
    if not isinstance(sparsity, (int, float)) or math.isnan(sparsity) or not 0 <= sparsity < 1:
        raise EmbodiedPruneError(
            f"sparsity {sparsity!r} is outside [0, 1): it is the fraction of weights removed (0.5 = half)."
        )
    return float(sparsity)


def prune_count(numel: int, sparsity: float) -> int:
    """How many of ``numel`` weights a layer at ``sparsity`` removes (rounded to nearest)."""
    return round(numel * sparsity)


def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    """|W|."""
    return weight.detach().float().abs()


def wanda_scores(weight: torch.Tensor, input_sq_mean: torch.Tensor) -> torch.Tensor:
    """Wanda: |W| · sqrt(E[x²]) per input channel (Sun et al., 2023)."""
    return weight.detach().float().abs() * input_sq_mean.float().sqrt().unsqueeze(0)


def topk_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep the highest scores of the whole matrix; removes exactly ``prune_count(numel, sparsity)``."""
    return drop_lowest_mask(scores, prune_count(scores.numel(), sparsity))


def drop_lowest_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep everything but the ``k`` lowest scores of the whole matrix."""
    mask = torch.ones_like(scores, dtype=torch.bool)
    if k:
        idx = torch.topk(scores.flatten(), k, largest=False).indices
        mask.view(-1)[idx] = False
    return mask


def rowwise_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep the highest scores within each row (Wanda's per-output comparison group).

    Every row loses ``floor`` of its share; the remainder needed to remove exactly
    ``prune_count(numel, sparsity)`` weights goes to the rows whose next candidate scores lowest.
    """
    rows, _cols = scores.shape
    total = prune_count(scores.numel(), sparsity)
    base, extra = divmod(total, rows)
    order = torch.argsort(scores, dim=1)
    mask = torch.ones_like(scores, dtype=torch.bool)
    if base:
        mask.scatter_(1, order[:, :base], False)
    if extra:
        next_scores = scores.gather(1, order[:, base : base + 1]).squeeze(1)
        rows_extra = torch.topk(next_scores, extra, largest=False).indices
        mask[rows_extra, order[rows_extra, base]] = False
    return mask


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the N highest scores in every group of M consecutive inputs of each row."""
    rows, cols = scores.shape
    if cols % m:
        raise EmbodiedPruneError(
            f"a layer with {cols} inputs cannot take an N:M pattern with M={m}; choose M dividing {cols}."
        )
    groups = scores.reshape(rows, cols // m, m)
    keep = torch.topk(groups, n, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
    return mask.reshape(rows, cols)


def select_mask(scores: torch.Tensor, sparsity: float, pattern: tuple[int, int] | None, rowwise: bool) -> torch.Tensor:
    """The N:M mask when ``pattern`` is given, else a row-wise or whole-matrix top-k mask."""
    if pattern is not None:
        return nm_mask(scores, *pattern)
    return rowwise_mask(scores, sparsity) if rowwise else topk_mask(scores, sparsity)


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float = 0.5,
    pattern: tuple[int, int] | None = None,
    block_size: int = 128,
    damp: float = 0.01,
) -> torch.Tensor:
    """SparseGPT (Frantar & Alistarh, 2023): prune and update the remaining weights to compensate.

    ``hessian`` is ``X Xᵀ`` of the layer inputs (``[d_in, d_in]``, any positive scale). Columns are
    processed in blocks; inside a block the mask is chosen adaptively by ``w² / [H⁻¹]²_jj`` (over the
    whole block for unstructured sparsity, so each block's quota keeps the layer total exact; per M
    columns for N:M) and each pruned weight's error is spread over the not-yet-processed columns
    through the Cholesky factor of ``H⁻¹``. Returns the new weight (zeros where pruned).
    """
    w = weight.detach().float().clone()
    rows, cols = w.shape
    if pattern is not None and cols % pattern[1]:
        raise EmbodiedPruneError(
            f"a layer with {cols} inputs cannot take an N:M pattern with M={pattern[1]}; choose M dividing {cols}."
        )
    h = hessian.detach().to(device=w.device, dtype=torch.float32).clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * torch.mean(torch.diag(h)) * torch.eye(cols, dtype=h.dtype, device=h.device)
    hinv = _upper_cholesky_of_inverse(h)

    pruned = 0
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        count = i2 - i1
        w1 = w[:, i1:i2].clone()
        q1 = torch.zeros_like(w1)
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        d = torch.diag(hinv1)
        if pattern is None:
            # each block's quota keeps the running total on prune_count(rows·i2), so the layer is exact
            quota = prune_count(rows * i2, sparsity) - pruned
            prune1 = ~drop_lowest_mask(w1**2 / d.unsqueeze(0) ** 2, quota)
            pruned += quota
        else:
            prune1 = torch.zeros_like(w1, dtype=torch.bool)
        for i in range(count):
            col = w1[:, i]
            if pattern is not None and i % pattern[1] == 0:
                n, m = pattern
                scores = w1[:, i : i + m] ** 2 / d[i : i + m].unsqueeze(0) ** 2
                prune1[:, i : i + m] = ~nm_mask(scores, n, m)
            q = col.clone()
            q[prune1[:, i]] = 0.0
            q1[:, i] = q
            e = (col - q) / hinv1[i, i]
            w1[:, i:] -= e.unsqueeze(1) @ hinv1[i, i:].unsqueeze(0)
            err1[:, i] = e
        w[:, i1:i2] = q1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return w.to(weight.dtype)


def _upper_cholesky_of_inverse(h: torch.Tensor) -> torch.Tensor:
    """Upper Cholesky factor of H⁻¹; retries with more damping if H is numerically indefinite."""
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    extra = 0.0
    for _ in range(6):
        try:
            lower = torch.linalg.cholesky(h + extra * eye)
            hinv = torch.cholesky_inverse(lower)
            return torch.linalg.cholesky(hinv, upper=True)
        except torch.linalg.LinAlgError:
            extra = max(extra * 10, 1e-4 * float(torch.diag(h).mean()))
    raise EmbodiedPruneError(
        "the calibration Hessian is not positive definite even with damping; use more calibration samples."
    )
