"""Calibration data and activation capture.

``calibration_ids`` turns a calibration spec into token ids. ``LayerwiseRunner`` runs the model one
decoder layer at a time over the calibration set, as Wanda and SparseGPT do, so only one layer's
activations (and statistics) are alive at once. ``taylor_pass`` runs the loss backward over the
calibration set for Taylor importance, keeping per-channel scores rather than gradients where it can;
``accumulate_gradients`` keeps every parameter's summed gradients (the pruning callback's small models).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import EmbodiedPruneError
from ..models.adapters import DecoderAdapter
from ..models.devices import module_device, move, on_device
from .importance import TaylorAccumulator


def calibration_ids(
    spec: str | os.PathLike | torch.Tensor | None,
    n_samples: int = 32,
    seq_len: int = 128,
    vocab_size: int | None = None,
    tokenizer=None,
    seed: int = 0,
) -> torch.Tensor:
    """Token ids of shape ``[n_samples, seq_len]`` for calibration.

    ``spec`` is a tensor of ids (used as is), ``"random"``/``None`` (random ids in ``[0, vocab_size)``),
    ``builtin:NAME`` (a text of :mod:`embodied_prune.data.texts`) or a path to a ``.txt`` or ``.jsonl``
    (field ``text``) file; text is tokenised with ``tokenizer`` and cut into ``n_samples`` windows of
    ``seq_len`` tokens taken at seeded random offsets.
    """
    if n_samples < 1 or seq_len < 2:
        raise EmbodiedPruneError(f"calibration needs n_samples >= 1 and seq_len >= 2, got {n_samples} and {seq_len}.")
    if isinstance(spec, torch.Tensor):
        return spec.long()
    gen = torch.Generator().manual_seed(seed)
    if spec is None or str(spec) == "random":
        if vocab_size is None:
            raise EmbodiedPruneError("random calibration needs the model's vocab_size.")
        return torch.randint(0, vocab_size, (n_samples, seq_len), generator=gen)
    name = str(spec)
    if name.startswith("builtin:"):
        from ..data.texts import TEXTS

        reader = TEXTS.get(name.removeprefix("builtin:"))  # an unknown name lists the known ones
    elif Path(name).is_file():
        reader = functools.partial(_read_text, Path(name))
    else:
        raise EmbodiedPruneError(
            f"calibration file {name} does not exist; pass 'random', builtin:python-docstrings or a .txt/.jsonl file."
        )
    if tokenizer is None:
        raise EmbodiedPruneError(
            f"calibration text {name} needs a tokenizer, but the model folder has none; "
            "save a tokenizer beside the model or use --calibration random."
        )
    text = reader()
    ids = text_ids(text, tokenizer)
    if ids.numel() < seq_len + 1:
        raise EmbodiedPruneError(
            f"calibration text {name} has {ids.numel()} tokens, fewer than --calibration-seq-len {seq_len}; "
            "use a longer file or a shorter sequence length."
        )
    starts = torch.randint(0, ids.numel() - seq_len + 1, (n_samples,), generator=gen)
    return torch.stack([ids[s : s + seq_len] for s in starts.tolist()])


def text_ids(text: str, tokenizer) -> torch.Tensor:
    """``text`` as one long row of token ids (no special tokens), tokenised in blocks of ~100 k characters cut
    after a blank line, so a multi-megabyte text is not one huge tokenizer call."""
    out: list[int] = []
    start = 0
    while start < len(text):
        cut = text.find("\n\n", start + 100_000)
        end = len(text) if cut < 0 else cut + 2
        out.extend(tokenizer(text[start:end], add_special_tokens=False)["input_ids"])
        start = end
    return torch.tensor(out, dtype=torch.long)


def spread_windows(ids: torch.Tensor, n: int, seq_len: int) -> torch.Tensor:
    """``n`` windows of ``seq_len`` tokens, one starting every ``(len(ids) - seq_len) // n`` tokens from the first
    (``[n, seq_len]``): held-out evaluation text spread over the document rather than its first pages (the last
    ``1/n`` of the document is not read; the benchmarks' kept cells were measured on exactly these windows)."""
    step = (ids.numel() - seq_len) // n
    if n < 1 or step < 0:
        raise EmbodiedPruneError(f"a text of {ids.numel()} tokens has no {n} windows of {seq_len} tokens.")
    return torch.stack([ids[i * step : i * step + seq_len] for i in range(n)])


def _read_text(path: Path) -> str:
    if path.suffix == ".jsonl":
        texts = []
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                texts.append(json.loads(line)["text"])
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise EmbodiedPruneError(
                    f"{path} line {i} is not a JSON object with a 'text' field ({e}); fix that line."
                ) from e
        return "\n".join(texts)
    return path.read_text()


def batches(ids: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for i in range(0, ids.shape[0], batch_size):
        yield ids[i : i + batch_size]


def calibration_chunks(inputs: torch.Tensor | list[dict], batch_size: int) -> Iterator[torch.Tensor | dict]:
    """Calibration inputs one forward pass at a time: token ids in batches of ``batch_size``, or a VLA policy's
    ready model-input dicts as they are."""
    return iter(inputs) if isinstance(inputs, list) else batches(inputs, batch_size)


def forward_chunk(model: nn.Module, chunk: torch.Tensor | dict) -> None:
    """One forward pass of ``model`` over a calibration chunk (a model-input dict, or token ids, no KV cache)."""
    if isinstance(chunk, dict):
        model(**chunk)
    else:
        model(input_ids=chunk, use_cache=False)


def accumulate_gradients(
    model: nn.Module, ids: torch.Tensor, batch_size: int = 8, progress: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Summed gradients and summed per-batch squared gradients of the LM loss, per parameter name."""
    grads: dict[str, torch.Tensor] = {}
    grad_sq: dict[str, torch.Tensor] = {}
    was_training = model.training
    model.eval()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    device = module_device(model)
    for chunk in tqdm(list(batches(ids, batch_size)), desc="gradients", disable=not progress, leave=False):
        model.zero_grad(set_to_none=True)
        chunk = chunk.to(device)
        loss = model(input_ids=chunk, labels=chunk).loss
        loss.backward()
        for name, p in params.items():
            if p.grad is None:
                continue
            g = p.grad.detach().float()
            grads[name] = grads[name] + g if name in grads else g.clone()
            grad_sq[name] = grad_sq[name] + g * g if name in grad_sq else g * g
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return grads, grad_sq


def taylor_pass(
    model: nn.Module,
    ids: torch.Tensor,
    names: list[str],
    variant: str,
    batch_size: int = 8,
    grad_dtype: torch.dtype = torch.float32,
    checkpointing: bool = True,
    progress: bool = True,
) -> TaylorAccumulator:
    """Taylor importance of the weights ``names`` (qualified parameter names) from the LM loss on ``ids``, in bounded
    memory: only those weights take gradients, each one's gradient is folded into a :class:`TaylorAccumulator` the
    moment the backward pass completes it and then freed, and with ``checkpointing`` (when the model supports it)
    activations are recomputed in the backward pass instead of kept. The model runs where it is, in its dtype."""
    params = dict(model.named_parameters())
    missing = [n for n in names if n not in params]
    if missing:
        raise EmbodiedPruneError(f"the model has no parameter {missing[0]}; the adapter does not fit this model.")
    chunks = list(batches(ids, batch_size))
    acc = TaylorAccumulator(variant, len(chunks), grad_dtype)
    flags = {n: p.requires_grad for n, p in params.items()}
    chosen = set(names)
    handles = []
    for n, p in params.items():
        p.requires_grad_(n in chosen)
    for n in names:

        def fold(p: torch.Tensor, n: str = n) -> None:
            acc.add(n, p, p.grad)
            p.grad = None

        handles.append(params[n].register_post_accumulate_grad_hook(fold))
    was_training = model.training
    checkpoint = checkpointing and getattr(model, "supports_gradient_checkpointing", False)
    # transformers 5.x renamed gradient_checkpointing_* to activation_checkpointing_*; either spelling works
    prefix = "activation" if hasattr(model, "activation_checkpointing_enable") else "gradient"
    already = checkpoint and getattr(model, f"is_{prefix}_checkpointing", False)
    if checkpoint and not already:
        getattr(model, f"{prefix}_checkpointing_enable")(**{f"{prefix}_checkpointing_kwargs": {"use_reentrant": False}})
    # transformers recomputes checkpointed layers only in training mode; Llama-family decoders have no dropout, so
    # train() changes nothing else here
    model.train(checkpoint)
    device = module_device(model)
    try:
        for chunk in tqdm(chunks, desc="gradients", disable=not progress, leave=False):
            chunk = chunk.to(device)
            model(input_ids=chunk, labels=chunk, use_cache=False).loss.backward()
    finally:
        for h in handles:
            h.remove()
        for n, p in params.items():
            p.requires_grad_(flags[n])
            p.grad = None
        if checkpoint and not already:
            getattr(model, f"{prefix}_checkpointing_disable")()
        model.train(was_training)
    return acc


class _StopForward(Exception):
    pass


class LayerwiseRunner:
    """Feeds calibration ids through the decoder one layer at a time.

    ``run(visit)`` calls ``visit(index, layer, forward)`` for every decoder layer, where
    ``forward()`` runs the layer over all calibration samples (with whatever hooks ``visit`` has
    installed) and returns nothing. After ``visit`` returns, the layer is run once more, now as
    ``visit`` left it (e.g. pruned), and its outputs become the next layer's inputs.

    Each layer is computed on ``device`` (default: where the decoder layers are) in ``compute_dtype``
    (default float32): during its turn the layer is moved there and cast, and afterwards put back where and in the
    dtype it was (rounded, e.g. to bf16, with whatever ``visit`` changed). So a model held in host memory in
    bf16 is processed one float32 layer at a time on the GPU, as SparseGPT's and llm-compressor's sequential
    pipelines do; only the calibration states of one layer boundary live on the device.
    """

    def __init__(
        self,
        model: nn.Module,
        adapter: DecoderAdapter,
        ids: torch.Tensor | list[dict],
        batch_size: int = 8,
        device: torch.device | str | None = None,
        compute_dtype: torch.dtype | None = torch.float32,
    ) -> None:
        self.model = model
        self.adapter = adapter
        self.ids = ids
        self.batch_size = batch_size
        layers = adapter.get_layers(model)
        self.device = torch.device(device) if device is not None else module_device(layers[0])
        self.compute_dtype = compute_dtype

    @torch.no_grad()
    def _first_inputs(self) -> list[tuple[torch.Tensor, dict]]:
        layers = self.adapter.get_layers(self.model)
        captured: list[tuple[torch.Tensor, dict]] = []
        home = module_device(self.model)  # where the embeddings are: the calibration inputs go there

        def catch(_module, args, kwargs):
            hidden = args[0] if args else kwargs.pop("hidden_states")
            kwargs = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            # no KV cache while replaying the layers (transformers 5 renamed past_key_values to cache)
            kwargs["cache" if "cache" in kwargs else "past_key_values"] = None
            kwargs["use_cache"] = False
            captured.append(move((hidden, kwargs), self.device, self.compute_dtype))
            raise _StopForward

        handle = layers[0].register_forward_pre_hook(catch, with_kwargs=True)
        try:
            # token ids for a causal LM, or ready model-input dicts (a VLA's images, instruction, proprio)
            for chunk in calibration_chunks(self.ids, self.batch_size):
                with contextlib.suppress(_StopForward):
                    forward_chunk(self.model, move(chunk, home))
        finally:
            handle.remove()
        return captured

    @torch.no_grad()
    def run(self, visit: Callable[[int, nn.Module, Callable[[], None]], None], progress: bool = True) -> None:
        was_training = self.model.training
        self.model.eval()
        states = self._first_inputs()
        layers = self.adapter.get_layers(self.model)

        def forward_all(layer: nn.Module) -> list[torch.Tensor]:
            return [_hidden(layer(h, **kw)) for h, kw in states]

        for i in tqdm(range(len(layers)), desc="layers", disable=not progress, leave=False):
            with on_device(layers[i], self.device, self.compute_dtype) as layer:
                visit(i, layer, lambda layer=layer: forward_all(layer) and None)
                outs = forward_all(layer)
            states = [(o, kw) for o, (_, kw) in zip(outs, states, strict=True)]
        self.model.train(was_training)


def _hidden(out) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out
