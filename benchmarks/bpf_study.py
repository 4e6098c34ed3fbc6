"""The BPF study on the driving controller: pruning during training against every baseline, in closed loop.

Runs ``embodied-prune experiment bpf`` with ``configs/bpf.yaml`` (dense, the smaller dense sizes, PTP,
PTP + RL, SFT-stage, BPF-RL and BPF-SFT/RL at each sparsity and seed, equal GRPO budgets), then adds what
the paper's claims need: at each sparsity, paired differences between the pruned strategies in the
paper's order (BPF-SFT/RL, BPF-RL, PTP + RL, PTP, SFT-stage) with 95 % bootstrap CIs over instructions,
and each controller's decode speed relative to dense. The run takes many hours on 2 cores, so it always
resumes: trained controllers and evaluated cells of an earlier run of the same config in ``--out`` are kept
(``--overwrite`` starts afresh); the report states the summed training time recorded in the controllers'
checkpoints.

python benchmarks/bpf_study.py [--config configs/bpf.yaml] [--out runs/bpf] [--overwrite]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from itertools import combinations
from pathlib import Path

from _common import RESULTS, write_result
from embodied_prune.evaluation.stats import paired_diff_ci
from embodied_prune.experiments.bpf import PRUNED, bpf_report, cell_name
from embodied_prune.experiments.common import slug

ROOT = Path(__file__).resolve().parent.parent
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


def training_minutes(out: Path) -> float:
    """Wall minutes of every training stage, as recorded in the trained controllers' side files."""
    total = 0.0
    for side in (out / "models").glob("*/embodied_prune.json"):
        total += sum(h.get("wall_s", 0.0) for h in json.loads(side.read_text()).get("history", []))
    return total / 60


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "bpf.yaml"))
    ap.add_argument("--out", default=str(ROOT / "runs" / "bpf"))
    ap.add_argument("--overwrite", action="store_true", help="start afresh instead of resuming")
    a = ap.parse_args()
    from embodied_prune.experiments.bpf import run_bpf_experiment

    t0 = time.time()
    out = run_bpf_experiment(a.config, a.out, overwrite=a.overwrite)
    summary = json.loads((out / "summary.json").read_text())
    cfg, cells = summary["config"], summary["strategies"]
    dense_speed = next(e["decode_tokens_per_s"] for e in cells if e["cell"] == "dense")
    speed = [f"- {e['cell']}: {e['decode_tokens_per_s'] / dense_speed:.2f}× dense" for e in cells[1:]]
    RESULTS.mkdir(parents=True, exist_ok=True)
    for plot in ("adaptability_vs_params.png", "decode_speed.png"):
        shutil.copy(out / plot, RESULTS / f"bpf_{plot}")
    body = (
        bpf_report(cells, cfg)
        + "\n".join(pairwise_lines(out, cfg))
        + "\n\nDecode speed relative to dense (same side-by-side run):\n\n"
        + "\n".join(speed)
        + f"\n\nController size {cfg['size']}; GRPO {cfg['grpo'] or 'shipped recipe'} in every RL stage; pruning "
        f"{cfg['pruning']}. Training stages took {training_minutes(out):.0f} min in all (summed from the "
        "checkpoints' records; when the run resumed, the command's own time covers only its last part). Plots: "
        "benchmarks/results/bpf_adaptability_vs_params.png, bpf_decode_speed.png.\n"
    )
    title = "BPF: pruning during training vs every baseline (driving controller)"
    write_result("bpf_study", title, body, summary, time.time() - t0)


if __name__ == "__main__":
    main()
