"""Output fidelity of a compressed model against its dense original (open loop)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Fidelity:
    """Mean per-token KL(dense ‖ compressed) in nats, and top-1 next-token agreement."""

    kl: float
    top1_agreement: float


@torch.inference_mode()
def logit_fidelity(dense: nn.Module, other: nn.Module, input_ids: torch.Tensor, batch_size: int = 8) -> Fidelity:
    """KL divergence of ``other``'s next-token distribution from ``dense``'s, averaged over tokens."""
    kl_sum, agree, count = 0.0, 0, 0
    for i in range(0, input_ids.shape[0], batch_size):
        ids = input_ids[i : i + batch_size]
        p = F.log_softmax(dense(input_ids=ids.to(_device(dense))).logits.float(), -1)
        q = F.log_softmax(other(input_ids=ids.to(_device(other))).logits.float(), -1).to(p.device)
        kl_sum += float(F.kl_div(q, p, log_target=True, reduction="sum"))
        agree += int((p.argmax(-1) == q.argmax(-1)).sum())
        count += ids.numel()
    return Fidelity(kl=kl_sum / count, top1_agreement=agree / count)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def layer_output_error(weight: torch.Tensor, pruned: torch.Tensor, x: torch.Tensor) -> float:
    """Relative error ‖(W − W')xᵀ‖² / ‖Wxᵀ‖² of a linear layer on inputs ``x`` (``[n, d_in]``)."""
    x, weight, pruned = x.detach().float(), weight.detach().float(), pruned.detach().float()
    return float((x @ (weight - pruned).T).pow(2).sum() / (x @ weight.T).pow(2).sum())
