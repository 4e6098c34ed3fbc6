"""Arguments shared by several verbs of the command line (imported by ``cli``, ``cli_driving`` and
``cli_manipulation``, which sit above it: one direction, no cycle)."""

from __future__ import annotations

import argparse


def add_output_args(sp: argparse.ArgumentParser) -> None:
    """``--out`` and ``--overwrite``, shared by every verb that writes a checkpoint folder."""
    sp.add_argument("--out", required=True, help="output folder (must not exist or be empty, unless --overwrite)")
    sp.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")


DEVICE_HELP = "where the model computes: auto (default: CUDA when available, else the CPU), cpu, cuda or cuda:N"
EDIT_DTYPE_HELP = (
    "dtype the model is held in: auto (default: the checkpoint's own, so a 7 B bf16 model needs 15 GB, not 30), "
    "float32, bfloat16 or float16; the per-layer maths runs in float32 one layer at a time either way, and the "
    "result is saved in the checkpoint's dtype"
)
RUN_DTYPE_HELP = (
    "dtype the model runs in: auto (default: the checkpoint's own on a GPU, float32 on a CPU, whose bf16 matrix "
    "products are emulated, 5x slower here), float32, bfloat16 or float16"
)


TRAIN_DTYPE_HELP = (
    "dtype the training passes compute in, under autocast (weights and optimizer state stay float32): auto "
    "(default: bfloat16 on a CUDA GPU that supports it, float32 on a CPU), float32, bfloat16 or float16"
)
EXPERIMENT_DTYPE_HELP = (
    "dtype every model of the experiment is loaded in: auto (default: float32, since its cells train), float32, "
    "bfloat16 or float16"
)


def add_device_args(sp: argparse.ArgumentParser, whole_model: bool, dtype_help: str | None = None) -> None:
    """``--device`` and ``--dtype``: every verb that loads a model takes them. ``whole_model`` verbs run the whole
    model (train, eval, bench, experiment); the others edit weights layer by layer (prune, recover, export)."""
    from .choices import DTYPE_NAMES

    sp.add_argument("--device", default="auto", help=DEVICE_HELP)
    default_help = RUN_DTYPE_HELP if whole_model else EDIT_DTYPE_HELP
    sp.add_argument("--dtype", default="auto", choices=DTYPE_NAMES, help=dtype_help or default_help)


def placement(a: argparse.Namespace, spec: str | None, whole_model: bool):
    """``(device, dtype)`` from ``--device`` / ``--dtype`` for the model ``spec`` (its stored dtype decides
    ``auto``); a CUDA device on a machine without one ends here with one sentence."""
    from .models.checkpoint import stored_dtype
    from .models.devices import resolve_device, resolve_dtype

    device = resolve_device(a.device)
    stored = None
    if spec is not None and a.dtype == "auto":
        stored = stored_dtype(spec)
    return device, resolve_dtype(a.dtype, stored, device, whole_model)


def load_kwargs(spec: str, device, dtype) -> dict:
    """``load_model`` keywords for running ``spec`` whole on ``device``: the device itself, or, when the checkpoint
    does not fit a GPU's free memory, ``device_map="auto"`` (accelerate spreads it over the GPUs and host memory;
    said in one line)."""
    from .models.checkpoint import gpu_shortfall

    short = gpu_shortfall(spec, dtype, device)
    if short is not None:
        need, free = short
        print(
            f"{spec} needs {need / 2**30:.1f} GiB in {dtype}, more than {device} has free ({free / 2**30:.1f} GiB): "
            "spread over the GPUs and host memory (device_map=auto)"
        )
        return {"dtype": dtype, "device_map": "auto", "device": None}
    return {"dtype": dtype, "device": device}
