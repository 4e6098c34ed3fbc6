"""The BPF study on the driving controller: pruning during training against every baseline, in closed loop.

Runs ``embodied-prune experiment bpf`` with ``configs/bpf.yaml`` (dense, the smaller dense sizes, PTP,
PTP + RL, SFT-stage, BPF-RL and BPF-SFT/RL at each sparsity and seed, equal GRPO budgets), then adds what
the paper's claims need: at each sparsity, paired differences between the pruned strategies in the
paper's order (BPF-SFT/RL, BPF-RL, PTP + RL, PTP, SFT-stage) with 95 % bootstrap CIs over instructions,
and each controller's decode speed relative to dense. The run takes many hours on 2 cores, so it always
resumes: trained controllers and evaluated cells of an earlier run of the same config in ``--out`` are kept
(``--overwrite`` starts afresh).

The full run outlasts one working session, and ``runs/`` is not kept between sessions, so the evaluated cells
(a few kB each) are also kept in ``--cells`` (committed, ``benchmarks/results/bpf_cells``): they are copied
into ``--out`` before the run and back after it, even when it is interrupted, and every invocation is logged
there (``sessions.jsonl``: start, end, machine, cells evaluated). A later session so goes on with the seeds
not yet evaluated; decode speed is timed on the controllers of a seed trained in the final session (the
structures, so the speeds, are the same for every seed). The report's compute time is the sum of the cells'
own training and evaluation seconds.

python benchmarks/bpf_study.py [--config configs/bpf.yaml] [--out runs/bpf] [--cells DIR] [--overwrite]
python benchmarks/bpf_study.py --ship   # copy seed 0's 50 % controllers from --out into the package
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from itertools import combinations
from pathlib import Path

from _common import RESULTS, CellStore, study_parser, write_result
from embodied_prune.errors import EmbodiedPruneError
from embodied_prune.evaluation.stats import paired_diff_ci
from embodied_prune.experiments.bpf import PRUNED, bpf_report, cell_name, load_config
from embodied_prune.experiments.common import open_run_folder, slug

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "src" / "embodied_prune" / "assets"
PAPER_ORDER = ("bpf_sftrl", "bpf_rl", "ptp_rl", "ptp", "sft_stage")  # best first, as the paper reports


def seed_averaged(cells: list[dict]) -> list[float | None]:
    """Per-instruction relative error reductions averaged over seeds (None where every seed failed to score)."""
    out = []
    for values in zip(*(c["reductions"] for c in cells), strict=True):
        ok = [v for v in values if v is not None]
        out.append(sum(ok) / len(ok) if ok else None)
    return out


def pairwise_lines(out: Path, cfg: dict) -> list[str]:
    """Paired adaptability differences between the pruned strategies at each sparsity, in points."""
    lines = []
    for sparsity in cfg["sparsities"]:
        present = [s for s in PAPER_ORDER if s in cfg["strategies"] and s in PRUNED]
        red = {}
        for s in present:
            name = cell_name(s, sparsity, None)
            cells = [json.loads((out / "cells" / f"{slug(name)}-seed{seed}.json").read_text()) for seed in cfg["seeds"]]
            red[s] = seed_averaged(cells)
        lines.append(f"\nAt {sparsity:.0%} (A − B, points, paired over instructions, 95 % CI):\n")
        for a, b in combinations(present, 2):
            pairs = [(x, y) for x, y in zip(red[a], red[b], strict=True) if x is not None and y is not None]
            diff, lo, hi = paired_diff_ci([100 * y for _, y in pairs], [100 * x for x, _ in pairs])
            verdict = "A better" if lo > 0 else "B better" if hi < 0 else "not separated"
            lines.append(f"- {a} − {b}: {diff:+.1f} [{lo:+.1f}, {hi:+.1f}] ({verdict}; {len(pairs)} instructions)")
    return lines


def compute_hours(out: Path) -> tuple[float, float]:
    """Training and evaluation hours summed over the evaluated cells (each training stage counted once)."""
    rows = [json.loads(c.read_text()) for c in (out / "cells").glob("*-seed*.json")]
    return sum(r.get("train_s", 0.0) for r in rows) / 3600, sum(r.get("eval_s", 0.0) for r in rows) / 3600


def ship(out: Path, cfg: dict, sparsity: float = 0.5, seed: int = 0) -> list[str]:
    """Copy the final controllers of the built-in strategies (``BPF_SHIPPED``) at ``sparsity`` (one seed) from
    ``out`` into the package as ``driving-<size>-<strategy>-<pct>``; every one must be on disk before any is copied."""
    from embodied_prune.io import atomic_dir
    from embodied_prune.models.builtin import BPF_SHIPPED

    pct = round(sparsity * 100)
    src = {}
    for key in BPF_SHIPPED:
        strategy = key.replace("-", "_")
        cell = out / "cells" / f"{slug(cell_name(strategy, sparsity, None))}-seed{seed}.json"
        model = out / json.loads(cell.read_text())["model"] if cell.is_file() else None
        if model is None or not (model / "config.json").is_file():
            raise EmbodiedPruneError(
                f"{strategy} at {pct} % (seed {seed}) is not trained under {out}; run this script first."
            )
        src[f"driving-{cfg['size']}-{key}-{pct}"] = model
    for name, model in src.items():
        with atomic_dir(ASSETS / name, overwrite=True) as tmp:
            for f in model.iterdir():
                if f.is_file():
                    shutil.copy(f, tmp / f.name)
        print(f"shipped {model} as builtin:{name}")
    return list(src)


def main() -> None:
    ap = study_parser(__doc__, config="bpf.yaml", out="bpf", cells="bpf_cells")
    ap.add_argument("--ship", action="store_true", help="only copy seed 0's 50 %% controllers into the package")
    a = ap.parse_args()
    if a.ship:
        ship(Path(a.out), load_config(a.config))
        return
    from embodied_prune.experiments.bpf import run_bpf_experiment

    t0 = time.time()
    cfg, store = load_config(a.config), CellStore(a.cells, "*-seed*.json")
    if not a.overwrite:
        store.check(cfg, EmbodiedPruneError)
    out = open_run_folder(a.out, cfg, a.overwrite, "cells", same_config=True)  # refuses another config's folder
    # the evaluated cells are saved into the store even when the run fails or is killed
    store.run(out, cfg, a.overwrite, lambda: run_bpf_experiment(a.config, out))
    summary = json.loads((out / "summary.json").read_text())
    cfg, cells = summary["config"], summary["strategies"]
    dense_speed = next(e["decode_tokens_per_s"] for e in cells if e["cell"] == "dense")
    speed = [f"- {e['cell']}: {e['decode_tokens_per_s'] / dense_speed:.2f}× dense" for e in cells[1:]]
    train_h, eval_h = compute_hours(out)
    sessions, log = len(store.sessions()), os.path.relpath(store.folder / "sessions.jsonl", ROOT)
    RESULTS.mkdir(parents=True, exist_ok=True)
    for plot in ("adaptability_vs_params.png", "decode_speed.png"):
        shutil.copy(out / plot, RESULTS / f"bpf_{plot}")
    body = (
        bpf_report(cells, cfg)
        + "\n".join(pairwise_lines(out, cfg))
        + "\n\nDecode speed relative to dense (same side-by-side run):\n\n"
        + "\n".join(speed)
        + f"\n\nController size {cfg['size']}; GRPO {cfg['grpo'] or 'shipped recipe'} in every RL stage; pruning "
        f"{cfg['pruning']}. Compute: {train_h:.2f} h of training and {eval_h:.2f} h of closed-loop evaluation, "
        f"summed over the cells, in {sessions} invocation(s) of the command (logged with their machines in "
        f"{log}; the command's own time below covers only the last). "
        "Plots: benchmarks/results/bpf_adaptability_vs_params.png, bpf_decode_speed.png.\n"
    )
    title = "BPF: pruning during training vs every baseline (driving controller)"
    write_result("bpf_study", title, body, summary, time.time() - t0)


if __name__ == "__main__":
    try:
        main()
    except EmbodiedPruneError as e:
        sys.exit(f"error: {e}")
