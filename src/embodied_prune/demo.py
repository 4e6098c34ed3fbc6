"""The demo: prune, recover and measure the built-in models end to end (``embodied-prune demo``)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from .api import prune, recover
from .bench.speed import bench_models, count_parameters
from .data.corpus import instruction_corpus
from .errors import EmbodiedPruneError
from .evaluation.fidelity import logit_fidelity
from .evaluation.report import human_bytes, markdown_table, percent_ci
from .io import atomic_write_text
from .models.checkpoint import load_model, load_tokenizer

DEMO_MODEL = "builtin:tinylm"
SPEED_MODEL = "builtin:llama-130m"
GLUESTICK_RANKS = (8, 32)
CONTROLLER = "builtin:driving-l-grpo"
SFT_CONTROLLER = "builtin:driving-l-sft"
POLICY = "builtin:vla-metaworld"
# token pruning runs where a query's cost is in its tokens: the 324-token policy, with SpecPrune-VLA at the working
# point its token study found and its side file records (pruning before layer 2, where it holds the policy's
# success; docs/tokens.md)
TOKEN_POLICY = "builtin:vla-metaworld-hires"
CONTROLLER_SPARSITY = 0.3
BPF_SPARSITY = 0.5
GLUESTICK_BUDGET = 0.15  # extra parameters of the corrected backbone layers, the VLA experiment's budget


def _heldout_ids(tokenizer, n: int = 32, seq_len: int = 128, seed: int = 2) -> torch.Tensor:
    ids = torch.tensor(tokenizer(instruction_corpus(400, seed=seed))["input_ids"])
    n = min(n, ids.numel() // seq_len)
    return ids[: n * seq_len].reshape(n, seq_len)


def run_demo(out: str | Path = "runs/demo", full: bool = False, overwrite: bool = True, progress: bool = True) -> dict:
    """Run the demo, print its tables and write ``report.md`` and ``results.json`` under ``out``: about five
    minutes on 2 cores, or with ``full`` the 130 M-parameter speed section and larger samples (about eleven)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    tok = load_tokenizer(DEMO_MODEL)
    calib = out / "calibration.txt"
    atomic_write_text(calib, instruction_corpus(2000, seed=1))  # calibration text; held-out text uses seed 2
    heldout = _heldout_ids(tok)

    print(f"== 1. compress {DEMO_MODEL} (structured, 2:4 Wanda, 2:4 SparseGPT, GLUESTICK) ==")
    paths = {"dense": DEMO_MODEL}
    common = dict(calibration=calib, n_samples=32, seq_len=128, overwrite=overwrite, progress=progress)
    paths["structured 50% (taylor)"] = prune(
        DEMO_MODEL, "structured", 0.5, importance="taylor", out=out / "structured-50", **common
    ).path
    paths["wanda 2:4"] = prune(DEMO_MODEL, "wanda", pattern="2:4", out=out / "wanda-2of4", **common).path
    paths["sparsegpt 2:4"] = prune(DEMO_MODEL, "sparsegpt", pattern="2:4", out=out / "sparsegpt-2of4", **common).path
    for r in GLUESTICK_RANKS:
        paths[f"wanda 2:4 + GLUESTICK r={r}"] = recover(
            DEMO_MODEL, paths["wanda 2:4"], rank=r, out=out / f"wanda-2of4-gluestick-r{r}", overwrite=overwrite
        ).path
    specs = {k: str(v) for k, v in paths.items()}
    models = {k: load_model(v) for k, v in specs.items()}
    dense = models["dense"]
    speed = {r.model: r for r in bench_models(models, prompt_len=64, new_tokens=64, repeats=10, progress=progress)}
    rows = []
    for name, model in models.items():
        params, nonzero, _ = count_parameters(model)
        fid = logit_fidelity(dense, model, heldout)
        s = speed[name]
        rows.append(
            {
                "variant": name,
                "params": params,
                "nonzero_params": nonzero,
                "kl": fid.kl,
                "top1": fid.top1_agreement,
                "decode_tokens_per_s": s.decode_tokens_per_s,
                "speedup": s.decode_tokens_per_s / speed["dense"].decode_tokens_per_s,
                "path": specs[name],
            }
        )
    table = markdown_table(
        rows,
        [
            ("variant", "variant"),
            ("params", "params"),
            ("nonzero_params", "non-zero"),
            ("kl", "KL to dense (nats/token)"),
            ("top1", "top-1 agreement"),
            ("decode_tokens_per_s", "decode tok/s"),
            ("speedup", "× dense"),
        ],
    )
    print(table)
    print(
        f"(fidelity on {heldout.shape[0]}×{heldout.shape[1]} held-out tokens; 2:4 zeros are stored densely, "
        "so their speed equals dense on the CPU)\n"
    )
    report = [f"# embodied-prune demo\n\n## {DEMO_MODEL}\n\n{table}\n"]
    results: dict = {"tinylm": rows}

    if full:
        print(f"== 2. decode speed at scale: {SPEED_MODEL} dense vs 50 % structured ==")
        pruned = prune(
            SPEED_MODEL, "structured", 0.5, out=out / "llama-130m-structured-50", overwrite=overwrite, progress=progress
        )
        big = {"dense": load_model(SPEED_MODEL), "structured 50%": pruned.model}
        rows2 = bench_models(
            big,
            prompt_len=64,
            new_tokens=64,
            repeats=5,
            progress=progress,
            memory_specs={"dense": SPEED_MODEL, "structured 50%": str(pruned.path)},
        )
        base = rows2[0].decode_tokens_per_s
        table2 = markdown_table(
            [
                {
                    **r.to_dict(),
                    "speedup": r.decode_tokens_per_s / base,
                    "peak": human_bytes(r.peak_memory_bytes),
                    "weights": human_bytes(r.weight_bytes),
                }
                for r in rows2
            ],
            [
                ("model", "variant"),
                ("params", "params"),
                ("weights", "weights"),
                ("prefill_ms", "prefill ms"),
                ("decode_tokens_per_s", "decode tok/s"),
                ("speedup", "× dense"),
                ("peak", "peak memory"),
            ],
        )
        print(table2)
        print(f"(plain transformers loads {pruned.path} with AutoModelForCausalLM.from_pretrained)\n")
        report.append(f"## {SPEED_MODEL}\n\n{table2}\n")
        results["speed"] = [r.to_dict() for r in rows2]
    table3, rows3 = _driving_section(
        out, n_instructions=100 if full else 40, bpf_steps=60 if full else 20, overwrite=overwrite, progress=progress
    )
    report.append(f"## {CONTROLLER} in closed loop\n\n{table3}\n")
    results["driving"] = rows3
    table4, rows4 = _manipulation_section(out, episodes=10 if full else 3, overwrite=overwrite, progress=progress)
    report.append(f"## {POLICY} in closed loop\n\n{table4}\n")
    results["manipulation"] = rows4
    atomic_write_text(out / "report.md", "\n".join(report))
    atomic_write_text(out / "results.json", json.dumps(results, indent=2, default=str) + "\n")
    print(f"demo finished in {time.time() - t0:.0f} s; report in {out / 'report.md'}")
    return results


def _manipulation_section(out: Path, episodes: int, overwrite: bool, progress: bool) -> tuple[str, list[dict]]:
    """The shipped VLA policy dense vs its backbone pruned 2:4 with Wanda and that backbone recovered by
    GLUESTICK; the 324-token policy dense vs visual-token pruning; in closed loop on every task."""
    from .envs.manipulation.demos import BUILTIN_FRAMES
    from .envs.manipulation.tasks import TASKS
    from .evaluation.manipulation import evaluate_manipulation
    from .models.builtin import builtin_path

    print(
        f"== 4. closed loop: {POLICY} dense vs 2:4 Wanda backbone (and + GLUESTICK); {TOKEN_POLICY} dense vs "
        f"SpecPrune-VLA tokens; {episodes} episodes per task =="
    )
    try:
        dense = builtin_path(POLICY.removeprefix("builtin:"))
        hires = builtin_path(TOKEN_POLICY.removeprefix("builtin:"))
    except EmbodiedPruneError as e:
        print(f"skipped: {e}\n")
        return f"skipped: {e}", []
    from .models.vla import TinyVLAConfig

    configs = {p: TinyVLAConfig.from_pretrained(p) for p in (dense, hires)}
    n_visual = {p: sum(c.visual_tokens().values()) for p, c in configs.items()}
    calibration = BUILTIN_FRAMES  # expert steps shipped with the package, all three cameras
    pruned = prune(
        POLICY,
        "wanda",
        pattern="2:4",
        calibration=calibration,
        n_samples=24,  # every step of the shipped frames
        out=out / "vla-wanda-2-4",
        overwrite=overwrite,
        progress=progress,
    )
    recovered = recover(  # ranks where they restore the largest share of each layer's output on the same steps
        POLICY,
        pruned.path,
        budget=GLUESTICK_BUDGET,
        calibration=calibration,
        n_samples=24,  # every step of the shipped frames
        out=out / "vla-wanda-2-4-gluestick",
        overwrite=overwrite,
    )
    from .evaluation.manipulation import side_by_side_latency
    from .models.checkpoint import read_side_file
    from .tokens.pruners import DEFAULT_ALPHA, pruner_options

    # the working point the policy's token study found, recorded in its side file (what the CLI runs by default)
    point, _ = pruner_options("specprune", (read_side_file(hires).get("token_pruning") or {}).get("pruners"))
    specprune = {"name": "specprune", "keep": None, "alpha": DEFAULT_ALPHA, "options": point}
    groups = (  # each group's speed-ups are against its first row, the dense policy of that group
        (
            ("dense", dense, None),
            ("2:4 Wanda backbone", pruned.path, None),
            (f"2:4 Wanda + GLUESTICK ({GLUESTICK_BUDGET:.0%} extra)", recovered.path, None),
        ),
        (
            (f"dense, {n_visual[hires]} visual tokens ({TOKEN_POLICY.removeprefix('builtin:')})", hires, None),
            (f"SpecPrune-VLA tokens (α={DEFAULT_ALPHA}, layer {point.get('prune_layer', 0)})", hires, specprune),
        ),
    )
    # the speed of record: every variant of a group on the same observations, interleaved, one thread
    speed, base, visual = {}, {}, {}
    for group in groups:
        speed.update(
            side_by_side_latency(
                {name: (str(path), tokens) for name, path, tokens in group}, [TASKS.get(n) for n in TASKS.names()], 24
            )
        )
        base.update({name: speed[group[0][0]] for name, _, _ in group})
        visual.update({name: n_visual[group[0][1]] for name, _, _ in group})
    rows = []
    for name, path, tokens in (v for group in groups for v in group):
        d = evaluate_manipulation(
            path, episodes=episodes, seed=0, workers=2, progress=progress, token_pruner=tokens
        ).to_dict()
        v = d["safety_violations"]
        rows.append(
            {
                "variant": name,
                "success": percent_ci(d["success_rate"], d["ci95"]),
                **{t: f"{100 * d['per_task'][t]['success_rate']:.0f} %" for t in TASKS.names()},
                "violations": f"{v['table_contact']} / {v['joint_limit']} / {v['fast_object']}",
                "latency": f"{speed[name]:.1f} ({base[name] / speed[name]:.2f}×)",
                "kept": str(visual[name]) if d["kept_tokens_mean"] is None else f"{d['kept_tokens_mean']:.0f}",
            }
        )
    table = markdown_table(
        rows,
        [("variant", "variant"), ("success", "success (95 % CI)")]
        + [(t, t) for t in TASKS.names()]
        + [
            ("violations", "violations: table / joints / fast"),
            ("latency", "query ms (speed-up)"),
            ("kept", "visual tokens"),
        ],
    )
    note = (
        "(query ms: median of 24 queries per variant on the same recorded observations, interleaved, one thread; "
        "speed-ups against each policy's dense row. 2:4 weights are stored dense on the CPU, so pruning alone gives "
        "no speed-up without sparse kernels and GLUESTICK's factors add their matmuls. SpecPrune-VLA at the policy's "
        f"recorded working point {json.dumps(point)} keeps {rows[-1]['kept']} visual tokens per layer on average of "
        f"{n_visual[hires]}; layers before the pruning layer see them all; docs/tokens.md.)"
    )
    print(table)
    print(note + "\n")
    return table + "\n\n" + note, rows


def _driving_section(
    out: Path, n_instructions: int, bpf_steps: int, overwrite: bool, progress: bool
) -> tuple[str, list[dict]]:
    """The shipped driving controller in closed loop: dense, after 30 % one-shot structured pruning, and at
    50 % by post-training pruning (PTP) vs pruning during a short GRPO run from the SFT controller (BPF-RL)."""
    from .envs.driving.instructions import generate_split
    from .envs.driving.scoring import ClosedLoopScorer
    from .evaluation.driving import evaluate_driving
    from .experiments.bpf import prune_after_training
    from .schedules import PruningCallback
    from .training.driving import GRPOSettings, teacher_calibration, train_grpo

    n, pct = n_instructions, f"{BPF_SPARSITY:.0%}"
    print(f"== 3. closed loop: {CONTROLLER} dense vs {CONTROLLER_SPARSITY:.0%} structured, {n} test instructions ==")
    pruned = prune(
        CONTROLLER,
        "structured",
        CONTROLLER_SPARSITY,
        out=out / "driving-l-grpo-structured-30",
        overwrite=overwrite,
        progress=progress,
    )
    print(f"   and BPF-RL vs PTP to {pct}: PTP prunes {CONTROLLER} once (Taylor on teacher-labelled text);")
    print(f"   BPF-RL prunes {SFT_CONTROLLER} in 4 cuts (Taylor on the same text) during {bpf_steps} GRPO steps")
    ptp, bpf = out / "driving-l-ptp-50", out / "driving-l-bpf-rl-50"
    if overwrite or not (ptp / "config.json").is_file():
        prune_after_training(
            CONTROLLER, ptp, BPF_SPARSITY, {"pruning": {"importance": "taylor", "calibration_samples": 64}}
        )
    if overwrite or not (bpf / "config.json").is_file():
        calibration = teacher_calibration(load_tokenizer(SFT_CONTROLLER))  # PTP's Taylor calibration text
        cut = PruningCallback(BPF_SPARSITY, cuts=4, interval=max(1, bpf_steps // 5), calibration=calibration)
        settings = GRPOSettings.full_weights(steps=bpf_steps, prompts_per_step=2, num_generations=4, scenarios=1)
        train_grpo(SFT_CONTROLLER, bpf, settings, callbacks=[cut], overwrite=True, progress=progress)
    variants = {
        "dense": load_model(CONTROLLER),
        f"structured {CONTROLLER_SPARSITY:.0%} (one-shot)": pruned.model,
        f"PTP {pct}": load_model(ptp),
        f"BPF-RL {pct} ({bpf_steps} GRPO steps)": load_model(bpf),
    }
    speed = {r.model: r for r in bench_models(variants, prompt_len=32, new_tokens=48, repeats=5, progress=progress)}
    tok = load_tokenizer(CONTROLLER)
    instructions = generate_split("test", n)
    rows = []
    with ClosedLoopScorer(workers=2) as scorer:  # the default-parameter episodes are shared by all rows
        for name, model in variants.items():
            d = evaluate_driving(model, tok, instructions, name=name, progress=progress, scorer=scorer).to_dict()
            params, _, _ = count_parameters(model)
            rows.append(
                {
                    "variant": name,
                    "params": params,
                    "adaptability": percent_ci(d["adaptability"], d["ci95"]),
                    "satisfied": f"{100 * d['satisfied']:.0f} %",
                    "collisions": d["collisions"],
                    "parse_failures": d["parse_failures"],
                    "decode_tokens_per_s": speed[name].decode_tokens_per_s,
                    "speedup": speed[name].decode_tokens_per_s / speed["dense"].decode_tokens_per_s,
                }
            )
    table = markdown_table(
        rows,
        [
            ("variant", "variant"),
            ("params", "params"),
            ("adaptability", "adaptability (95 % CI)"),
            ("satisfied", "all constraints met"),
            ("collisions", "collisions"),
            ("parse_failures", "parse failures"),
            ("decode_tokens_per_s", "decode tok/s"),
            ("speedup", "× dense"),
        ],
    )
    print(table)
    print(
        "(adaptability: mean relative task-error reduction vs default parameters on the same traffic; the BPF\n"
        "study with equal GRPO budgets, seeds and every baseline is `embodied-prune experiment bpf`)\n"
    )
    return table, rows
