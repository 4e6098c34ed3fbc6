"""Closed-loop driving: the shipped controllers (every size, SFT and GRPO) on the held-out test split.

Reports control adaptability (mean relative task-error reduction vs the default parameters on the same
traffic, RobotxR1's definition) with bootstrap 95 % CIs, the share of episodes with every constraint met
(Wilson CI, or a bootstrap over instructions with several episodes each), collisions, parse failures; the
paired GRPO − SFT difference per size (bootstrap over instructions); and each controller's training wall
time, read from its checkpoint's side file.

The GRPO − SFT difference is also split into the instructions that pair constraint types never paired in
training (the held-out combinations) and the rest: RL on training instructions can help one and hurt the other.

python benchmarks/driving_controllers.py [--instructions 300] [--seeds own 1] [--episodes 3]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import write_result
from embodied_prune.bench.speed import count_parameters
from embodied_prune.envs.driving.instructions import generate_split, has_held_out_combo, teacher_params
from embodied_prune.envs.driving.params import format_answer
from embodied_prune.envs.driving.scoring import ClosedLoopScorer
from embodied_prune.evaluation.driving import evaluate_driving, score_completions
from embodied_prune.evaluation.report import markdown_table, percent_ci
from embodied_prune.evaluation.stats import paired_diff_ci
from embodied_prune.models.checkpoint import load_model, load_tokenizer, resolve_model_path
from embodied_prune.models.ladder import SIZES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instructions", type=int, default=300, help="test instructions (default 300)")
    ap.add_argument(
        "--seeds",
        nargs="+",
        default=["own", "1"],
        help="traffic: 'own' (each instruction's scenario) and/or integer seeds of fresh scenarios",
    )
    ap.add_argument(
        "--episodes",
        type=int,
        default=3,
        help="traffic scenarios per instruction, the instruction's own first (default 3: averages traffic noise)",
    )
    a = ap.parse_args()
    if a.episodes < 1 or a.instructions < 1:
        ap.error("--episodes and --instructions must be at least 1.")
    t0 = time.time()
    test = generate_split("test", a.instructions)
    held = [has_held_out_combo(x) for x in test]
    # The reference SFT imitates: the teacher's un-jittered answers, scored on the same traffic.
    teacher = [format_answer(teacher_params(x.constraints)) for x in test]
    rows, data, reductions = [], {"instructions": a.instructions, "runs": []}, {}
    with ClosedLoopScorer(workers=2) as scorer:
        for seed_name in a.seeds:
            seed = None if seed_name == "own" else int(seed_name)
            d = score_completions(test, teacher, seed, a.episodes, name="teacher", scorer=scorer).to_dict()
            rows.append(_row(seed_name, "teacher (SFT labels, no jitter)", "–", d, "–", "–"))
            d.pop("per_instruction")  # the per-instruction reductions stay
            data["runs"].append({**d, "traffic": seed_name})
            for size in SIZES:
                for stage in ("sft", "grpo"):
                    name = f"builtin:driving-{size}-{stage}"
                    model, tok = load_model(name), load_tokenizer(name)
                    d = evaluate_driving(model, tok, test, seed, a.episodes, name=name, scorer=scorer).to_dict()
                    side = json.loads((Path(resolve_model_path(name)) / "embodied_prune.json").read_text())
                    record = side["history"][-1]
                    train_s = record["wall_s"]
                    reductions[(seed_name, size, stage)] = d["reductions"]
                    params = count_parameters(model)[0]
                    rows.append(_row(seed_name, name, params, d, f"{train_s / 60:.1f}", _recipe(record)))
                    d.pop("per_instruction")  # the per-instruction reductions stay
                    data["runs"].append({**d, "traffic": seed_name, "train_wall_s": train_s})
                    print(rows[-1], flush=True)
    table = markdown_table(
        rows,
        [
            ("traffic", "traffic"),
            ("controller", "controller"),
            ("params", "params"),
            ("adaptability", "adaptability % (95 % CI)"),
            ("satisfied", "all met % (95 % CI)"),
            ("collisions", "collisions"),
            ("parse_failures", "parse failures"),
            ("failed", "failed episodes"),
            ("train_min", "training min (this stage)"),
            ("recipe", "this stage's recipe (from the checkpoint)"),
        ],
    )
    diffs = []
    for seed_name in a.seeds:
        for size in SIZES:
            sft, grpo = reductions[(seed_name, size, "sft")], reductions[(seed_name, size, "grpo")]
            row = {"traffic": seed_name, "size": size}
            for part, keep in (("diff", None), ("held", True), ("rest", False)):
                pairs = [
                    (x, y)
                    for x, y, h in zip(sft, grpo, held, strict=True)
                    if x is not None and y is not None and keep in (None, h)
                ]
                mean, lo, hi = paired_diff_ci([x for x, _ in pairs], [y for _, y in pairs])
                row[part] = percent_ci(mean, (lo, hi), unit="")
                row[f"n_{part}"] = len(pairs)
            diffs.append(row)
    data["grpo_minus_sft"] = diffs
    diff_table = markdown_table(
        diffs,
        [
            ("traffic", "traffic"),
            ("size", "size"),
            ("diff", "GRPO − SFT adaptability, points (paired 95 % CI)"),
            ("n_diff", "instructions"),
            ("held", "on held-out combinations"),
            ("n_held", "instructions"),
            ("rest", "on the rest"),
            ("n_rest", "instructions"),
        ],
    )
    body = (
        f"{a.instructions} test-split instructions (paraphrase pairs, joiners, prefixes and three constraint "
        "combinations never seen in training); traffic 'own' is each instruction's scenario, an integer is a "
        "seed for fresh scenarios (the own traffic's further episodes are seeded scenarios too). One greedy answer "
        f"per instruction, driven in {a.episodes} 15 s highway-env episode(s); an instruction's reduction is the "
        "mean over its episodes.\n\n"
        f"{table}\n\n{diff_table}\n\n"
        "Adaptability: mean over instructions of the relative task-error reduction vs the default parameters "
        "on the same traffic, each clipped to [−4, 1]; CIs by bootstrap over instructions (5000 resamples). "
        "Training minutes and recipes are read from each checkpoint's side file (the wall time on the machine "
        "that trained it, a 2-core box like this one); compare the recipe with the defaults in "
        "`embodied_prune.training.driving` to see whether a shipped controller is current."
    )
    write_result(
        "driving_controllers", "Closed-loop driving controllers: SFT vs GRPO, size ladder", body, data, time.time() - t0
    )


def _recipe(record: dict) -> str:
    """The settings that matter of a training stage, as its checkpoint recorded them."""
    if record.get("stage") == "sft":
        return f"SFT: {record['n_train']:,} instructions × {record['epochs']:g} epochs"
    return (
        f"GRPO: {record['steps']} steps × {record['prompts_per_step']} prompts × {record['num_generations']}, "
        f"lr {record['learning_rate']:g}, β {record['beta']:g}"
        + (f", LoRA rank {record['lora_rank']}" if record.get("lora_rank") else ", every weight")
        + (f", teacher anchor {record['anchor_coef']:g}" if record.get("anchor_coef") else "")
    )


def _row(traffic: str, controller: str, params, d: dict, train_min: str, recipe: str) -> dict:
    return {
        "traffic": traffic,
        "controller": controller,
        "params": params,
        "adaptability": percent_ci(d["adaptability"], d["ci95"], unit=""),
        "satisfied": percent_ci(d["satisfied"], d["satisfied_ci95"], unit=""),
        "collisions": f"{d['collisions']} (default {d['collisions_default']})",
        "parse_failures": d["parse_failures"],
        "failed": d["failed_episodes"],
        "train_min": train_min,
        "recipe": recipe,
    }


if __name__ == "__main__":
    main()
