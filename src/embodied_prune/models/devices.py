"""Where a model runs and in which dtype: the ``--device`` and ``--dtype`` of every verb, and the small helpers the
per-layer algorithms use to move one decoder layer at a time onto the device that computes it.

Conventions (DESIGN.md, "Devices"): library functions take the device and dtype from the model they are given;
only the command line chooses them. ``auto`` means:

* device: CUDA when ``torch.cuda.is_available()``, else the CPU;
* dtype, for the verbs that only *edit* weights layer by layer (prune, recover, export): the checkpoint's own
  dtype, so that a 7 B bf16 checkpoint is held in 15 GB rather than 30 (their maths runs in float32 one layer at
  a time anyway);
* dtype, for the verbs that run the whole model (train, eval, bench, experiment): the checkpoint's dtype on a GPU,
  float32 on a CPU. Without bfloat16 units (``avx512_bf16`` / AMX), a CPU runs bf16 matrix products through
  conversions: 5× slower than float32 on our 2-core AMD EPYC (6.8 vs 35 GFLOPS, measured), and every number the
  project reports on the CPU was measured in float32.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..choices import DTYPE_NAMES
from ..errors import EmbodiedPruneError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
assert tuple(DTYPES) == DTYPE_NAMES[1:]  # choices.DTYPE_NAMES = ("auto", *DTYPES)


_PLACEMENT: contextvars.ContextVar[tuple[torch.device | None, torch.dtype | None]] = contextvars.ContextVar(
    "embodied_prune_placement", default=(None, None)
)


@contextlib.contextmanager
def default_placement(device: torch.device | None = None, dtype: torch.dtype | None = None) -> Iterator[None]:
    """Within the block, models that library code loads itself (the checkpoints an experiment trains and evaluates,
    a GRPO run's reference model) go to ``device`` in ``dtype`` unless the caller names others. The command line
    sets it from ``--device`` / ``--dtype`` for the verbs that load many models; without it they load on the CPU
    in float32."""
    token = _PLACEMENT.set((device, dtype))
    try:
        yield
    finally:
        _PLACEMENT.reset(token)


def default_device() -> torch.device | None:
    """The device of :func:`default_placement` (None outside one)."""
    return _PLACEMENT.get()[0]


def default_dtype() -> torch.dtype | None:
    """The dtype of :func:`default_placement` (None outside one)."""
    return _PLACEMENT.get()[1]


def trainer_precision(device: torch.device, autocast: torch.dtype | None) -> dict[str, bool]:
    """``use_cpu`` / ``bf16`` / ``fp16`` of a Hugging Face ``TrainingArguments`` for training on ``device`` with the
    passes under ``autocast`` (None or float32: none; the master weights and optimizer state stay float32)."""
    return {
        "use_cpu": device.type == "cpu",
        "bf16": autocast == torch.bfloat16,
        "fp16": autocast == torch.float16,
    }


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """The device ``name`` asks for (``auto``/None: CUDA when available, else the CPU), checked to exist here.

    A CUDA device on a machine without CUDA, or an index past the last GPU, is one sentence naming the fix."""
    if isinstance(name, torch.device):
        name = str(name)
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise EmbodiedPruneError(f"device {name!r} is not a device name; pass auto, cpu, cuda or cuda:N.") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise EmbodiedPruneError(f"device {name!r} is not supported; pass auto, cpu, cuda or cuda:N.")
    if not torch.cuda.is_available():
        raise EmbodiedPruneError(
            f"device {name} was asked for, but this machine has no CUDA device (torch.cuda.is_available() is False); "
            "pass --device cpu, or leave --device out to use the CPU."
        )
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise EmbodiedPruneError(
            f"device {name} was asked for, but this machine has {count} CUDA device(s) (cuda:0 to cuda:{count - 1}); "
            "pass one of those."
        )
    return device


def resolve_dtype(
    name: str | torch.dtype | None,
    stored: torch.dtype | None,
    device: torch.device,
    whole_model: bool,
) -> torch.dtype:
    """The dtype a verb holds a model in: ``name`` when given, else (``auto``/None) the checkpoint's ``stored``
    dtype — except float32 on a CPU for verbs that run the ``whole_model`` (see the module docstring).

    ``stored`` is None when the checkpoint's dtype cannot be told (then float32)."""
    if isinstance(name, torch.dtype):
        return name
    if name not in (None, "", "auto"):
        if name not in DTYPES:
            raise EmbodiedPruneError(f"dtype {name!r} is not supported; pass one of: {', '.join(DTYPE_NAMES)}.")
        return DTYPES[name]
    stored = stored or torch.float32
    if whole_model and device.type == "cpu" and stored in (torch.bfloat16, torch.float16):
        return torch.float32
    return stored


def resolve_autocast(name: str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of training passes from a ``--dtype`` name (weights and optimizer state stay float32):
    ``auto`` is bfloat16 on a CUDA device that supports it, none on a CPU; ``float32`` is none."""
    if name in (None, "", "auto"):
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    dtype = resolve_dtype(name, None, device, whole_model=True)
    return None if dtype == torch.float32 else dtype


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` → ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


def module_device(module: nn.Module) -> torch.device:
    """The device of ``module``'s first parameter (the CPU for a module without parameters)."""
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def module_dtype(module: nn.Module) -> torch.dtype:
    """The dtype of ``module``'s first floating-point parameter (float32 when it has none)."""
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def move(obj: Any, device: torch.device | None = None, dtype: torch.dtype | None = None) -> Any:
    """``obj`` with every tensor inside (tuples, lists and dicts walked) on ``device``; floating-point tensors also
    cast to ``dtype`` when given. Anything else is returned as it is."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device=device, dtype=dtype if dtype is not None and obj.is_floating_point() else None)
    if isinstance(obj, tuple):
        return tuple(move(x, device, dtype) for x in obj)
    if isinstance(obj, list):
        return [move(x, device, dtype) for x in obj]
    if isinstance(obj, dict):
        return {k: move(v, device, dtype) for k, v in obj.items()}
    return obj


@contextlib.contextmanager
def on_device(module: nn.Module, device: torch.device, dtype: torch.dtype | None = None) -> Iterator[nn.Module]:
    """Run a block with ``module`` (one decoder layer) on ``device`` in ``dtype``, then put it back where and in
    the dtype it was: how per-layer algorithms keep one layer on the accelerator (and in float32) at a time, with
    the rest of the model in host memory in its storage dtype. Weights the block edits keep their edits (rounded
    to the storage dtype on the way back)."""
    home, home_dtype = module_device(module), module_dtype(module)
    same = home == device and (dtype is None or dtype == home_dtype)
    if not same:
        module.to(device=device, dtype=dtype)
    try:
        yield module
    finally:
        if not same:
            module.to(device=home, dtype=home_dtype)


def cuda_free_bytes(device: torch.device) -> int | None:
    """Free memory of a CUDA device in bytes (None on the CPU)."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def peak_rss_bytes() -> int | None:
    """This process's peak resident set size (``VmHWM``), or None where /proc is not available."""
    if not os.path.exists("/proc/self/status"):
        return None
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None
