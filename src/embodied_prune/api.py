"""The Python API: the same operations as the CLI verbs, on model objects or model specs."""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from .choices import BUILTIN_FRAMES
from .errors import EmbodiedPruneError
from .io import check_output_dir
from .models.checkpoint import load_model, load_tokenizer, read_side_file, resolve_model_path, save_model
from .models.devices import (
    default_device,
    default_dtype,
    dtype_name,
    module_device,
    module_dtype,
    move,
    resolve_device,
    resolve_dtype,
)
from .models.lowrank import attach_factors, gluestick_layers, save_factors
from .pruning.calibration import calibration_ids
from .pruning.masks import check_sparsity, parse_pattern
from .pruning.structured import prune_structured
from .pruning.unstructured import METHODS, prune_unstructured
from .recovery.gluestick import GluestickReport, compute_factors

PRUNE_METHODS = ("structured", *METHODS.names())


@dataclass
class Outcome:
    """A compressed model, what was done to it, and where it was saved (if anywhere)."""

    model: PreTrainedModel
    record: dict[str, Any]
    path: Path | None = None
    details: Any = None
    history: list[dict[str, Any]] = field(default_factory=list)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _resolve(
    model: PreTrainedModel | str | os.PathLike,
    with_factors: bool = True,
    dtype: torch.dtype | str | None = "auto",
    device: torch.device | str | None = None,
    whole_model: bool = False,
):
    """``(model, tokenizer, history)`` for a model object (used as it is, where it is) or a spec, loaded in
    ``dtype`` (``auto``: the checkpoint's, see :func:`~embodied_prune.models.devices.resolve_dtype`) onto
    ``device`` — or kept in host memory when it does not fit there and only one layer at a time needs the device
    (``whole_model`` False), as the per-layer algorithms do."""
    if isinstance(model, (str, os.PathLike)):
        where = resolve_model_path(model)
        history = read_side_file(where).get("history", []) if Path(where).is_dir() else []
        home, dtype = _placement(model, dtype, device, whole_model)
        return load_model(model, dtype=dtype, with_factors=with_factors, device=home), load_tokenizer(model), history
    return model, None, []


def _placement(spec, dtype, device, whole_model: bool) -> tuple[torch.device, torch.dtype]:
    """Where a spec is loaded (``device``, or the CPU when it does not fit a GPU's free memory) and in which
    dtype."""
    from .models.checkpoint import gpu_shortfall

    device = resolve_device(device or default_device() or "cpu")
    if dtype in (None, "auto") and default_dtype() is not None:
        dtype = default_dtype()  # an enclosing default placement (e.g. `experiment --dtype`) names one
    dtype = resolve_dtype(dtype, _source_dtype(spec), device, whole_model)
    short = gpu_shortfall(spec, dtype, device)
    if short is not None:
        need, free = short
        if whole_model:
            raise EmbodiedPruneError(
                f"{spec} needs {need / 2**30:.1f} GiB in {dtype}, more than {device}'s {free / 2**30:.1f} GiB free, "
                "and this step runs the whole model; pass --dtype bfloat16, another --device, or --device cpu."
            )
        return torch.device("cpu"), dtype  # one layer at a time goes to the device
    return device, dtype


def _has_safetensors(spec) -> bool:
    """Whether ``spec`` is a local checkpoint folder with safetensors weights (readable one tensor at a time)."""
    try:
        where = Path(resolve_model_path(spec))
    except EmbodiedPruneError:
        return False
    return where.is_dir() and any(where.glob("model*.safetensors"))


def _source_dtype(spec) -> torch.dtype | None:
    """The dtype a model given as a spec is stored in (its pruned or recovered copy is saved in it too)."""
    from .models.checkpoint import stored_dtype

    return stored_dtype(spec) if isinstance(spec, (str, os.PathLike)) else None


def _is_policy(model) -> bool:
    from .models.vla import TinyVLA

    return isinstance(model, TinyVLA)


def _n_samples(ids: torch.Tensor | list[dict]) -> list[int]:
    if isinstance(ids, list):  # policy-input batches
        return [sum(len(b["input_ids"]) for b in ids)]
    return list(ids.shape)


def _calibration_inputs(model, tokenizer, calibration, n_samples: int, seq_len: int, seed: int):
    """Calibration inputs for ``model``: demonstration steps as ready ``model(**batch)`` dicts for a VLA
    policy, token ids ``[n_samples, seq_len]`` for a causal LM (see :func:`calibration_ids`)."""
    if _is_policy(model):
        from .training.manipulation import policy_calibration

        return policy_calibration(model, tokenizer, calibration, n_samples, seed=seed)
    return calibration_ids(calibration, n_samples, seq_len, model.config.vocab_size, tokenizer, seed)


def _feed(inputs: torch.Tensor | list[dict], batch_size: int = 8):
    """A function running ``inputs`` (from :func:`_calibration_inputs`) through a model, for activation hooks."""
    from .pruning.calibration import calibration_chunks, forward_chunk

    def run(model) -> None:
        model.eval()
        device = module_device(model)
        with torch.no_grad():
            for chunk in calibration_chunks(inputs, batch_size):
                forward_chunk(model, move(chunk, device))

    return run


def _check_layers(layers: tuple[int, int] | str | None) -> tuple[int, int] | None:
    if layers is None or isinstance(layers, tuple):
        return layers
    try:
        start, end = (int(x) for x in str(layers).split(":"))
    except ValueError:
        raise EmbodiedPruneError(f"layer range {layers!r} is not of the form START:END (e.g. 4:30).") from None
    return start, end


def prune(
    model: PreTrainedModel | str | os.PathLike,
    method: str,
    sparsity: float | None = None,
    pattern: str | tuple[int, int] | None = None,
    importance: str = "l2",
    taylor: str = "param_first",
    attention: str = "auto",
    layers: tuple[int, int] | str | None = None,
    calibration: str | os.PathLike | torch.Tensor | None = "random",
    n_samples: int = 32,
    seq_len: int = 128,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
    round_to: int = 1,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = "auto",
    grad_dtype: torch.dtype | str = torch.float32,
) -> Outcome:
    """Prune ``model`` (an object, pruned in place, or a spec: path, hub id or ``builtin:NAME``).

    ``device`` computes the pruning (default: where the model is; the CPU for a spec): a spec is loaded there in
    ``dtype`` (``auto``: the checkpoint's own), or, when it does not fit a GPU, kept in host memory and moved to it
    one decoder layer at a time (Wanda, SparseGPT, magnitude; Taylor's backward passes need the whole model on the
    device). Per-layer maths runs in float32. ``grad_dtype`` holds the summed gradient where a Taylor variant needs
    it (param_first over several batches, param_mix): float32, or bfloat16 at half the memory.

    ``method`` is ``structured`` (physically removes heads and MLP channels) or an unstructured
    method (magnitude, wanda, sparsegpt) with ``sparsity`` or an N:M ``pattern`` such as ``"2:4"``.
    ``calibration`` feeds the methods that need activations: for a causal LM ``"random"``, a .txt / .jsonl file or
    ``builtin:python-docstrings``; for a VLA policy a demonstrations folder, by default (None or ``"random"``) the
    shipped frames ``builtin:metaworld-frames``. With ``out`` the result is saved there atomically.
    """
    if method not in PRUNE_METHODS:
        raise EmbodiedPruneError(f"unknown pruning method {method!r}; choose one of: {', '.join(PRUNE_METHODS)}.")
    if round_to < 1 or (round_to != 1 and method != "structured"):
        raise EmbodiedPruneError(
            f"round_to={round_to} is invalid: it is a positive multiple of MLP channels for structured pruning only."
        )
    nm = parse_pattern(pattern)
    if nm is not None and method == "structured":
        raise EmbodiedPruneError(
            "N:M patterns apply to unstructured methods (magnitude, wanda, sparsegpt), not structured."
        )
    if nm is not None:
        implied = 1 - nm[0] / nm[1]
        if sparsity is not None and abs(sparsity - implied) > 1e-9:
            raise EmbodiedPruneError(
                f"pattern {nm[0]}:{nm[1]} means sparsity {implied:g}, but sparsity {sparsity:g} was asked; "
                "pass only one."
            )
        sparsity = implied
    if sparsity is None:
        raise EmbodiedPruneError("pass a sparsity (fraction removed, e.g. 0.5) or an N:M pattern (e.g. 2:4).")
    check_sparsity(sparsity)
    span = _check_layers(layers)
    if out is not None:
        check_output_dir(out, overwrite)
    source = str(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__
    source_spec = model
    needs_whole = method == "structured" and importance == "taylor"
    model, tokenizer, history = _resolve(model, False, dtype, device, whole_model=needs_whole)
    compute = torch.device(device) if device is not None else None
    if needs_whole and compute is not None and compute != module_device(model):
        model = model.to(compute)  # an object given on another device: Taylor's backward needs it all there
    if gluestick_layers(model):
        raise EmbodiedPruneError(
            "this model carries GLUESTICK corrections; prune the dense model first, then run recover on the result."
        )
    needs_data = (method == "structured" and importance == "taylor") or (
        method != "structured" and METHODS.get(method).needs_calibration
    )
    ids = None
    if needs_data and _is_policy(model) and (calibration is None or str(calibration) == "random"):
        calibration = BUILTIN_FRAMES  # a policy's inputs are images, not text: the shipped frames
    if needs_data and _is_policy(model) and method == "structured":
        raise EmbodiedPruneError("Taylor importance is not available for VLA policies yet; use --importance l2 or l1.")
    if needs_data:
        ids = _calibration_inputs(model, tokenizer, calibration, n_samples, seq_len, seed)
    if method == "structured":
        details = prune_structured(
            model,
            sparsity,
            importance,
            taylor,
            attention,
            layers=span,
            calibration=ids,
            round_to=round_to,
            seed=seed,
            progress=progress,
            grad_dtype=resolve_dtype(grad_dtype, None, torch.device("cpu"), whole_model=False),
        )
    else:
        details = prune_unstructured(
            model, method, sparsity, nm, calibration=ids, layers=span, progress=progress, device=compute
        )
    record = {
        "op": "prune",
        "method": method,
        "sparsity": sparsity,
        "pattern": f"{nm[0]}:{nm[1]}" if nm else None,
        "importance": importance if method == "structured" else None,
        "taylor": taylor if method == "structured" and importance == "taylor" else None,
        "attention": attention if method == "structured" else None,
        "layers": list(span) if span else None,
        "round_to": round_to if method == "structured" else None,
        "calibration": None
        if ids is None
        else (str(calibration) if not isinstance(calibration, torch.Tensor) else "tensor"),
        "calibration_samples": None if ids is None else _n_samples(ids),
        "seed": seed,
        "source": source,
        "dtype": dtype_name(module_dtype(model)),
        "device": str(compute or module_device(model)),
        "date": _now(),
    }
    history = [*history, record]
    path = None
    if out is not None:
        path = save_model(model, out, tokenizer, history, overwrite, dtype=_source_dtype(source_spec))
    return Outcome(model, record, path, details, history)


def recover(
    dense: PreTrainedModel | str | os.PathLike,
    pruned: PreTrainedModel | str | os.PathLike,
    rank: int | None = None,
    svd: str = "exact",
    include: list[str] | None = None,
    exclude: tuple[str, ...] | list[str] = ("lm_head",),
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    budget: float | None = None,
    dtype: str = "float32",
    calibration: str | os.PathLike | torch.Tensor | None = None,
    n_samples: int = 32,
    seq_len: int = 128,
    seed: int = 0,
    device: torch.device | str | None = None,
    model_dtype: torch.dtype | str | None = "auto",
    progress: bool = False,
) -> Outcome:
    """GLUESTICK: attach rank-``rank`` corrections of ``dense − pruned`` to the pruned model — or, with
    ``budget``, per-layer ranks spending that fraction of the corrected layers' parameters; ``dtype``
    stores the factors in float32, bfloat16, float16 or int8 (see :mod:`embodied_prune.recovery.gluestick`).
    With ``calibration`` (as for :func:`prune`: a demonstrations folder for a VLA policy; ``"random"``, a
    .txt or .jsonl file for a causal LM) the budget goes to the ranks that restore the largest share of
    their layer's output on those inputs; without it, to the largest singular values — except for a VLA policy,
    whose budget then calibrates on the shipped frames (``builtin:metaworld-frames``).

    Returns the corrected model (a copy of ``pruned`` when it is a spec, else ``pruned`` itself, wrapped
    in place) and a :class:`GluestickReport` in ``details``. With ``out`` the pruned checkpoint and its
    ``gluestick.safetensors`` are saved there atomically.

    ``pruned`` is loaded in ``model_dtype`` (``auto``: its checkpoint's) and each gap is decomposed on ``device``
    (default: where the pruned model is), one layer at a time. A dense model given as a checkpoint is read one
    weight at a time from its files (no second model in memory), unless a budget is spent by calibration outputs,
    which runs the dense model.
    """
    if out is not None:
        check_output_dir(out, overwrite)
    pruned_model, tokenizer, history = _resolve(pruned, False, model_dtype, device)
    feed = inputs = None
    policy = _is_policy(pruned_model)
    if budget is not None and policy and (calibration is None or str(calibration) == "random"):
        calibration = BUILTIN_FRAMES  # a budget spent by output share beat the singular values on the VLA
    if calibration is None and isinstance(dense, (str, os.PathLike)) and _has_safetensors(dense):
        from .models.checkpoint import CheckpointWeights

        dense_model = CheckpointWeights(dense)
    else:
        dense_model, dense_tokenizer, _ = _resolve(dense, False, model_dtype, device)
        if calibration is not None:
            inputs = _calibration_inputs(
                dense_model, dense_tokenizer or tokenizer, calibration, n_samples, seq_len, seed
            )
            feed = _feed(inputs)
    report: GluestickReport = compute_factors(
        dense_model,
        pruned_model,
        rank,
        svd,
        include,
        exclude,
        budget=budget,
        dtype=dtype,
        feed=feed,
        device=device,
        progress=progress,
    )
    record = {
        "op": "recover",
        "method": "gluestick",
        "rank": rank,
        "budget": budget,
        "allocation": report.allocation,
        "calibration": None
        if inputs is None
        else (str(calibration) if not isinstance(calibration, torch.Tensor) else "tensor"),
        "calibration_samples": None if inputs is None else _n_samples(inputs),
        "factor_dtype": dtype,
        "energy": report.energy,
        "ranks": {f.name: f.rank for f in report.layers},
        "svd": svd,
        "layers": len(report.layers),
        "extra_parameters": report.extra_parameters,
        "overhead": report.overhead,
        "dense": str(dense) if isinstance(dense, (str, os.PathLike)) else None,
        "date": _now(),
    }
    history = [*history, record]
    path = None
    if out is not None:
        path = save_model(
            pruned_model,
            out,
            tokenizer,
            history,
            overwrite,
            extra={"gluestick": lambda tmp: save_factors(report.layers, tmp, svd)},
            dtype=_source_dtype(pruned),
        )
    attach_factors(pruned_model, report.layers)
    return Outcome(pruned_model, record, path, report, history)
