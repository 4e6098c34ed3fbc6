"""Saving and loading (pruned) checkpoints.

A checkpoint is an ordinary Hugging Face folder (``config.json`` + safetensors) plus a side file,
``embodied_prune.json``, that plain ``transformers`` ignores::

    {
      "format": 1,
      "layer_shapes": null | [{"num_heads": 8, "num_kv_heads": 2, "head_dim": 64,
                               "intermediate_size": 1024}, ...],   # one entry per decoder layer
      "history": [{"op": "prune", "method": "structured", "sparsity": 0.5, ...}, ...]
    }

``layer_shapes`` is ``null`` when every decoder layer has the same shape: the config then describes the
model fully and ``AutoModelForCausalLM.from_pretrained`` loads it with no code of ours. When shapes
differ per layer (e.g. a layer range was left dense) the config keeps the largest sizes, plain
``from_pretrained`` refuses the folder (size mismatch), and :func:`load_pruned` rebuilds each layer
at its own size. A GLUESTICK-recovered checkpoint also holds ``gluestick.safetensors``
(see :mod:`embodied_prune.recovery.gluestick`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from ..errors import EmbodiedPruneError
from ..io import atomic_dir
from .adapters import DecoderAdapter, LayerShape, adapter_for

SIDE_FILE = "embodied_prune.json"
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def read_side_file(path: str | os.PathLike) -> dict[str, Any]:
    """The side file of a checkpoint folder, or an empty record when there is none."""
    side = Path(path) / SIDE_FILE
    if not side.exists():
        return {"format": 1, "layer_shapes": None, "history": []}
    try:
        return json.loads(side.read_text())
    except json.JSONDecodeError as e:
        raise EmbodiedPruneError(f"{side} is not valid JSON ({e}); restore it or re-export the checkpoint.") from e


def save_model(
    model: PreTrainedModel,
    out: str | os.PathLike,
    tokenizer=None,
    history: list[dict[str, Any]] | None = None,
    overwrite: bool = False,
    extra: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Save ``model`` (pruned or not) as a Hugging Face folder plus the side file, atomically.

    ``history`` is the list of operations applied so far (recorded in the side file); ``extra`` maps
    file names to callables ``f(path)`` that write additional files into the folder before it is renamed.
    ``dtype`` stores the floating-point weights in that dtype (pruning passes the source checkpoint's, see
    :func:`stored_dtype`, so a bf16 model pruned in float32 is saved as bf16 again); the model in memory is
    left as it is.
    """
    adapter = adapter_for(model)
    shapes = adapter.sync(model)
    uniform = len(set(shapes)) == 1
    cfg = adapter.get_config(model)
    if uniform and cfg.hidden_size % shapes[0].num_heads != 0:
        # transformers 5 validates hidden_size % num_attention_heads on save even with an explicit
        # head_dim; such a model can only travel with the side file.
        uniform = False
    with atomic_dir(out, overwrite=overwrite) as tmp:
        if not uniform and cfg.hidden_size % cfg.num_attention_heads != 0:
            cfg.num_attention_heads = _divisor_at_least(cfg.hidden_size, cfg.num_attention_heads)
        cast = dtype is not None and dtype != model.dtype
        state = _cast_state(model, dtype) if cast else None
        model.save_pretrained(tmp, state_dict=state)
        adapter.sync(model)  # restore config fields touched for validation
        if cast:  # save_pretrained records the in-memory dtype
            saved = json.loads((tmp / "config.json").read_text())
            (tmp / "config.json").write_text(json.dumps(saved | {"dtype": str(dtype).split(".")[1]}, indent=2) + "\n")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        record = {
            "format": 1,
            "layer_shapes": None if uniform else [s.__dict__ for s in shapes],
            "history": list(history or []),
        }
        (tmp / SIDE_FILE).write_text(json.dumps(record, indent=2) + "\n")
        for writer in (extra or {}).values():
            writer(tmp)
    return Path(out)


def _cast_state(model: PreTrainedModel, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """``model``'s state dict with floating-point tensors cast to ``dtype``; tensors that share storage (tied
    embeddings) stay shared, so ``save_pretrained`` still writes them once."""
    state, cast = {}, {}
    for k, v in model.state_dict().items():
        if v.is_floating_point() and v.data_ptr() not in cast:
            cast[v.data_ptr()] = v.to(dtype)
        state[k] = cast[v.data_ptr()] if v.is_floating_point() else v
    return state


_SAFETENSORS_FLOATS = {"F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def stored_dtype(spec: str | os.PathLike) -> torch.dtype | None:
    """The floating-point dtype a local checkpoint's weights are stored in (read from a safetensors header), or
    None when that cannot be told (a hub id, ``.bin`` weights, no floating-point tensor)."""
    from safetensors import safe_open

    folder = Path(resolve_model_path(spec))
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    files = [f for f in files if f.name.startswith("model")] or files
    if not files:
        return None
    try:
        with safe_open(files[0], "pt") as f:
            names = f.keys()  # a safe_open handle is not iterable
            for key in names:
                kind = _SAFETENSORS_FLOATS.get(f.get_slice(key).get_dtype())
                if kind is not None:
                    return kind
    except (OSError, SafetensorError):
        return None  # unreadable: loading the checkpoint says what is wrong with it
    return None


def _divisor_at_least(n: int, k: int) -> int:
    return next(d for d in range(k, n + 1) if n % d == 0)


def check_checkpoint_dir(path: Path) -> None:
    """Raise a clear error when ``path`` is not a complete checkpoint folder."""
    if not (path / "config.json").is_file():
        raise EmbodiedPruneError(
            f"checkpoint folder {path} has no config.json; pass a folder written by save_pretrained "
            "or `embodied-prune prune`."
        )
    present = [f for f in WEIGHT_FILES if (path / f).is_file()]
    if not present:
        raise EmbodiedPruneError(
            f"checkpoint folder {path} has no weights ({', '.join(WEIGHT_FILES)}); "
            "copy the weight files into it or re-export the model."
        )
    if present[0].endswith(".index.json"):
        index = json.loads((path / present[0]).read_text())
        missing = sorted({f for f in index.get("weight_map", {}).values() if not (path / f).is_file()})
        if missing:
            raise EmbodiedPruneError(
                f"checkpoint folder {path} is missing weight shards {', '.join(missing)}; copy them into it."
            )


def resolve_model_path(spec: str | os.PathLike) -> str:
    """Turn ``builtin:NAME``, a local folder, a GGUF file (``gguf:PATH`` or ``PATH.gguf``, converted once into a
    cached folder) or a hub id into something ``from_pretrained`` takes."""
    spec = str(spec)
    if spec.startswith("builtin:"):
        from .builtin import builtin_path

        return str(builtin_path(spec.removeprefix("builtin:")))
    from .pretrained import gguf_folder, gguf_spec_path

    gguf_file = gguf_spec_path(spec)
    if gguf_file is not None:
        return str(gguf_folder(gguf_file))
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise EmbodiedPruneError(f"model path {path} is a file; pass the checkpoint folder that holds it.")
        check_checkpoint_dir(path)
        return str(path)
    if _HUB_ID.match(spec) and not spec.startswith((".", "/")):
        return spec  # a hub id: from_pretrained resolves it (the cache, or a download outside tests)
    raise EmbodiedPruneError(
        f"model {spec!r} does not exist; pass a checkpoint folder, a hub id or builtin:NAME "
        "(`embodied-prune models` lists the built-in ones)."
    )


_UNSET: Any = object()


def load_model(
    spec: str | os.PathLike,
    dtype: torch.dtype | None = _UNSET,
    with_factors: bool = True,
    device: torch.device | str | None = _UNSET,
    device_map: str | dict | None = None,
) -> PreTrainedModel:
    """Load a causal LM from ``builtin:NAME``, a checkpoint folder (pruned or not) or a hub id.

    ``dtype`` None loads the weights in the dtype they are stored in (:func:`stored_dtype`; float32 when that cannot
    be told); left out, float32 (or the dtype of an enclosing
    :func:`~embodied_prune.models.devices.default_placement`). ``device`` puts the model there (a Hugging Face
    checkpoint is read straight onto it; left out, the CPU or the enclosing default placement's device);
    ``device_map="auto"`` instead spreads a model too large for one device over the GPUs and host memory
    (accelerate's big-model loading; plain Hugging Face checkpoints only). Folders whose side file lists per-layer
    shapes go through :func:`load_pruned`; GLUESTICK factors beside the weights are attached (on their layer's
    device) unless ``with_factors`` is False. Everything else is plain ``AutoModelForCausalLM.from_pretrained``.
    """
    from .devices import default_device, default_dtype

    if dtype is _UNSET:
        dtype = default_dtype() or torch.float32
    if device is _UNSET:
        device = default_device()
    where = resolve_model_path(spec)
    local = Path(where).is_dir()
    if dtype is None:
        dtype = (stored_dtype(where) if local else None) or torch.float32
    side = read_side_file(where) if local else {"layer_shapes": None}
    plain = not side.get("layer_shapes") and not (local and _is_vla(where))
    if device_map is not None and not plain:
        raise EmbodiedPruneError(
            f"{spec} has per-layer shapes or is a VLA policy, which load on one device only; pass a single --device."
        )
    if side.get("layer_shapes"):
        model = load_pruned(where, dtype=dtype)
    elif local and _is_vla(where):
        from .vla import TinyVLA

        model = TinyVLA.from_pretrained(where, dtype=dtype)
    else:
        placement = {"device_map": device_map} if device_map is not None else {}
        if device is not None and device_map is None and torch.device(device).type != "cpu":
            placement = {"device_map": {"": torch.device(device)}}  # read straight onto the device
        try:
            model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **placement)
        except (OSError, ValueError, RuntimeError, SafetensorError) as e:
            raise EmbodiedPruneError(f"could not load model {spec!r}: {_first_line(e)}") from e
    if device is not None and device_map is None:
        model = model.to(device)
    model.eval()
    if local and with_factors:
        from .lowrank import FACTORS_FILE, load_factors

        if (Path(where) / FACTORS_FILE).is_file():
            load_factors(model, where)
    return model


def load_pruned(path: str | os.PathLike, dtype: torch.dtype | None = torch.float32) -> PreTrainedModel:
    """Load a checkpoint whose decoder layers have different shapes (listed in the side file), in ``dtype``
    (None: as stored)."""
    path = Path(path)
    check_checkpoint_dir(path)
    side = read_side_file(path)
    if _is_vla(path):
        from .vla import TinyVLA, TinyVLAConfig

        config = TinyVLAConfig.from_pretrained(path)
        with torch.device("meta"):
            model = TinyVLA(config).to(dtype or torch.float32)
    else:
        config = AutoConfig.from_pretrained(path)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    adapter = adapter_for(model)
    shapes = side.get("layer_shapes") or []
    layers = adapter.get_layers(model)
    if len(shapes) != len(layers):
        raise EmbodiedPruneError(
            f"{path / SIDE_FILE} lists {len(shapes)} layer shapes but the config has {len(layers)} layers; "
            "re-export the checkpoint."
        )
    for layer, raw in zip(layers, shapes, strict=True):
        _resize_layer(adapter, layer, LayerShape(**raw))
    state = _read_state_dict(path)
    if dtype is not None:  # assign=True keeps the state's tensors, so they must already be in the asked dtype
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    tie = getattr(config, "tie_word_embeddings", False)  # a VLA's top-level config has no LM head to tie
    tied = set(getattr(model, "_tied_weights_keys", None) or []) if tie else set()
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise EmbodiedPruneError(
            f"checkpoint {path} does not match its side file (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}); re-export it."
        )
    if tie:
        model.tie_weights()
    _materialise_buffers(model, adapter.get_config(model))
    adapter.sync(model)
    return model.eval()


def _is_vla(path: str | os.PathLike) -> bool:
    """Whether the folder holds this toolkit's VLA policy (its config's model_type)."""
    from .vla import TinyVLAConfig

    try:
        return json.loads((Path(path) / "config.json").read_text()).get("model_type") == TinyVLAConfig.model_type
    except (OSError, ValueError):
        return False


def _resize_layer(adapter: DecoderAdapter, layer: nn.Module, shape: LayerShape) -> None:
    hidden_q = shape.num_heads * shape.head_dim
    hidden_kv = shape.num_kv_heads * shape.head_dim
    sizes = {
        "q_proj": (None, hidden_q),
        "k_proj": (None, hidden_kv),
        "v_proj": (None, hidden_kv),
        "o_proj": (hidden_q, None),
        "gate_proj": (None, shape.intermediate_size),
        "up_proj": (None, shape.intermediate_size),
        "down_proj": (shape.intermediate_size, None),
    }
    for role, (d_in, d_out) in sizes.items():
        old = adapter.linear(layer, role)
        new = nn.Linear(
            d_in or old.in_features,
            d_out or old.out_features,
            bias=old.bias is not None,
            device="meta",
            dtype=old.weight.dtype,
        )
        adapter.set_linear(layer, role, new)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if (path / "model.safetensors").is_file():
            return load_file(path / "model.safetensors")
        if (path / "model.safetensors.index.json").is_file():
            index = json.loads((path / "model.safetensors.index.json").read_text())
            state: dict[str, torch.Tensor] = {}
            for shard in sorted(set(index["weight_map"].values())):
                state.update(load_file(path / shard))
            return state
    except (OSError, SafetensorError) as e:
        raise EmbodiedPruneError(
            f"could not read the weights in {path}: {_first_line(e)}; re-export the checkpoint."
        ) from e
    raise EmbodiedPruneError(f"pruned checkpoint {path} must hold safetensors weights; re-export it.")


def _materialise_buffers(model: nn.Module, config) -> None:
    """Re-create non-persistent buffers (rotary inverse frequencies) that were left on the meta device."""
    for name, module in model.named_modules():
        if hasattr(module, "inv_freq") and module.inv_freq.is_meta:
            fresh = type(module)(config=config)
            for bname, buf in fresh.named_buffers(recurse=False):
                module.register_buffer(bname, buf, persistent=False)
        for bname, buf in list(module.named_buffers(recurse=False)):
            if buf.is_meta:
                raise EmbodiedPruneError(f"buffer {name}.{bname} could not be restored; re-export the checkpoint.")


def load_tokenizer(spec: str | os.PathLike):
    """The tokenizer saved with a model, or None when the folder has none."""
    from transformers.utils import logging as hf_logging

    where = resolve_model_path(spec)
    # AutoTokenizer also reads config.json; for a model type transformers does not know (the VLA's) it
    # warns that the config may not fit, which says nothing about the tokenizer: keep that line quiet.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return AutoTokenizer.from_pretrained(where)
    except (OSError, ValueError, TypeError):
        return None
    finally:
        hf_logging.set_verbosity(verbosity)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


class CheckpointWeights:
    """The linear weights of a safetensors checkpoint, read one tensor at a time on demand (no model is built), so
    that a dense reference costs one layer of memory instead of a second model: ``weights[name]`` is the
    ``name.weight`` tensor of module ``name``, ``weights.shape(name)`` its shape from the file header."""

    def __init__(self, spec: str | os.PathLike) -> None:
        folder = Path(resolve_model_path(spec))
        if not folder.is_dir():
            raise EmbodiedPruneError(f"{spec} is not a local checkpoint folder; pass a folder or builtin:NAME.")
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            files = {k: folder / f for k, f in json.loads(index.read_text())["weight_map"].items()}
        elif (folder / "model.safetensors").is_file():
            from safetensors import safe_open

            with safe_open(folder / "model.safetensors", "pt") as f:
                files = dict.fromkeys(f.keys(), folder / "model.safetensors")
        else:
            raise EmbodiedPruneError(f"{folder} holds no safetensors weights; re-save it with save_pretrained.")
        self.spec, self.files = str(spec), files

    def __contains__(self, name: str) -> bool:
        return f"{name}.weight" in self.files

    def _slice(self, name: str):
        from safetensors import safe_open

        key = f"{name}.weight"
        if key not in self.files:
            raise EmbodiedPruneError(
                f"the dense checkpoint {self.spec} has no weight {key}; pass the model it belongs to."
            )
        handle = safe_open(self.files[key], "pt")
        return handle, key

    def shape(self, name: str) -> tuple[int, ...]:
        handle, key = self._slice(name)
        return tuple(handle.get_slice(key).get_shape())

    def __getitem__(self, name: str) -> torch.Tensor:
        handle, key = self._slice(name)
        return handle.get_tensor(key)


def checkpoint_nbytes(spec: str | os.PathLike, dtype: torch.dtype | None = None) -> int | None:
    """Bytes the weights of a local safetensors checkpoint take in memory in ``dtype`` (floating-point tensors; as
    stored when None), read from the file headers; None when that cannot be told (a hub id, ``.bin`` weights)."""
    from safetensors import safe_open

    folder = Path(resolve_model_path(spec))
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    files = [f for f in files if f.name.startswith("model")]
    if not files:
        return None
    total = 0
    for file in files:
        try:
            f = safe_open(file, "pt")
        except (OSError, SafetensorError):
            return None  # unreadable: loading the checkpoint says what is wrong with it
        with f:
            for key in f.keys():  # noqa: SIM118 (a safe_open handle is not iterable)
                s = f.get_slice(key)
                numel = 1
                for d in s.get_shape():
                    numel *= d
                kind = _SAFETENSORS_FLOATS.get(s.get_dtype())
                size = (dtype or kind).itemsize if kind is not None else _SAFETENSORS_SIZES.get(s.get_dtype(), 4)
                total += numel * size
    return total


def gpu_shortfall(spec: str | os.PathLike, dtype: torch.dtype, device: torch.device) -> tuple[int, int] | None:
    """``(needed, free)`` bytes when the checkpoint ``spec`` held in ``dtype`` would take more than 85 % of the free
    memory of the CUDA ``device`` (the rest is left for activations); None when it fits, when ``device`` is not a
    GPU, or when its size cannot be told."""
    from .devices import cuda_free_bytes

    free = cuda_free_bytes(device)
    need = checkpoint_nbytes(spec, dtype) if free is not None else None
    return (need, free) if need is not None and need > 0.85 * free else None


_SAFETENSORS_SIZES = {"I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
