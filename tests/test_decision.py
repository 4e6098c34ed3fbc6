"""DecisionxLLM's task: the state readout, its rule labels on planted episodes, the answer parser, files, scoring."""

import json

import numpy as np
import pytest

from embodied_prune.envs.driving.constraints import CONSTRAINTS
from embodied_prune.envs.driving.decision import (
    DecisionExample,
    decide,
    format_decision,
    load_decisions,
    parse_decision,
    readout_text,
    resample,
    write_decisions,
)
from embodied_prune.envs.driving.scenario import Trajectory
from embodied_prune.errors import EmbodiedPruneError

N = 75  # 15 s at the policy frequency (5 Hz)


def episode(speed=20.0, lane=1, headway=2.0, lane_changes=0, overtakes=0, crashed=False):
    """A planted 15-second episode sampled at 5 Hz; arrays or constants."""

    def arr(x, dtype=float):
        return np.full(N, x, dtype=dtype) if np.isscalar(x) else np.asarray(x, dtype=dtype)

    speeds = arr(speed)
    return Trajectory(
        dt=0.2,
        speed=speeds,
        lane=arr(lane, int),
        accel=np.diff(speeds, prepend=speeds[:1]) / 0.2,
        headway=arr(headway),
        lane_changes=lane_changes,
        overtakes=overtakes,
        crashed=crashed,
        lanes=3,
    )


# the middle of the settled part (after the 3 s warm-up) switches at t = 9 s
SPIKE = np.r_[np.full(45, 17.0), np.full(5, 23.0), np.full(25, 17.0)]
LATE_LANE = np.r_[np.full(30, 1), np.full(45, 2)]
# (constraint, an adhering episode, a violating one) per constraint type
PLANTED = {
    "speed": ({"type": "speed", "target": 20.0}, episode(speed=20.4), episode(speed=23.0)),
    "speed_max": ({"type": "speed_max", "limit": 18.0}, episode(speed=17.0), episode(speed=SPIKE)),
    "speed_min": ({"type": "speed_min", "limit": 25.0}, episode(speed=25.0), episode(speed=SPIKE + 5.0)),
    "lane": ({"type": "lane", "lane": 2}, episode(lane=2), episode(lane=LATE_LANE)),
    "avoid_lane": ({"type": "avoid_lane", "lane": 1}, episode(lane=0), episode(lane=LATE_LANE)),
    "headway": ({"type": "headway", "min_s": 3.0}, episode(headway=3.2), episode(headway=2.4)),
    "no_lane_change": ({"type": "no_lane_change"}, episode(), episode(lane_changes=1)),
    "overtake": ({"type": "overtake", "count": 2}, episode(overtakes=2), episode(overtakes=1)),
    "smooth": (
        {"type": "smooth", "max_rms_acc": 0.6},
        episode(speed=20.0),
        episode(speed=np.where(np.arange(N) % 10 < 5, 18.0, 22.0)),
    ),
}


def test_every_constraint_type_is_planted():
    assert set(PLANTED) == set(CONSTRAINTS.names())


@pytest.mark.parametrize("kind", sorted(PLANTED))
def test_planted_episodes_get_both_labels_and_the_readout_shows_why(kind):
    c, good, bad = PLANTED[kind]
    for tr, label in ((good, True), (bad, False)):
        r = resample(tr)
        adheres, met, why = decide(r, [c])
        assert adheres is label and met == [label]
        assert why.endswith(": met" if label else ": not met")
        text = readout_text(r)
        assert text.count("\n") == 3 and "[m/s]" in text and "[s]" in text


def test_readout_samples_once_a_second_with_units_and_events():
    tr = episode(speed=np.linspace(10, 24.6, N), lane=LATE_LANE, headway=np.r_[np.full(40, np.nan), np.full(35, 2.46)])
    tr.lane_changes, tr.overtakes = 1, 3
    r = resample(tr)
    assert r.dt == pytest.approx(1.0) and len(r.speed) == 15
    lines = readout_text(r).splitlines()
    assert lines[0].startswith("Speed [m/s], once a second: ") and lines[0].split()[-1] == "25"  # rounded as written
    assert lines[1].split(": ")[1].split() == ["1"] * 6 + ["2"] * 9
    gaps = lines[2].split(": ")[1].split()
    assert gaps[:8] == ["-"] * 8 and set(gaps[8:]) == {"2.5"}
    assert lines[3] == "Lane changes: 1. Cars overtaken: 3. Collision: no."


def test_label_is_computed_on_what_the_readout_shows():
    """A speed spike between two once-a-second samples is invisible in the readout, so it is not a violation:
    every number the label depends on is in the text."""
    speed = np.full(N, 17.0)
    speed[32:34] = 25.0  # 0.4 s at 25 m/s, between the samples at 6 s and 7 s
    c = {"type": "speed_max", "limit": 18.0}
    assert decide(resample(episode(speed=speed)), [c])[0] is True
    assert decide(resample(episode(speed=SPIKE)), [c])[0] is False


def test_a_collision_breaks_every_instruction():
    c, good, _ = PLANTED["lane"]
    good.crashed = True
    adheres, met, why = decide(resample(good), [c])
    assert adheres is False and met == [True] and "collided" in why
    assert "Collision: yes" in readout_text(resample(good))


def test_several_constraints_adhere_only_when_all_are_met():
    tr = resample(episode(speed=20.0, lane=2))
    both = [{"type": "speed", "target": 20.0}, {"type": "lane", "lane": 2}]
    assert decide(tr, both)[:2] == (True, [True, True])
    wrong_lane = [{"type": "speed", "target": 20.0}, {"type": "lane", "lane": 0}]
    assert decide(tr, wrong_lane)[:2] == (False, [True, False])


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Explanation: fine.\nAdhering to Human: True", True),
        ("Explanation: no.\nAdhering to Human: False", False),
        ("adhering to human:   false.", False),
        ("Adhering to Human: True\nAdhering to Human: True", True),
    ],
)
def test_decision_parser_reads_the_verdict(text, expected):
    assert parse_decision(text).adheres is expected


@pytest.mark.parametrize(
    "text",
    ["", "Adhering to Human: maybe", "True", "Adhering to Human: True\nAdhering to Human: False", "\x00" * 50],
)
def test_malformed_decisions_are_counted_failures_not_crashes(text):
    p = parse_decision(text)
    assert p.adheres is None and p.error


def test_format_decision_parses_back():
    assert parse_decision(format_decision(False, "top speed 23 m/s, limit 18: not met")).adheres is False


def test_scoring_counts_parse_failures_as_wrong_and_breaks_out_types():
    from embodied_prune.evaluation.decision import score_decisions

    lane = [{"type": "lane", "lane": 2}]
    speed = [{"type": "speed", "target": 20.0}]
    ex = [
        DecisionExample("stay right", "s", True, "a", lane),
        DecisionExample("stay right", "s", False, "b", lane),
        DecisionExample("drive 20", "s", True, "c", speed, held_out_combo=True),
        DecisionExample("drive 20", "s", False, "d", speed),
    ]
    answers = ["Adhering to Human: True", "Adhering to Human: True", "garbled", "Adhering to Human: False"]
    d = score_decisions(ex, answers).to_dict()
    assert d["accuracy"] == 0.5 and d["parse_failures"] == 1 and d["correct"] == [True, False, False, True]
    assert d["by_type"]["lane"]["accuracy"] == 0.5 and d["by_type"]["speed"]["n"] == 2
    assert d["true_positive_rate"]["accuracy"] == 0.5 and d["true_negative_rate"]["accuracy"] == 0.5
    assert d["held_out_combos"]["n"] == 1 and d["held_out_combos"]["accuracy"] == 0.0
    lo, hi = d["ci95"]
    assert 0 < lo < 0.5 < hi < 1


def test_decision_file_round_trip_and_errors(tmp_path):
    c, good, _ = PLANTED["lane"]
    r = resample(good)
    adheres, met, why = decide(r, [c])
    items = [DecisionExample("Stay right.", readout_text(r), adheres, "x1", [c], why, met)]
    path = tmp_path / "d.jsonl"
    write_decisions(items, path)
    assert load_decisions(path) == items
    minimal = tmp_path / "min.jsonl"
    minimal.write_text(json.dumps({"instruction": "Go.", "state": "speed 3", "adheres": False}) + "\n")
    (x,) = load_decisions(minimal)
    assert x.id == "min-0001" and x.constraints == [] and "Adhering to Human: False" in x.answer()
    for line, needle in [
        ('{"instruction": "Go.", "state": "s", "adheres": "yes"}', "'adheres': true or false"),
        ('{"instruction": "", "state": "s", "adheres": true}', "non-empty 'instruction'"),
        ('{"instruction": "Go.", "state": "s", "adheres": true, "constraints": [{"type": "fly"}]}', "unknown type"),
        ("not json", "line 1 is not valid JSON"),
    ]:
        bad = tmp_path / "bad.jsonl"
        bad.write_text(line + "\n")
        with pytest.raises(EmbodiedPruneError, match=needle):
            load_decisions(bad)
    with pytest.raises(EmbodiedPruneError, match="does not exist"):
        load_decisions(tmp_path / "missing.jsonl")


def test_built_split_is_balanced_deterministic_and_its_labels_follow_from_the_text():
    """A small built split (real highway-env episodes): balanced labels, the same examples on a second build, and
    each label recomputed from the readout text alone (the numbers as written, the first 3 s skipped)."""
    from embodied_prune.envs.driving.constraints import constraint_satisfied
    from embodied_prune.envs.driving.decision import _alternate, decision_split

    items = decision_split("val", 6, workers=1)
    assert sum(x.adheres for x in items) == 3 and len({x.id for x in items}) == 6
    assert [x.to_json() for x in decision_split("val", 6, workers=1)] == [x.to_json() for x in items]
    assert [x.adheres for x in _alternate(items)] == [True, False] * 3
    for x in items:
        lines = x.state.splitlines()
        speed = np.array([float(v) for v in lines[0].split(": ")[1].split()])
        lane = np.array([int(v) for v in lines[1].split(": ")[1].split()])
        gap = np.array([np.nan if v == "-" else float(v) for v in lines[2].split(": ")[1].split()])
        changes, overtakes = (int(part.split(": ")[1]) for part in lines[3].split(". ")[:2])
        tr = Trajectory(
            1.0, speed, lane, np.diff(speed, prepend=speed[:1]), gap, changes, overtakes, "yes" in lines[3], 3
        )
        met = [constraint_satisfied(tr, c) for c in x.constraints]
        assert met == x.met and x.adheres == (all(met) and not tr.crashed)
