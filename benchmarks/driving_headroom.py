"""How much closed-loop reward is there for RL to find beyond the SFT teacher? The driving task's headroom.

SFT copies the teacher (:func:`~embodied_prune.envs.driving.instructions.teacher_params`), a literal reading
of each constraint; GRPO can only gain where some other answer drives better. This script measures where
that is, without any model:

1. **Select** (train split): for every constraint type, ``--per-type`` single-constraint training
   instructions answered by the teacher and by a small grid of alternatives (the teacher's number shifted
   either way, or one more parameter set), each driven in the instruction's own traffic. The best answer
   per type is kept (the teacher's own when nothing beats it).
2. **Measure** (test split): the teacher and the *improved teacher* (each constraint answered by its type's
   selected alternative, combined as the teacher combines them) on ``--instructions`` test instructions,
   ``--episodes`` traffic scenarios each; the paired difference, overall and per constraint type, is the
   gain a controller that reads every instruction as the teacher does could get from RL by these answers
   alone. Selection and measurement use different instructions and traffic, so the selection's luck does
   not carry into the measured gain.

python benchmarks/driving_headroom.py [--per-type 40] [--instructions 200] [--episodes 3]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from _common import nan_array, write_result
from embodied_prune.envs.driving.instructions import GENERATED_KINDS, generate_split, teacher_params
from embodied_prune.envs.driving.params import format_answer
from embodied_prune.envs.driving.scoring import ClosedLoopScorer
from embodied_prune.evaluation.driving import score_completions
from embodied_prune.evaluation.report import markdown_table, percent_ci
from embodied_prune.evaluation.stats import bootstrap_mean_ci, paired_diff_ci

Answer = Callable[[dict[str, Any]], dict[str, Any]]


def _teacher(c: dict[str, Any]) -> dict[str, Any]:
    return teacher_params([c])


def _shift(key: str, by: float) -> Answer:
    """The teacher's answer with ``key`` moved by ``by``."""

    def answer(c: dict[str, Any]) -> dict[str, Any]:
        params = _teacher(c)
        return {**params, key: params[key] + by}

    return answer


def _plus(**extra: Any) -> Answer:
    """The teacher's answer with ``extra`` parameters set too."""
    return lambda c: {**_teacher(c), **extra}


# The grid: each type's teacher number moved both ways, or one more parameter a driver might set. Generic
# steps, not fitted to anything: the selection step decides which (if any) drives better.
ALTERNATIVES: dict[str, list[tuple[str, Answer]]] = {
    "speed": [(f"target_speed {d:+g}", _shift("target_speed", d)) for d in (-2, -1, 1, 2)],
    "speed_max": [(f"target_speed {d:+g}", _shift("target_speed", d)) for d in (-2, -1, 1)],
    "speed_min": [(f"target_speed {d:+g}", _shift("target_speed", d)) for d in (-1, 2, 4, 6, 8)],
    "headway": [(f"time_gap {d:+g}", _shift("time_gap", d)) for d in (-0.5, 0.5, 1.0)]
    + [("+ min_distance 20", _plus(min_distance=20.0))],
    "overtake": [(f"target_speed {d:+g}", _shift("target_speed", d)) for d in (-5, 5)]
    + [("lane_change_gain 0", _plus(lane_change_gain=0.0)), ("+ time_gap 0.8", _plus(time_gap=0.8))],
    "lane": [("+ lane_change_gain 0", _plus(lane_change_gain=0.0)), ("+ politeness 0.5", _plus(politeness=0.5))],
    "avoid_lane": [("+ lane_change_gain 0", _plus(lane_change_gain=0.0)), ("+ politeness 0.5", _plus(politeness=0.5))],
    "no_lane_change": [("+ time_gap 2.5", _plus(time_gap=2.5)), ("+ target_speed 20", _plus(target_speed=20.0))],
}


def improved(constraints: list[dict[str, Any]], best: dict[str, Answer]) -> dict[str, Any]:
    """The improved teacher's answer: each constraint by its type's selected answer, later ones overriding
    earlier ones on a shared parameter, as :func:`teacher_params` does."""
    params: dict[str, Any] = {}
    for c in constraints:
        params.update(best.get(c["type"], _teacher)(c))
    return params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-type", type=int, default=40, help="training instructions per constraint type (default 40)")
    ap.add_argument("--instructions", type=int, default=200, help="test instructions (default 200)")
    ap.add_argument("--episodes", type=int, default=3, help="traffic scenarios per test instruction (default 3)")
    a = ap.parse_args()
    if min(a.per_type, a.instructions, a.episodes) < 1:
        ap.error("--per-type, --instructions and --episodes must be at least 1.")
    t0 = time.time()
    pool = generate_split("train", 200 * a.per_type)
    select_rows, best, best_label, data = [], {}, {}, {"per_type": a.per_type, "types": {}}
    with ClosedLoopScorer(workers=2) as scorer:

        def adaptability(items, answers, episodes=1) -> np.ndarray:
            report = score_completions(items, answers, None, episodes, scorer=scorer, progress=False)
            return nan_array(report.instruction_reductions())

        for kind in GENERATED_KINDS:
            items = [x for x in pool if [c["type"] for c in x.constraints] == [kind]][: a.per_type]
            if len(items) < a.per_type:
                raise SystemExit(f"only {len(items)} single-constraint '{kind}' instructions in the pool.")
            options = [("teacher", _teacher), *ALTERNATIVES[kind]]
            scores = {
                label: adaptability(items, [format_answer(f(x.constraints[0])) for x in items]) for label, f in options
            }
            label = max(scores, key=lambda k: np.nanmean(scores[k]))
            best_label[kind], best[kind] = label, dict(options)[label]
            data["types"][kind] = {k: float(np.nanmean(v)) for k, v in scores.items()}
            cells = ", ".join(f"{k} {100 * np.nanmean(v):.0f}" for k, v in scores.items() if k != "teacher")
            select_rows.append(
                {
                    "kind": kind,
                    "teacher": f"{100 * np.nanmean(scores['teacher']):.0f}",
                    "alternatives": cells,
                    "best": label,
                }
            )
            print(f"{kind}: teacher {select_rows[-1]['teacher']} %, best {label}", flush=True)
        test = generate_split("test", a.instructions)
        r_teacher = adaptability(test, [format_answer(teacher_params(x.constraints)) for x in test], a.episodes)
        r_better = adaptability(test, [format_answer(improved(x.constraints, best)) for x in test], a.episodes)
    ok = ~np.isnan(r_teacher) & ~np.isnan(r_better)
    m, lo, hi = paired_diff_ci(r_teacher[ok], r_better[ok])
    test_rows = [
        {"who": "teacher", "adapt": percent_ci(float(r_teacher[ok].mean()), bootstrap_mean_ci(r_teacher[ok]))},
        {"who": "improved teacher", "adapt": percent_ci(float(r_better[ok].mean()), bootstrap_mean_ci(r_better[ok]))},
    ]
    kind_rows = []
    for kind in GENERATED_KINDS:
        has = ok & np.array([kind in {c["type"] for c in x.constraints} for x in test])
        if has.any():
            km, klo, khi = paired_diff_ci(r_teacher[has], r_better[has])
            kind_rows.append(
                {
                    "kind": kind,
                    "n": int(has.sum()),
                    "diff": percent_ci(km, (klo, khi), unit=""),
                    "best": best_label[kind],
                }
            )
    data.update(
        instructions=int(ok.sum()),
        episodes=a.episodes,
        selected=best_label,
        teacher=float(r_teacher[ok].mean()),
        improved=float(r_better[ok].mean()),
        gain=[m, lo, hi],
        per_type_gain=kind_rows,
    )
    body = (
        f"Selection: {a.per_type} single-constraint training instructions per type, each answer driven once in "
        "the instruction's own traffic; adaptability in % (mean relative task-error reduction vs the default "
        "parameters, clipped to [−4, 1]).\n\n"
        + markdown_table(
            select_rows,
            [
                ("kind", "constraint type"),
                ("teacher", "teacher %"),
                ("alternatives", "alternatives %"),
                ("best", "selected"),
            ],
        )
        + f"\n\nMeasurement: {int(ok.sum())} test-split instructions, {a.episodes} traffic scenario(s) each (own "
        "first), the teacher vs the improved teacher (each constraint answered by its type's selected answer). "
        f"Gain, paired over instructions: **{percent_ci(m, (lo, hi), unit='')} points**.\n\n"
        + markdown_table(test_rows, [("who", "answers"), ("adapt", "adaptability % [95 % CI]")])
        + "\n\n"
        + markdown_table(
            kind_rows,
            [
                ("kind", "instructions with this type"),
                ("n", "count"),
                ("diff", "gain, points [95 % CI]"),
                ("best", "its selected answer"),
            ],
        )
        + "\n\nThis bounds what RL can add to a controller that reads instructions as the teacher does, by the "
        "answers of this grid: where the teacher is already the best answer, GRPO has nothing to find and can "
        "only drift.\n"
    )
    write_result("driving_headroom", "Driving: the headroom over the SFT teacher", body, data, time.time() - t0)


if __name__ == "__main__":
    main()
