"""The BPF experiment: its trade-off metric on hand-computed cases, config checks, and the quick profile
end to end (every strategy trained, pruned, evaluated in closed loop and timed), resumed without retraining."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from embodied_prune.errors import EmbodiedPruneError
from embodied_prune.experiments.bpf import (
    load_config,
    removed_per_point,
    run_bpf_experiment,
    stage_seconds,
    tradeoff_ratio_ci,
)

ROOT = Path(__file__).resolve().parent.parent


def test_tradeoff_metric_on_hand_computed_cases():
    assert removed_per_point(1_000_000, 4.0) == 250_000
    assert removed_per_point(1_000_000, 0.0) == math.inf  # nothing lost: unboundedly good
    assert removed_per_point(1_000_000, -1.0) == math.inf
    # A removes 100 per lost point (200 params, 2 points), B 20 (60 params, 3 points): 5× better
    point, lo, hi = tradeoff_ratio_ci(200, np.full(50, 2.0), 60, np.full(50, 3.0))
    assert point == pytest.approx(5.0) and lo == pytest.approx(5.0) and hi == pytest.approx(5.0)
    # noisy losses: the interval contains the point and widens
    rng = np.random.default_rng(0)
    point, lo, hi = tradeoff_ratio_ci(200, 2 + rng.normal(0, 1, 200), 60, 3 + rng.normal(0, 1, 200))
    assert lo < point < hi and hi - lo > 0.5
    with pytest.raises(ValueError, match="same instructions"):
        tradeoff_ratio_ci(1, np.ones(3), 1, np.ones(4))


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("size: xl\n", "not a controller size"),
        ("sparsities: [1.2]\n", "outside [0, 1)"),
        ("strategies: [bpf_rl]\n", "must include dense"),
        ("strategies: [dense, magic]\n", "must include dense"),
        ("grpo: {gamma: 1}\n", "grpo may only set"),
        ("pruning: {cuts: 2, speed: 3}\n", "pruning may only set"),
        ("pruning: {taylor_data: rollouts}\n", "taylor_data is teacher or trainer"),
        ("budget: 3\n", "unknown keys"),
    ],
)
def test_bad_configs_are_named(tmp_path, text, needle):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(EmbodiedPruneError, match=needle.replace("[", r"\[").replace(")", r"\)")):
        load_config(p)


def test_quick_experiment_end_to_end_and_resume(tmp_path, monkeypatch):
    out = run_bpf_experiment(ROOT / "configs" / "bpf_quick.yaml", tmp_path / "bpf", progress=False)
    rows = json.loads((out / "results.json").read_text())
    by = {r["cell"]: r for r in rows}
    assert set(by) == {
        "dense",
        "smaller (s)",
        *(f"{s} 50%" for s in ("ptp", "ptp_rl", "sft_stage", "bpf_rl", "bpf_sftrl")),
    }
    for r in rows:
        assert {
            "strategy",
            "sparsity",
            "seed",
            "params",
            "adaptability",
            "ci95",
            "collisions",
            "decode_tokens_per_s",
        } <= set(r)
        assert r["decode_tokens_per_s"] > 0 and r["ci95"][0] <= r["adaptability"] <= r["ci95"][1]
    dense = by["dense"]["params"]
    for name in ("ptp 50%", "ptp_rl 50%", "sft_stage 50%", "bpf_rl 50%", "bpf_sftrl 50%"):
        assert by[name]["params"] < dense  # physically smaller, every strategy at the same structure
    assert len({by[n]["params"] for n in ("ptp 50%", "bpf_rl 50%", "bpf_sftrl 50%", "sft_stage 50%")}) == 1
    assert by["smaller (s)"]["params"] < dense
    report = (out / "report.md").read_text()
    assert "removed params per lost point" in report and "bpf_sftrl 50%" in report
    assert (out / "adaptability_vs_params.png").stat().st_size > 0

    # a second run keeps every trained model and evaluated cell
    import embodied_prune.training.driving as driving

    def no_training(*a, **k):
        raise AssertionError("trained again")

    monkeypatch.setattr(driving, "train_sft", no_training)
    monkeypatch.setattr(driving, "train_grpo", no_training)
    again = json.loads(
        (run_bpf_experiment(ROOT / "configs" / "bpf_quick.yaml", out, progress=False) / "results.json").read_text()
    )
    assert [(r["cell"], r["adaptability"]) for r in again] == [(r["cell"], r["adaptability"]) for r in rows]
    # each stage's training time is counted once, by the first cell that needed it
    assert by["dense"]["train_s"] > 0 and by["ptp 50%"]["train_s"] == 0  # one-shot pruning of the trained dense
    stages = sum(stage_seconds(m) for m in (out / "models").iterdir())
    assert sum(r["train_s"] for r in rows) == pytest.approx(stages)
    # resumed from evaluated cells alone, nothing is left to time decode speed on: a clear error
    shutil.rmtree(out / "models")
    with pytest.raises(EmbodiedPruneError, match="decode speed cannot be timed"):
        run_bpf_experiment(ROOT / "configs" / "bpf_quick.yaml", out, progress=False)
    cfg = tmp_path / "other.yaml"
    cfg.write_text((ROOT / "configs" / "bpf_quick.yaml").read_text().replace("seeds: [0]", "seeds: [1]"))
    with pytest.raises(EmbodiedPruneError, match="another config"):
        run_bpf_experiment(cfg, out, progress=False)


def test_shipped_bpf_controllers_are_the_studys_pruned_strategies():
    """The four built-in 50 % controllers share one pruned structure, smaller than the dense m controller,
    and each one's record names the strategy its name claims."""
    from embodied_prune.models.builtin import BPF_SHIPPED
    from embodied_prune.models.checkpoint import load_model, resolve_model_path

    dense = sum(p.numel() for p in load_model("builtin:driving-m-grpo").parameters())
    counts, last = {}, {}
    for name in BPF_SHIPPED:
        spec = f"builtin:driving-m-{name}-50"
        counts[name] = sum(p.numel() for p in load_model(spec).parameters())
        side = Path(resolve_model_path(spec)) / "embodied_prune.json"
        last[name] = json.loads(side.read_text())["history"][-1]
    assert len(set(counts.values())) == 1 and next(iter(counts.values())) < 0.6 * dense
    assert last["ptp"]["op"] == "prune" and last["ptp"]["sparsity"] == 0.5
    assert last["ptp-rl"]["stage"] == "grpo" and "pruning" not in last["ptp-rl"]
    assert "ptp50" in last["ptp-rl"]["init"]
    for name in ("bpf-rl", "bpf-sftrl"):
        cuts = last[name]["pruning"][0]["cuts"]
        assert last[name]["stage"] == "grpo" and cuts[-1]["sparsity"] == 0.5 and len(cuts) == 4
    assert (
        last["bpf-rl"]["pruning"][0]["cuts"][0]["sparsity"]
        < 0.25
        < last["bpf-sftrl"]["pruning"][0]["cuts"][0]["sparsity"]
    )
