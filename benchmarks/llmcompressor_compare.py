"""Our one-shot Wanda and SparseGPT against llm-compressor's, on the same model and calibration batches.

llm-compressor 0.14 pins transformers <= 5.17, so it lives in its own virtual environment
(``make llmc-venv`` creates ``.venv-llmc`` with torch==2.13.0 first, then ``llmcompressor``); this
script runs it there through ``_llmc_oneshot.py`` and compares in ours. Both sides prune every decoder
linear of the same checkpoint at 50 % unstructured and 2:4, from the same calibration ids (``--text corpus``:
corpus text of seed 1; ``--text real``: ``builtin:python-docstrings``), sequentially layer by layer, SparseGPT
with damping 0.01 and block 128. Layer error is ‖(W − W')X‖² / ‖WX‖² per linear layer with X the *dense*
model's inputs to that layer on held-out text (corpus seed 2, or windows of ``builtin:python-topics``), averaged
over layers; KL is the model output's KL to dense on the same text. Wall time is the pruning call alone (model
loading excluded), one run each.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from _common import write_result
from embodied_prune.data.corpus import instruction_corpus
from embodied_prune.data.texts import python_topics
from embodied_prune.evaluation.fidelity import layer_output_error, logit_fidelity
from embodied_prune.evaluation.report import markdown_table
from embodied_prune.models import adapter_for, builtin_path, load_model, load_tokenizer
from embodied_prune.pruning import prune_unstructured
from embodied_prune.pruning.calibration import calibration_ids, spread_windows, text_ids

ROOT = Path(__file__).resolve().parent.parent


def corpus_ids(tok, seed: int, n: int, seq_len: int) -> torch.Tensor:
    ids = torch.tensor(tok(instruction_corpus(60 * n, seed=seed))["input_ids"])
    return ids[: n * seq_len].reshape(n, seq_len)


@torch.no_grad()
def dense_layer_inputs(model, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    adapter = adapter_for(model)
    names = adapter.linear_names(model)
    modules = dict(model.named_modules())
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    hooks = [
        modules[n].register_forward_hook(lambda _m, i, _o, n=n: seen[n].append(i[0].reshape(-1, i[0].shape[-1])))
        for n in names
    ]
    model(input_ids=ids)
    for h in hooks:
        h.remove()
    return {n: torch.cat(v) for n, v in seen.items()}


def mean_layer_error(dense, pruned, inputs: dict[str, torch.Tensor]) -> float:
    d, p = dict(dense.named_modules()), dict(pruned.named_modules())
    errs = [layer_output_error(d[n].weight, p[n].weight, x) for n, x in inputs.items()]
    return sum(errs) / len(errs)


def real_ids(tok, n: int, seq_len: int, held_out: bool) -> torch.Tensor:
    """``n`` windows of real text: evenly spaced over the held-out topics, or seeded calibration windows."""
    if not held_out:
        return calibration_ids("builtin:python-docstrings", n, seq_len, tokenizer=tok, seed=1)
    return spread_windows(text_ids(python_topics(), tok), n, seq_len)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["builtin:tinylm", "builtin:qwen2-30m"])
    ap.add_argument("--text", choices=("corpus", "real"), default="corpus", help="calibration and held-out text")
    ap.add_argument("--name", default="llmcompressor_compare", help="results name")
    ap.add_argument("--llmc-python", default=os.environ.get("LLMC_PYTHON", str(ROOT / ".venv-llmc" / "bin" / "python")))
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=128)
    a = ap.parse_args(argv)
    if not Path(a.llmc_python).exists():
        raise SystemExit(f"no llm-compressor environment at {a.llmc_python}; run `make llmc-venv` first.")
    t0 = time.time()
    sections, data = [], []
    versions = {}
    for spec in a.models:
        folder = builtin_path(spec.removeprefix("builtin:")) if spec.startswith("builtin:") else Path(spec)
        tok = load_tokenizer(spec)
        if a.text == "real":
            calib, heldout = real_ids(tok, a.samples, a.seq_len, False), real_ids(tok, 16, a.seq_len, True)
        else:
            calib, heldout = corpus_ids(tok, 1, a.samples, a.seq_len), corpus_ids(tok, 2, 16, a.seq_len)
        dense = load_model(spec)
        inputs = dense_layer_inputs(dense, heldout)
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            save_file({"input_ids": calib.contiguous()}, f"{tmp}/calib.safetensors")
            proc = subprocess.run(
                [
                    a.llmc_python,
                    str(Path(__file__).parent / "_llmc_oneshot.py"),
                    str(folder),
                    f"{tmp}/calib.safetensors",
                    f"{tmp}/llmc",
                ],
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                raise SystemExit(f"llm-compressor failed:\n{proc.stderr[-3000:]}")
            llmc = json.loads(proc.stdout.strip().splitlines()[-1])
            versions = {k: llmc[k] for k in ("llmcompressor", "transformers")}
            for method in ("wanda", "sparsegpt"):
                for pattern in (None, (2, 4)):
                    key = f"{method}-{'2of4' if pattern else '50'}"
                    ours = load_model(spec)
                    t = time.perf_counter()
                    prune_unstructured(
                        ours, method, 0.5, pattern=pattern, calibration=calib, batch_size=8, progress=False
                    )
                    ours_wall = time.perf_counter() - t
                    theirs = AutoModelForCausalLM.from_pretrained(f"{tmp}/llmc/{key}", dtype=torch.float32).eval()
                    for who, model, wall in (
                        ("embodied-prune", ours, ours_wall),
                        ("llm-compressor", theirs, llmc["wall_s"][key]),
                    ):
                        zeros = sum(int((dict(model.named_modules())[n].weight == 0).sum()) for n in inputs)
                        total = sum(dict(model.named_modules())[n].weight.numel() for n in inputs)
                        rows.append(
                            {
                                "method": f"{method} {'2:4' if pattern else '50%'}",
                                "implementation": who,
                                "sparsity": zeros / total,
                                "layer_error": mean_layer_error(dense, model, inputs),
                                "kl": logit_fidelity(dense, model, heldout).kl,
                                "wall_s": wall,
                            }
                        )
        data.append({"model": spec, "rows": rows})
        sections.append(
            f"### {spec}\n\n"
            + markdown_table(
                rows,
                [
                    ("method", "method"),
                    ("implementation", "implementation"),
                    ("sparsity", "decoder sparsity"),
                    ("layer_error", "mean layer error"),
                    ("kl", "KL to dense"),
                    ("wall_s", "wall s"),
                ],
            )
        )
    text = (
        "calibration: `builtin:python-docstrings`, held-out: 16 windows spread over `builtin:python-topics`"
        if a.text == "real"
        else "calibration: corpus text of seed 1, held-out: 16 sequences of corpus seed 2"
    )
    body = (
        f"Same checkpoint, same calibration ids ({text}; "
        f"{a.samples} × {a.seq_len} tokens), same sparsity, both sequential layer by layer. llm-compressor "
        f"{versions.get('llmcompressor')} ran with transformers {versions.get('transformers')} in its own venv "
        "(it pins transformers <= 5.17), ours with the version named below. SparseGPT: damping 0.01, block 128. "
        "Layer error is ‖(W − W')X‖² / ‖WX‖² per decoder linear with X the dense model's inputs to that layer on "
        "the held-out sequences, averaged over layers; KL is the output's KL to dense on the same "
        "text; wall time is the pruning call alone (loading excluded), one run each.\n\n" + "\n\n".join(sections)
    )
    title = "Wanda and SparseGPT: embodied-prune vs llm-compressor"
    if a.name != "llmcompressor_compare":
        title += f" ({', '.join(a.models)})"
    write_result(a.name, title, body, data, time.time() - t0)


if __name__ == "__main__":
    main()
