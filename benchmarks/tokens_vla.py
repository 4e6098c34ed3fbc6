"""Visual-token pruning of the shipped VLA in closed loop: SpecPrune-VLA, its ablations, FastV, random drop.

Runs ``embodied-prune experiment tokens`` with ``configs/tokens_vla.yaml`` (dense, SpecPrune-VLA pruning before
layer 1 as published, before layer 0 and before layer 2, FastV and random at SpecPrune's mean visual tokens per
layer; 6 tasks × 50 episodes on the same scenes), then adds the success differences to dense with 95 % CIs
(Newcombe's method on the two Wilson intervals) and, when the config has one, the controller's ablation row.

python benchmarks/tokens_vla.py [--config configs/tokens_vla.yaml] [--out runs/bench-tokens] [--name tokens_vla]

``--name`` is the result's name under benchmarks/results/ (``benchmarks/tokens_vla_hires.py`` and
``benchmarks/tokens_vla_deep.py`` run this script on the 324-token policies through :func:`run_named`).

``--record`` then writes the study's best SpecPrune variant into the shipped policy's side file
(``src/embodied_prune/assets/NAME/embodied_prune.json``, key ``token_pruning``), the working point that
``eval manipulation --token-pruner specprune`` runs by default; ``--record-only`` does that from the result already
in benchmarks/results/ without running anything.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import shutil
import time
from pathlib import Path

from _common import RESULTS, write_result
from embodied_prune.experiments.tokens import run_tokens_experiment, tokens_report, working_point
from embodied_prune.io import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent


def diff_ci(d1: dict, d0: dict) -> tuple[float, float, float]:
    """Success difference d1 − d0 in points with Newcombe's 95 % CI from the two Wilson intervals."""
    p1, p0 = d1["success_rate"], d0["success_rate"]
    (l1, u1), (l0, u0) = d1["ci95"], d0["ci95"]
    diff = p1 - p0
    lo = diff - math.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2)
    hi = diff + math.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2)
    return 100 * diff, 100 * lo, 100 * hi


def controller_lines(variants: dict[str, dict]) -> list[str]:
    """The action-aware controller's ablation: for every variant "X without controller" whose "X" ran too, the
    success difference X − (X without controller) with its CI, and the tokens each kept."""
    lines = []
    for name, d in variants.items():
        base = name.removesuffix(" without controller")
        if base != name and base in variants:
            diff, lo, hi = diff_ci(variants[base], d)
            fine = variants[base].get("fine_query_fraction") or 0.0
            lines.append(
                f"- controller: {base} − {name}: {diff:+.1f} points [{lo:+.1f}, {hi:+.1f}]; the controller called "
                f"{100 * fine:.0f} % of queries fine motion and kept {variants[base]['kept_tokens_mean']:.0f} visual "
                f"tokens per layer on average against {d['kept_tokens_mean']:.0f} without it"
            )
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "tokens_vla.yaml"))
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench-tokens"))
    ap.add_argument("--name", default="tokens_vla", help="result name under benchmarks/results/ (default tokens_vla)")
    ap.add_argument("--resume", action="store_true", help="keep variants finished by an earlier run")
    ap.add_argument("--record", action="store_true", help="write the best SpecPrune variant into the shipped policy")
    ap.add_argument("--record-only", action="store_true", help="only --record, from benchmarks/results/NAME.json")
    a = ap.parse_args(argv)
    if a.record_only:
        record(json.loads((RESULTS / f"{a.name}.json").read_text()))
        return
    t0 = time.time()
    started = dt.datetime.now(dt.timezone.utc)
    out = run_tokens_experiment(a.config, a.out, overwrite=not a.resume)
    summary = json.loads((out / "summary.json").read_text())
    variants = summary["variants"]
    lat = summary["side_by_side_latency_ms"]
    dense = variants["dense"]
    lines = []
    for name, d in variants.items():
        if name == "dense":
            continue
        diff, lo, hi = diff_ci(d, dense)
        lines.append(
            f"- {name}: {diff:+.1f} points vs dense [{lo:+.1f}, {hi:+.1f}], speed-up {lat['dense'] / lat[name]:.2f}×"
        )
    lines += controller_lines(variants)
    kept = [n for n, d in variants.items() if dt.datetime.fromisoformat(d["date"]) < started]
    if kept:
        dates = ", ".join(f"{n} {variants[n]['date']}" for n in kept)
        lines.append(
            f"\nWith --resume, this run re-evaluated only {len(variants) - len(kept)} variant(s) and re-timed all "
            f"side by side; kept from an earlier run of this script, whose machine their success, in-the-loop and "
            f"episode columns come from (evaluation finished at, UTC): {dates}."
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(out / "speedup_vs_success.png", RESULTS / f"{a.name}.png")
    cfg = summary["config"]
    body = (
        tokens_report(summary)
        + "\nSuccess differences to dense (95 % CI, Newcombe from the Wilson intervals):\n\n"
        + "\n".join(lines)
        + f"\n\n{cfg['episodes']} episodes per task on the same scenes (seed {cfg['seed']}), budget "
        f"alpha={cfg.get('alpha')}; FastV and random get SpecPrune's mean visual tokens per layer. 'query ms, side "
        "by side' times every variant on the same recorded observations, interleaved, one torch thread "
        f"({cfg['latency_queries']} queries each); 'in the loop' is the median query of the closed-loop run "
        f"(two worker processes on the two cores, one thread each). Plot: benchmarks/results/{a.name}.png.\n"
    )
    write_result(
        a.name,
        f"Visual-token pruning of `{cfg['model']}`: SpecPrune-VLA vs FastV vs random",
        body,
        summary,
        time.time() - t0,
        models=(cfg["model"],),
    )
    if a.record:
        record(summary)


def record(summary: dict) -> None:
    """Write ``summary``'s SpecPrune working point into its shipped policy's side file (``token_pruning``)."""
    model = summary["config"]["model"]
    if not model.startswith("builtin:"):
        raise SystemExit(f"--record writes a shipped policy's side file; {model} is not a builtin: policy.")
    side = ROOT / "src" / "embodied_prune" / "assets" / model.removeprefix("builtin:") / "embodied_prune.json"
    point = working_point(summary)
    if point is None:
        raise SystemExit(f"the study of {model} has no SpecPrune variant at the config's budget to record.")
    record = json.loads(side.read_text())
    record["token_pruning"] = {"pruners": {"specprune": point["options"]}, "study": point["study"]}
    atomic_write_text(side, json.dumps(record, indent=2) + "\n")
    print(f"{model}: specprune {point['options']} ({point['study']}) → {side}")


def run_named(name: str, out: str, argv: list[str]) -> None:
    """This script on ``configs/<name>.yaml``, its runs in ``runs/<out>``, its result named ``name``."""
    main(["--config", str(ROOT / "configs" / f"{name}.yaml"), "--out", str(ROOT / "runs" / out), "--name", name, *argv])


if __name__ == "__main__":
    main()
