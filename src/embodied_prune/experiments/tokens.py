"""``embodied-prune experiment tokens``: visual-token pruners against the dense policy, in closed loop.

Every variant of the config is evaluated on the same episodes (same tasks, seed and episode count):
success with CIs, safety violations, median policy-query latency, episode wall time, kept visual
tokens and estimated backbone FLOPs. Baselines marked ``match: VARIANT`` get the kept-token budget
that gives them the same mean visual tokens per layer as that variant measured (the budget that sets
compute), so success is compared at equal cost. Afterwards a side-by-side latency pass replays the same
recorded observations through every variant, interleaved, one torch thread (the speed-up of record;
closed-loop latencies are measured under the evaluation's own load). Each finished variant is saved at
once and not recomputed when the experiment is run again (``--overwrite`` starts afresh).

Config (YAML)::

    model: builtin:vla-metaworld
    episodes: 50            # per task
    seed: 0                 # evaluation scenes
    workers: 2
    tasks: null             # all
    alpha: 0.5              # default budget: kept fraction of visual tokens (or keep: K)
    variants:
      - {name: dense, pruner: none}
      - {name: specprune, pruner: specprune}
      - {name: specprune static only, pruner: specprune, options: {layer_drop: 0, controller: false}}
      - {name: fastv, pruner: fastv, match: specprune}
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from ..errors import EmbodiedPruneError
from ..evaluation.report import percent_ci
from ..io import atomic_write_text
from .common import model_fingerprint, open_run_folder, read_config, slug, violations_cell
from .plots import ci_errors, figure, finish, save_figure

VARIANT_KEYS = {"name", "pruner", "keep", "alpha", "options", "match"}


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a token-pruning experiment config (see the module docstring)."""
    p = Path(path)
    cfg = read_config(p, "configs/tokens_vla.yaml")
    if not cfg.get("variants"):
        raise EmbodiedPruneError(f"config {p} lists no variants; see configs/tokens_vla.yaml for the format.")
    names = []
    for v in cfg["variants"]:
        unknown = set(v) - VARIANT_KEYS
        if unknown or "name" not in v or "pruner" not in v:
            raise EmbodiedPruneError(
                f"config {p}: variant {v} needs name and pruner and may only have {sorted(VARIANT_KEYS)}."
            )
        if v.get("match") and v["match"] not in names:
            raise EmbodiedPruneError(
                f"config {p}: variant {v['name']!r} matches {v['match']!r}, which must come first."
            )
        names.append(v["name"])
    if len(set(names)) != len(names):
        raise EmbodiedPruneError(f"config {p}: variant names must be unique, got {names}.")
    cfg.setdefault("model", "builtin:vla-metaworld")
    cfg.setdefault("episodes", 50)
    cfg.setdefault("seed", 0)
    cfg.setdefault("workers", 2)
    cfg.setdefault("tasks", None)
    cfg.setdefault("latency_queries", 40)
    return cfg


def matched_keep(target_mean: float, prune_layer: int, num_layers: int, visual: int) -> int:
    """Kept tokens for a pruner that prunes once, before layer ``prune_layer``, so that its mean visual
    tokens per layer equals ``target_mean`` (layers before it see all ``visual`` tokens)."""
    k = (num_layers * target_mean - prune_layer * visual) / (num_layers - prune_layer)
    if k < 1:
        raise EmbodiedPruneError(
            f"a pruner that prunes before layer {prune_layer} of {num_layers} cannot average {target_mean:.0f} visual "
            f"tokens per layer (the layers before it see all {visual}); give it an earlier layer, e.g. "
            "options: {layer: 0}."
        )
    return int(min(visual, round(k)))


def _pruner_spec(v: dict, cfg: dict, done: dict, model) -> dict | None:
    if v["pruner"] == "none":
        return None
    spec = {"name": v["pruner"], "keep": v.get("keep"), "alpha": v.get("alpha"), "options": v.get("options")}
    if spec["keep"] is None and spec["alpha"] is None:
        spec["keep"], spec["alpha"] = cfg.get("keep"), cfg.get("alpha")
    if v.get("match"):
        from ..tokens import build_token_pruner

        target = done[v["match"]]["kept_tokens_mean"]
        lay = model.layout()
        options = dict(v.get("options") or {})
        # the layer the baseline prunes before (its own default unless the config sets one), written into
        # the spec so that a finished variant is only reused for the same pruning point
        default_layer = getattr(build_token_pruner(v["pruner"], options=options), "layer", None)
        if default_layer is None:
            raise EmbodiedPruneError(
                f"variant {v['name']!r}: match is for pruners that prune once (fastv, random), not {v['pruner']!r}."
            )
        layer = options.setdefault("layer", default_layer)
        spec["options"] = options
        spec["keep"] = matched_keep(
            target, layer, model.backbone.config.num_hidden_layers, lay.visual[1] - lay.visual[0]
        )
        spec["alpha"] = None
    return spec


def run_tokens_experiment(config: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Run every variant of ``config`` (resumable), then the side-by-side latency; write report + plot."""
    from ..envs.manipulation.tasks import resolve_tasks
    from ..evaluation.manipulation import evaluate_manipulation
    from ..models.vla import load_vla

    cfg = load_config(config)
    out = open_run_folder(out, cfg, overwrite, "variants", same_config=False)
    model, _ = load_vla(cfg["model"])
    tasks = resolve_tasks(cfg["tasks"])
    done: dict[str, dict] = {}
    specs: dict[str, dict | None] = {}
    fingerprint = model_fingerprint(cfg["model"])
    for v in cfg["variants"]:
        path = out / "variants" / f"{slug(v['name'])}.json"
        spec = _pruner_spec(v, cfg, done, model)
        specs[v["name"]] = spec
        if path.is_file():
            d = json.loads(path.read_text())
            if (
                d.get("token_pruner") == (spec or {"name": "none"})
                and d.get("episodes") == len(tasks) * cfg["episodes"]
                and d.get("seed") == cfg["seed"]
                and d.get("model_fingerprint") == fingerprint
            ):
                print(f"{v['name']}: finished earlier, kept ({path})", flush=True)
                done[v["name"]] = d
                continue
        print(f"{v['name']}: evaluating ({spec or 'dense'})", flush=True)
        report = evaluate_manipulation(
            cfg["model"],
            [t.name for t in tasks],
            cfg["episodes"],
            seed=cfg["seed"],
            workers=cfg["workers"],
            token_pruner=spec,
        )
        d = {**report.to_dict(), "model_fingerprint": fingerprint}
        atomic_write_text(path, json.dumps(d, indent=2) + "\n")
        done[v["name"]] = d
    t0 = time.time()
    from ..evaluation.manipulation import side_by_side_latency

    variants = {name: (cfg["model"], spec) for name, spec in specs.items()}
    latency = side_by_side_latency(variants, tasks, cfg["latency_queries"], cfg["seed"])
    summary = {
        "config": cfg,
        "visual_tokens": sum(model.config.visual_tokens().values()),
        "side_by_side_latency_ms": latency,
        "latency_wall_s": time.time() - t0,
        "variants": {},
    }
    for name, d in done.items():
        summary["variants"][name] = {k: v for k, v in d.items() if k != "per_episode"}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out / "report.md", tokens_report(summary))
    plot_tokens(summary, out / "speedup_vs_success.png")
    return out


def working_point(summary: dict, pruner: str = "specprune") -> dict | None:
    """The ``pruner`` variant of a token study's ``summary`` with the highest success, as a policy records it in its
    side file's ``token_pruning`` (``eval manipulation --token-pruner`` then runs it by default): its options, and a
    line naming its success with CI, dense's and the side-by-side speed-up. Only variants at the config's budget
    (``alpha`` / ``keep``, no ``match``) qualify, since that budget is what the command line reproduces. None when the
    study has no such variant."""
    cfg, variants, lat = summary["config"], summary["variants"], summary["side_by_side_latency_ms"]
    rows = [
        v
        for v in cfg["variants"]
        if v["pruner"] == pruner
        and not v.get("match")
        and v.get("keep") is None
        and v.get("alpha") is None
        and v["name"] in variants
    ]
    if not rows:
        return None
    best = max(rows, key=lambda v: variants[v["name"]]["success_rate"])
    d, dense = variants[best["name"]], variants.get("dense")
    budget = f"alpha {cfg['alpha']}" if cfg.get("alpha") is not None else f"keep {cfg.get('keep')}"
    line = (
        f"token study ({cfg['episodes']} episodes per task, seed {cfg['seed']}, {budget}; {d.get('date', '?')[:10]}): "
        f"variant {best['name']!r}, success {percent_ci(d['success_rate'], d['ci95'])}"
    )
    if dense is not None:
        line += f" vs dense {100 * dense['success_rate']:.1f} %, {lat['dense'] / lat[best['name']]:.2f}x query speed"
    return {"options": dict(best.get("options") or {}), "study": line}


def tokens_report(summary: dict) -> str:
    """Markdown table of an experiment summary (one row per variant)."""
    from ..evaluation.report import markdown_table, percent_ci

    variants = summary["variants"]
    lat = summary["side_by_side_latency_ms"]
    ref = next(iter(variants))
    all_tokens = str(summary.get("visual_tokens", "all"))
    rows = []
    for name, d in variants.items():
        v = d["safety_violations"]
        rows.append(
            {
                "variant": name,
                "success": percent_ci(d["success_rate"], d["ci95"]),
                "n": d["episodes"],
                "violations": violations_cell(v),
                "kept": all_tokens if d["kept_tokens_mean"] is None else f"{d['kept_tokens_mean']:.0f}",
                "flops": f"{100 * d['backbone_flops_ratio']:.0f}",
                "lat": f"{lat[name]:.1f}",
                "speedup": f"{lat[ref] / lat[name]:.2f}×",
                "loop_lat": f"{d['latency_ms_median']:.1f}",
                "episode": f"{d['episode_s_median']:.2f}",
                "fine": "" if d.get("fine_query_fraction") is None else f"{100 * d['fine_query_fraction']:.0f}",
            }
        )
    cols = [
        ("variant", "variant"),
        ("success", "success (95 % CI)"),
        ("n", "episodes"),
        ("violations", "violation steps: table / joints / fast"),
        ("kept", "visual tokens per layer"),
        ("flops", "backbone FLOPs %"),
        ("lat", "query ms, side by side"),
        ("speedup", f"speed-up vs {ref}"),
        ("loop_lat", "query ms, in the loop"),
        ("episode", "episode s (median)"),
        ("fine", "fine-motion queries %"),
    ]
    return markdown_table(rows, cols) + "\n"


def plot_tokens(summary: dict, path: Path) -> None:
    """Speed-up (side by side) against success with its CI, one point per variant."""
    lat = summary["side_by_side_latency_ms"]
    variants = summary["variants"]
    ref = lat[next(iter(variants))]
    fig, ax = figure((8.5, 4))
    markers = "osD^vP"
    for i, (name, d) in enumerate(variants.items()):
        x, y = ref / lat[name], 100 * d["success_rate"]
        lo, hi = (100 * c for c in d["ci95"])
        # a legend rather than labels at the points: variants with equal speed and success would overprint
        ax.errorbar(x, y, yerr=ci_errors([y], [(lo, hi)]), fmt=markers[i // 10 % len(markers)], capsize=3, label=name)
    cfg = summary["config"]
    finish(
        ax,
        f"Visual-token pruning of {cfg['model']}: success vs speed-up\n"
        f"({cfg['episodes']} episodes per task, seed {cfg['seed']}, alpha {cfg.get('alpha')})",
        "policy-query speed-up over dense (side by side, 1 thread)",
        "success % (95 % CI)",
        legend={"fontsize": 7, "loc": "center left", "bbox_to_anchor": (1.02, 0.5)},
    )
    save_figure(fig, path)


__all__ = ["load_config", "matched_keep", "run_tokens_experiment", "tokens_report"]
