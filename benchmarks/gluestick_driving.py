"""GLUESTICK on the driving controller: 2:4 Wanda of the shipped GRPO controller, recovered without training.

The twin of the VLA's GLUESTICK experiment on the other substrate: ``builtin:driving-l-grpo`` is pruned
2:4 with Wanda (calibration: teacher-labelled training instructions, the text its SFT saw), then GLUESTICK
attaches the truncated SVD of ``dense − pruned`` beside each pruned linear layer, with per-layer ranks
spending a budget of extra parameters (5, 10, 15 % of the corrected layers) — spread by singular values
(no data) and by each rank's share of its layer's output on the Wanda calibration text — and with one
global rank.
Every controller answers the same held-out instructions and drives in the same traffic (one shared
simulator cache); the table gives adaptability and collisions, the loss to dense, and the share of the
pruned controller's loss that recovery wins back, each with a paired bootstrap CI over instructions.

python benchmarks/gluestick_driving.py [--instructions 200] [--split test]
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np

from _common import nan_array, quiet_transformers, write_result
from embodied_prune.api import prune, recover
from embodied_prune.envs.driving.instructions import generate_split
from embodied_prune.envs.driving.scoring import ClosedLoopScorer
from embodied_prune.evaluation.driving import evaluate_driving
from embodied_prune.evaluation.report import markdown_table
from embodied_prune.evaluation.stats import paired_diff_ci, recovered_share_ci
from embodied_prune.models.checkpoint import load_model, load_tokenizer
from embodied_prune.training.driving import teacher_calibration

DENSE = "builtin:driving-l-grpo"
BUDGETS = (0.05, 0.10, 0.15)
GLOBAL_RANK = 16


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instructions", type=int, default=200)
    ap.add_argument("--split", default="test", choices=["val", "test"])
    a = ap.parse_args()
    quiet_transformers()
    t0 = time.time()
    tok = load_tokenizer(DENSE)
    calibration = teacher_calibration(tok, 64)
    pruned = prune(DENSE, "wanda", pattern="2:4", calibration=calibration, progress=False).model
    variants = {"dense": load_model(DENSE), "wanda 2:4": pruned}
    overheads = {"dense": None, "wanda 2:4": 0.0}
    for b in BUDGETS:  # recover() wraps a model it is given in place: each variant gets its own copy
        for label, data in (("", None), (" by output share", calibration)):
            out = recover(DENSE, copy.deepcopy(pruned), budget=b, calibration=data)
            variants[f"+ GLUESTICK budget {b:.0%}{label}"] = out.model
            overheads[f"+ GLUESTICK budget {b:.0%}{label}"] = out.details.overhead
    out = recover(DENSE, copy.deepcopy(pruned), rank=GLOBAL_RANK)
    variants[f"+ GLUESTICK rank {GLOBAL_RANK}"] = out.model
    overheads[f"+ GLUESTICK rank {GLOBAL_RANK}"] = out.details.overhead

    instructions = generate_split(a.split, a.instructions)
    reports = {}
    with ClosedLoopScorer(workers=2) as scorer:
        for name, model in variants.items():
            reports[name] = evaluate_driving(
                model, tok, instructions, name=name, progress=False, scorer=scorer
            ).to_dict()
            print(f"{name}: adaptability {100 * reports[name]['adaptability']:.1f} %", flush=True)
    red = {n: nan_array(d["reductions"]) for n, d in reports.items()}
    ok = np.all([~np.isnan(v) for v in red.values()], axis=0)
    red = {n: 100 * v[ok] for n, v in red.items()}
    rows = []
    for name, d in reports.items():
        lost = paired_diff_ci(red[name], red["dense"]) if name != "dense" else None
        share = recovered_share_ci(red["dense"], red["wanda 2:4"], red[name]) if overheads[name] else None
        rows.append(
            {
                "variant": name,
                "extra": "–" if overheads[name] is None else f"{100 * overheads[name]:.1f} %",
                "adaptability": f"{100 * d['adaptability']:.1f} [{100 * d['ci95'][0]:.1f}, {100 * d['ci95'][1]:.1f}]",
                "lost": "–" if lost is None else f"{lost[0]:+.1f} [{lost[1]:+.1f}, {lost[2]:+.1f}]",
                "recovered": "–"
                if share is None
                else f"{100 * share[0]:.0f} % [{100 * share[1]:.0f}, {100 * share[2]:.0f}]",
                "collisions": d["collisions"],
                "parse_failures": d["parse_failures"],
            }
        )
    table = markdown_table(
        rows,
        [
            ("variant", "controller"),
            ("extra", "extra params (of corrected layers)"),
            ("adaptability", "adaptability % [95 % CI]"),
            ("lost", "lost points vs dense [95 % CI]"),
            ("recovered", "share of the 2:4 loss recovered [95 % CI]"),
            ("collisions", "collisions"),
            ("parse_failures", "parse failures"),
        ],
    )
    body = (
        f"{table}\n\n{a.instructions} {a.split}-split instructions, each in its own traffic, one greedy answer and "
        f"one 15 s episode each; {int(ok.sum())} scored for every controller enter the paired CIs (bootstrap over "
        "instructions, 5000 resamples). Wanda calibration: 64 teacher-labelled training instructions. GLUESTICK "
        "budgets allocate per-layer ranks to spend that share of the corrected layers' parameters, by singular "
        "values or, 'by output share', by the share of each layer's output a rank restores on the Wanda "
        f"calibration text; the global row uses rank {GLOBAL_RANK} everywhere. No training anywhere.\n"
    )
    data = {
        "rows": rows,
        "reports": {
            n: {k: v for k, v in d.items() if k not in ("per_instruction", "reductions")} for n, d in reports.items()
        },
    }
    write_result(
        "gluestick_driving",
        "GLUESTICK on the driving controller (2:4 Wanda, no training)",
        body,
        data,
        time.time() - t0,
    )


if __name__ == "__main__":
    main()
