"""The driving controllers' size ladder over SFT seeds: is a larger dense controller better beyond one seed's luck?

For every size (s, m, l) the SFT recipe the shipped controllers were made with (``SFTSettings`` defaults) is
run with each of ``--seeds``; seed 0 is the shipped ``builtin:driving-<size>-sft`` itself (its recorded recipe
is checked against the defaults), other seeds are trained here (kept under ``--out``; a rerun reuses them)
and saved in bfloat16 as shipping does. Every controller answers the same test-split instructions, each
answer driven in ``--episodes`` traffic scenarios (the instruction's own first). Reported per size: each
seed's adaptability and the mean over seeds with a 95 % CI (bootstrap over instructions of the seed-averaged
reductions), and the paired differences between every two sizes.

python benchmarks/driving_ladder.py [--seeds 0 1 2] [--instructions 200] [--episodes 3]
"""

from __future__ import annotations

import argparse
import itertools
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from _common import RESULTS, write_result
from embodied_prune.envs.driving.instructions import generate_split
from embodied_prune.envs.driving.scoring import ClosedLoopScorer
from embodied_prune.evaluation.driving import evaluate_driving
from embodied_prune.evaluation.report import markdown_table, percent_ci
from embodied_prune.evaluation.stats import bootstrap_mean_ci, paired_diff_ci
from embodied_prune.models.checkpoint import load_model, load_tokenizer, read_side_file, resolve_model_path
from embodied_prune.training.controller import SIZES
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="SFT seeds (0 = the shipped ones)")
    ap.add_argument("--instructions", type=int, default=200, help="test instructions (default 200)")
    ap.add_argument("--episodes", type=int, default=3, help="traffic scenarios per instruction (default 3)")
    ap.add_argument("--out", type=Path, default=RESULTS.parent.parent / "runs" / "driving_ladder")
    a = ap.parse_args()
    if a.episodes < 1 or a.instructions < 1:
        ap.error("--episodes and --instructions must be at least 1.")
    t0 = time.time()
    test = generate_split("test", a.instructions)
    red: dict[str, list[np.ndarray]] = {}
    params: dict[str, int] = {}
    rows, data = [], {"seeds": a.seeds, "instructions": a.instructions, "episodes": a.episodes, "runs": []}
    with ClosedLoopScorer(workers=2) as scorer:
        for size in SIZES:
            red[size] = []
            for seed in a.seeds:
                name = controller(size, seed, a.out)
                model = load_model(name)
                params[size] = sum(p.numel() for p in model.parameters())  # the same for every seed of a size
                d = evaluate_driving(
                    model, load_tokenizer(name), test, None, a.episodes, scorer=scorer, progress=False
                ).to_dict()
                r = np.array([np.nan if x is None else x for x in d["reductions"]])
                red[size].append(r)
                data["runs"].append(
                    {
                        "size": size,
                        "seed": seed,
                        "model": name,
                        **{k: d[k] for k in ("adaptability", "ci95", "parse_failures", "collisions", "reductions")},
                    }
                )
                print(f"{size} seed {seed}: {100 * d['adaptability']:.1f} %", flush=True)
    mean = {size: np.nanmean(np.stack(v), axis=0) for size, v in red.items()}
    for size in SIZES:
        ok = ~np.isnan(mean[size])
        row = {"size": size, "params": f"{params[size]:,}"}
        for seed, r in zip(a.seeds, red[size], strict=True):
            row[f"seed{seed}"] = f"{100 * np.nanmean(r):.1f}"
        row["mean"] = percent_ci(float(mean[size][ok].mean()), bootstrap_mean_ci(mean[size][ok]), unit="")
        rows.append(row)
    diffs = []
    for small, large in itertools.combinations(SIZES, 2):
        ok = ~np.isnan(mean[small]) & ~np.isnan(mean[large])
        m, lo, hi = paired_diff_ci(mean[small][ok], mean[large][ok])
        diffs.append({"pair": f"{large} − {small}", "diff": percent_ci(m, (lo, hi), unit=""), "n": int(ok.sum())})
    data["differences"] = diffs
    seed_cols = [(f"seed{s}", f"seed {s}" + (" (shipped)" if s == 0 else "")) for s in a.seeds]
    table = markdown_table(
        rows, [("size", "size"), ("params", "params"), *seed_cols, ("mean", "mean over seeds % [95 % CI]")]
    )
    diff_table = markdown_table(
        diffs, [("pair", "larger − smaller"), ("diff", "adaptability points, paired [95 % CI]"), ("n", "instructions")]
    )
    body = (
        f"SFT controllers of every size, seeds {', '.join(map(str, a.seeds))} of the shipped recipe (seed 0: the "
        f"shipped checkpoint; others trained by this script, saved in bfloat16 as shipping does); "
        f"{a.instructions} test-split instructions, one greedy answer each, driven in {a.episodes} 15 s episodes "
        "(the instruction's own traffic first). Adaptability in % per seed; the mean over seeds averages each "
        "instruction's reductions over seeds first, then bootstraps over instructions (5000 resamples); the "
        "paired differences pair those seed means by instruction. These intervals resample instructions, not "
        "seeds: how far one seed lands from another (the per-seed columns) is not inside them.\n\n"
        f"{table}\n\n{diff_table}\n"
    )
    write_result("driving_ladder", "Driving controllers: the size ladder over SFT seeds", body, data, time.time() - t0)


if __name__ == "__main__":
    main()
