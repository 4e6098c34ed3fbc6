"""``embodied-prune experiment gluestick``: pruned VLAs with and without GLUESTICK recovery, in closed loop.

A grid of cells, each a pruned variant (method and sparsity or N:M pattern) × a recovery (none, GLUESTICK
at a global rank, GLUESTICK at a per-layer budget, in any factor dtype, or the trained alternative: LoRA
adapters fitted by behaviour cloning at a rank or at the rank a budget allows, see
:mod:`embodied_prune.training.lora_recovery`), plus the dense policy, all on the same episodes. Per cell: success
with CIs, safety violations, extra parameters (absolute and as a share of the backbone's linear
parameters), weight bytes, median query latency and each episode's success (so recoveries compare paired).
Cells run in the config's order; a cell's model is built into ``models/`` when it is first needed, and every
finished cell is saved at once under ``cells/`` with its recipe (dense model's fingerprint, pruning and recovery
settings, episodes) and kept when the experiment runs again while that recipe is unchanged, even without its
model folder (``--overwrite`` starts afresh). Markdown table and plots (success vs extra parameters; safety
violations vs extra parameters).

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
      - {name: budget 15%, budget: 0.15}     # ranks by output share on the calibration demonstrations
      - {name: budget 15% energy, budget: 0.15, allocation: energy}   # ranks by singular values, no data
      - {name: budget 15% int8, budget: 0.15, dtype: int8}
      - {name: lora 15%, lora_budget: 0.15}   # or lora_rank: R
    cells: all                    # or a list of [pruned name, recovery name]
    latency_cells: [[wanda 2:4, none], [wanda 2:4, r16]]   # timed side by side with dense (default: none)
    latency_queries: 48           # queries per variant in that pass

After the cells, a side-by-side latency pass times the dense policy and each of ``latency_cells`` on the same
recorded observations, interleaved query by query, one torch thread (the latency of record: each cell's own
closed-loop latency is measured under its evaluation's load, at another time).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from ..errors import EmbodiedPruneError
from ..io import atomic_write_text
from ..recovery.gluestick import ALLOCATIONS
from .common import model_fingerprint, open_run_folder, read_config, slug, violations_cell
from .plots import ci_errors, figure, finish, save_figure

PRUNED_KEYS = {"name", "method", "pattern", "sparsity"}
RECOVERY_KEYS = {"name", "rank", "budget", "allocation", "dtype", "svd", "lora_rank", "lora_budget"}


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
        if "budget" in r:
            r.setdefault("allocation", "output")  # explicit, so that a cell's recipe names it
        if r.get("allocation") not in (None, *ALLOCATIONS) or ("allocation" in r and "budget" not in r):
            raise EmbodiedPruneError(
                f"config {p}: recovery {r['name']!r}: allocation is how a budget is spread over the layers, one of "
                f"{', '.join(ALLOCATIONS)}, and needs budget."
            )
    cells = cfg.get("cells", "all")
    pruned, recovery = [i["name"] for i in cfg["pruned"]], [i["name"] for i in cfg["recovery"]]
    if cells == "all":
        cells = [list(c) for c in itertools.product(pruned, recovery)]
    cfg["cells"] = cells
    for label, key in (("cell", "cells"), ("latency cell", "latency_cells")):
        for c in cfg.setdefault(key, []):
            if not isinstance(c, list) or len(c) != 2 or c[0] not in pruned or c[1] not in recovery:
                raise EmbodiedPruneError(
                    f"config {p}: {label} {c} must be [pruned name, recovery name] from the lists."
                )
    cfg.setdefault("latency_queries", 48)
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
    from ..training.lora_recovery import target_layers

    return sum(m.weight.numel() for m in target_layers(model).values())


def _entry(cfg: dict, kind: str, name: str) -> dict[str, Any]:
    """The ``pruned`` or ``recovery`` entry of ``cfg`` called ``name``."""
    return next(i for i in cfg[kind] if i["name"] == name)


def _calibrated(pruned: dict[str, Any]) -> bool:
    """Whether a pruned variant's method ranks weights on calibration data (expert demonstrations here)."""
    from ..pruning.unstructured import METHODS

    return pruned["method"] in METHODS and METHODS.get(pruned["method"]).needs_calibration


def _output_allocation(recovery: dict[str, Any]) -> bool:
    """Whether a recovery spreads a budget by output share, measured on the calibration demonstrations."""
    return recovery.get("allocation") == "output"


def _is_lora(recovery: dict[str, Any]) -> bool:
    return "lora_rank" in recovery or "lora_budget" in recovery


def cell_recipe(cfg: dict, p_name: str | None, r_name: str | None, dense_fingerprint: str) -> dict[str, Any]:
    """Everything a cell's result depends on: the dense model's fingerprint, the episodes, and the pruning and
    recovery entries with the settings they use. A kept cell whose recipe differs is evaluated again; one
    whose recipe matches is kept even when its model folder is gone (another session, another machine)."""
    recipe: dict[str, Any] = {
        "model": dense_fingerprint,
        "episodes": cfg["episodes"],
        "seed": cfg["seed"],
        "tasks": cfg["tasks"],
    }
    if p_name is None:
        return recipe
    p, r = _entry(cfg, "pruned", p_name), _entry(cfg, "recovery", r_name)
    recipe |= {
        "pruned": {k: v for k, v in p.items() if k != "name"},
        "recovery": {k: v for k, v in r.items() if k != "name"},
    }
    if _calibrated(p) or _output_allocation(r):
        recipe["calibration_episodes"] = cfg["calibration_episodes"]
    if _is_lora(r):
        recipe |= {"lora_episodes": cfg["lora_episodes"], "lora_steps": cfg["lora_steps"]}
    return recipe


def _folder_name(name: str, recipe: dict[str, Any]) -> str:
    """``name`` plus a short hash of ``recipe``: a folder built from other settings under the same name is never
    mistaken for this one."""
    import hashlib

    return f"{slug(name)}-{hashlib.sha1(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:8]}"


class CellModels:
    """Builds, on first need, the model of each cell under ``out/models`` (the pruned checkpoint once per pruned
    variant, the recovered one once per cell). Folder names carry a hash of the settings they were built from,
    so a folder already there is reused only for the same settings."""

    def __init__(self, cfg: dict, out: Path, progress: bool = True) -> None:
        from ..models.vla import load_vla

        self.cfg, self.progress, self.models = cfg, progress, out / "models"
        self.models.mkdir(parents=True, exist_ok=True)
        self.fingerprint = model_fingerprint(cfg["model"])
        stamp = self.models / "dense_fingerprint.txt"
        if stamp.is_file() and stamp.read_text().strip() != self.fingerprint:
            raise EmbodiedPruneError(
                f"{self.models} was built from another version of {cfg['model']}; pass --overwrite to start afresh."
            )
        atomic_write_text(stamp, self.fingerprint + "\n")
        self.dense, _ = load_vla(cfg["model"])
        self.base = backbone_parameters(self.dense)

    def _cameras(self):
        from ..envs.manipulation.render import cameras_for

        return cameras_for(self.dense.config.cameras)  # demonstrations seen as this policy sees

    def _demos(self, name: str, episodes: int, tasks=None) -> Path:
        from ..envs.manipulation.demos import generate_demos

        folder = self.models / _folder_name(name, {"episodes": episodes, "tasks": tasks})
        if not (folder / "meta.json").is_file():
            generate_demos(
                folder, tasks, episodes=episodes, overwrite=True, progress=self.progress, cameras=self._cameras()
            )
        return folder

    def dense_info(self) -> dict:
        return {"path": self.cfg["model"], "extra_parameters": 0, "backbone_parameters": self.base}

    def pruned(self, p_name: str) -> Path:
        """The checkpoint of pruned variant ``p_name`` (built if missing)."""
        from ..api import prune

        p = _entry(self.cfg, "pruned", p_name)
        calibrated = _calibrated(p)
        recipe = {**p, "calibration_episodes": self.cfg["calibration_episodes"] if calibrated else None}
        path = self.models / _folder_name(p_name, recipe)
        if not (path / "config.json").is_file():
            prune(
                self.cfg["model"],
                p["method"],
                sparsity=p.get("sparsity"),
                pattern=p.get("pattern"),
                calibration=self._demos("calibration-demos", self.cfg["calibration_episodes"])
                if calibrated
                else "random",
                n_samples=64,
                out=path,
                overwrite=True,
                progress=self.progress,
            )
        return path

    def cell(self, p_name: str, r_name: str) -> dict:
        """Path and parameter accounting of cell ``p_name | r_name`` (its model built if missing)."""
        from ..api import recover

        r = _entry(self.cfg, "recovery", r_name)
        p_path = self.pruned(p_name)
        if not {"rank", "budget", "lora_rank", "lora_budget"} & set(r):
            return {"path": str(p_path), "extra_parameters": 0, "backbone_parameters": self.base}
        r_path = self.models / _folder_name(
            f"{p_name}--{r_name}", cell_recipe(self.cfg, p_name, r_name, self.fingerprint)
        )
        side = r_path / "embodied_prune.json"
        if not side.is_file() and _is_lora(r):
            from ..training.lora_recovery import LoRASettings, lora_recover, rank_for_budget

            demos = self._demos("lora-demos", self.cfg["lora_episodes"], self.cfg["tasks"])
            rank = r.get("lora_rank") or rank_for_budget(self.dense, r["lora_budget"])
            settings = LoRASettings(rank=rank, steps=self.cfg["lora_steps"], seed=self.cfg["seed"])
            lora_recover(p_path, demos, r_path, settings, overwrite=True, progress=self.progress)
        elif not side.is_file():
            recover(
                self.cfg["model"],
                p_path,
                rank=r.get("rank"),
                budget=r.get("budget"),
                dtype=r.get("dtype", "float32"),
                svd=r.get("svd", "exact"),
                calibration=self._demos("calibration-demos", self.cfg["calibration_episodes"])
                if _output_allocation(r)
                else None,
                n_samples=64,
                out=r_path,
                overwrite=True,
            )
        record = json.loads(side.read_text())["history"][-1]
        return {
            "path": str(r_path),
            "extra_parameters": record["extra_parameters"],
            "backbone_parameters": self.base,
            "energy": record.get("energy"),
            "factor_dtype": record.get("factor_dtype", "float32"),
            "recovery_method": record.get("method"),
        }


def weight_bytes(path: str) -> int:
    """Bytes of a model folder's weight files (safetensors, GLUESTICK factors included)."""
    from ..models.checkpoint import resolve_model_path

    return sum(f.stat().st_size for f in Path(resolve_model_path(path)).glob("*.safetensors"))


def run_gluestick_experiment(
    config: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False, progress: bool = True
) -> Path:
    """Build and evaluate every cell of ``config`` in its order (resumable: a cell whose saved recipe matches is
    kept without rebuilding its model); write report, summary and plots into ``out``."""
    from ..evaluation.manipulation import evaluate_manipulation

    cfg = load_config(config)
    out = open_run_folder(out, cfg, overwrite, "cells", same_config=False)
    models = CellModels(cfg, out, progress)
    results = {}
    for p_name, r_name in [(None, None), *cfg["cells"]]:
        key = "dense" if p_name is None else f"{p_name} | {r_name}"
        path = out / "cells" / f"{slug(key)}.json"
        recipe = cell_recipe(cfg, p_name, r_name, models.fingerprint)
        if path.is_file():
            d = json.loads(path.read_text())
            if d.get("recipe") == recipe:
                print(f"{key}: finished earlier, kept ({path})", flush=True)
                results[key] = d
                continue
        info = models.dense_info() if p_name is None else models.cell(p_name, r_name)
        print(f"{key}: evaluating {info['path']}", flush=True)
        t0 = time.time()
        rep = evaluate_manipulation(
            info["path"], cfg["tasks"], cfg["episodes"], seed=cfg["seed"], workers=cfg["workers"], progress=progress
        ).to_dict()
        episodes = rep.pop("per_episode")
        d = {
            **rep,
            "episode_success": [int(e["success"]) for e in episodes],  # in episode order: paired across cells
            **info,
            "episodes_per_task": cfg["episodes"],
            "weight_bytes": weight_bytes(info["path"]),
            "model_fingerprint": model_fingerprint(info["path"]),
            "recipe": recipe,
            "eval_s": round(time.time() - t0, 1),
            "evaluated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        atomic_write_text(path, json.dumps(d, indent=2) + "\n")
        results[key] = d
    summary = {"config": cfg, "cells": results}
    if cfg["latency_cells"]:
        from ..envs.manipulation.tasks import resolve_tasks
        from ..evaluation.manipulation import side_by_side_latency

        variants = {"dense": (cfg["model"], None)}
        for p_name, r_name in cfg["latency_cells"]:
            variants[f"{p_name} | {r_name}"] = (models.cell(p_name, r_name)["path"], None)
        print(f"side-by-side latency of {len(variants)} variants", flush=True)
        summary["side_by_side_latency_ms"] = side_by_side_latency(
            variants, resolve_tasks(cfg["tasks"]), cfg["latency_queries"], cfg["seed"]
        )
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out / "report.md", gluestick_report(summary) + latency_report(summary))
    plot_gluestick(summary, out)
    return out


def gluestick_report(summary: dict) -> str:
    """Markdown table of the cells (dense first), with the share of the success its pruned variant lost that each
    recovery wins back (paired bootstrap CI over the episodes, which every cell plays alike)."""
    from ..evaluation.report import markdown_table, percent_ci
    from ..evaluation.stats import recovered_share_ci

    cells = summary["cells"]
    dense = cells["dense"]["episode_success"]
    rows = []
    for key, d in cells.items():
        p_name = key.split(" | ")[0]
        unrecovered = cells.get(f"{p_name} | none")
        share = None
        if unrecovered is not None and key not in (f"{p_name} | none", "dense"):
            share = recovered_share_ci(dense, unrecovered["episode_success"], d["episode_success"])
        v = d["safety_violations"]
        rows.append(
            {
                "pruned": p_name,
                "recovery": key.split(" | ")[1] if " | " in key else "–",
                "success": percent_ci(d["success_rate"], d["ci95"]),
                "n": d["episodes"],
                "won_back": ""
                if share is None or math.isnan(share[0])
                else "{:.0f} % [{:.0f}, {:.0f}]".format(*(100 * x for x in share)),
                "violations": violations_cell(v),
                "extra": f"{d['extra_parameters']:,} ({100 * d['extra_parameters'] / d['backbone_parameters']:.1f} %)",
                "mb": f"{d['weight_bytes'] / 1e6:.2f}",
                "latency": f"{d['latency_ms_median']:.1f}",
            }
        )
    cols = [
        ("pruned", "pruned"),
        ("recovery", "recovery"),
        ("success", "success (95 % CI)"),
        ("n", "episodes"),
        ("won_back", "lost success won back (95 % CI)"),
        ("violations", "violation steps: table / joints / fast"),
        ("extra", "extra parameters (% of backbone)"),
        ("mb", "weights MB"),
        ("latency", "query ms (in its run)"),
    ]
    return markdown_table(rows, cols) + "\n"


def latency_report(summary: dict) -> str:
    """The side-by-side latency pass as a table (empty when the config asked for none)."""
    from ..evaluation.report import markdown_table

    lat = summary.get("side_by_side_latency_ms")
    if not lat:
        return ""
    cells = summary["cells"]
    rows = [
        {
            "pruned": key.split(" | ")[0],
            "recovery": key.split(" | ")[1] if " | " in key else "–",
            "ms": f"{ms:.2f}",
            "ratio": f"{ms / lat['dense']:.2f}×",
            "extra": f"{cells[key]['extra_parameters']:,}" if key in cells else "",
        }
        for key, ms in lat.items()
    ]
    n = summary["config"]["latency_queries"]
    return (
        f"\nQuery latency side by side (median of about {n} queries per variant on the same recorded observations, "
        "interleaved, one torch thread):\n\n"
        + markdown_table(
            rows,
            [
                ("pruned", "pruned"),
                ("recovery", "recovery"),
                ("ms", "query ms"),
                ("ratio", "time vs dense"),
                ("extra", "extra parameters"),
            ],
        )
        + "\n"
    )


def _recovery_kind(d: dict) -> str:
    """How a cell was recovered, from its recipe: none, rank (global GLUESTICK rank), budget (per-layer), lora."""
    r = d.get("recipe", {}).get("recovery", {})
    if "lora_rank" in r or "lora_budget" in r:
        return "lora"
    return "budget" if "budget" in r else "rank" if "rank" in r else "none"


def plot_gluestick(summary: dict, out: Path) -> None:
    """success_vs_extra.png (with Wilson CIs) and violations_vs_extra.png: one colour per pruned variant; a line
    through its unrecovered cell and global GLUESTICK ranks, squares for per-layer budgets, triangles for LoRA."""
    cells = summary["cells"]
    by_pruned: dict[str, list] = {}
    for key, d in cells.items():
        if key != "dense":
            by_pruned.setdefault(key.split(" | ")[0], []).append(d)
    markers = {"budget": "s", "lora": "^"}
    for fname, ylabel, value, ci in (
        (
            "success_vs_extra.png",
            "success % (95 % CI)",
            lambda d: 100 * d["success_rate"],
            lambda d: (100 * d["ci95"][0], 100 * d["ci95"][1]),
        ),
        ("violations_vs_extra.png", "safety-violation steps", lambda d: sum(d["safety_violations"].values()), None),
    ):
        fig, ax = figure()
        for i, (name, ds) in enumerate(by_pruned.items()):
            color = f"C{i}"
            groups: dict[str, list] = {}
            for d in ds:  # the unrecovered cell and global ranks share a line; budgets and LoRA get markers
                kind = _recovery_kind(d)
                groups.setdefault("line" if kind in ("none", "rank") else kind, []).append(d)
            for j, (kind, group) in enumerate(groups.items()):
                group = sorted(group, key=lambda d: d["extra_parameters"])
                xs = [100 * d["extra_parameters"] / d["backbone_parameters"] for d in group]
                ys = [value(d) for d in group]
                yerr = ci_errors(ys, [ci(d) for d in group]) if ci else None
                ax.errorbar(
                    xs,
                    ys,
                    yerr=yerr,
                    fmt=markers.get(kind, "o") + ("-" if kind == "line" else ""),
                    color=color,
                    capsize=2,
                    alpha=0.9,
                    label=name if j == 0 else None,
                )
        ax.axhline(value(cells["dense"]), color="k", ls="--", lw=1, label="dense")
        for fmt, label in (("o-", "none, global ranks"), ("s", "per-layer budget"), ("^", "LoRA (trained)")):
            ax.plot([], [], fmt, color="grey", label=label)
        what = "Success" if fname.startswith("success") else "Safety violations"
        finish(
            ax,
            f"{what} of {summary['config']['model']} pruned, then recovered\n"
            f"(GLUESTICK or LoRA; {summary['config']['episodes']} episodes per task on the same scenes)",
            "extra parameters, % of the backbone's linear layers",
            ylabel,
            legend={},
        )
        save_figure(fig, out / fname)


__all__ = [
    "CellModels",
    "backbone_parameters",
    "cell_recipe",
    "gluestick_report",
    "latency_report",
    "load_config",
    "run_gluestick_experiment",
]
