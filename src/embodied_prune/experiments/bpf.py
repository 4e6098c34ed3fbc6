"""``embodied-prune experiment bpf``: pruning during training (BPF) against every baseline, in closed loop.

Every strategy starts from nothing but the task and a seed, and every GRPO stage runs the same number of
steps (``grpo.steps``):

* ``dense``     — SFT, then GRPO, of the ``size`` controller: the reference (sparsity 0).
* ``smaller``   — each smaller size of the ladder, SFT then GRPO: the "smaller dense model" baselines.
* ``ptp``       — post-training pruning: the dense GRPO controller pruned once (LLM-Pruner groups, Taylor
  importance on teacher-labelled training text), no recovery.
* ``ptp_rl``    — ``ptp``, then a GRPO recovery stage.
* ``sft_stage`` — SFT with the pruning callback to the target, then ordinary GRPO.
* ``bpf_rl``    — the dense SFT controller, then GRPO with the pruning callback to the target.
* ``bpf_sftrl`` — SFT with the callback to ``sft_share`` × the target, then GRPO with it on to the target.

Each trained controller is kept under ``models/`` and each evaluated one under ``cells/``; a run that
stops (killed, or a machine's time limit) goes on where it stopped when started again, inside a training
stage too (trainer checkpoints every ``checkpoint_every`` steps). ``--overwrite`` starts afresh; a
different config in an existing folder is an error. Each cell records the training seconds of the stages it
was first to need (``train_s``) and its evaluation's (``eval_s``). Decode speed is measured at the end, side
by side (interleaved) for one seed's controllers of every structure. The report gives, per strategy and
sparsity: parameters, adaptability (mean over seeds, bootstrap CI over instructions of the seed-averaged
reductions), collisions, decode tokens/s, and the trade-off metric of the BPF paper, removed parameters
per lost point of adaptability, with its ratio to the smaller dense model nearest in size.

Config (YAML), e.g. ``configs/bpf.yaml``::

    size: l
    sparsities: [0.25, 0.5]
    seeds: [0, 1, 2]
    strategies: [dense, smaller, ptp, ptp_rl, sft_stage, bpf_rl, bpf_sftrl]
    sft: {}                 # SFTSettings fields (default: the shipped recipe)
    grpo: {}                # GRPOSettings fields (default: the shipped recipe)
    pruning: {cuts: 4, schedule: linear, importance: taylor, taylor_data: teacher, sft_share: 0.5}
    eval: {split: test, instructions: 200}
    checkpoint_every: 25

``pruning.taylor_data``: ``teacher`` (default) scores every cut of every pruned strategy, PTP's included, by
the LM-loss gradients on ``calibration_samples`` teacher-labelled training instructions, so the strategies
differ only in when they cut and how they train; ``trainer`` scores the in-training cuts by the stage's own
loss instead (see :class:`~embodied_prune.schedules.PruningCallback`). ``sft_share``: the part of the
target BPF-SFT/RL reaches during SFT.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EmbodiedPruneError
from ..io import atomic_write_text
from .common import open_run_folder, read_config, slug
from .plots import STRATEGY_LABELS, ci_errors, figure, finish, save_figure

STRATEGIES = ("dense", "smaller", "ptp", "ptp_rl", "sft_stage", "bpf_rl", "bpf_sftrl")
PRUNED = ("ptp", "ptp_rl", "sft_stage", "bpf_rl", "bpf_sftrl")
# Decode timing repeats: a tiny controller decodes 48 tokens in ~0.1 s, so 5 repeats left ±10 % between
# controllers of one structure; 30 interleaved repeats take about a minute for twelve controllers.
DECODE_REPEATS = 30
KEYS = {"size", "sparsities", "seeds", "strategies", "sft", "grpo", "pruning", "eval", "checkpoint_every", "workers"}
PRUNING_KEYS = {"cuts", "schedule", "importance", "sft_share", "calibration_samples", "taylor_data"}


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read, check and complete a BPF experiment config (see the module docstring)."""
    from ..models.ladder import SIZES
    from ..pruning.masks import check_sparsity
    from ..training.driving import GRPOSettings, SFTSettings

    p = Path(path)
    cfg = read_config(p, "configs/bpf.yaml")
    unknown = set(cfg) - KEYS
    if unknown:
        raise EmbodiedPruneError(f"config {p}: unknown keys {sorted(unknown)}; known: {sorted(KEYS)}.")
    cfg.setdefault("size", "l")
    if cfg["size"] not in SIZES:
        raise EmbodiedPruneError(f"config {p}: size {cfg['size']!r} is not a controller size ({', '.join(SIZES)}).")
    cfg.setdefault("sparsities", [0.25, 0.5])
    for s in cfg["sparsities"]:
        check_sparsity(s)
    cfg.setdefault("seeds", [0, 1, 2])
    cfg.setdefault("strategies", list(STRATEGIES))
    bad = set(cfg["strategies"]) - set(STRATEGIES)
    if bad or "dense" not in cfg["strategies"]:
        raise EmbodiedPruneError(
            f"config {p}: strategies must include dense and come from {list(STRATEGIES)}; got {cfg['strategies']}."
        )
    for key, cls in (("sft", SFTSettings), ("grpo", GRPOSettings)):
        cfg[key] = dict(cfg.get(key) or {})
        allowed = {f.name for f in fields(cls)} - {"size", "seed"}
        if set(cfg[key]) - allowed:
            raise EmbodiedPruneError(f"config {p}: {key} may only set {sorted(allowed)}; got {sorted(cfg[key])}.")
    pruning = {
        "cuts": 4,
        "schedule": "linear",
        "importance": "taylor",
        "sft_share": 0.5,
        "calibration_samples": 64,
        "taylor_data": "teacher",
    }
    given = dict(cfg.get("pruning") or {})
    if set(given) - PRUNING_KEYS:
        raise EmbodiedPruneError(f"config {p}: pruning may only set {sorted(PRUNING_KEYS)}; got {sorted(given)}.")
    cfg["pruning"] = {**pruning, **given}
    if cfg["pruning"]["taylor_data"] not in ("teacher", "trainer"):
        raise EmbodiedPruneError(
            f"config {p}: pruning.taylor_data is teacher or trainer; got {cfg['pruning']['taylor_data']!r}."
        )
    cfg["eval"] = {"split": "test", "instructions": 200, **(cfg.get("eval") or {})}
    cfg.setdefault("checkpoint_every", 25)
    cfg.setdefault("workers", 2)
    return cfg


# --- the pure parts: trade-off metric and its CI ------------------------------------------------------------


def removed_per_point(removed: float, lost_points: float) -> float:
    """The BPF paper's trade-off: parameters removed per percentage point of adaptability lost (∞ when
    nothing was lost)."""
    return removed / lost_points if lost_points > 0 else float("inf")


def tradeoff_ratio_ci(
    removed_a: float,
    diffs_a: np.ndarray,
    removed_b: float,
    diffs_b: np.ndarray,
    resamples: int = 5000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Ratio of A's to B's removed parameters per lost point, with a 95 % bootstrap CI over instructions.

    ``diffs_*`` are per-instruction adaptability losses in points (dense − model, paired on the same
    instructions, seed-averaged); both are resampled together. A resample where A loses nothing counts as
    an infinite ratio, one where only B loses nothing as zero.
    """
    diffs_a, diffs_b = np.asarray(diffs_a, float), np.asarray(diffs_b, float)
    if diffs_a.shape != diffs_b.shape:
        raise ValueError("the two strategies must be scored on the same instructions")

    def ratio(lost_a: float, lost_b: float) -> float:
        if lost_a <= 0:
            return float("inf")
        return removed_per_point(removed_a, lost_a) / removed_per_point(removed_b, lost_b)

    point = ratio(diffs_a.mean(), diffs_b.mean())
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diffs_a), size=(resamples, len(diffs_a)))
    samples = [ratio(a, b) for a, b in zip(diffs_a[idx].mean(1), diffs_b[idx].mean(1), strict=True)]
    # inverted_cdf takes order statistics without interpolating, so infinite ratios do not turn into NaN
    lo, hi = np.quantile(samples, [0.025, 0.975], method="inverted_cdf")
    return point, float(lo), float(hi)


# --- what each cell trains ------------------------------------------------------------------------------


class Builder:
    """Trains (or finds, when an earlier run made it) every controller one seed needs, under ``root``."""

    def __init__(self, cfg: dict, root: Path, seed: int, progress: bool) -> None:
        self.cfg, self.root, self.seed, self.progress = cfg, root, seed, progress
        self.train_s = 0.0  # training seconds of the stages built so far, each stage counted once
        self._counted: set[str] = set()

    def _ensure(self, name: str, make: Callable[[Path], Any]) -> Path:
        path = self.root / f"{name}-seed{self.seed}"
        if not (path / "config.json").is_file():
            print(f"training {path.name}", flush=True)
            make(path)
        if path.name not in self._counted:
            self._counted.add(path.name)
            self.train_s += stage_seconds(path)
        return path

    def _run(self) -> dict[str, Any]:
        every = self.cfg["checkpoint_every"]
        return {"overwrite": True, "progress": self.progress, "checkpoint_every": every, "resume": every > 0}

    def _callback(self, target: float, total_steps: int, tok):
        """The cut schedule of a pruned stage; Taylor importance from teacher text (PTP's calibration) unless
        the config's ``pruning.taylor_data`` is ``trainer``."""
        from ..schedules import PruningCallback
        from ..training.driving import teacher_calibration

        p = self.cfg["pruning"]
        every = max(1, total_steps // (p["cuts"] + 1))
        teacher = p["importance"] == "taylor" and p["taylor_data"] == "teacher"
        return PruningCallback(
            target,
            cuts=p["cuts"],
            interval=every,
            schedule=p["schedule"],
            importance=p["importance"],
            seed=self.seed,
            calibration=teacher_calibration(tok, p["calibration_samples"]) if teacher else None,
        )

    def sft(self, size: str, target: float | None = None) -> Path:
        from ..training.driving import SFTSettings, train_sft

        s = SFTSettings(size=size, seed=self.seed, **self.cfg["sft"])
        name = f"{size}-sft" if target is None else f"{size}-sft-pruned{round(target * 100)}"
        from ..training.controller import train_tokenizer

        cbs = [] if target is None else [self._callback(target, s.total_steps(), train_tokenizer())]
        return self._ensure(name, lambda out: train_sft(out, s, callbacks=cbs, **self._run()))

    def grpo(self, init: Path, name: str, target: float | None = None) -> Path:
        from ..training.driving import GRPOSettings, train_grpo

        # every strategy's GRPO trains every weight, pruned or not, so they differ only in what they prune
        s = GRPOSettings.full_weights(seed=self.seed, workers=self.cfg["workers"], **self.cfg["grpo"])
        from ..models.checkpoint import load_tokenizer

        cbs = [] if target is None else [self._callback(target, s.steps, load_tokenizer(init))]
        return self._ensure(name, lambda out: train_grpo(init, out, s, callbacks=cbs, **self._run()))

    def ptp(self, dense: Path, target: float) -> Path:
        return self._ensure(f"ptp{round(target * 100)}", lambda out: prune_after_training(dense, out, target, self.cfg))

    def build(self, strategy: str, sparsity: float | None, size: str | None = None) -> Path:
        """The final controller of one cell."""
        big, pct = self.cfg["size"], round((sparsity or 0) * 100)
        if strategy == "dense":
            return self.grpo(self.sft(big), f"{big}-grpo")
        if strategy == "smaller":
            return self.grpo(self.sft(size), f"{size}-grpo")
        if strategy == "ptp":
            return self.ptp(self.build("dense", None), sparsity)
        if strategy == "ptp_rl":
            return self.grpo(self.ptp(self.build("dense", None), sparsity), f"ptp{pct}-rl")
        if strategy == "sft_stage":
            return self.grpo(self.sft(big, sparsity), f"sft-stage{pct}")
        if strategy == "bpf_rl":
            return self.grpo(self.sft(big), f"bpf-rl{pct}", target=sparsity)
        if strategy == "bpf_sftrl":
            first = self.sft(big, sparsity * self.cfg["pruning"]["sft_share"])
            return self.grpo(first, f"bpf-sftrl{pct}", target=sparsity)
        raise EmbodiedPruneError(f"unknown strategy {strategy!r}; choose from {list(STRATEGIES)}.")


def stage_seconds(model_dir: Path) -> float:
    """Wall seconds of the stage that made ``model_dir``, as its trainer recorded them (the last history record;
    a stage resumed from a trainer checkpoint recorded only its last part; one-shot pruning records none)."""
    side = model_dir / "embodied_prune.json"
    history = json.loads(side.read_text()).get("history", []) if side.is_file() else []
    return float(history[-1].get("wall_s", 0.0)) if history else 0.0


def prune_after_training(dense: Path, out: Path, sparsity: float, cfg: dict) -> None:
    """PTP: one-shot structured pruning of a trained controller, Taylor importance from the LM loss on
    teacher-labelled training instructions (the text its SFT stage saw)."""
    import torch

    from ..models.checkpoint import load_model, load_tokenizer, save_model
    from ..pruning.structured import prune_structured
    from ..training.driving import teacher_calibration

    model, tok = load_model(dense, with_factors=False), load_tokenizer(dense)
    ids = teacher_calibration(tok, cfg["pruning"]["calibration_samples"])
    importance = cfg["pruning"]["importance"]
    with torch.enable_grad():
        prune_structured(model, sparsity, importance=importance, calibration=ids, progress=False)
    record = {"op": "prune", "method": "structured", "sparsity": sparsity, "importance": importance, "from": str(dense)}
    save_model(model, out, tok, history=[record], overwrite=True)


def cells_of(cfg: dict) -> list[tuple[str, float | None, str | None]]:
    """(strategy, sparsity, smaller size) of every cell of one seed, in training order."""
    from ..models.ladder import SIZES

    out: list[tuple[str, float | None, str | None]] = [("dense", None, None)]
    if "smaller" in cfg["strategies"]:
        sizes = list(SIZES)
        out += [("smaller", None, z) for z in sizes[: sizes.index(cfg["size"])]]
    out += [(s, sp, None) for sp in cfg["sparsities"] for s in PRUNED if s in cfg["strategies"]]
    return out


def cell_name(strategy: str, sparsity: float | None, size: str | None) -> str:
    if strategy == "smaller":
        return f"smaller ({size})"
    return strategy if sparsity is None else f"{strategy} {round(sparsity * 100)}%"


# --- the run ---------------------------------------------------------------------------------------------


def run_bpf_experiment(
    config: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False, progress: bool = True
) -> Path:
    """Train and evaluate every cell of ``config`` (resumable); write results, report and plots into ``out``."""
    from ..envs.driving.instructions import generate_split
    from ..envs.driving.scoring import ClosedLoopScorer
    from ..evaluation.driving import evaluate_driving
    from ..models.checkpoint import load_model, load_tokenizer

    cfg = load_config(config)
    out = open_run_folder(out, cfg, overwrite, "cells", same_config=True)
    test = generate_split(cfg["eval"]["split"], cfg["eval"]["instructions"])
    rows = []
    with ClosedLoopScorer(cfg["workers"]) as scorer:
        for seed in cfg["seeds"]:
            builder = Builder(cfg, out / "models", seed, progress)
            for strategy, sparsity, size in cells_of(cfg):
                name = cell_name(strategy, sparsity, size)
                cell = out / "cells" / f"{slug(name)}-seed{seed}.json"
                if cell.is_file():
                    rows.append(json.loads(cell.read_text()))
                    continue
                before = builder.train_s
                model_path = builder.build(strategy, sparsity, size)
                model = load_model(model_path)
                d = evaluate_driving(
                    model, load_tokenizer(model_path), test, name=name, progress=progress, scorer=scorer
                ).to_dict()
                row = {
                    "cell": name,
                    "strategy": strategy,
                    "sparsity": sparsity,
                    "size": size or cfg["size"],
                    "seed": seed,
                    "model": str(model_path.relative_to(out)),
                    "params": sum(p.numel() for p in model.parameters()),
                    "adaptability": d["adaptability"],
                    "ci95": d["ci95"],
                    "satisfied": d["satisfied"],
                    "collisions": d["collisions"],
                    "parse_failures": d["parse_failures"],
                    "reductions": d["reductions"],
                    "train_s": builder.train_s - before,
                    "eval_s": d["wall_s"],
                }
                atomic_write_text(cell, json.dumps(row) + "\n")
                rows.append(row)
                print(f"{name} seed {seed}: adaptability {100 * d['adaptability']:.1f} %", flush=True)
    speeds = decode_speeds(rows, cfg, out, progress)
    for r in rows:
        r["decode_tokens_per_s"] = speeds[r["cell"]]
    results = [{k: v for k, v in r.items() if k != "reductions"} for r in rows]
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    summary = summarise(rows, cfg)
    atomic_write_text(out / "summary.json", json.dumps({"config": cfg, "strategies": summary}, indent=2) + "\n")
    atomic_write_text(out / "report.md", bpf_report(summary, cfg))
    plot_bpf(summary, out, cfg)
    return out


def decode_speeds(rows: list[dict], cfg: dict, out: Path, progress: bool) -> dict[str, float]:
    """Decode tokens/s of every cell's structure, side by side (interleaved): the controllers of the first seed
    whose every controller is still on disk (the structures, so the speeds, are the same for every seed; a
    run resumed from evaluated cells alone keeps only the seeds it trained)."""
    from ..bench.speed import bench_models
    from ..models.checkpoint import load_model

    def on_disk(r: dict) -> bool:
        return (out / r["model"] / "config.json").is_file()

    seed = next((s for s in cfg["seeds"] if all(on_disk(r) for r in rows if r["seed"] == s)), None)
    if seed is None:
        raise EmbodiedPruneError(
            f"no seed has all its controllers under {out / 'models'}, so decode speed cannot be timed; delete one "
            f"seed's evaluated cells in {out / 'cells'} and run again to retrain that seed."
        )
    models = {r["cell"]: load_model(out / r["model"]) for r in rows if r["seed"] == seed}
    results = bench_models(models, prompt_len=32, new_tokens=48, repeats=DECODE_REPEATS, progress=progress)
    return {b.model: b.decode_tokens_per_s for b in results}


def summarise(rows: list[dict], cfg: dict) -> list[dict]:
    """One entry per cell: seeds pooled (per-instruction reductions averaged over seeds), the loss to dense
    with a paired bootstrap CI, the trade-off metric and its ratio to the nearest smaller dense model."""
    from ..evaluation.stats import bootstrap_mean_ci, paired_diff_ci

    by_cell: dict[str, list[dict]] = {}
    for r in rows:
        by_cell.setdefault(r["cell"], []).append(r)

    def seed_mean(cell_rows: list[dict]) -> np.ndarray:
        return np.nanmean([[np.nan if x is None else x for x in r["reductions"]] for r in cell_rows], axis=0)

    dense = seed_mean(by_cell["dense"])
    dense_params = by_cell["dense"][0]["params"]
    out = []
    for name, cell_rows in by_cell.items():
        red = seed_mean(cell_rows)
        ok = ~np.isnan(red) & ~np.isnan(dense)
        lost, lo, hi = paired_diff_ci(100 * red[ok], 100 * dense[ok])  # dense − model, in points
        params = cell_rows[0]["params"]
        out.append(
            {
                "cell": name,
                "strategy": cell_rows[0]["strategy"],
                "sparsity": cell_rows[0]["sparsity"],
                "seeds": len(cell_rows),
                "params": params,
                "removed_share": 1 - params / dense_params,
                "adaptability": float(np.mean([r["adaptability"] for r in cell_rows])),
                "adaptability_ci95": list(bootstrap_mean_ci(red[~np.isnan(red)])),
                "lost_points": lost,
                "lost_ci95": [lo, hi],
                "collisions": int(sum(r["collisions"] for r in cell_rows)),
                "decode_tokens_per_s": cell_rows[0]["decode_tokens_per_s"],
                "removed_per_point": removed_per_point(dense_params - params, lost) if name != "dense" else None,
                "_diffs": (100 * (dense - red))[ok],
            }
        )
    smaller = [e for e in out if e["strategy"] == "smaller"]
    for e in out:
        e["vs_smaller"] = None
        if e["strategy"] in PRUNED and smaller:
            ref = min(smaller, key=lambda s: abs(s["params"] - e["params"]))
            if len(ref["_diffs"]) == len(e["_diffs"]):
                ratio = tradeoff_ratio_ci(
                    dense_params - e["params"], e["_diffs"], dense_params - ref["params"], ref["_diffs"]
                )
                e["vs_smaller"] = {"reference": ref["cell"], "ratio": ratio[0], "ci95": [ratio[1], ratio[2]]}
    for e in out:
        e.pop("_diffs")
    return out


def _num(x: float | None, fmt: str = "{:,.0f}") -> str:
    if x is None:
        return "–"
    return "∞" if x == float("inf") else fmt.format(x)


def bpf_report(summary: list[dict], cfg: dict) -> str:
    """The markdown table of the summary."""
    from ..evaluation.report import markdown_table

    rows = []
    for e in summary:
        v = e["vs_smaller"]
        rows.append(
            {
                "cell": e["cell"],
                "params": f"{e['params']:,} ({100 * e['removed_share']:.0f} % removed)",
                "adaptability": f"{100 * e['adaptability']:.1f} [{100 * e['adaptability_ci95'][0]:.1f}, "
                f"{100 * e['adaptability_ci95'][1]:.1f}]",
                "lost": "–"
                if e["cell"] == "dense"
                else f"{e['lost_points']:+.1f} [{e['lost_ci95'][0]:+.1f}, {e['lost_ci95'][1]:+.1f}]",
                "collisions": e["collisions"],
                "decode": f"{e['decode_tokens_per_s']:.0f}",
                "tradeoff": _num(e["removed_per_point"]),
                "ratio": "–"
                if v is None
                else f"{_num(v['ratio'], '{:.2f}')}× [{_num(v['ci95'][0], '{:.2f}')}, "
                f"{_num(v['ci95'][1], '{:.2f}')}] vs {v['reference']}",
            }
        )
    table = markdown_table(
        rows,
        [
            ("cell", "strategy"),
            ("params", "parameters"),
            ("adaptability", "adaptability % [95 % CI]"),
            ("lost", "lost points vs dense [95 % CI]"),
            ("collisions", "collisions"),
            ("decode", "decode tokens/s"),
            ("tradeoff", "removed params per lost point"),
            ("ratio", "trade-off vs smaller dense [95 % CI]"),
        ],
    )
    return (
        f"{table}\n\n{len(cfg['seeds'])} seed(s) per strategy; {cfg['eval']['instructions']} {cfg['eval']['split']}-"
        "split instructions, each in its own traffic. Adaptability: mean over seeds; CIs by bootstrap over "
        "instructions of the seed-averaged relative error reductions; lost points paired with dense on the same "
        "instructions. Decode tokens/s: greedy, KV cache, 32-token prompt + 48 new tokens, one seed's "
        f"controllers timed side by side (interleaved, median of {DECODE_REPEATS}). Collisions: summed over seeds. "
        "Every GRPO stage has the same length, so PTP + RL (the dense stage, then a recovery stage) trains with "
        "twice the RL steps of dense, SFT-stage, BPF-RL and BPF-SFT/RL.\n"
    )


def plot_bpf(summary: list[dict], out: Path, cfg: dict | None = None) -> None:
    """Adaptability (95 % CI) vs parameters, and decode tokens/s, per strategy; ``cfg`` (the study's config) names
    the controller size, seeds and evaluation in the titles."""
    on = ""
    if cfg is not None:
        on = (
            f"\n(size {cfg['size']}, {len(cfg['seeds'])} seed(s), {cfg['eval']['instructions']} "
            f"{cfg['eval']['split']} instructions)"
        )
    fig, ax = figure((7.5, 4.8))
    for i, strategy in enumerate(dict.fromkeys(e["strategy"] for e in summary)):
        rows = sorted((e for e in summary if e["strategy"] == strategy), key=lambda e: e["params"])
        xs = [e["params"] / 1e6 for e in rows]
        ys = [100 * e["adaptability"] for e in rows]
        cis = [(100 * e["adaptability_ci95"][0], 100 * e["adaptability_ci95"][1]) for e in rows]
        # strategies at one size would hide one another's bars: a small horizontal offset per strategy
        dx = [x * (1 + 0.012 * (i - 3)) for x in xs]
        ax.errorbar(
            dx, ys, yerr=ci_errors(ys, cis), marker="o", capsize=3, label=STRATEGY_LABELS.get(strategy, strategy)
        )
    finish(
        ax,
        f"BPF study: closed-loop adaptability vs controller size{on}",
        "parameters [M] (pruned strategies: after pruning)",
        "adaptability % (mean over seeds, 95 % CI)",
        legend={},
    )
    save_figure(fig, out / "adaptability_vs_params.png")
    fig, ax = figure((7.5, 4.2))
    names = [_cell_label(e) for e in summary]
    ax.barh(names, [e["decode_tokens_per_s"] for e in summary])
    ax.invert_yaxis()
    finish(ax, f"BPF study: greedy decode speed, controllers timed side by side{on}", "decode tokens/s")
    save_figure(fig, out / "decode_speed.png")


def _cell_label(e: dict) -> str:
    """A readable name of a summary row: strategy, and its sparsity when pruned."""
    name = STRATEGY_LABELS.get(e["strategy"], e["strategy"])
    if e["strategy"] == "smaller":
        return f"{name} {e['cell'].removeprefix('smaller').strip()}".strip()
    return name if e.get("sparsity") is None else f"{name} {100 * e['sparsity']:.0f} %"


__all__ = ["STRATEGIES", "load_config", "removed_per_point", "run_bpf_experiment", "tradeoff_ratio_ci"]
