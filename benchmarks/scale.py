"""Every verb at the sizes users prune: wall time and peak memory on this machine, Qwen2.5-1.5B to 7B and Llama-2-7B.

Random-weight checkpoints of the real shapes (``embodied_prune.models.scale``: configs written down, no hub; bf16
safetensors shards written one tensor at a time) are pruned and recovered through the command line, each verb in a
fresh process whose peak resident memory (``VmHWM``) and wall time are recorded. Cells are kept in
``benchmarks/results/scale_cells/`` and skipped when present (``--only CELL`` reruns one), so the study resumes
across sessions; checkpoints live in ``--work`` and are deleted when a shape is finished (disk: a 7 B bf16
checkpoint is 13-15 GB).

Plus the agreement of Taylor scores whose summed gradient is kept in bfloat16 with the float32 ones
(``--agreement``, on SmolLM2-135M-Instruct's real weights and real text).

python benchmarks/scale.py                      # every cell not yet measured, then the report
python benchmarks/scale.py --shapes qwen2.5-1.5b --only wanda-2:4
python benchmarks/scale.py --report             # only rebuild the section from the kept cells
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from _common import RESULTS, gib, machine, run_verb, today, write_result

HERE = Path(__file__).resolve().parent
CELLS = RESULTS / "scale_cells"
CALIB = ["--calibration", "random", "--calibration-samples", "16", "--calibration-seq-len", "256"]
# Taylor's backward passes run the whole model: float32 on this CPU (bf16 products are 5x slower here)
TAYLOR_OPTS = ["--round-to", "64", "--dtype", "float32", "--calibration", "random", "--calibration-samples", "16"]
TAYLOR_OPTS += ["--calibration-seq-len", "128"]
TAYLOR_BF16 = [*TAYLOR_OPTS, "--grad-dtype", "bfloat16"]

# (cell, argv template, output kept for a later cell of the same shape). {dense} {out} {work} are filled in.
CELLS_BY_SHAPE: dict[str, list[tuple[str, list[str]]]] = {
    "small": [
        ("structured-l2-30", ["prune", "--method", "structured", "--sparsity", "0.3", "--round-to", "64"]),
        ("wanda-2:4", ["prune", "--method", "wanda", "--pattern", "2:4", *CALIB]),
        ("sparsegpt-2:4", ["prune", "--method", "sparsegpt", "--pattern", "2:4", *CALIB]),
        (
            "structured-taylor-30",
            ["prune", "--method", "structured", "--importance", "taylor", "--sparsity", "0.3", *TAYLOR_OPTS],
        ),
        ("gluestick-r64", ["recover", "--pruned", "{work}/wanda-2:4", "--rank", "64", "--svd", "randomized"]),
        ("bench", ["bench", "--model", "{work}/structured-l2-30", "--new-tokens", "32", "--repeats", "3"]),
        (
            "structured-taylor-30-bf16-grad",
            ["prune", "--method", "structured", "--importance", "taylor", "--sparsity", "0.3", *TAYLOR_BF16],
        ),
    ],
    "large": [
        ("structured-l2-30", ["prune", "--method", "structured", "--sparsity", "0.3", "--round-to", "64"]),
        ("wanda-2:4", ["prune", "--method", "wanda", "--pattern", "2:4", *CALIB]),
        ("gluestick-r64", ["recover", "--pruned", "{work}/wanda-2:4", "--rank", "64", "--svd", "randomized"]),
    ],
}
PLAN = {
    "qwen2.5-1.5b": CELLS_BY_SHAPE["small"],
    "qwen2.5-3b": CELLS_BY_SHAPE["large"],
    "qwen2.5-7b": CELLS_BY_SHAPE["large"],
    "llama-2-7b": CELLS_BY_SHAPE["large"],
}


def measure_shape(shape: str, work: Path, only: str | None) -> None:
    from embodied_prune.models.scale import write_random_checkpoint

    dense = work / shape / "dense"
    todo = [(c, argv) for c, argv in PLAN[shape] if only in (None, c) and not (CELLS / f"{shape}--{c}.json").exists()]
    if not todo:
        return
    if not (dense / "config.json").exists():
        t0 = time.perf_counter()
        write_random_checkpoint(shape, dense, overwrite=True, progress=False)
        print(f"{shape}: random bf16 checkpoint written in {time.perf_counter() - t0:.0f} s", flush=True)
    for cell, template in PLAN[shape]:
        if (cell, template) not in todo:
            continue
        out = work / shape / cell
        shutil.rmtree(out, ignore_errors=True)
        argv = [a.replace("{work}", str(work / shape)) for a in template]
        if argv[0] == "prune":
            argv += ["--model", str(dense), "--out", str(out)]
        elif argv[0] == "recover":
            if not (work / shape / "wanda-2:4" / "config.json").exists():
                print(f"{shape}: {cell} needs the wanda-2:4 cell's output; rerun that cell first", flush=True)
                continue
            argv += ["--dense", str(dense), "--out", str(out)]
        elif argv[0] == "bench":
            argv = ["bench", "--model", str(dense), *argv[1:]]
        argv += ["--device", "cpu", "-q"]
        print(f"{shape}: {cell} ...", flush=True)
        result = run_verb(argv, work / shape / f"{cell}.log")
        record = {"shape": shape, "cell": cell, "argv": ["embodied-prune", *argv], **result}
        if argv[0] == "bench" and result["rc"] == 0:
            record["bench"] = (work / shape / f"{cell}.log").read_text()
        record |= {"machine": machine(), "date": today()}
        CELLS.mkdir(parents=True, exist_ok=True)
        (CELLS / f"{shape}--{cell}.json").write_text(json.dumps(record, indent=2) + "\n")
        print(f"{shape}: {cell} rc {result['rc']}, {result['wall_s']:.0f} s, peak {gib(result['peak_rss_bytes'])}")


def agreement() -> dict:
    """Taylor param_first scores of SmolLM2-135M-Instruct (real weights, 16 × 128 tokens of real text, 4 batches)
    with the summed gradient kept in bfloat16 vs float32: per-matrix rank correlation of channel scores and the
    overlap of the heads and MLP channels a 30 % prune keeps."""
    import torch

    from embodied_prune.models.adapters import ROLES, adapter_for
    from embodied_prune.models.checkpoint import load_model, load_tokenizer
    from embodied_prune.pruning.calibration import calibration_ids, taylor_pass
    from embodied_prune.pruning.importance import TaylorImportance
    from embodied_prune.pruning.structured import plan_structured

    spec = "builtin:smollm2-135m-instruct"
    model, tok = load_model(spec), load_tokenizer(spec)
    ids = calibration_ids("builtin:python-docstrings", 16, 128, model.config.vocab_size, tok, seed=0)
    adapter = adapter_for(model)
    n = len(adapter.get_layers(model))
    names = [f"{adapter.layers}.{i}.{getattr(adapter, r)}.weight" for i in range(n) for r in ROLES]
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    accs = {
        k: taylor_pass(model, ids, names, "param_first", 4, grad_dtype=d, progress=False) for k, d in dtypes.items()
    }
    weights = dict(model.named_parameters())

    def ranks(x: torch.Tensor) -> torch.Tensor:
        return torch.argsort(torch.argsort(x)).double()

    corr = []
    for name in names:
        dim = 1 if name.endswith(("o_proj.weight", "down_proj.weight")) else 0
        a, b = (accs[d].scores(name, weights[name], dim) for d in accs)
        ra, rb = ranks(a), ranks(b)
        corr.append(float(torch.corrcoef(torch.stack([ra, rb]))[0, 1]))
    plans = {
        d: plan_structured(model, 0.3, TaylorImportance("param_first"), adapter=adapter, taylor=acc)
        for d, acc in accs.items()
    }
    mlp = [len(set(a.mlp_keep) & set(b.mlp_keep)) / len(a.mlp_keep) for a, b in zip(*plans.values(), strict=True)]
    heads = [len(set(a.q_keep) & set(b.q_keep)) / len(a.q_keep) for a, b in zip(*plans.values(), strict=True)]
    return {
        "model": spec,
        "spearman_min": min(corr),
        "spearman_mean": sum(corr) / len(corr),
        "mlp_kept_overlap_mean": sum(mlp) / len(mlp),
        "mlp_kept_overlap_min": min(mlp),
        "heads_kept_overlap_mean": sum(heads) / len(heads),
        "bytes_f32": accs["float32"].nbytes(),
        "bytes_bf16": accs["bfloat16"].nbytes(),
    }


def report(wall_s: float) -> None:
    cells = [json.loads(p.read_text()) for p in sorted(CELLS.glob("*--*.json"))]
    order = {s: i for i, s in enumerate(PLAN)}
    cells.sort(key=lambda c: (order.get(c["shape"], 99), [x for x, _ in PLAN[c["shape"]]].index(c["cell"])))
    rows = [
        "| shape | cell | wall | peak anonymous memory | peak RSS (VmHWM) | exit |",
        "|---|---|---|---|---|---|",
    ]
    for c in cells:
        rows.append(
            f"| {c['shape']} | {c['cell']} | {c['wall_s'] / 60:.1f} min | {gib(c.get('peak_anon_bytes'))} "
            f"| {gib(c['peak_rss_bytes'])} | {c['rc']} |"
        )
    commands = sorted({" ".join(c["argv"][:3]) + " …" for c in cells})
    extra = ""
    for c in cells:
        if c.get("bench"):
            table = [line for line in c["bench"].splitlines() if line.startswith("|")]
            how = "float32 on this CPU, batch 1, prompt 64, 32 new tokens, median of 3"
            extra += f"\n\n`bench` on {c['shape']} ({how}):\n\n"
            extra += "\n".join(table)
    agree = CELLS / "agreement.json"
    if agree.exists():
        a = json.loads(agree.read_text())
        extra += (
            f"\n\nTaylor (param_first) with the summed gradient kept in bfloat16 instead of float32, on {a['model']} "
            f"(real weights; 16 × 128 tokens of builtin:python-docstrings in 4 batches): channel-score rank "
            f"correlation per matrix mean {a['spearman_mean']:.4f} (min {a['spearman_min']:.4f}); of the MLP channels "
            f"a 30 % prune keeps, {100 * a['mlp_kept_overlap_mean']:.1f} % are the same (worst layer "
            f"{100 * a['mlp_kept_overlap_min']:.1f} %), of the query heads {100 * a['heads_kept_overlap_mean']:.1f} %; "
            f"memory {a['bytes_f32'] / 2**20:.0f} → {a['bytes_bf16'] / 2**20:.0f} MiB."
        )
    dates = sorted({c["date"] for c in cells})
    machines = sorted({c["machine"] for c in cells})
    body = (
        "Random-weight bf16 checkpoints of the published shapes (`embodied_prune.models.scale`), each verb in a fresh "
        "process on the CPU (`benchmarks/_verb_peak.py`), `--dtype auto` (the bf16 weights are held as stored; "
        "per-layer maths in float32) except Taylor (`--dtype float32`: its backward passes run the whole model, and "
        "bf16 products are 5x slower on this CPU). Cells: structured L2 / Taylor at 30 % (`--round-to 64`), Wanda and "
        "SparseGPT 2:4 (16 × 256 random calibration tokens; Taylor 16 × 128 in 2 batches), GLUESTICK rank 64 "
        "(randomized SVD) on the Wanda 2:4 model, and bench (float32, batch 1) of dense vs structured 30 %. "
        "**Peak anonymous memory** is the most the process itself held (`RssAnon`, sampled every 50 ms): what must "
        "fit in RAM. **Peak RSS** (`VmHWM`) also counts the pages of the checkpoint files, which transformers maps "
        "rather than reads (clean page cache the kernel drops under pressure); cells measured before the sampler "
        "existed show only it.\n\n"
        + "\n".join(rows)
        + "\n\nCommands (each cell's full command line is in `benchmarks/results/scale_cells/`): "
        + ", ".join(f"`{c}`" for c in commands)
        + extra
        + f"\n\nCells measured on {', '.join(dates)}; machine: {'; '.join(machines)}."
    )
    write_result(
        "scale",
        "Every verb at real sizes (Qwen2.5-1.5B/3B/7B, Llama-2-7B) on 2 cores and 24 GB",
        body,
        {"cells": cells},
        wall_s,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=list(PLAN), choices=list(PLAN))
    ap.add_argument("--only", help="run only this cell (e.g. wanda-2:4), even if it was measured")
    ap.add_argument("--work", default=str(HERE.parent / "runs" / "scale"), help="where checkpoints are written")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints of finished shapes")
    ap.add_argument("--agreement", action="store_true", help="measure bf16 vs float32 Taylor agreement")
    ap.add_argument("--report", action="store_true", help="only rebuild the section from the kept cells")
    a = ap.parse_args()
    t0 = time.time()
    if a.agreement:
        CELLS.mkdir(parents=True, exist_ok=True)
        (CELLS / "agreement.json").write_text(json.dumps(agreement(), indent=2) + "\n")
    if not a.report:
        work = Path(a.work)
        for shape in a.shapes:
            if a.only:
                (CELLS / f"{shape}--{a.only}.json").unlink(missing_ok=True)
            measure_shape(shape, work, a.only)
            if not a.keep and all((CELLS / f"{shape}--{c}.json").exists() for c, _ in PLAN[shape]):
                shutil.rmtree(work / shape, ignore_errors=True)
    report(time.time() - t0)


if __name__ == "__main__":
    main()
