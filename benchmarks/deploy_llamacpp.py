"""Deployment in llama.cpp: what GGUF quantisation costs the SmolLM2 controller in closed loop, and how much faster
structured pruning makes it decode in the runtime the robot uses.

1. **Closed loop**: ``builtin:driving-smollm2-grpo`` (dense), its 30 % structured version (``prune --method
   structured --sparsity 0.3 --round-to 256``, post-training, no recovery) and that pruned model recovered by the
   pretrained controller's own LoRA SFT recipe (``train driving --stage sft --base PRUNED``: 1,200 parameter + 400
   decision examples once, LoRA rank 8, merged) in PyTorch (float32) and as f16, q8_0 and q4_k_m GGUF files through
   llama.cpp (greedy, batch 1, 2 threads), on the 200-instruction test split in each
   instruction's own traffic: adaptability (bootstrap CI over instructions), all constraints met (Wilson CI), parse
   failures, and each GGUF file's paired difference against the same model in PyTorch.
2. **Decode**: SmolLM2-135M-Instruct and the random ``builtin:llama-130m`` (hidden 1024, 8 layers, vocabulary 4,096:
   nearly all of its weights are in the decoder layers, where SmolLM2 keeps a fifth of its 135 M in the
   49,152-token embedding), dense vs 25 % and 50 % structured
   (``--round-to 256``), as f16, q8_0 and q4_k_m, all interleaved in one ``bench --backend llama.cpp`` run:
   prefill, decode tokens/s, per-token p50 / p99, peak memory, and the speed-up over the dense file of the same
   type beside the ratio of weight bytes (the memory-bound limit: decode at batch 1 reads every weight once per
   token, so it cannot speed up more than the file shrinks).

Every artefact goes to ``runs/deploy/``; every closed-loop cell to ``benchmarks/results/deploy_cells/`` as soon as it
is measured (an interrupted run resumes).

python benchmarks/deploy_llamacpp.py [--limit N] [--only loop|decode]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import RESULTS, write_result
from embodied_prune.api import prune
from embodied_prune.bench.llamacpp import bench_gguf
from embodied_prune.deploy.export import export_gguf
from embodied_prune.deploy.runtime import ChatTemplate, LlamaCppModel
from embodied_prune.envs.driving.instructions import generate_split
from embodied_prune.envs.driving.scoring import ClosedLoopScorer
from embodied_prune.evaluation.driving import evaluate_driving
from embodied_prune.evaluation.report import human_bytes, markdown_table, percent_ci
from embodied_prune.evaluation.stats import paired_diff_ci
from embodied_prune.io import atomic_write_text
from embodied_prune.models.checkpoint import load_model, load_tokenizer

RUNS = Path("runs/deploy")
CELLS = RESULTS / "deploy_cells"
QUANTS = ("f16", "q8_0", "q4_k_m")
THREADS = 2


def _pruned(spec: str, sparsity: float, name: str) -> Path:
    out = RUNS / name
    if not (out / "config.json").is_file():
        prune(spec, "structured", sparsity, round_to=256, out=out, overwrite=True, progress=False)
    return out


def _recovered(pruned: Path, name: str) -> Path:
    """``pruned`` after the pretrained controller's LoRA SFT recipe (~25 min on 2 cores; resumes if interrupted)."""
    from embodied_prune.training.driving import SFTSettings, train_sft

    out = RUNS / name
    if not (out / "config.json").is_file():
        train_sft(
            out, SFTSettings.pretrained(str(pruned)), overwrite=True, progress=False, checkpoint_every=20, resume=True
        )
    return out


def _gguf(folder: str | Path, quant: str, name: str) -> Path:
    out = RUNS / f"{name}-{quant}.gguf"
    if not out.is_file():
        export_gguf(folder, out, quant, overwrite=True)
    return out


def closed_loop(limit: int) -> dict:
    instructions = generate_split("test", limit)
    dense = "builtin:driving-smollm2-grpo"
    pruned = _pruned(dense, 0.3, "smol-grpo-s30")
    models = {
        "dense": dense,
        "structured-30": str(pruned),
        "structured-30-sft": str(_recovered(pruned, "smol-grpo-s30-sft")),
    }
    tok = load_tokenizer(dense)
    scorer = ClosedLoopScorer(2)
    cells = {}
    CELLS.mkdir(parents=True, exist_ok=True)
    try:
        for name, spec in models.items():
            for runtime in ("torch", *QUANTS):
                key = f"{name}-{runtime}"
                path = CELLS / f"{key}-{limit}.json"
                if path.is_file():
                    cells[key] = json.loads(path.read_text())
                    continue
                if runtime == "torch":
                    model, fmt = load_model(spec), tok
                else:
                    model = LlamaCppModel(_gguf(spec, runtime, f"smol-grpo-{name}"), threads=THREADS)
                    fmt = ChatTemplate(model.chat_template)
                t0 = time.time()
                report = evaluate_driving(model, fmt, instructions, name=key, progress=False, scorer=scorer)
                d = report.to_dict() | {"wall_s": time.time() - t0, "controller": name, "runtime": runtime}
                if runtime != "torch":
                    model.close()
                atomic_write_text(path, json.dumps(d) + "\n")
                cells[key] = d
                print(f"{key}: adaptability {d['adaptability']:.3f}, {d['wall_s']:.0f} s", flush=True)
    finally:
        scorer.close()
    return cells


def loop_table(cells: dict) -> str:
    rows = []
    for d in cells.values():
        name, runtime = d["controller"], d["runtime"]
        ref = cells[f"{name}-torch"]
        diff = "—"
        if runtime != "torch":
            pairs = [(a, b) for a, b in zip(ref["reductions"], d["reductions"], strict=True) if None not in (a, b)]
            m, lo, hi = paired_diff_ci([a for a, _ in pairs], [b for _, b in pairs])
            diff = f"{100 * m:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"
        rows.append(
            {
                "model": name,
                "runtime": "PyTorch float32" if runtime == "torch" else f"llama.cpp {runtime}",
                "adapt": percent_ci(d["adaptability"], d["ci95"]),
                "sat": percent_ci(d["satisfied"], d["satisfied_ci95"]),
                "parse": d["parse_failures"],
                "diff": diff,
            }
        )
    return markdown_table(
        rows,
        [
            ("model", "controller"),
            ("runtime", "runtime"),
            ("adapt", "adaptability (95 % CI)"),
            ("sat", "all constraints met"),
            ("parse", "parse failures"),
            ("diff", "− PyTorch, points (paired 95 % CI)"),
        ],
    )


def decode() -> list[dict]:
    files = {}
    for base, label in (("builtin:smollm2-135m-instruct", "smollm2"), ("builtin:llama-130m", "llama130m")):
        variants = {"dense": base}
        for s in (0.25, 0.5):
            variants[f"s{int(100 * s)}"] = str(_pruned(base, s, f"{label}-s{int(100 * s)}"))
        for v, spec in variants.items():
            for q in QUANTS:
                files[f"{label}-{v}-{q}"] = str(_gguf(spec, q, f"{label}-{v}"))
    rows = [r.to_dict() for r in bench_gguf(files, 64, 64, repeats=5, warmup=1, threads=THREADS, progress=False)]
    by = {r["model"]: r for r in rows}
    for r in rows:
        label, _, q = r["model"].split("-")
        d = by[f"{label}-dense-{q}"]
        r["speedup"] = r["decode_tokens_per_s"] / d["decode_tokens_per_s"]
        r["bytes_ratio"] = d["file_bytes"] / r["file_bytes"]
    return rows


def decode_table(rows: list[dict]) -> str:
    table = [
        r
        | {
            "file": human_bytes(r["file_bytes"]),
            "peak": human_bytes(r["peak_memory_bytes"]),
            "speedup": f"{r['speedup']:.2f}",
            "limit": f"{r['bytes_ratio']:.2f}",
        }
        for r in rows
    ]
    return markdown_table(
        table,
        [
            ("model", "file"),
            ("params", "weights"),
            ("file", "size"),
            ("prefill_ms", "prefill ms (64)"),
            ("decode_tokens_per_s", "decode tok/s"),
            ("token_ms_p50", "token ms p50"),
            ("token_ms_p99", "p99"),
            ("speedup", "× dense (same type)"),
            ("limit", "dense bytes / bytes"),
            ("peak", "peak memory"),
        ],
    )


def decode_summary(rows: list[dict]) -> str:
    """One line: how the pruned files' speed-ups compare with their weight-bytes ratios."""
    ratios = [r["speedup"] / r["bytes_ratio"] for r in rows if "-dense-" not in r["model"]]
    return (
        "Dense bytes / bytes is the memory-bound expectation (at batch 1 decode reads every weight once per token); "
        f"the pruned files' speed-up divided by it ranges {min(ratios):.2f}–{max(ratios):.2f} (above 1: faster than "
        "the bytes alone predict)."
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=200, help="test instructions (default 200)")
    p.add_argument("--only", choices=["loop", "decode"], help="one part only")
    a = p.parse_args()
    RUNS.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    data, body = {}, []
    if a.only in (None, "loop"):
        data["closed_loop"] = closed_loop(a.limit)
        slim = {k: {x: v[x] for x in v if x not in ("per_instruction",)} for k, v in data["closed_loop"].items()}
        data["closed_loop"] = slim
        body += [f"Closed loop, {a.limit} test instructions, own traffic, 1 episode each:", "", loop_table(slim), ""]
    if a.only in (None, "decode"):
        data["decode"] = decode()
        body += [f"Decode in llama.cpp, batch 1, {THREADS} threads, median of 5:", "", decode_table(data["decode"])]
        body += ["", decode_summary(data["decode"])]
    write_result(
        f"deploy_llamacpp{'_' + a.only if a.only else ''}",
        "Deployment in llama.cpp",
        "\n".join(body),
        data,
        time.time() - t0,
        models=["builtin:driving-smollm2-grpo", "builtin:smollm2-135m-instruct", "builtin:llama-130m"],
    )


if __name__ == "__main__":
    main()
