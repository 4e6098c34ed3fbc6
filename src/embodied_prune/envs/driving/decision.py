"""DecisionxLLM's task on our simulator: does the robot's behaviour adhere to the human's instruction?

RobotxR1's second module (LLMxRobot, ``tests/decision_tester/``) shows an LLM a textual readout of the car's
recent state beside a human instruction and asks whether the car adheres, answered as
``Explanation: … / Adhering to Human: True|False``. Here the state comes from highway-env episodes driven with
varied controller parameters, and the label is computed by rule with the constraint checkers of
:mod:`.constraints` — on the *readout itself* (the trajectory sampled once a second, numbers rounded as
written), so that everything the label depends on is in the text the model reads.

JSONL schema of a decision file: :data:`DECISION_SCHEMA` (``embodied-prune data decision`` writes the built-in
splits in it).

Pure functions and plain data only; the episodes are driven by :func:`decision_split` through the
memoising :class:`~.scoring.ClosedLoopScorer`.
"""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ...errors import EmbodiedPruneError
from ...io import atomic_write_text, read_jsonl
from .constraints import constraint_satisfied, headways, rms, settled, share_in, validate_constraint
from .instructions import LANE_NAMES, Instruction, generate_split, has_held_out_combo, teacher_params
from .params import PARAM_SPECS, ControllerParams
from .scenario import Trajectory

DECISION_SCHEMA = """One JSON object per line:

    {"id": "dec-test-0003",                              optional, unique
     "instruction": "Stay in the right lane.",
     "state": "Speed [m/s], once a second: 24 25 ...",  the readout the model reads (any text)
     "adheres": true,                                    the label
     "constraints": [{"type": "lane", "lane": 2}],       optional: per-constraint-type breakdown
     "explanation": "in the right lane 92% ...: met",    optional: the SFT target's rationale
     "held_out_combo": false}                            optional: a constraint pairing training never saw
"""
READOUT_DT = 1.0  # [s] the readout samples the state once a second
# An answer names one statistic per constraint (~15 tokens each in SmolLM2's tokenizer) before the verdict.
DECISION_MAX_NEW_TOKENS = 96
DECISION_VERSION = 1  # bump when the readout, the labels or the split generation change (the cache key)


# --- the readout -----------------------------------------------------------------------------------------


def resample(tr: Trajectory, dt: float = READOUT_DT) -> Trajectory:
    """``tr`` sampled every ``dt`` seconds (the sample at the end of each interval), its speeds rounded to whole
    m/s and time gaps to 0.1 s as the readout writes them; event counts (lane changes, overtakes, collision)
    are kept from the full trajectory."""
    step = max(1, round(dt / tr.dt))
    idx = np.arange(step - 1, len(tr.speed), step)
    speed = np.round(tr.speed[idx]).astype(float)
    headway = np.round(tr.headway[idx], 1) if len(tr.headway) else tr.headway
    return Trajectory(
        dt=step * tr.dt,
        speed=speed,
        lane=tr.lane[idx],
        accel=np.diff(speed, prepend=speed[:1]) / (step * tr.dt) if len(speed) else speed,
        headway=headway,
        lane_changes=tr.lane_changes,
        overtakes=tr.overtakes,
        crashed=tr.crashed,
        lanes=tr.lanes,
        error=tr.error,
    )


def readout_text(tr: Trajectory) -> str:
    """The textual state readout of a *resampled* trajectory (see :func:`resample`): units stated."""
    gaps = " ".join("-" if np.isnan(h) else f"{h:.1f}" for h in tr.headway)
    return (
        f"Speed [m/s], once a second: {' '.join(f'{v:.0f}' for v in tr.speed)}\n"
        f"Lane (0 left, {tr.lanes - 1} right): {' '.join(str(int(x)) for x in tr.lane)}\n"
        f"Time gap to the car ahead [s] (- none within 100 m): {gaps}\n"
        f"Lane changes: {tr.lane_changes}. Cars overtaken: {tr.overtakes}. Collision: {'yes' if tr.crashed else 'no'}."
    )


# --- labels and their explanation ------------------------------------------------------------------------


def _clause(tr: Trajectory, c: dict[str, Any]) -> str:
    """What the readout says about constraint ``c`` (the statistic its checker tests), in a few words."""
    speed = settled(tr, tr.speed)
    kind = c["type"]
    if kind == "speed":
        return f"mean speed {np.mean(speed):.1f} m/s, asked {c['target']:g}"
    if kind == "speed_max":
        return f"top speed {np.max(speed):.0f} m/s, limit {c['limit']:g}"
    if kind == "speed_min":
        return f"lowest speed {np.min(speed):.0f} m/s, limit {c['limit']:g}"
    if kind in ("lane", "avoid_lane"):
        name = LANE_NAMES[c["lane"]] if c["lane"] < 3 else c["lane"]
        return f"in the {name} lane {share_in(tr, c['lane']):.0%} of the time"
    if kind == "headway":
        h = headways(tr)
        return f"smallest time gap {np.min(h):.1f} s, asked {c['min_s']:g}" if len(h) else "no car ahead"
    if kind == "no_lane_change":
        return f"{tr.lane_changes} lane changes"
    if kind == "overtake":
        return f"overtook {tr.overtakes}, asked {c['count']}"
    if kind == "smooth":
        return f"RMS acceleration {rms(tr.accel):.1f} m/s², limit {c['max_rms_acc']:g}"
    raise EmbodiedPruneError(f"no readout clause for constraint type {kind!r}.")


def decide(tr: Trajectory, constraints: list[dict[str, Any]]) -> tuple[bool, list[bool], str]:
    """The rule label of a resampled trajectory: (adheres, each constraint met, explanation). A collision
    breaks every instruction (safety comes first), so it alone makes the label False."""
    met = [constraint_satisfied(tr, c) for c in constraints]
    clauses = [f"{_clause(tr, c)}: {'met' if ok else 'not met'}" for c, ok in zip(constraints, met, strict=True)]
    if tr.crashed:
        clauses.append("the car collided")
    return bool(all(met) and not tr.crashed), met, "; ".join(clauses)


# --- the answer format -----------------------------------------------------------------------------------

_DECISION = re.compile(r"Adhering to Human:\s*(True|False)\b", re.IGNORECASE)


def format_decision(adheres: bool, explanation: str) -> str:
    """The answer text (LLMxRobot's format): ``Explanation: …`` then ``Adhering to Human: True|False``."""
    return f"Explanation: {explanation}.\nAdhering to Human: {adheres}"


@dataclass
class ParsedDecision:
    """A parsed decision answer: the verdict (None when unparseable) and what went wrong."""

    adheres: bool | None
    error: str | None = None


def parse_decision(text: str) -> ParsedDecision:
    """Parse a completion; never raises. Exactly one ``Adhering to Human: True|False`` must be present."""
    found = _DECISION.findall(text)
    if not found:
        return ParsedDecision(None, "no 'Adhering to Human: True|False' line")
    if len({f.lower() for f in found}) > 1:
        return ParsedDecision(None, "both True and False given")
    return ParsedDecision(found[0].lower() == "true")


# --- examples, files and the built-in splits -------------------------------------------------------------


@dataclass
class DecisionExample:
    """One decision prompt: an instruction, a state readout, the label (and its per-constraint detail)."""

    instruction: str
    state: str
    adheres: bool
    id: str = ""
    constraints: list[dict[str, Any]] = field(default_factory=list)
    explanation: str = ""
    met: list[bool] = field(default_factory=list)
    held_out_combo: bool = False
    params: dict[str, Any] = field(default_factory=dict)  # the controller parameters the episode was driven with

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def answer(self) -> str:
        """The SFT target: the explanation (rule-made when the file has none) and the label."""
        return format_decision(self.adheres, self.explanation or "the behaviour was checked against the instruction")


def parse_decision_example(raw: Any, where: str, default_id: str = "") -> DecisionExample:
    """One decision record (see the module docstring's schema); a clear error naming ``where`` otherwise."""
    if not isinstance(raw, dict):
        raise EmbodiedPruneError(f"{where} must be a JSON object, got {type(raw).__name__}.")
    for key in ("instruction", "state"):
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise EmbodiedPruneError(f"{where} needs a non-empty {key!r} string.")
    if not isinstance(raw.get("adheres"), bool):
        raise EmbodiedPruneError(f"{where} needs 'adheres': true or false, got {raw.get('adheres')!r}.")
    cons = raw.get("constraints") or []
    if not isinstance(cons, list):
        raise EmbodiedPruneError(f"{where} 'constraints' must be a list of constraint objects.")
    constraints = [validate_constraint(c, f"{where} constraint {j + 1}") for j, c in enumerate(cons)]
    return DecisionExample(
        instruction=raw["instruction"].strip(),
        state=raw["state"].strip(),
        adheres=raw["adheres"],
        id=str(raw.get("id") or default_id),
        constraints=constraints,
        explanation=str(raw.get("explanation") or ""),
        met=list(raw.get("met") or []),
        held_out_combo=bool(raw.get("held_out_combo", False)),
        params=dict(raw.get("params") or {}),
    )


def load_decisions(path: str | os.PathLike) -> list[DecisionExample]:
    """Read a decision JSONL file; a malformed line raises an error naming the file and line."""
    return read_jsonl(path, "decision", "embodied-prune data --help", "examples", parse_decision_example)


def write_decisions(items: list[DecisionExample], path: str | os.PathLike) -> None:
    atomic_write_text(path, "".join(json.dumps(x.to_json()) + "\n" for x in items))


# Parameter sets that the episodes are driven with. The teacher's (jittered) reading of the instruction mostly
# adheres; a near miss (the teacher's reading with one constraint's parameter pushed the wrong way) and a random
# draw mostly do not. Near misses make the False class hard: the readout then differs from an adhering one in one
# statistic only.
def _teacher(ins: Instruction, rng: random.Random) -> dict[str, Any]:
    return teacher_params(ins.constraints, rng)


def _near_miss(ins: Instruction, rng: random.Random) -> dict[str, Any]:
    p = teacher_params(ins.constraints, rng)
    c = rng.choice(ins.constraints)
    kind = c["type"]
    if kind == "speed":
        p["target_speed"] = c["target"] + rng.choice([-4.0, -3.0, 3.0, 4.0])
    elif kind == "speed_max":
        p["target_speed"] = c["limit"] + rng.choice([2.0, 4.0, 6.0])
    elif kind == "speed_min":
        p["target_speed"] = c["limit"] - rng.choice([3.0, 5.0])
    elif kind == "lane":
        p["preferred_lane"] = rng.choice([x for x in range(3) if x != c["lane"]])
    elif kind == "avoid_lane":
        p.pop("avoid_lane", None)
        p["preferred_lane"] = c["lane"]
    elif kind == "headway":
        p["time_gap"] = rng.choice([0.8, 1.2, 1.6])
    elif kind == "no_lane_change":
        p["allow_lane_change"] = True
        p["lane_change_gain"] = 0.0
    elif kind == "overtake":
        p["target_speed"] = rng.choice([15.0, 20.0])
        p["allow_lane_change"] = rng.random() < 0.5
    return p


def _random(ins: Instruction, rng: random.Random) -> dict[str, Any]:
    p: dict[str, Any] = {}
    for s in PARAM_SPECS:
        if s.kind is bool:
            p[s.name] = rng.random() < 0.7
        elif s.kind is int:
            p[s.name] = rng.choice([None, 0, 1, 2])
        else:
            p[s.name] = round(rng.uniform(s.low, s.high), 1)
    if p["preferred_lane"] is not None and p["preferred_lane"] == p["avoid_lane"]:
        p["avoid_lane"] = None
    return p


def _to_params(p: dict[str, Any]) -> ControllerParams:
    specs = {s.name: s for s in PARAM_SPECS}
    values = {}
    for k, v in p.items():
        s = specs[k]
        values[k] = v if v is None or s.kind is bool else min(max(s.kind(v), s.low), s.high)
    return ControllerParams(**values)


def _example(ins: Instruction, tr: Trajectory, params: ControllerParams, i: int, split: str) -> DecisionExample:
    r = resample(tr)
    adheres, met, why = decide(r, ins.constraints)
    return DecisionExample(
        instruction=ins.text,
        state=readout_text(r),
        adheres=adheres,
        id=f"dec-{split}-{i:04d}",
        constraints=ins.constraints,
        explanation=why,
        met=met,
        held_out_combo=has_held_out_combo(ins),
        params=params.changed(),
    )


def decision_split(split: str, n: int, workers: int = 2, progress: bool = False) -> list[DecisionExample]:
    """``n`` balanced decision examples of the built-in ``split`` (deterministic).

    Example ``i`` pairs instruction ``i`` of the parameter task's split (same phrasings, held-out phrasings and
    combinations in test) with an episode in that instruction's own traffic, aiming at label ``i % 2 == 0``:
    up to six parameter sets are tried in turn (teacher's reading for True, near miss or random for False) and
    the first with the aimed label is kept. An instruction none of whose tries gives its label is skipped, and
    further instructions are taken until ``n`` examples exist, so each class holds ``n / 2`` (± 1).
    """
    from tqdm.auto import tqdm

    from .scoring import ClosedLoopScorer

    if n < 1:
        raise EmbodiedPruneError(f"a decision split needs at least one example; got n={n}.")
    out: list[DecisionExample] = []
    want = {True: (n + 1) // 2, False: n // 2}
    instructions = generate_split(split, 4 * n + 16)
    tries = 6
    with ClosedLoopScorer(workers) as scorer, tqdm(total=n, desc=f"decision {split}", disable=not progress) as bar:
        start = 0
        while len(out) < n and start < len(instructions):
            chunk = instructions[start : start + max(8, n - len(out))]
            aims = [(start + j) % 2 == 0 for j in range(len(chunk))]
            rngs = [random.Random(f"{split}-{start + j}") for j in range(len(chunk))]
            found: dict[int, tuple[ControllerParams, Trajectory]] = {}
            for t in range(tries):
                open_ = [j for j in range(len(chunk)) if j not in found]
                if not open_:
                    break
                drawn = []
                for j in open_:
                    make = _teacher if aims[j] else (_near_miss if t % 2 == 0 else _random)
                    drawn.append(_to_params(make(chunk[j], rngs[j])))
                trs = scorer.rollouts([(p, chunk[j].make_scenario()) for p, j in zip(drawn, open_, strict=True)])
                for j, p, tr in zip(open_, drawn, trs, strict=True):
                    if tr.error is None and decide(resample(tr), chunk[j].constraints)[0] == aims[j]:
                        found[j] = (p, tr)
            for j in sorted(found):
                label = aims[j]
                if want[label] and len(out) < n:
                    p, tr = found[j]
                    out.append(_example(chunk[j], tr, p, len(out), split))
                    want[label] -= 1
                    bar.update(1)
            start += len(chunk)
    if len(out) < n:
        raise EmbodiedPruneError(f"could only build {len(out)} of {n} balanced decision examples for split {split}.")
    return out


DECISION_SIZES = {"train": 1000, "val": 200, "test": 400}


def builtin_decisions(
    split: str, n: int | None = None, workers: int = 2, progress: bool = True
) -> list[DecisionExample]:
    """The first ``n`` examples of the built-in decision split (default and at least :data:`DECISION_SIZES`
    examples are built), cached on disk after the first build (400 examples drive about 1,000 episodes: two
    minutes on 2 cores). The labels alternate, so any prefix is balanced to one example."""
    from ...io import cache_dir

    if split not in DECISION_SIZES:
        raise EmbodiedPruneError(f"unknown decision split {split!r}; choose train, val or test.")
    n = DECISION_SIZES[split] if n is None else n
    size = max(n, DECISION_SIZES[split])
    path = cache_dir() / "decision" / f"{split}-{size}-v{DECISION_VERSION}.jsonl"
    if path.is_file():
        return _alternate(load_decisions(path))[:n]
    items = decision_split(split, size, workers, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_decisions(items, path)
    return _alternate(items)[:n]


def _alternate(items: list[DecisionExample]) -> list[DecisionExample]:
    """``items`` reordered True, False, True, … (each class in its own order), so that every prefix is balanced:
    adhering episodes are the harder ones to find, so a split's first half holds fewer of them."""
    yes = [x for x in items if x.adheres]
    no = [x for x in items if not x.adheres]
    out = [x for pair in zip(yes, no, strict=False) for x in pair]
    return out + yes[len(no) :] + no[len(yes) :]
