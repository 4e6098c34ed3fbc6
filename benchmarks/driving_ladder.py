"""The driving controllers' size ladder over SFT seeds: is a larger dense controller better beyond one seed's luck?

For every size (s, m, l) the SFT recipe the shipped controllers were made with (``SFTSettings`` defaults) is
run with each of ``--seeds``; seed 0 is the shipped ``builtin:driving-<size>-sft`` itself (its recorded recipe
is checked against the defaults), other seeds are trained here (kept under ``--out``; a rerun reuses them)
and saved in bfloat16 as shipping does. Every controller, and the teacher whose labels SFT imitates, answers
the same instructions of the test split and of the val split (training phrasings and combinations: where
SFT's own target is measured), each answer driven in ``--episodes`` traffic scenarios (the instruction's own
first). Reported per size: each seed's test adaptability; the mean over seeds with a 95 % CI that resamples
both seeds and instructions (so one seed's luck is inside it) on test and on val, and the means on the test
instructions pairing each held-out combination's two constraint types and on the rest; the differences
between every two sizes on both splits (paired by instruction, seeds resampled per size); and whether the
test means rise with size.

python benchmarks/driving_ladder.py [--seeds 0 1 2 3 4 5 6 7] [--instructions 200] [--episodes 3]
"""

from __future__ import annotations

import argparse
import itertools
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from _common import RESULTS, nan_array, write_result
from embodied_prune.envs.driving.instructions import (
    HELD_OUT_COMBOS,
    generate_split,
    has_held_out_combo,
    teacher_params,
)
from embodied_prune.envs.driving.params import format_answer
from embodied_prune.envs.driving.scoring import ClosedLoopScorer
from embodied_prune.evaluation.driving import evaluate_driving, score_completions
from embodied_prune.evaluation.report import markdown_table, percent_ci
from embodied_prune.evaluation.stats import seeds_and_items_ci
from embodied_prune.models.checkpoint import load_model, load_tokenizer, read_side_file, resolve_model_path
from embodied_prune.models.ladder import SIZES
from embodied_prune.training.driving import SFTSettings, train_sft

RECIPE_KEYS = ("n_train", "epochs", "learning_rate", "batch_size", "max_steps")


def controller(size: str, seed: int, out: Path) -> str:
    """The SFT controller of ``size`` and ``seed``: the shipped one for seed 0, else trained (once) into ``out``."""
    recipe = asdict(SFTSettings(size=size, seed=seed))
    if seed == 0:
        name = f"builtin:driving-{size}-sft"
        record = read_side_file(resolve_model_path(name))["history"][-1]
        if any(record.get(k) != recipe[k] for k in RECIPE_KEYS):
            raise SystemExit(f"{name} was not trained with the current SFT defaults; reship it or leave out seed 0.")
        return name
    path = out / f"{size}-seed{seed}"
    if (path / "embodied_prune.json").is_file():
        record = read_side_file(path)["history"][-1]
        if all(record.get(k) == recipe[k] for k in (*RECIPE_KEYS, "seed", "size")):
            return str(path)
    print(f"training {size} SFT, seed {seed} → {path}", flush=True)
    train_sft(path, SFTSettings(size=size, seed=seed), overwrite=True, save_dtype=torch.bfloat16, progress=False)
    return str(path)


SPLITS = ("test", "val")


def _mean(r: np.ndarray, mask: np.ndarray | None = None) -> str:
    """The mean reduction of ``r`` (over ``mask``) in %, one decimal; "–" when nothing was scored there."""
    r = r if mask is None else r[mask]
    return f"{100 * np.nanmean(r):.1f}" if np.isfinite(r).any() else "–"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(8)), help="SFT seeds (0 = the shipped ones)")
    ap.add_argument("--instructions", type=int, default=200, help="instructions per split (default 200)")
    ap.add_argument("--episodes", type=int, default=3, help="traffic scenarios per instruction (default 3)")
    ap.add_argument("--out", type=Path, default=RESULTS.parent.parent / "runs" / "driving_ladder")
    a = ap.parse_args()
    if a.episodes < 1 or a.instructions < 1:
        ap.error("--episodes and --instructions must be at least 1.")
    t0 = time.time()
    splits = {split: generate_split(split, a.instructions) for split in SPLITS}
    held_out = np.array([has_held_out_combo(x) for x in splits["test"]])
    # test instructions that pair the two constraint types of each held-out combination
    combos = {
        " + ".join(pair): np.array([set(pair) <= {c["type"] for c in x.constraints} for x in splits["test"]])
        for pair in sorted(sorted(p) for p in HELD_OUT_COMBOS)
    }
    # red[split][size]: one reductions array per seed; the teacher's under the name "teacher"
    red: dict[str, dict[str, list[np.ndarray]]] = {split: {} for split in SPLITS}
    params: dict[str, int] = {}
    data = {"seeds": a.seeds, "instructions": a.instructions, "episodes": a.episodes, "runs": []}
    with ClosedLoopScorer(workers=2) as scorer:
        for split, items in splits.items():
            teacher = [format_answer(teacher_params(x.constraints)) for x in items]
            d = score_completions(items, teacher, None, a.episodes, name="teacher", scorer=scorer, progress=False)
            red[split]["teacher"] = [nan_array(d.instruction_reductions())]
        for size in SIZES:
            for seed in a.seeds:
                name = controller(size, seed, a.out)
                model = load_model(name)
                params[size] = sum(p.numel() for p in model.parameters())  # the same for every seed of a size
                for split, items in splits.items():
                    d = evaluate_driving(
                        model, load_tokenizer(name), items, None, a.episodes, scorer=scorer, progress=False
                    ).to_dict()
                    red[split].setdefault(size, []).append(nan_array(d["reductions"]))
                    keys = ("adaptability", "ci95", "parse_failures", "collisions", "reductions")
                    data["runs"].append(
                        {"size": size, "seed": seed, "split": split, "model": name, **{k: d[k] for k in keys}}
                    )
                    print(f"{size} seed {seed} {split}: {100 * d['adaptability']:.1f} %", flush=True)
    # (seeds × instructions) reductions per split and size; the teacher is one row
    runs = {split: {k: np.stack(v) for k, v in by.items()} for split, by in red.items()}
    rows, means = [], {}
    for size in ("teacher", *SIZES):
        test = np.nanmean(runs["test"][size], axis=0)  # each instruction's reductions averaged over seeds first
        row = {"size": size, "params": f"{params[size]:,}" if size in params else "–"}
        if size in params:
            row["seeds"] = ", ".join(_mean(r) for r in runs["test"][size])
        for split in SPLITS:
            m, lo, hi = seeds_and_items_ci(runs[split][size])
            row[split] = percent_ci(m, (lo, hi), unit="")
            means.setdefault(split, {})[size] = m
        row.update({combo: _mean(test, mask) for combo, mask in combos.items()})
        row["rest"] = _mean(test, ~held_out)
        rows.append(row)
    diffs: dict[tuple[str, str], dict] = {}  # (smaller, larger) → row
    for small, large in itertools.combinations(SIZES, 2):
        row = {"pair": f"{large} − {small}"}
        for split in SPLITS:
            m, lo, hi = seeds_and_items_ci(runs[split][small], runs[split][large])
            row[split] = percent_ci(m, (lo, hi), unit="")
            row[f"{split}_lo"], row[f"{split}_separated"] = lo, bool(lo > 0 or hi < 0)
        diffs[small, large] = row
    ladder = [means["test"][size] for size in SIZES]
    # shown monotone: each size above the next smaller one with the difference's interval above zero
    shown = all(diffs[step]["test_lo"] > 0 for step in itertools.pairwise(SIZES))
    rises = all(x < y for x, y in itertools.pairwise(ladder))
    data.update(differences=list(diffs.values()), means=means, means_rise_on_test=rises, monotone_on_test=shown)
    data["held_out"] = {combo: mask.tolist() for combo, mask in combos.items()}
    table = markdown_table(
        rows,
        [
            ("size", "size"),
            ("params", "params"),
            ("seeds", f"test, per seed ({', '.join(map(str, a.seeds))}; 0 is shipped)"),
            ("test", "test, mean over seeds % [95 % CI]"),
            *[(combo, f"test: {combo} ({int(mask.sum())}, held out)") for combo, mask in combos.items()],
            ("rest", f"test: the rest ({int((~held_out).sum())})"),
            ("val", "val (training phrasings and combinations), mean over seeds % [95 % CI]"),
        ],
    )
    diff_table = markdown_table(
        list(diffs.values()),
        [
            ("pair", "larger − smaller"),
            ("test", "test, points, paired [95 % CI]"),
            ("val", "val, points, paired [95 % CI]"),
        ],
    )
    body = (
        f"SFT controllers of every size, seeds {', '.join(map(str, a.seeds))} of the shipped recipe (seed 0: the "
        f"shipped checkpoint; others trained by this script, saved in bfloat16 as shipping does), and the teacher "
        f"whose labels SFT imitates (no jitter); {a.instructions} instructions of the test split (new paraphrase "
        "pairs, joiners and prefixes; every third a constraint combination training never pairs) and of the val "
        "split (training phrasings and combinations, new instructions), one greedy answer each, driven in "
        f"{a.episodes} 15 s episodes (the instruction's own traffic first). Adaptability in %; the mean over seeds "
        "averages each instruction's reductions over seeds. Every interval is a two-level bootstrap (5000 "
        "resamples) that draws seeds (per size) and instructions (shared, so differences are paired by "
        "instruction): how far one seed lands from another is inside it.\n\n"
        f"{table}\n\n{diff_table}\n\n"
        f"Test means in size order: {', '.join(f'{s} {100 * m:.1f}' for s, m in zip(SIZES, ladder, strict=True))}: "
        + (
            "each size is better than the next smaller one, the differences' intervals above zero"
            if shown
            else "the means rise with size, but not beyond the differences' intervals"
            if rises
            else "they do **not** rise with size"
        )
        + "; larger − smaller separated from zero on test: "
        + (", ".join(d["pair"] for d in diffs.values() if d["test_separated"]) or "none")
        + ".\n"
    )
    write_result("driving_ladder", "Driving controllers: the size ladder over SFT seeds", body, data, time.time() - t0)


if __name__ == "__main__":
    main()
