"""Linear layers with a low-rank side branch, ``base(x) + (x @ V) @ U``, and their factor file.

What a GLUESTICK-recovered checkpoint needs at load time: the layer, attaching it to a model, and reading and
writing ``gluestick.safetensors`` (format in :mod:`embodied_prune.recovery.gluestick`, which computes the
factors). Kept in ``models`` so that loading a checkpoint imports nothing of how it was recovered.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import EmbodiedPruneError

FACTORS_FILE = "gluestick.safetensors"
FACTOR_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "int8": torch.int8}


def quantize_int8(t: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Symmetric per-tensor int8: ``(q, scale)`` with ``t ≈ q · scale`` and ``|t − q·scale| ≤ scale / 2``."""
    amax = float(t.detach().abs().max()) if t.numel() else 0.0
    scale = amax / 127.0 if amax > 0 else 1.0
    q = torch.clamp(torch.round(t.detach().float() / scale), -127, 127).to(torch.int8)
    return q, scale


class GluestickLinear(nn.Module):
    """``base(x) + (x @ V) @ U``: a pruned linear layer with its low-rank correction beside it."""

    def __init__(
        self,
        base: nn.Linear,
        v: torch.Tensor,
        u: torch.Tensor,
        v_scale: float | None = None,
        u_scale: float | None = None,
        keep_dtype: bool = False,
    ) -> None:
        super().__init__()
        if v.shape[0] != base.in_features or u.shape[1] != base.out_features or v.shape[1] != u.shape[0]:
            raise EmbodiedPruneError(
                f"GLUESTICK factors V {tuple(v.shape)} and U {tuple(u.shape)} do not fit a linear layer "
                f"{base.in_features}→{base.out_features}; recompute them for this model."
            )
        self.base = base
        self.quantized = v.dtype == torch.int8
        if self.quantized:  # int8 storage, dequantised on the fly (int8 buys memory here, not speed)
            if v_scale is None or u_scale is None:
                raise EmbodiedPruneError("int8 GLUESTICK factors need their scales; re-run `embodied-prune recover`.")
            self.register_buffer("V", v)
            self.register_buffer("U", u)
            self.v_scale, self.u_scale = float(v_scale), float(u_scale)
        else:
            dtype = v.dtype if keep_dtype else base.weight.dtype
            self.V = nn.Parameter(v.to(dtype), requires_grad=False)
            self.U = nn.Parameter(u.to(dtype), requires_grad=False)

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
        if self.quantized:
            v, u = self.V.to(x.dtype) * self.v_scale, self.U.to(x.dtype) * self.u_scale
            return self.base(x) + (x @ v) @ u
        if self.V.dtype != x.dtype:
            return self.base(x) + ((x.to(self.V.dtype) @ self.V) @ self.U).to(x.dtype)
        return self.base(x) + (x @ self.V) @ self.U


@dataclass
class LayerFactors:
    """One layer's correction: its module name, shape and factors."""

    name: str
    d_in: int
    d_out: int
    v: torch.Tensor
    u: torch.Tensor
    v_scale: float | None = None  # int8 factors only
    u_scale: float | None = None

    @property
    def rank(self) -> int:
        return self.v.shape[1]

    def cast(self, dtype: str) -> LayerFactors:
        """These factors stored as ``dtype`` (a key of ``FACTOR_DTYPES``; int8 quantises per tensor)."""
        if dtype not in FACTOR_DTYPES:
            raise EmbodiedPruneError(f"unknown factor dtype {dtype!r}; choose one of: {', '.join(FACTOR_DTYPES)}.")
        v, u = self.dequantized()
        if dtype == "int8":
            (qv, sv), (qu, su) = quantize_int8(v), quantize_int8(u)
            return LayerFactors(self.name, self.d_in, self.d_out, qv, qu, sv, su)
        return LayerFactors(self.name, self.d_in, self.d_out, v.to(FACTOR_DTYPES[dtype]), u.to(FACTOR_DTYPES[dtype]))

    def dequantized(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Float32 ``(V, U)``."""
        if self.v.dtype == torch.int8:
            return self.v.float() * self.v_scale, self.u.float() * self.u_scale
        return self.v.float(), self.u.float()

    @property
    def extra_parameters(self) -> int:
        return self.rank * (self.d_in + self.d_out)


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
        dev = base.weight.device
        keep = f.v.dtype != torch.float32  # bf16/fp16 factors stay in their dtype
        setattr(parent, child, GluestickLinear(base, f.v.to(dev), f.u.to(dev), f.v_scale, f.u_scale, keep))
    return model


def save_factors(factors: list[LayerFactors], folder: str | os.PathLike, method: str = "exact") -> Path:
    """Write ``gluestick.safetensors`` into ``folder``."""
    tensors = {}
    for f in factors:
        tensors[f"{f.name}.V"] = f.v.contiguous()
        tensors[f"{f.name}.U"] = f.u.contiguous()
        if f.v.dtype == torch.int8:
            tensors[f"{f.name}.V_scale"] = torch.tensor(f.v_scale, dtype=torch.float32)
            tensors[f"{f.name}.U_scale"] = torch.tensor(f.u_scale, dtype=torch.float32)
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
        scales = (None, None)
        if v.dtype == torch.int8:
            if f"{n}.V_scale" not in tensors or f"{n}.U_scale" not in tensors:
                raise EmbodiedPruneError(f"{path} lacks the int8 scales of {n}; re-run `embodied-prune recover`.")
            scales = (float(tensors[f"{n}.V_scale"]), float(tensors[f"{n}.U_scale"]))
        out.append(LayerFactors(n, v.shape[0], u.shape[1], v, u, *scales))
    return out


def load_factors(model: nn.Module, folder: str | os.PathLike) -> nn.Module:
    """Attach the factors saved in ``folder`` to ``model``."""
    return attach_factors(model, read_factors(folder))


def gluestick_layers(model: nn.Module) -> dict[str, GluestickLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, GluestickLinear)}


@torch.no_grad()
def merge_factors(model: nn.Module) -> nn.Module:
    """Fold every :class:`GluestickLinear` of ``model`` into a plain linear layer, ``W + (V·U)ᵀ`` (in place).

    The result computes the same function in one matrix product, but the weight is dense again: for runtimes with
    no low-rank side path (llama.cpp), at the cost of the pruned weight's zeros.
    """
    for name, layer in list(gluestick_layers(model).items()):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        base = layer.base
        if layer.quantized:
            v, u = layer.V.float() * layer.v_scale, layer.U.float() * layer.u_scale
        else:
            v, u = layer.V.float(), layer.U.float()
        base.weight.copy_((base.weight.float() + (v @ u).T.to(base.weight.device)).to(base.weight.dtype))
        setattr(parent, child, base)
    return model
