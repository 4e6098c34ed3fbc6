"""RobotxR1 on a pretrained controller: SmolLM2-135M-Instruct (LoRA SFT, then GRPO) beside the from-scratch ladder.

Both of RobotxR1's tasks, on the built-in test splits:

- **parameters** (the driving controller): control adaptability (mean relative task-error reduction against the
  default parameters on the same traffic, RobotxR1's definition; bootstrap 95 % CIs over instructions) and the
  share of instructions with every constraint met (Wilson CI), on the 200-instruction test split in each
  instruction's own traffic; the teacher's answers are the reference. Paired differences (bootstrap over
  instructions) for SmolLM2 GRPO − from-scratch l GRPO, SmolLM2 GRPO − SFT, SmolLM2 SFT − l GRPO, each also on
  the instructions pairing constraint types training never pairs (held-out combinations) and on the rest (every
  test instruction uses held-out phrasings).
- **decision** (DecisionxLLM): accuracy of the adherence verdict against rule labels on the 400 balanced test
  examples (Wilson CIs), for SmolLM2 and for from-scratch controllers of every ladder size trained on the same
  data (the same 1,200 parameter + 400 decision examples, whole weights, 10 epochs since they start from
  nothing); paired differences by bootstrap over examples.

Every evaluated model is a cell kept in ``benchmarks/results/robotxr1_cells/`` as soon as it is measured, so an
interrupted run resumes (``--overwrite`` starts afresh); the from-scratch controllers go to ``runs/robotxr1/``.
SmolLM2's controllers are ``builtin:driving-smollm2-{sft,grpo}`` (``--smol-sft`` / ``--smol-grpo`` point at
other folders, e.g. a run still to be shipped); a missing one is left out and named.

python benchmarks/robotxr1_smollm2.py [--only CELL ...] [--report]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from _common import RESULTS, write_result
from embodied_prune.bench.speed import count_parameters
from embodied_prune.envs.driving.decision import builtin_decisions
from embodied_prune.envs.driving.instructions import generate_split, has_held_out_combo, teacher_params
from embodied_prune.envs.driving.params import format_answer
from embodied_prune.envs.driving.scoring import ClosedLoopScorer
from embodied_prune.errors import EmbodiedPruneError
from embodied_prune.evaluation.decision import evaluate_decision
from embodied_prune.evaluation.driving import evaluate_driving, score_completions
from embodied_prune.evaluation.report import markdown_table, percent_ci
from embodied_prune.evaluation.stats import paired_diff_ci, wilson_ci
from embodied_prune.io import atomic_write_text
from embodied_prune.models.checkpoint import load_model, load_tokenizer, read_side_file, resolve_model_path
from embodied_prune.models.ladder import SIZES
from embodied_prune.training.driving import SFTSettings, train_sft

CELLS = RESULTS / "robotxr1_cells"
RUNS = RESULTS.parent.parent / "runs" / "robotxr1"
SCRATCH_EPOCHS = 10.0


def scratch_settings(size: str) -> SFTSettings:
    """A from-scratch controller of ``size`` on SmolLM2's SFT data (both tasks), whole weights, more epochs."""
    smol = SFTSettings.pretrained()
    return SFTSettings(size=size, n_train=smol.n_train, decision=smol.decision, epochs=SCRATCH_EPOCHS, seed=0)


def scratch_controller(size: str) -> Path:
    path = RUNS / f"scratch-{size}-both"
    if not (path / "config.json").is_file():
        train_sft(path, scratch_settings(size), overwrite=True, save_dtype=torch.bfloat16, progress=False)
    return path


def models(a: argparse.Namespace) -> dict[str, tuple[str, tuple[str, ...]]]:
    """cell stem → (model spec or a callable's name, the tasks it is scored on)."""
    out: dict[str, tuple[str, tuple[str, ...]]] = {"teacher": ("teacher", ("drive",))}
    for size in SIZES:
        for stage in ("sft", "grpo"):
            out[f"{size}-{stage}"] = (f"builtin:driving-{size}-{stage}", ("drive",))
        out[f"scratch-{size}-both"] = (f"scratch:{size}", ("drive", "decide"))
    out["smollm2-sft"] = (a.smol_sft, ("drive", "decide"))
    out["smollm2-grpo"] = (a.smol_grpo, ("drive", "decide"))
    return out


def _available(spec: str) -> bool:
    if spec in ("teacher",) or spec.startswith("scratch:"):
        return True
    try:
        return (Path(resolve_model_path(spec)) / "config.json").is_file()
    except EmbodiedPruneError:
        return False


def measure(stem: str, spec: str, task: str, a: argparse.Namespace, scorer: ClosedLoopScorer) -> dict:
    t0 = time.time()
    test = generate_split("test", a.instructions)
    if spec == "teacher":
        answers = [format_answer(teacher_params(x.constraints)) for x in test]
        d = score_completions(test, answers, name="teacher", scorer=scorer).to_dict()
        return _drive_cell(d, None, {}, t0)
    path = str(scratch_controller(spec.split(":")[1])) if spec.startswith("scratch:") else spec
    model, tok = load_model(path), load_tokenizer(path)
    torch.manual_seed(0)
    record = (read_side_file(resolve_model_path(path)).get("history") or [{}])[-1]
    if task == "drive":
        d = evaluate_driving(model, tok, test, name=path, scorer=scorer, progress=False).to_dict()
        return _drive_cell(d, count_parameters(model)[0], record, t0)
    examples = builtin_decisions("test", a.decisions)
    d = evaluate_decision(model, tok, examples, name=path, progress=False).to_dict()
    d.pop("per_example")
    return {**d, "params": count_parameters(model)[0], "train": _train_info(record), "cell_s": time.time() - t0}


def _train_info(record: dict) -> dict:
    keys = ("stage", "base", "size", "n_train", "decision", "epochs", "steps", "lora_rank", "wall_s", "segments")
    return {k: record[k] for k in keys if k in record}


def _drive_cell(d: dict, params: int | None, record: dict, t0: float) -> dict:
    per = d.pop("per_instruction")
    return {
        **d,
        "satisfied_each": [s["satisfied"] for s in per],
        "params": params,
        "train": _train_info(record),
        "cell_s": time.time() - t0,
    }


def run(a: argparse.Namespace) -> dict[str, dict]:
    a.cells.mkdir(parents=True, exist_ok=True)
    cells: dict[str, dict] = {}
    with ClosedLoopScorer(workers=2) as scorer:
        for stem, (spec, tasks) in models(a).items():
            for task in tasks:
                name = f"{task}-{stem}"
                path = a.cells / f"{name}.json"
                if path.is_file():
                    cells[name] = json.loads(path.read_text())
                    continue
                if a.report or (a.only and name not in a.only) or not _available(spec):
                    continue
                print(f"measuring {name} ({spec})", flush=True)
                cells[name] = measure(stem, spec, task, a, scorer)
                atomic_write_text(path, json.dumps(cells[name], indent=1) + "\n")
                print(f"  {name}: {_headline(task, cells[name])} in {cells[name]['cell_s']:.0f} s", flush=True)
    return cells


def _headline(task: str, c: dict) -> str:
    if task == "drive":
        return f"adaptability {percent_ci(c['adaptability'], c['ci95'])}"
    return f"accuracy {percent_ci(c['accuracy'], c['ci95'])}"


def _paired(a: list, b: list, keep: list[bool] | None = None) -> tuple[str, int]:
    """``b − a`` over the items both scored (and ``keep`` selects), as "mean [lo, hi]" in points, and the count."""
    pairs = [
        (x, y)
        for i, (x, y) in enumerate(zip(a, b, strict=True))
        if x is not None and y is not None and (keep is None or keep[i])
    ]
    if not pairs:
        return "–", 0
    mean, lo, hi = paired_diff_ci([x for x, _ in pairs], [y for _, y in pairs])  # the mean of b − a
    return percent_ci(mean, (lo, hi), unit=""), len(pairs)


def report(a: argparse.Namespace, cells: dict[str, dict], wall: float) -> None:
    test = generate_split("test", a.instructions)
    held = [has_held_out_combo(x) for x in test]
    drive_rows = []
    for stem, (spec, _) in models(a).items():
        c = cells.get(f"drive-{stem}")
        if c is None:
            continue
        k = sum(c["satisfied_each"])
        tr = c.get("train", {})
        drive_rows.append(
            {
                "controller": stem if spec.startswith(("teacher", "scratch")) else spec,
                "params": c["params"],
                "adaptability": percent_ci(c["adaptability"], c["ci95"]),
                "held": _mean_pct([r for r, h in zip(c["reductions"], held, strict=True) if h]),
                "rest": _mean_pct([r for r, h in zip(c["reductions"], held, strict=True) if not h]),
                "satisfied": percent_ci(k / len(c["satisfied_each"]), wilson_ci(k, len(c["satisfied_each"]))),
                "collisions": c["collisions"],
                "parse": c["parse_failures"],
                "train_min": f"{tr['wall_s'] / 60:.0f}" if "wall_s" in tr else "–",
            }
        )
    drive_table = markdown_table(
        drive_rows,
        [
            ("controller", "controller"),
            ("params", "params"),
            ("adaptability", "adaptability % (95 % CI)"),
            ("held", "on held-out combinations"),
            ("rest", "on the rest"),
            ("satisfied", "all met % (95 % CI)"),
            ("collisions", "collisions"),
            ("parse", "parse failures"),
            ("train_min", "this stage's training, min"),
        ],
    )
    diffs = []
    for x, y in (
        ("l-grpo", "smollm2-grpo"),
        ("smollm2-sft", "smollm2-grpo"),
        ("l-grpo", "smollm2-sft"),
        ("l-sft", "smollm2-sft"),
    ):
        cx, cy = cells.get(f"drive-{x}"), cells.get(f"drive-{y}")
        if cx is None or cy is None:
            continue
        row = {"pair": f"{y} − {x}"}
        for part, keep in (("all", None), ("held", held), ("rest", [not h for h in held])):
            row[part], row[f"n_{part}"] = _paired(cx["reductions"], cy["reductions"], keep)
        diffs.append(row)
    diff_table = markdown_table(
        diffs,
        [
            ("pair", "adaptability difference"),
            ("all", "points (paired 95 % CI)"),
            ("n_all", "instructions"),
            ("held", "held-out combinations"),
            ("n_held", "instructions"),
            ("rest", "the rest"),
            ("n_rest", "instructions"),
        ],
    )
    dec_rows = []
    for stem, (spec, _) in models(a).items():
        c = cells.get(f"decide-{stem}")
        if c is None:
            continue
        dec_rows.append(
            {
                "controller": stem if spec.startswith("scratch") else spec,
                "params": c["params"],
                "accuracy": percent_ci(c["accuracy"], c["ci95"]),
                "tpr": percent_ci(c["true_positive_rate"]["accuracy"], c["true_positive_rate"]["ci95"]),
                "tnr": percent_ci(c["true_negative_rate"]["accuracy"], c["true_negative_rate"]["ci95"]),
                "held": percent_ci(c["held_out_combos"]["accuracy"], c["held_out_combos"]["ci95"]),
                "parse": c["parse_failures"],
            }
        )
    dec_table = markdown_table(
        dec_rows,
        [
            ("controller", "controller"),
            ("params", "params"),
            ("accuracy", "accuracy % (95 % CI)"),
            ("tpr", "on adhering"),
            ("tnr", "on not adhering"),
            ("held", "held-out combinations"),
            ("parse", "parse failures"),
        ],
    )
    dec_diffs = []
    smol = [s for s in ("smollm2-grpo", "smollm2-sft") if f"decide-{s}" in cells]
    for s in smol[:1]:
        for size in SIZES:
            other = cells.get(f"decide-scratch-{size}-both")
            if other is None:
                continue
            text, n = _paired([float(v) for v in other["correct"]], [float(v) for v in cells[f"decide-{s}"]["correct"]])
            dec_diffs.append({"pair": f"{s} − scratch-{size}-both", "diff": text, "n": n})
    dec_diff_table = markdown_table(
        dec_diffs, [("pair", "decision accuracy difference"), ("diff", "points (paired 95 % CI)"), ("n", "examples")]
    )
    types = sorted({t for s in smol[:1] for t in cells[f"decide-{s}"]["by_type"]})
    type_rows = []
    for stem in [*smol[:1], *(f"scratch-{z}-both" for z in SIZES)]:
        c = cells.get(f"decide-{stem}")
        if c is None:
            continue
        type_rows.append({"controller": stem, **{t: _acc(c["by_type"].get(t)) for t in types}})
    type_table = markdown_table(type_rows, [("controller", "controller"), *((t, t) for t in types)]) if types else ""
    missing = [stem for stem, (spec, _) in models(a).items() if not any(k.endswith(f"-{stem}") for k in cells)]
    body = (
        f"Parameters: the first {a.instructions} test-split instructions (phrasings and joiners never seen in "
        "training; a third pair constraint types training never pairs), each driven once in its own 15 s "
        "highway-env traffic, one greedy answer each. Decision: the first "
        f"{a.decisions} examples of the built-in decision test split (balanced; the state readouts of episodes "
        "driven with the teacher's, a near miss's or random parameters on test instructions). The from-scratch "
        f"`scratch-*-both` controllers are trained on SmolLM2's SFT data ({SFTSettings.pretrained().n_train:,} "
        f"parameter + {SFTSettings.pretrained().decision} decision examples), {SCRATCH_EPOCHS:g} epochs; the shipped "
        "`driving-*` controllers on 16,000 parameter examples.\n\n"
        f"{drive_table}\n\n{diff_table}\n\n{dec_table}\n\n{dec_diff_table}\n\n"
        + (
            f"Decision accuracy by constraint type (examples holding that type):\n\n{type_table}\n\n"
            if type_table
            else ""
        )
        + "Adaptability: mean over instructions of the relative task-error reduction vs the default parameters on "
        "the same traffic, each clipped to [−4, 1]; CIs by bootstrap over instructions (5000 resamples); decision "
        "CIs Wilson, differences paired bootstrap over examples. A parse failure is a wrong verdict. Training "
        "minutes are read from each checkpoint's side file (this 2-core machine)."
        + "\n\nEach row is a cell kept in `benchmarks/results/robotxr1_cells/` "
        "(`python benchmarks/robotxr1_smollm2.py` measures the missing ones and rebuilds this section); "
        f"the {len(cells)} cells took "
        f"{sum(c.get('cell_s', 0) for c in cells.values()) / 60:.0f} min of compute on 2 cores in all."
        + (f"\n\nNot measured (model missing): {', '.join(missing)}." if missing else "")
    )
    write_result(
        "robotxr1_smollm2",
        "RobotxR1 on pretrained SmolLM2-135M-Instruct: both tasks against the from-scratch ladder",
        body,
        {"instructions": a.instructions, "decisions": a.decisions, "cells": cells},
        wall,
    )


def _mean_pct(values: list) -> str:
    v = [x for x in values if x is not None]
    return f"{100 * float(np.mean(v)):.1f}" if v else "–"


def _acc(x: dict | None) -> str:
    return f"{100 * x['accuracy']:.0f} % (n={x['n']})" if x and x["n"] else "–"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instructions", type=int, default=200, help="test instructions (default 200)")
    ap.add_argument("--decisions", type=int, default=400, help="decision test examples (default 400)")
    ap.add_argument("--smol-sft", default="builtin:driving-smollm2-sft", help="SmolLM2 SFT controller")
    ap.add_argument("--smol-grpo", default="builtin:driving-smollm2-grpo", help="SmolLM2 GRPO controller")
    ap.add_argument("--only", nargs="+", help="measure only these cells (e.g. drive-smollm2-sft decide-scratch-l-both)")
    ap.add_argument("--report", action="store_true", help="only rebuild the report from the kept cells")
    ap.add_argument("--overwrite", action="store_true", help="drop the kept cells and start afresh")
    ap.add_argument("--cells", type=Path, default=CELLS, help="where measured cells are kept")
    a = ap.parse_args()
    if a.overwrite and a.cells.exists():
        shutil.rmtree(a.cells)
    t0 = time.time()
    cells = run(a)
    report(a, cells, time.time() - t0)


if __name__ == "__main__":
    main()
