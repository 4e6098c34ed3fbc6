"""GGUF export: a dense, pruned or recovered causal LM to a file llama.cpp runs.

The work is llama.cpp's own: ``convert_hf_to_gguf.py`` (found by :mod:`.source`) writes f32 / f16 / bf16 / q8_0
files, and llama.cpp's quantiser (``llama_model_quantize`` in the ``llama-cpp-python`` binding) makes the k-quants
and the other block types from a lossless intermediate file. What this module adds is what a pruned model needs:

- **Per-layer shapes** (a structured model pruned on a ``--layers`` range) go to llama.cpp's ``deci`` architecture
  through :mod:`._convert` (Llama family only; anything else is refused with a sentence).
- **Byte vocabularies** (byte-level BPE without merges: ``tinylm``, the random built-ins such as ``llama-130m``),
  which the converter cannot name, are written by :mod:`._convert` with llama.cpp's default pre-tokenizer (without
  merges every pre-tokenizer gives the same ids). Any other tokenizer the converter does not know is refused.
- **GLUESTICK factors** are merged into the dense weights first (``W + (V·U)ᵀ``): llama.cpp has no low-rank side
  path, so the exported file is dense and its sparsity is gone.
- **Unstructured / N:M models** export as dense matrices holding their zeros: llama.cpp has no sparse kernels.
- **Fallbacks**: k-quant blocks hold 256 values of a row; a matrix whose rows are not a multiple of 256 long is
  stored in a wider type by the quantiser. The report lists them (``--round-to 256`` at pruning keeps MLP widths in
  whole blocks).

The file is written beside ``out`` under a temporary name, loaded once in llama.cpp as a check, and only then
renamed: a failed export leaves nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..choices import GGUF_CONVERTER_TYPES, GGUF_TYPES
from ..errors import EmbodiedPruneError
from ..models.checkpoint import read_side_file, resolve_model_path, stored_dtype
from .source import converter_dir

ARCHITECTURES = ("llama", "qwen2")
K_BLOCK = 256  # values per k-quant super-block (ggml's QK_K)
_K_TYPES = {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K"}


@dataclass
class ExportReport:
    """What was exported: the file, its llama.cpp architecture and type, tensor types, and what was changed."""

    path: str
    quant: str
    architecture: str
    file_bytes: int
    tensor_types: dict[str, int]
    fallbacks: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def export_gguf(
    model: str | os.PathLike,
    out: str | os.PathLike,
    quant: str = "f16",
    overwrite: bool = False,
    threads: int | None = None,
    device: str | None = None,
    dtype=None,
) -> ExportReport:
    """Export the checkpoint ``model`` (folder or ``builtin:NAME``) to the GGUF file ``out`` of type ``quant``.

    Only a GLUESTICK-corrected model is loaded (to fold its factors into the weights): on ``device`` (default the
    CPU) in ``dtype`` (default: the checkpoint's own); the folded weights are written in the checkpoint's dtype."""
    quant = quant.lower()
    if quant not in GGUF_TYPES:
        raise EmbodiedPruneError(f"unknown GGUF type {quant!r}; choose one of: {', '.join(GGUF_TYPES)}.")
    out = Path(out)
    if out.suffix != ".gguf":
        raise EmbodiedPruneError(f"output {out} must end in .gguf (e.g. runs/controller-q8_0.gguf).")
    if out.is_dir():
        raise EmbodiedPruneError(f"output {out} is a folder; pass a file path ending in .gguf.")
    if out.exists() and not overwrite:
        raise EmbodiedPruneError(f"output {out} already exists; choose a new path or pass --overwrite.")
    folder = Path(resolve_model_path(model))
    if not folder.is_dir():
        raise EmbodiedPruneError(
            f"model {model!r} is not a local checkpoint; export takes a folder or builtin:NAME (a GGUF file is "
            "already exported)."
        )
    config = json.loads((folder / "config.json").read_text())
    kind = config.get("model_type")
    if kind not in ARCHITECTURES:
        raise EmbodiedPruneError(
            f"GGUF export supports the {', '.join(ARCHITECTURES)} families; {model} is a {kind!r} model."
        )
    side = read_side_file(folder)
    per_layer = bool(side.get("layer_shapes"))
    if per_layer and kind != "llama":
        raise EmbodiedPruneError(
            f"{model} has decoder layers of different shapes, which llama.cpp runs only for Llama-family models (its "
            "deci architecture); prune it without --layers (every layer alike) to export it."
        )
    _check_vocab(model, folder, config)
    notes = _notes(side)
    tools = converter_dir()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export.", dir=out.parent) as tmp:
        tmp = Path(tmp)
        source = folder
        from ..models.lowrank import FACTORS_FILE

        if (folder / FACTORS_FILE).is_file():
            source = tmp / "merged"
            _merge_factors(model, source, device, dtype)
            notes.append("GLUESTICK factors merged into the dense weights (llama.cpp has no low-rank side path).")
        direct = quant in GGUF_CONVERTER_TYPES  # the converter writes these itself
        first = quant if direct else _lossless_type(source)
        converted = tmp / f"model-{first}.gguf"
        _convert(tools, source, converted, first, per_layer, is_byte_vocab(source))
        final = converted
        if not direct:
            final = tmp / f"model-{quant}.gguf"
            _quantize(converted, final, quant, threads)
        arch, types, fallbacks = inspect_gguf(final, quant)
        check_runs(final)
        os.replace(final, out)
    if fallbacks:
        notes.append(
            f"{len(fallbacks)} matrices fell back to wider types: their rows ({sorted({f['row'] for f in fallbacks})} "
            f"values) are not a multiple of {K_BLOCK} long (k-quant blocks); prune with --round-to 256 to keep MLP "
            "widths in whole blocks (docs/deploy.md)."
        )
    return ExportReport(str(out), quant, arch, out.stat().st_size, types, fallbacks, notes)


def _notes(side: dict) -> list[str]:
    notes = []
    for op in side.get("history", []):
        if op.get("op") == "prune" and op.get("method") != "structured":
            notes.append(
                f"{op.get('method')} sparsity exported as dense matrices holding their zeros (llama.cpp has no "
                "sparse or 2:4 kernels): no speed-up or size gain from it in llama.cpp."
            )
            break
    return notes


def _lossless_type(folder: Path) -> str:
    """The converter type that holds ``folder``'s weights without loss (the quantiser's input)."""
    import torch

    stored = stored_dtype(folder)
    return {torch.bfloat16: "bf16", torch.float16: "f16"}.get(stored, "f32")


def _merge_factors(model: str | os.PathLike, dest: Path, device: str | None = None, dtype=None) -> None:
    """Save ``model`` with its GLUESTICK corrections folded into plain linear layers, as an ordinary folder."""
    from ..models.checkpoint import load_model, load_tokenizer, save_model
    from ..models.lowrank import merge_factors

    loaded = load_model(model, dtype=dtype, device=device)
    merge_factors(loaded)
    save_model(loaded, dest, load_tokenizer(model), dtype=stored_dtype(resolve_model_path(model)))


def _run(cmd: list[str], what: str) -> str:
    # Without NO_LOCAL_GGUF the converter puts its own gguf-py first on its path.
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        lines = [x for x in (proc.stderr + proc.stdout).strip().splitlines() if x.strip()]
        reason = next((x for x in reversed(lines) if "Error" in x or "error" in x), lines[-1] if lines else "no output")
        raise EmbodiedPruneError(f"{what} failed: {reason.strip()[:300]}")
    return proc.stderr + proc.stdout


def _check_vocab(model: str | os.PathLike, folder: Path, config: dict) -> None:
    """Refuse a tokenizer with ids past the embedding (the converter would stop on a bare assertion)."""
    from ..models.checkpoint import load_tokenizer

    tok = load_tokenizer(folder)
    if tok is None:
        raise EmbodiedPruneError(f"{model} has no tokenizer; save the model with its tokenizer to export it.")
    rows = config.get("vocab_size") or len(tok)
    extra = sorted(t for t, i in tok.get_vocab().items() if i >= rows)
    if extra:
        raise EmbodiedPruneError(
            f"the tokenizer of {model} (as transformers loads it) has tokens past the model's {rows} embedding rows "
            f"({', '.join(extra[:3])}), which llama.cpp's converter cannot write; export a model whose tokenizer "
            "fits its embedding."
        )


def is_byte_vocab(folder: Path) -> bool:
    """Whether ``folder``'s tokenizer is byte-level BPE with no merges and all 256 bytes: every byte its own token."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        return False
    spec = json.loads(path.read_text())
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    if model.get("type") != "BPE" or model.get("merges") or pre.get("type") != "ByteLevel":
        return False
    from tokenizers.pre_tokenizers import ByteLevel

    return set(ByteLevel.alphabet()) <= set(model.get("vocab", {}))


def _convert(tools: Path, source: Path, dest: Path, outtype: str, per_layer: bool, byte_vocab: bool) -> None:
    if per_layer or byte_vocab:
        script = Path(__file__).with_name("_convert.py")
        cmd = [sys.executable, str(script), str(tools), str(source), str(dest), outtype]
        cmd += ["--per-layer"] * per_layer + ["--byte-vocab"] * byte_vocab
    else:
        cmd = [sys.executable, str(tools / "convert_hf_to_gguf.py"), str(source), "--outfile", str(dest)]
        cmd += ["--outtype", outtype]
    try:
        _run(cmd, "llama.cpp's converter")
    except EmbodiedPruneError as e:
        if "pre-tokenizer was not recognized" in str(e):
            raise EmbodiedPruneError(
                f"llama.cpp's converter does not know the tokenizer of {source} (it recognises a tokenizer by its "
                "pre-tokenizer); export a model whose tokenizer llama.cpp supports (SmolLM2's, Llama 3's, Qwen2's)."
            ) from None
        raise


def _quantize(source: Path, dest: Path, quant: str, threads: int | None) -> None:
    """llama.cpp's quantiser, in a subprocess (its log goes to C-level stderr, which we keep out of the terminal)."""
    code = (
        "import ctypes, sys, llama_cpp as L\n"
        "p = L.llama_model_quantize_default_params()\n"
        f"p.ftype = L.LLAMA_FTYPE_MOSTLY_{quant.upper()}\n"
        f"p.nthread = {int(threads or 0)}\n"
        "sys.exit(L.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p)))\n"
    )
    _run([sys.executable, "-c", code, str(source), str(dest)], f"llama.cpp's quantiser ({quant})")


def inspect_gguf(path: str | os.PathLike, quant: str | None = None) -> tuple[str, dict[str, int], list[dict]]:
    """``(architecture, count of tensors by type, fallbacks)`` of a GGUF file; with a k-quant ``quant``, the
    matrices stored in a non-k type are the fallbacks (name, shape, type). A file that is not GGUF is refused."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except (ValueError, OSError, IndexError, KeyError) as e:  # gguf-py's errors for a bad magic or a cut file
        raise EmbodiedPruneError(f"{path} is not a readable GGUF file ({e}); re-export it.") from e
    field_ = reader.fields.get("general.architecture")
    arch = bytes(field_.parts[field_.data[0]]).decode() if field_ else "unknown"
    types: dict[str, int] = {}
    fallbacks = []
    wants_k = quant is not None and "_k" in quant
    for t in reader.tensors:
        name = t.tensor_type.name
        types[name] = types.get(name, 0) + 1
        shape = [int(x) for x in t.shape]
        if wants_k and len(shape) == 2 and name not in _K_TYPES:
            fallbacks.append({"tensor": t.name, "shape": shape, "type": name, "row": shape[0]})
    return arch, dict(sorted(types.items())), fallbacks


def check_runs(path: str | os.PathLike) -> None:
    """Load ``path`` in llama.cpp and evaluate one token; a file the runtime cannot run is refused with its reason."""
    code = (
        "import sys, llama_cpp as L\n"
        "m = L.Llama(model_path=sys.argv[1], n_ctx=32, n_threads=1, verbose=False)\n"
        "m.eval([m.token_bos() if m.token_bos() >= 0 else 0])\n"
    )
    _run([sys.executable, "-c", code, str(path)], f"loading {Path(path).name} in llama.cpp")
