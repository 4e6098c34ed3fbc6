"""``embodied-prune experiment gluestick``: pruned VLAs with and without GLUESTICK recovery, in closed loop.

A grid of cells, each a pruned variant (method and sparsity or N:M pattern) × a recovery (none, GLUESTICK
at a global rank, GLUESTICK at a per-layer budget, in any factor dtype, or the trained alternative: LoRA
adapters fitted by behaviour cloning at a rank or at the rank a budget allows, see
:mod:`embodied_prune.recovery.lora`), plus the dense policy, all on the same episodes. Per cell: success
with CIs, safety violations, extra parameters (absolute and as a share of the backbone's linear
parameters), weight bytes and median query latency. Every model is
built once into ``models/`` and every finished cell is saved at once under ``cells/`` and not
recomputed when the experiment runs again (``--overwrite`` starts afresh). Markdown table and plots
(success vs extra parameters; safety violations vs extra parameters).

Config (YAML)::

    model: builtin:vla-metaworld
    episodes: 50
    seed: 0
    workers: 2
    calibration_episodes: 2       # expert demonstrations per task for Wanda/SparseGPT calibration
    lora_episodes: 20             # expert demonstrations per task LoRA recovery trains on
    lora_steps: 400               # its behaviour-cloning steps
    pruned:
      - {name: wanda 2:4, method: wanda, pattern: "2:4"}
      - {name: magnitude 50%, method: magnitude, sparsity: 0.5}
    recovery:
      - {name: none}
      - {name: r16, rank: 16}
      - {name: budget 15%, budget: 0.15}
      - {name: budget 15% int8, budget: 0.15, dtype: int8}
      - {name: lora 15%, lora_budget: 0.15}   # or lora_rank: R
    cells: all                    # or a list of [pruned name, recovery name]
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any

from ..errors import EmbodiedPruneError
from ..io import atomic_write_text
from .common import figure, model_fingerprint, open_run_folder, read_config, save_figure, slug, violations_cell

PRUNED_KEYS = {"name", "method", "pattern", "sparsity"}
RECOVERY_KEYS = {"name", "rank", "budget", "dtype", "svd", "lora_rank", "lora_budget"}


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a GLUESTICK experiment config (see the module docstring)."""
    p = Path(path)
    cfg = read_config(p, "configs/gluestick_vla.yaml")
    for key, allowed in (("pruned", PRUNED_KEYS), ("recovery", RECOVERY_KEYS)):
        items = cfg.get(key)
        if not items:
            raise EmbodiedPruneError(f"config {p} lists no {key} entries; see configs/gluestick_vla.yaml.")
        names = [i.get("name") for i in items]
        if None in names or len(set(names)) != len(names):
            raise EmbodiedPruneError(f"config {p}: every {key} entry needs a unique name, got {names}.")
        for i in items:
            if set(i) - allowed:
                raise EmbodiedPruneError(f"config {p}: {key} entry {i} may only have {sorted(allowed)}.")
    for r in cfg["recovery"]:
        if len({"rank", "budget", "lora_rank", "lora_budget"} & set(r)) > 1:
            raise EmbodiedPruneError(
                f"config {p}: recovery {r['name']!r} gives more than one of rank, budget, lora_rank, lora_budget; "
                "pick one."
            )
    cells = cfg.get("cells", "all")
    pruned, recovery = [i["name"] for i in cfg["pruned"]], [i["name"] for i in cfg["recovery"]]
    if cells == "all":
        cells = [list(c) for c in itertools.product(pruned, recovery)]
    for c in cells:
        if len(c) != 2 or c[0] not in pruned or c[1] not in recovery:
            raise EmbodiedPruneError(f"config {p}: cell {c} must be [pruned name, recovery name] from the lists.")
    cfg["cells"] = cells
    cfg.setdefault("model", "builtin:vla-metaworld")
    cfg.setdefault("episodes", 50)
    cfg.setdefault("seed", 0)
    cfg.setdefault("workers", 2)
    cfg.setdefault("tasks", None)
    cfg.setdefault("calibration_episodes", 2)
    cfg.setdefault("lora_episodes", 20)
    cfg.setdefault("lora_steps", 400)
    return cfg


def backbone_parameters(model) -> int:
    """Parameters of the linear layers of the backbone's decoder layers (what pruning and recovery touch)."""
    from ..recovery.lora import target_layers

    return sum(m.weight.numel() for m in target_layers(model).values())


def build_models(cfg: dict, out: Path, progress: bool = True) -> dict[str, dict]:
    """Prune and recover every model the cells need (each once; existing folders are reused)."""
    from ..api import prune, recover
    from ..envs.manipulation.demos import generate_demos
    from ..envs.manipulation.render import cameras_for
    from ..models.vla import load_vla

    models = out / "models"
    models.mkdir(parents=True, exist_ok=True)
    stamp, fingerprint = models / "dense_fingerprint.txt", model_fingerprint(cfg["model"])
    if stamp.is_file() and stamp.read_text().strip() != fingerprint:
        raise EmbodiedPruneError(
            f"{models} was built from another version of {cfg['model']}; pass --overwrite to start afresh."
        )
    atomic_write_text(stamp, fingerprint + "\n")
    dense, _ = load_vla(cfg["model"])
    cameras = cameras_for(dense.config.cameras)  # demonstrations seen as this policy sees
    base = backbone_parameters(dense)
    pruned_by, recovery_by = {p["name"]: p for p in cfg["pruned"]}, {r["name"]: r for r in cfg["recovery"]}
    calibration = None
    built: dict[str, dict] = {"dense": {"path": cfg["model"], "extra_parameters": 0, "backbone_parameters": base}}
    for p_name, r_name in cfg["cells"]:
        p, r = pruned_by[p_name], recovery_by[r_name]
        p_path = models / slug(p_name)
        if not (p_path / "config.json").is_file():
            if p["method"] in ("wanda", "sparsegpt") and calibration is None:
                calibration = models / "calibration-demos"
                if not (calibration / "meta.json").is_file():
                    generate_demos(
                        calibration,
                        episodes=cfg["calibration_episodes"],
                        overwrite=True,
                        progress=progress,
                        cameras=cameras,
                    )
            prune(
                cfg["model"],
                p["method"],
                sparsity=p.get("sparsity"),
                pattern=p.get("pattern"),
                calibration=calibration if p["method"] in ("wanda", "sparsegpt") else "random",
                n_samples=64,
                out=p_path,
                overwrite=True,
                progress=progress,
            )
        key = f"{p_name} | {r_name}"
        if not {"rank", "budget", "lora_rank", "lora_budget"} & set(r):
            built[key] = {"path": str(p_path), "extra_parameters": 0, "backbone_parameters": base}
            continue
        r_path = models / f"{slug(p_name)}--{slug(r_name)}"
        side = r_path / "embodied_prune.json"
        if not side.is_file() and ("lora_rank" in r or "lora_budget" in r):
            from ..recovery.lora import LoRASettings, lora_recover, rank_for_budget

            lora_demos = models / "lora-demos"
            if not (lora_demos / "meta.json").is_file():
                generate_demos(
                    lora_demos,
                    cfg["tasks"],
                    episodes=cfg["lora_episodes"],
                    overwrite=True,
                    progress=progress,
                    cameras=cameras,
                )
            rank = r.get("lora_rank") or rank_for_budget(dense, r["lora_budget"])
            settings = LoRASettings(rank=rank, steps=cfg["lora_steps"], seed=cfg["seed"])
            lora_recover(p_path, lora_demos, r_path, settings, overwrite=True, progress=progress)
        elif not side.is_file():
            recover(
                cfg["model"],
                p_path,
                rank=r.get("rank"),
                budget=r.get("budget"),
                dtype=r.get("dtype", "float32"),
                svd=r.get("svd", "exact"),
                out=r_path,
                overwrite=True,
            )
        record = json.loads(side.read_text())["history"][-1]
        built[key] = {
            "path": str(r_path),
            "extra_parameters": record["extra_parameters"],
            "backbone_parameters": base,
            "energy": record.get("energy"),
            "factor_dtype": record.get("factor_dtype", "float32"),
            "recovery_method": record.get("method"),
        }
    return built


def weight_bytes(path: str) -> int:
    """Bytes of a model folder's weight files (safetensors, GLUESTICK factors included)."""
    from ..models.checkpoint import resolve_model_path

    return sum(f.stat().st_size for f in Path(resolve_model_path(path)).glob("*.safetensors"))


def run_gluestick_experiment(
    config: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False, progress: bool = True
) -> Path:
    """Build and evaluate every cell of ``config`` (resumable); write report, summary and plots into ``out``."""
    from ..evaluation.manipulation import evaluate_manipulation

    cfg = load_config(config)
    out = open_run_folder(out, cfg, overwrite, "cells", same_config=False)
    built = build_models(cfg, out, progress)
    results = {}
    for key, info in built.items():
        path = out / "cells" / f"{slug(key)}.json"
        fingerprint = model_fingerprint(info["path"])
        if path.is_file():
            d = json.loads(path.read_text())
            if (
                d.get("episodes_per_task") == cfg["episodes"]
                and d.get("seed") == cfg["seed"]
                and d.get("model_fingerprint") == fingerprint
            ):
                print(f"{key}: finished earlier, kept ({path})", flush=True)
                results[key] = d
                continue
        print(f"{key}: evaluating {info['path']}", flush=True)
        rep = evaluate_manipulation(
            info["path"], cfg["tasks"], cfg["episodes"], seed=cfg["seed"], workers=cfg["workers"], progress=progress
        ).to_dict()
        rep.pop("per_episode")
        d = {
            **rep,
            **info,
            "episodes_per_task": cfg["episodes"],
            "weight_bytes": weight_bytes(info["path"]),
            "model_fingerprint": fingerprint,
        }
        atomic_write_text(path, json.dumps(d, indent=2) + "\n")
        results[key] = d
    summary = {"config": cfg, "cells": results}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out / "report.md", gluestick_report(summary))
    plot_gluestick(summary, out)
    return out


def recovered_share(dense: float, pruned: float, recovered: float) -> float | None:
    """Share of the success lost to pruning that recovery wins back (None when pruning lost nothing)."""
    lost = dense - pruned
    return None if lost <= 0 else (recovered - pruned) / lost


def gluestick_report(summary: dict) -> str:
    """Markdown table of the cells (dense first), with the share of lost success each recovery wins back."""
    from ..evaluation.report import markdown_table, percent_ci

    cells = summary["cells"]
    dense = cells["dense"]["success_rate"]
    rows = []
    for key, d in cells.items():
        p_name = key.split(" | ")[0]
        unrecovered = cells.get(f"{p_name} | none")
        share = None
        if unrecovered is not None and key != f"{p_name} | none" and key != "dense":
            share = recovered_share(dense, unrecovered["success_rate"], d["success_rate"])
        v = d["safety_violations"]
        rows.append(
            {
                "cell": key,
                "success": percent_ci(d["success_rate"], d["ci95"]),
                "n": d["episodes"],
                "won_back": "" if share is None else f"{100 * share:.0f} %",
                "violations": violations_cell(v),
                "extra": f"{d['extra_parameters']:,} ({100 * d['extra_parameters'] / d['backbone_parameters']:.1f} %)",
                "mb": f"{d['weight_bytes'] / 1e6:.2f}",
                "latency": f"{d['latency_ms_median']:.1f}",
            }
        )
    cols = [
        ("cell", "pruned | recovery"),
        ("success", "success (95 % CI)"),
        ("n", "episodes"),
        ("won_back", "lost success won back"),
        ("violations", "violation steps: table / joints / fast"),
        ("extra", "extra parameters (% of backbone)"),
        ("mb", "weights MB"),
        ("latency", "query ms"),
    ]
    return markdown_table(rows, cols) + "\n"


def plot_gluestick(summary: dict, out: Path) -> None:
    """success_vs_extra.png and violations_vs_extra.png: one line per pruned variant."""
    cells = summary["cells"]
    by_pruned: dict[str, list] = {}
    for key, d in cells.items():
        if key == "dense":
            continue
        by_pruned.setdefault(key.split(" | ")[0], []).append(d)
    for fname, ylabel, value in (
        ("success_vs_extra.png", "success % (95 % CI)", lambda d: 100 * d["success_rate"]),
        ("violations_vs_extra.png", "safety-violation steps", lambda d: sum(d["safety_violations"].values())),
    ):
        fig, ax = figure()
        for name, ds in by_pruned.items():
            ds = sorted(ds, key=lambda d: d["extra_parameters"])
            xs = [100 * d["extra_parameters"] / d["backbone_parameters"] for d in ds]
            ax.plot(xs, [value(d) for d in ds], "o-", label=name)
        ax.axhline(value(cells["dense"]), color="k", ls="--", lw=1, label="dense")
        ax.set_xlabel("extra parameters, % of the backbone's linear layers")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        save_figure(fig, out / fname)


__all__ = ["backbone_parameters", "load_config", "recovered_share", "run_gluestick_experiment"]
