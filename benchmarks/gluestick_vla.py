"""GLUESTICK on the shipped VLA: its backbone pruned and recovered without training, against LoRA, in closed loop.

Runs ``embodied-prune experiment gluestick`` with ``configs/gluestick_vla.yaml`` (dense; Wanda and magnitude
2:4; Wanda 30/50/70 %; GLUESTICK at global ranks, at per-layer budgets, with int8 factors; LoRA trained by
behaviour cloning at the same extra parameters as rank 16), then adds what the issue's claims need: for every
two recovered cells of one pruned variant whose extra parameters differ by at most 2 %, the paired difference
in success with a bootstrap CI over episodes (every cell plays the same scenes), and the safety violations of
each recovery against its unrecovered pruned variant.

The full grid (19 cells of 300 episodes, 5–8 min each on 2 cores) outlasts one working session and ``runs/`` is
not kept between sessions, so the evaluated cells are also kept in ``--cells`` (committed,
``benchmarks/results/gluestick_vla_cells``; see ``CellStore``): a later session goes on with the cells not yet
evaluated. A kept cell is reused only while its recipe (dense model's fingerprint, pruning and recovery
settings, episodes) is unchanged. The latency of record is the experiment's side-by-side pass over the config's
``latency_cells`` (dense and 2:4 Wanda with each recovery on the same observations, interleaved, one thread),
run anew on every invocation: it builds those cells' models when they are missing (pruning, SVDs and one LoRA
fit: minutes, not hours; rebuilding three of them took most of a 4.9 min run here). Each cell's closed-loop
latency is also listed, measured under its own evaluation's load.

python benchmarks/gluestick_vla.py [--config configs/gluestick_vla.yaml] [--out runs/gluestick] [--cells DIR]
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
from embodied_prune.experiments.common import open_run_folder, violations_cell
from embodied_prune.experiments.gluestick import gluestick_report, latency_report, load_config

ROOT = Path(__file__).resolve().parent.parent
EQUAL_PARAMS = 0.02  # two recoveries are compared when their extra parameters differ by at most this share


def equal_budget_lines(cells: dict[str, dict]) -> list[str]:
    """Paired success differences between recoveries of one pruned variant at (nearly) equal extra parameters."""
    lines = []
    recovered = [k for k, d in cells.items() if k != "dense" and d["extra_parameters"] > 0]
    for a, b in combinations(recovered, 2):
        da, db = cells[a], cells[b]
        if a.split(" | ")[0] != b.split(" | ")[0]:
            continue
        ea, eb = da["extra_parameters"], db["extra_parameters"]
        if abs(ea - eb) > EQUAL_PARAMS * max(ea, eb):
            continue
        mean, lo, hi = paired_diff_ci(da["episode_success"], db["episode_success"])
        lines.append(
            f"- {b} ({eb:,} extra) − {a} ({ea:,} extra): {100 * mean:+.1f} points [{100 * lo:+.1f}, {100 * hi:+.1f}]"
        )
    return lines


def safety_lines(cells: dict[str, dict]) -> list[str]:
    """Safety-violation steps (table / joints / fast) of each recovered cell beside its unrecovered pruned variant."""
    lines = []
    for key, d in cells.items():
        pruned = cells.get(f"{key.split(' | ')[0]} | none")
        if pruned is None or key.endswith(" | none"):
            continue
        lines.append(
            f"- {key}: {violations_cell(d['safety_violations'])} vs "
            f"{violations_cell(pruned['safety_violations'])} unrecovered"
        )
    return lines


def main(argv: list[str] | None = None, name: str = "gluestick_vla", out: str = "gluestick") -> None:
    """The study on ``configs/<name>.yaml``, its runs in ``runs/<out>``, its cells in ``results/<name>_cells``, its
    result and plots named ``name``."""
    a = study_parser(__doc__, config=f"{name}.yaml", out=out, cells=f"{name}_cells").parse_args(argv)
    from embodied_prune.experiments.gluestick import run_gluestick_experiment

    t0 = time.time()
    cfg, store = load_config(a.config), CellStore(a.cells)
    out = open_run_folder(a.out, cfg, a.overwrite, "cells", same_config=False)
    # the evaluated cells are saved into the store even when the run fails or is killed
    store.run(out, cfg, a.overwrite, lambda: run_gluestick_experiment(a.config, out))
    summary = json.loads((out / "summary.json").read_text())
    cells = summary["cells"]
    for plot in ("success_vs_extra.png", "violations_vs_extra.png"):
        shutil.copy(out / plot, RESULTS / f"{name}_{plot}")
    machines = sorted({s["machine"] for s in store.sessions() if s["cells_evaluated"]})
    eval_h = sum(d.get("eval_s", 0.0) for d in cells.values()) / 3600
    body = (
        gluestick_report(summary)
        + f"\n{cfg['episodes']} episodes per task on each of the {len(cells['dense']['per_task'])} tasks, the same "
        "scenes for every cell; success "
        "CIs are Wilson intervals, the won-back share's a paired bootstrap over episodes (5000 resamples). Extra "
        "parameters count GLUESTICK factors or LoRA adapters against the backbone's decoder linear layers.\n\n"
        f"Recoveries at equal extra parameters (within {EQUAL_PARAMS:.0%}), paired difference in success "
        "[95 % bootstrap CI over episodes]:\n\n"
        + "\n".join(equal_budget_lines(cells) or ["- (no two recoveries of one pruned variant at equal parameters)"])
        + "\n\nSafety-violation steps (table / joints / fast), recovered vs unrecovered:\n\n"
        + "\n".join(safety_lines(cells))
        + "\n"
        + latency_report(summary)
        + "\nOn the CPU a 2:4 weight is stored and multiplied dense (PyTorch's semi-structured sparse kernels need a "
        "CUDA GPU), so pruning alone cannot be faster than dense here; the rows show what the factors or adapters "
        "beside it cost."
        + f"\n\nCompute: {eval_h:.2f} h of closed-loop evaluation summed over the cells, in {len(store.sessions())} "
        f"invocation(s) of the command (log: {os.path.relpath(store.folder / 'sessions.jsonl', ROOT)}; the command's "
        "own time below covers only the last). The first table's query ms comes from each cell's own evaluation "
        "(2 worker processes on 2 cores, under that run's load and at its time); the side-by-side table is the "
        "latency of record. Machines: " + "; ".join(machines) + f". Plots: benchmarks/results/{name}_success_vs_"
        f"extra.png, {name}_violations_vs_extra.png.\n"
    )
    write_result(
        name,
        "GLUESTICK on the shipped VLA (pruned backbone, recovery vs LoRA)"
        if name == "gluestick_vla"
        else f"GLUESTICK on {cfg['model']} (pruned backbone, recovery)",
        body,
        summary,
        time.time() - t0,
        models=(cfg["model"],),
    )


if __name__ == "__main__":
    try:
        main()
    except EmbodiedPruneError as e:
        sys.exit(f"error: {e}")
