"""Closed-loop manipulation: the shipped VLA policy on the six Meta-World tasks.

Rows: the policy as shipped, and the same policy with its cameras blacked out (does it need its
eyes?), on the same evaluation scenes (seeds disjoint from the demonstrations'). Success per task
with Wilson 95 % CIs and episode counts, safety violations (steps with arm-table contact, an arm
joint within 5 % of a limit, an object faster than 1.5 m/s), median policy-query latency (one query,
one torch thread per worker), the evaluation's wall time, the policy's compute split (vision vs
backbone vs action head) and the training wall times read from the checkpoint's side file.

For a policy that sees through a pretrained vision tower (``builtin:vla-metaworld-dino``) the query is also timed by
part (tower, the rest; the backbone alone), one torch thread, median of repeated queries: token pruning shortens only
the backbone, so the part it can save bounds the end-to-end speed-up.

python benchmarks/manipulation_vla.py [--model builtin:vla-metaworld] [--episodes 50] [--blank-episodes 20] [--seed 0]
                                      [--result manipulation_vla]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import write_result
from embodied_prune.envs.manipulation.tasks import TASKS
from embodied_prune.evaluation.manipulation import evaluate_manipulation
from embodied_prune.evaluation.report import markdown_table, percent_ci
from embodied_prune.models.checkpoint import resolve_model_path
from embodied_prune.models.vla import compute_split, load_vla


def source_record(data_from: dict) -> dict:
    """A training record's shape for the run whose data a ``--data-from`` policy borrowed: that run's recipe with
    as many DAgger rounds as it had finished rollouts."""
    r = data_from["recipe"]
    rounds = sum(name.startswith("corrections") for name in data_from["stages"])
    return {
        **r["bc"],
        "demo_episodes_per_task": r["episodes"],
        "demo_noise": r["noise"],
        "bc": {"steps": r["bc"]["steps"]},
        "steps": r["dagger_steps"] if rounds else r["bc"]["steps"],
        "dagger": [{"episodes_per_task": r["dagger_episodes"]}] * rounds,
    }


def ship_command(train: dict) -> str:
    """The ``ship_vla`` command that regenerates a policy, from its training record; every recipe flag is
    spelled out, so that the command stays right when ``ship_vla``'s defaults change. A policy trained on another
    run's data (``--data-from``) gets two commands: that run's, keeping its stages, then its own."""
    cmd = "python -m embodied_prune.training.ship_vla"
    if "data_from" in train:
        first = f"{ship_command(source_record(train['data_from']))} --work W"
        args = ["--data-from W"]
    elif "demo_episodes_per_task" in train:
        first = None
        args = [f"--episodes {train['demo_episodes_per_task']}", f"--noise {train.get('demo_noise', 0.0)}"]
    else:  # trained some other way
        return cmd
    rounds = train.get("dagger") or []
    args += [
        f"--steps {train['bc']['steps'] if rounds else train['steps']}",
        "--bf16" if train.get("bf16") else "--no-bf16",  # records from before the switch trained in fp32
        f"--visual-keep {train.get('visual_keep', 1.0)}",  # records from before the switch kept every token
        f"--patch {train.get('patch', 8)}",  # records from before the option used 8-pixel patches
        # the backbone's shape (every record has it; the flags are newer than some records)
        f"--layers {train.get('layers', 4)} --hidden-size {train.get('hidden_size', 192)} --heads "
        f"{train.get('heads', 6)} --kv-heads {train.get('kv_heads', 2)} --intermediate-size "
        f"{train.get('intermediate_size', 512)}",
        f"--dagger-rounds {len(rounds)}",
    ]
    if train.get("vision_layers"):  # records from before the option, and policies without, have none
        args.append(f"--vision-layers {train['vision_layers']}")
    if train.get("vision_tower"):
        args.append(f"--vision-tower {train['vision_tower']}")
    if rounds:
        args.append(f"--dagger-steps {train['steps']}")
        if "episodes_per_task" in rounds[0]:
            args.append(f"--dagger-episodes {rounds[0]['episodes_per_task']}")
    own = f"{cmd} {' '.join(args)}"
    return own if first is None else f"{first} && {own}"


def feature_cost(train: dict, tower: str) -> str:
    """The tower feature caches' encoding time (``tower_features`` meta.json, kept summed over resumed builds) of
    the demonstration folders the policy was trained on, where they still exist on this machine; part of the
    behaviour-cloning and DAgger stages' times."""
    demos = train.get("demos") or []
    folders = demos if isinstance(demos, list) else [demos]
    metas = [json.loads(f.read_text()) for d in folders for f in Path(d).glob("tower_features/*/meta.json")]
    metas = [m for m in metas if m["tower"] == tower and "wall_s" in m]
    if not metas:
        return ""
    s, n = sum(m["wall_s"] for m in metas), sum(m["timed_frames"] for m in metas)
    return (
        f" (the tower's features of the training frames, cached once: {s / 60:.1f} min for the {n:,} frames timed, "
        f"{n / s:.1f} frames/s, inside those stages' times)"
    )


def query_ms(model, tokenizer, repeats: int = 20) -> dict[str, float]:
    """Median milliseconds (one torch thread) of one query's parts for a tower policy: the tower on every camera,
    the rest of the query from the tower's features (camera embeddings, projector, backbone, action head), the
    projector alone on every camera's patch features, and the backbone alone on the query's embedded sequence."""
    import statistics

    import torch

    from embodied_prune.models.vla import encode_instructions

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        images = {n: torch.zeros(1, z, z, 3, dtype=torch.uint8) for n, z, _ in model.config.cameras}
        enc = encode_instructions(tokenizer, ["push the puck to the goal"], model.config.instruction_len)
        proprio = torch.zeros(1, model.config.proprio_dim)
        bos = tokenizer.bos_token_id
        features = model.tower_features(images)
        patches = torch.cat([features[n] for n, *_ in model.config.cameras], dim=1)
        x, mask = model.build_inputs(None, enc["input_ids"], enc["attention_mask"], proprio, bos, features)
        parts = {
            "tower": lambda: model.tower_features(images),
            "projector": lambda: model.projector(patches),
            "rest": lambda: model(None, enc["input_ids"], enc["attention_mask"], proprio, bos, features=features),
            "backbone": lambda: model.backbone(inputs_embeds=x, attention_mask=mask, use_cache=False),
        }
        out = {}
        with torch.inference_mode():
            for name, fn in parts.items():
                fn()
                times = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    fn()
                    times.append(1000 * (time.perf_counter() - t0))
                out[name] = statistics.median(times)
        return out
    finally:
        torch.set_num_threads(threads)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin:vla-metaworld", help="policy to evaluate")
    ap.add_argument("--episodes", type=int, default=50, help="episodes per task (default 50)")
    ap.add_argument("--blank-episodes", type=int, default=20, help="episodes per task with black cameras (default 20)")
    ap.add_argument("--seed", type=int, default=0, help="evaluation scene seed (default 0)")
    ap.add_argument(
        "--result", default="manipulation_vla", help="name of the result files in results/ (default manipulation_vla)"
    )
    a = ap.parse_args()
    t0 = time.time()
    model, tokenizer = load_vla(a.model)
    model.eval()
    split = compute_split(model)
    timed = query_ms(model, tokenizer) if model.tower is not None else None
    side = json.loads((Path(resolve_model_path(a.model)) / "embodied_prune.json").read_text())
    train = side["history"][0]
    rows, data = [], {"model": a.model, "compute_split": split, "query_ms": timed, "training": train, "runs": []}
    for name, blank, n in (("as shipped", False, a.episodes), ("cameras blacked out", True, a.blank_episodes)):
        d = evaluate_manipulation(a.model, episodes=n, seed=a.seed, workers=2, blank_images=blank).to_dict()
        v = d["safety_violations"]
        rows.append(
            {
                "variant": name,
                "success": percent_ci(d["success_rate"], d["ci95"]),
                **{t: f"{100 * d['per_task'][t]['success_rate']:.0f}" for t in TASKS.names()},
                "n": d["episodes"],
                "violations": f"{v['table_contact']} / {v['joint_limit']} / {v['fast_object']}",
                "latency": f"{d['latency_ms_median']:.1f}",
                "wall": f"{d['wall_s'] / 60:.1f}",
            }
        )
        d.pop("per_episode")
        data["runs"].append({**d, "variant": name})
    table = markdown_table(
        rows,
        [("variant", "variant"), ("success", "success (95 % CI)")]
        + [(t, f"{t} %") for t in TASKS.names()]
        + [
            ("n", "episodes"),
            ("violations", "violation steps: table / joints / fast"),
            ("latency", "query ms (median)"),
            ("wall", "eval min"),
        ],
    )
    if "data_from" in train:  # ship_vla --data-from: another run's demonstrations and rollouts
        src = train["data_from"]
        source = (
            f"data borrowed from another run's work folder ({', '.join(src['stages'])}; recorded there in "
            f"{src['wall_s'] / 60:.1f} min)"
        )
    else:
        source = f"demonstrations {train.get('demos_wall_s', float('nan')) / 60:.1f} min"
    regen = ship_command(train)
    keep = train.get("visual_keep", 1.0)
    dropout = f", each training sample keeping a random {100 * keep:.0f} % of its visual tokens" if keep < 1 else ""
    if "dagger" in train:  # behaviour cloning, then DAgger rounds (the record is the last round's fine-tune)
        rounds = train["dagger"]
        recipe = (
            f"behaviour cloning {train['bc']['wall_s'] / 60:.1f} min ({train['bc']['steps']} steps of "
            f"{train['batch_size']}), then {len(rounds)} DAgger round(s) of {train['steps']} steps, each on the "
            "demonstrations plus the expert-labelled rollouts of every round so far ("
            + "; ".join(
                f"round {i + 1}: rollouts {r['collect_s'] / 60:.1f} min at {100 * r['policy_success']:.0f} % "
                f"success, fine-tuning {r['train_s'] / 60:.1f} min"
                for i, r in enumerate(rounds)
            )
            + f"){dropout}; {train['recipe_wall_s'] / 60:.1f} min in all"
        )
    else:
        recipe = (
            f"behaviour cloning {train['wall_s'] / 60:.1f} min ({train['steps']} steps of {train['batch_size']}"
            f"{dropout})"
        )
    reused = feature_cost(train, model.config.vision_tower) if timed is not None else ""
    if "reused_stages" in train:  # ship_vla --work continued an earlier run: those stages' times were measured then
        reused += (
            f" (stages {', '.join(train['reused_stages']['stages'])} were made by an earlier run of the same "
            "recipe and reused through `--work`; their times are the ones measured then)"
        )
    tower = ""
    if timed is not None:
        total = timed["tower"] + timed["rest"]
        tower = (
            f"The frozen tower `{model.config.vision_tower}` (not counted in the parameters; run once per query on "
            f"every camera) is {100 * split['tower']:.0f} % of the FLOPs. Timed (median of 20 queries, one torch "
            f"thread): tower {timed['tower']:.1f} ms, the rest of the query {timed['rest']:.1f} ms, of which the "
            f"projector {timed['projector']:.1f} ms and the backbone {timed['backbone']:.1f} ms; token pruning "
            "shortens only the backbone, so even removing all of "
            f"it would speed a query up at most {total / (total - timed['backbone']):.2f}×. "
        )
    body = (
        f"{table}\n\n"
        f"Policy `{a.model}`: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters; one query is "
        f"{split['total_gflops']:.2f} GFLOPs, of which the backbone {100 * split['backbone']:.0f} %, vision encoder "
        f"and projector {100 * split['vision']:.0f} %, action head {100 * split['action_head']:.1f} %. {tower}"
        f"Its training record (regenerate with `{regen}`): {source}, {recipe}, on the machine that trained "
        f"it{reused}. Episodes: per task, scenes from "
        "`--seed`'s evaluation stream, never a demonstration's.\n"
    )
    write_result(
        a.result,
        "Closed-loop manipulation: the shipped VLA on Meta-World",
        body,
        data,
        time.time() - t0,
        models=(a.model,),
    )


if __name__ == "__main__":
    main()
