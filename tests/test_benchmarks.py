"""The benchmark report marks a section stale once a built-in model it measured has been retrained."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def run_all(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import run_all

    yield run_all
    sys.modules.pop("run_all", None)


def test_report_warns_only_when_a_measured_builtin_model_changed(run_all, tmp_path, monkeypatch):
    from embodied_prune.experiments.common import model_fingerprint

    results = tmp_path / "results"
    results.mkdir()
    monkeypatch.setattr(run_all, "HERE", tmp_path)
    current = model_fingerprint("builtin:vla-metaworld")
    cases = {"fresh": current, "old": "0123456789abcdef"}
    for name, fp in cases.items():
        (results / f"{name}.md").write_text(f"## {name} title\n\n- command: `x`\n\n| a |\n")
        data = {"rows": [], "model_fingerprints": {"builtin:vla-metaworld": fp, "/no/such/folder": "ffff"}}
        (results / f"{name}.json").write_text(json.dumps(data))
    fresh, old = run_all.section("fresh"), run_all.section("old")
    assert fresh == (results / "fresh.md").read_text()  # unchanged: same weights, paths outside the package skipped
    assert old.startswith("## old title\n\n> **Stale:**") and "`builtin:vla-metaworld`" in old
    assert "python benchmarks/old.py" in old and old.endswith("- command: `x`\n\n| a |\n")
    assert run_all.section("missing") is None
    (results / "gone.md").write_text("## gone\n")
    (results / "gone.json").write_text(json.dumps({"model_fingerprints": {"builtin:no-such-model": "ffff"}}))
    assert "> **Stale:**" in run_all.section("gone")  # a built-in model since removed: stale, not a crash


def test_committed_vla_results_name_the_policy_they_measured():
    for name, policy in (
        ("manipulation_vla", "builtin:vla-metaworld"),
        ("tokens_vla", "builtin:vla-metaworld"),
        ("tokens_vla_hires", "builtin:vla-metaworld-hires"),
        ("tokens_vla_deep", "builtin:vla-metaworld-deep"),
        ("tokens_vla_vit", "builtin:vla-metaworld-vit"),
        ("gluestick_vla", "builtin:vla-metaworld"),
    ):
        data = json.loads((BENCH / "results" / f"{name}.json").read_text())
        assert set(data["model_fingerprints"]) == {policy}, name


@pytest.mark.parametrize(
    "record",
    [
        {"demo_episodes_per_task": 60, "demo_noise": 0.0, "steps": 4500},  # behaviour cloning only, fp32
        {
            "demo_episodes_per_task": 150,
            "demo_noise": 0.05,
            "steps": 1200,
            "bf16": True,
            "visual_keep": 0.5,
            "patch": 16,
            "layers": 12,
            "hidden_size": 128,
            "heads": 4,
            "kv_heads": 2,
            "intermediate_size": 384,
            "vision_layers": 2,
            "bc": {"steps": 4500},
            "dagger": [{"episodes_per_task": 40}, {"episodes_per_task": 40}],
        },
        {  # trained on another run's data (ship_vla --data-from): that run's recipe, then this one
            "data_from": {
                "work": "/somewhere/w",
                "recipe": {
                    "episodes": 120,
                    "noise": 0.05,
                    "bc": {"steps": 5000, "patch": 16, "bf16": False, "visual_keep": 1.0, "layers": 4},
                    "dagger_episodes": 30,
                    "dagger_steps": 1500,
                },
                "stages": ["demos", "corrections0", "corrections1"],
                "wall_s": 100.0,
            },
            "steps": 4000,
            "patch": 8,
            "layers": 16,
            "hidden_size": 128,
            "heads": 4,
        },
    ],
)
def test_regenerate_command_reproduces_the_recorded_recipe(monkeypatch, record):
    """``manipulation_vla.ship_command`` names every recipe setting: ``ship_vla`` run with it trains with
    the recorded values (bf16 included, ``--bf16`` or ``--no-bf16``, and the visual-token share); a policy
    trained on another run's data gets that run's command (keeping its work folder) before its own."""
    import shlex

    from embodied_prune.training import ship_vla

    monkeypatch.syspath_prepend(str(BENCH))
    from manipulation_vla import ship_command, source_record

    got: dict = {}
    monkeypatch.setattr(
        ship_vla,
        "ship",
        lambda out, episodes, progress, settings, noise, **kw: got.update(
            episodes=episodes,
            noise=noise,
            steps=settings.steps,
            bf16=settings.bf16,
            keep=settings.visual_keep,
            patch=settings.patch,
            vision_layers=settings.vision_layers,
            shape=(
                settings.layers,
                settings.hidden_size,
                settings.heads,
                settings.kv_heads,
                settings.intermediate_size,
            ),
            **kw,
        ),
    )
    commands = [shlex.split(c) for c in ship_command(record).split(" && ")]
    sys.modules.pop("manipulation_vla", None)
    for words in commands:
        assert words[:3] == ["python", "-m", "embodied_prune.training.ship_vla"]
    if "data_from" in record:  # the data's own run first, its stages kept in W; then this recipe on them
        assert len(commands) == 2
        assert ship_vla.main(commands[0][3:]) == 0 and got["work"] == Path("W") and got["data_from"] is None
        assert_recipe(got, source_record(record["data_from"]))
        assert got["dagger_rounds"] == 2 and got["episodes"] == 120
        got.clear()
        assert ship_vla.main(commands[1][3:]) == 0 and got["data_from"] == Path("W") and got["work"] is None
    else:
        assert len(commands) == 1 and ship_vla.main(commands[0][3:]) == 0
        assert got["episodes"] == record["demo_episodes_per_task"] and got["noise"] == record["demo_noise"]
    assert_recipe(got, record)


def assert_recipe(got: dict, record: dict) -> None:
    """The training settings ``ship`` was called with (``got``) are the record's."""
    from embodied_prune.training.manipulation import BCSettings

    rounds = record.get("dagger", [])
    assert got["steps"] == (record["bc"]["steps"] if rounds else record["steps"])
    assert got["bf16"] is record.get("bf16", False) and got["dagger_rounds"] == len(rounds)
    assert got["keep"] == record.get("visual_keep", 1.0) and got["patch"] == record.get("patch", 8)
    assert got["vision_layers"] == record.get("vision_layers", 0)
    shape = ("layers", "hidden_size", "heads", "kv_heads", "intermediate_size")
    assert got["shape"] == tuple(record.get(k, getattr(BCSettings(), k)) for k in shape)
    if rounds:
        assert got["dagger_steps"] == record["steps"]
        assert got["dagger_episodes"] == rounds[0]["episodes_per_task"]


def test_cell_store_logs_new_and_reevaluated_cells(tmp_path, monkeypatch):
    """A session's log names the cells it evaluated: new ones and kept ones evaluated again under the same
    name (a retrained model's), not the kept cells it left as they were."""
    monkeypatch.syspath_prepend(str(BENCH))
    from _common import CellStore

    store = CellStore(tmp_path / "store")
    (tmp_path / "store").mkdir()
    for name in ("kept", "again"):
        (tmp_path / "store" / f"{name}.json").write_text(json.dumps({"cell": name, "success": 0.5}))
    out = tmp_path / "run"
    (out / "cells").mkdir(parents=True)

    def experiment() -> None:
        (out / "cells" / "again.json").write_text(json.dumps({"cell": "again", "success": 0.9}))
        (out / "cells" / "new.json").write_text(json.dumps({"cell": "new", "success": 0.7}))

    monkeypatch.setattr("signal.signal", lambda *a: None)  # run() makes SIGTERM unwind; not in the test process
    store.run(out, {"config": 1}, False, experiment)
    assert store.sessions()[-1]["cells_evaluated"] == ["again", "new"]
    assert json.loads((tmp_path / "store" / "again.json").read_text())["success"] == 0.9


def test_tokens_benchmark_reports_the_controller_ablation(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    from tokens_vla import controller_lines

    def variant(success, lo, hi, kept, fine=None):
        return {"success_rate": success, "ci95": [lo, hi], "kept_tokens_mean": kept, "fine_query_fraction": fine}

    variants = {
        "dense": variant(0.9, 0.86, 0.93, 324),
        "specprune": variant(0.8, 0.75, 0.84, 150, fine=0.3),
        "specprune without controller": variant(0.7, 0.65, 0.75, 140),
        "fastv without controller": variant(0.5, 0.45, 0.55, 100),  # no "fastv" ran: no line
    }
    (line,) = controller_lines(variants)
    assert line.startswith("- controller: specprune − specprune without controller: +10.0 points [")
    assert "30 % of queries fine motion" in line and "kept 150 visual tokens" in line and "against 140" in line


def test_headroom_improved_teacher_composes_like_the_teacher(monkeypatch):
    """The improved teacher answers each constraint by its type's selected answer and combines them as the
    teacher does (later constraints win a shared parameter); with nothing selected it is the teacher."""
    monkeypatch.syspath_prepend(str(BENCH))
    import driving_headroom as h

    from embodied_prune.envs.driving.instructions import teacher_params

    cs = [{"type": "speed_min", "limit": 23.0}, {"type": "headway", "min_s": 3.0}, {"type": "overtake", "count": 2}]
    assert h.improved(cs, {}) == teacher_params(cs)
    best = {"speed_min": h._shift("target_speed", 4), "headway": h._plus(min_distance=20.0)}
    got = h.improved(cs[:2], best)
    assert got == {"target_speed": 27.0, "time_gap": 3.0, "min_distance": 20.0}
    assert h.improved(cs, best)["target_speed"] == teacher_params(cs[2:])["target_speed"]  # overtake comes last
    for kind, options in h.ALTERNATIVES.items():  # every alternative is a different, valid answer
        c = next(x for x in [*cs, {"type": kind, "target": 15.0, "limit": 15.0, "lane": 1}] if x["type"] == kind)
        answers = [f(c) for _, f in options]
        assert teacher_params([c]) not in answers and len({str(a) for a in answers}) == len(answers)
