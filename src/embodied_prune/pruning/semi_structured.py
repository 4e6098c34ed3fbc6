"""2:4 weights in PyTorch's semi-structured sparse format, multiplied by its sparse GPU kernels.

On a CUDA GPU of compute capability 8.0 or newer, torch stores a weight with at most two non-zeros in every
four consecutive inputs as a ``SparseSemiStructuredTensor`` (values + metadata, about half the bytes) and runs
``nn.Linear`` through CUTLASS or cuSPARSELt sparse tensor-core kernels. PyTorch owns the format and the kernels;
this module only finds the linear layers whose weights *are* 2:4 along the input dimension (as
:func:`~embodied_prune.pruning.unstructured.prune_unstructured` with ``pattern="2:4"`` leaves them), checks
what the kernels accept (dtype, shape multiples), converts them in place, and says why when it cannot. A
GLUESTICK layer keeps its factors dense beside its converted base weight.

On the CPU there are no such kernels: :func:`semi_structured_unsupported` gives the reason, and 2:4 weights
stay dense (they cost what dense weights cost).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import EmbodiedPruneError


def is_two_four(weight: torch.Tensor) -> bool:
    """Whether every group of four consecutive inputs of every output row holds at most two non-zeros."""
    if weight.dim() != 2 or weight.shape[1] % 4:
        return False
    groups = (weight.detach() != 0).reshape(weight.shape[0], -1, 4)
    return bool((groups.sum(-1) <= 2).all())


def _sparse_class():
    """The SparseSemiStructuredTensor subclass ``to_sparse_semi_structured`` would build (CUTLASS or cuSPARSELt)."""
    from torch.sparse import semi_structured as ss

    if ss.SparseSemiStructuredTensor._FORCE_CUTLASS:
        return ss.SparseSemiStructuredTensorCUTLASS
    return ss.SparseSemiStructuredTensorCUSPARSELT


def shape_dtype_problem(weight: torch.Tensor) -> str | None:
    """Why the sparse kernels would refuse ``weight`` (dtype, or a dimension not a multiple of their tile), or None."""
    constraints = _sparse_class()._DTYPE_SHAPE_CONSTRAINTS
    limits = constraints.get(weight.dtype)
    if limits is None:
        return f"dtype {weight.dtype} (the kernels take {', '.join(map(str, constraints))})"
    rows, cols = weight.shape
    if rows % limits.sparse_min_rows or cols % limits.sparse_min_cols:
        return f"shape {tuple(weight.shape)} (needs multiples of {limits.sparse_min_rows} × {limits.sparse_min_cols})"
    return None


def semi_structured_unsupported(device: torch.device | str) -> str | None:
    """Why 2:4 sparse kernels cannot run on ``device`` (one sentence), or None when they can."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"2:4 sparse kernels need a CUDA GPU; {device.type} has none, so 2:4 weights stay dense there"
    if not torch.cuda.is_available():
        return "2:4 sparse kernels need a CUDA GPU, and torch sees none"
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        return f"2:4 sparse kernels need compute capability 8.0 or newer; this GPU has {major}.{minor}"
    return None


def two_four_layers(model: nn.Module) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` modules of ``model`` whose weight is 2:4 (GLUESTICK layers' bases included)."""
    return {name: m for name, m in model.named_modules() if type(m) is nn.Linear and is_two_four(m.weight)}


def to_semi_structured(model: nn.Module) -> dict[str, str]:
    """Convert every 2:4 linear weight of ``model`` (on a supported GPU, in a dtype the kernels take) to the
    semi-structured sparse format, in place. Returns ``{layer: reason}`` for the 2:4 layers left dense; raises
    when the device has no kernels or no layer is 2:4."""
    from torch.sparse import to_sparse_semi_structured

    device = next(model.parameters()).device
    reason = semi_structured_unsupported(device)
    if reason:
        raise EmbodiedPruneError(f"{reason}; run on an Ampere-or-newer GPU, or keep the dense 2:4 weights.")
    layers = two_four_layers(model)
    if not layers:
        raise EmbodiedPruneError("no linear layer of this model is 2:4; prune it with pattern '2:4' first.")
    skipped = {}
    for name, m in layers.items():
        problem = shape_dtype_problem(m.weight)
        if problem:
            skipped[name] = problem
            continue
        m.weight = nn.Parameter(to_sparse_semi_structured(m.weight.detach()), requires_grad=False)
    return skipped


__all__ = ["is_two_four", "semi_structured_unsupported", "shape_dtype_problem", "to_semi_structured", "two_four_layers"]
