"""Natural-language driving instructions: templates, splits, the JSONL schema, and the teacher.

JSONL schema (one object per line)::

    {"id": "test-0007",                                  # optional, unique
     "text": "Drive at 22 m/s and stay in the right lane.",
     "constraints": [{"type": "speed", "target": 22.0}, {"type": "lane", "lane": 2}],
     "scenario": {"seed": 2000007}}                       # optional: traffic seed (and other Scenario fields)

``constraints`` uses the types of :mod:`.constraints` (speed, speed_max, speed_min, lane, avoid_lane,
headway, no_lane_change, overtake, smooth); lanes are numbered 0 (left) to 2 (right).
The built-in splits use all but ``smooth`` (see ``GENERATED_KINDS``).

The built-in splits are generated from templates: the *test* split uses paraphrases and joiners that
never appear in training, and a third of it uses constraint combinations that training never sees.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from typing import Any

from ...errors import EmbodiedPruneError
from ...io import read_jsonl
from .constraints import validate_constraint
from .scenario import Scenario

LANE_NAMES = ("left", "middle", "right")

# Paraphrases are composed of a head and a tail per constraint type. Every head and every tail occurs
# in training, but about a third of the (head, tail) pairs, the test joiners and the test prefixes
# never do: the test split asks for *compositional* generalisation (as SCAN-style splits do), which a
# small controller trained from scratch can learn, rather than for synonyms it has never read.
# Fields: {v} m/s, {kmh} km/h, {lane}, {t} s, {n}.
_SPEED_UNITS = ["{v} m/s", "{v} meters per second", "{kmh} km/h", "{kmh} kilometers per hour"]
PARTS: dict[str, tuple[list[str], list[str]]] = {
    "speed": (
        ["drive at", "keep your speed at", "maintain", "cruise at", "hold", "travel at"],
        [
            "{v} m/s",
            "about {v} m/s",
            "{v} meters per second",
            "roughly {v} meters per second",
            "{kmh} km/h",
            "{kmh} kilometers per hour",
        ],
    ),
    "speed_max": (["do not exceed", "stay below", "never go faster than", "keep under", "keep it below"], _SPEED_UNITS),
    "speed_min": (
        ["drive at least", "don't go slower than", "keep your speed above", "keep it above", "never go slower than"],
        _SPEED_UNITS,
    ),
    "lane": (
        ["stay in", "keep to", "drive in", "use", "move to and stay in"],
        ["the {lane} lane", "the {lane} lane only", "the {lane} lane at all times"],
    ),
    "avoid_lane": (
        ["avoid", "don't drive in", "keep out of", "stay out of", "never use"],
        ["the {lane} lane", "the {lane} lane at all times", "the {lane} lane please"],
    ),
    "headway": (
        ["keep at least", "leave at least", "stay at least", "follow at least"],
        [
            "{t} seconds behind the car ahead",
            "{t} seconds behind the vehicle in front",
            "{t} s behind the car in front",
        ],
    ),
    "no_lane_change": (
        ["do not change", "never change", "don't switch", "avoid changing"],
        ["lanes", "lanes at all", "your lane"],
    ),
    "overtake": (
        ["overtake", "pass", "get past"],
        ["{n} cars", "at least {n} vehicles", "{n} of the cars ahead", "{n} vehicles or more"],
    ),
    "smooth": (
        ["drive", "accelerate and brake", "ride", "speed up and slow down"],
        ["smoothly", "gently", "comfortably", "without harsh moves"],
    ),
}


def _test_only(i: int, j: int) -> bool:
    """Whether (head i, tail j) is held out of training; every head and tail keeps a training pair."""
    return (i + j) % 3 == 2


PHRASES: dict[str, tuple[list[str], list[str]]] = {
    kind: (
        [f"{h} {t}" for i, h in enumerate(heads) for j, t in enumerate(tails) if not _test_only(i, j)],
        [f"{h} {t}" for i, h in enumerate(heads) for j, t in enumerate(tails) if _test_only(i, j)],
    )
    for kind, (heads, tails) in PARTS.items()
}
JOINERS = ([" and ", ", ", "; also ", ", and ", ", then "], [" and also ", "; and ", ", also "])
PREFIXES = (["", "", "please ", "now ", "okay, "], ["", "okay, please ", "now please "])

# Pairs that contradict each other (never generated together).
CONFLICTS = {
    frozenset(p)
    for p in [
        ("speed", "speed_max"),
        ("speed", "speed_min"),
        ("speed_max", "speed_min"),
        ("lane", "avoid_lane"),
        ("lane", "no_lane_change"),
        ("overtake", "no_lane_change"),
        ("overtake", "lane"),
        ("overtake", "speed_max"),
        ("overtake", "smooth"),
    ]
}
# Pairs seen only in the test split.
HELD_OUT_COMBOS = {frozenset(p) for p in [("speed", "headway"), ("speed_max", "lane"), ("headway", "avoid_lane")]}
# The constraint types the built-in splits draw from. ``smooth`` is left out: beyond the first
# slow-down into traffic, no IDM/MOBIL parameter set changes the acceleration much (a sweep over
# comfort_acc, time_gap and lane changes on 12 scenarios moved the error by ≤ 0.25 of the default's),
# so it would add noise, not a skill. It stays available to instruction files.
GENERATED_KINDS = ("speed", "speed_max", "speed_min", "lane", "avoid_lane", "headway", "no_lane_change", "overtake")

SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}
SCENARIO_BASE = {"train": 0, "val": 1_000_000, "test": 2_000_000}


@dataclass
class Instruction:
    """One instruction with its measurable constraints and (optionally) its traffic scenario."""

    text: str
    constraints: list[dict[str, Any]]
    id: str = ""
    scenario: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = {"id": self.id, "text": self.text, "constraints": self.constraints}
        if self.scenario:
            out["scenario"] = self.scenario
        return out

    def make_scenario(self, seed: int | None = None) -> Scenario:
        """The scenario of this instruction (``seed`` overrides its own)."""
        fields = {**self.scenario}
        if seed is not None:
            fields["seed"] = seed
        fields.setdefault("seed", 0)
        return Scenario(**fields)


def _sample_constraint(kind: str, rng: random.Random) -> dict[str, Any]:
    if kind == "speed":
        return {"type": kind, "target": float(rng.choice(range(12, 21)))}
    if kind == "speed_max":
        return {"type": kind, "limit": float(rng.choice(range(13, 20)))}
    if kind == "speed_min":
        return {"type": kind, "limit": float(rng.choice(range(22, 27)))}
    if kind in ("lane", "avoid_lane"):
        return {"type": kind, "lane": rng.randrange(3)}
    if kind == "headway":
        return {"type": kind, "min_s": rng.choice([3.0, 3.5, 4.0])}
    if kind == "overtake":
        return {"type": kind, "count": rng.choice([1, 2, 3])}
    if kind == "smooth":
        return {"type": kind, "max_rms_acc": 0.6}
    return {"type": kind}


def _phrase(c: dict[str, Any], template: str) -> str:
    v = c.get("target", c.get("limit"))
    return template.format(
        v=f"{v:g}" if v is not None else "",
        kmh=f"{round(v * 3.6):d}" if v is not None else "",
        lane=LANE_NAMES[c["lane"]] if "lane" in c else "",
        t=f"{c['min_s']:g}" if "min_s" in c else "",
        n=c.get("count", ""),
    )


def _phrase_value_consistent(c: dict[str, Any], template: str) -> dict[str, Any]:
    """km/h phrasings state a rounded number: make the constraint match what the text says."""
    if "{kmh}" in template:
        key = "target" if "target" in c else "limit"
        c = {**c, key: round(round(c[key] * 3.6) / 3.6, 2)}
    return c


def _type_pairs(kinds: list[str]) -> set[frozenset]:
    """Every unordered pair of the constraint types ``kinds``."""
    return {frozenset((a, b)) for i, a in enumerate(kinds) for b in kinds[i + 1 :]}


def has_held_out_combo(instruction: Instruction) -> bool:
    """Whether ``instruction`` pairs two constraint types that the train split never pairs (:data:`HELD_OUT_COMBOS`)."""
    return bool(_type_pairs([c["type"] for c in instruction.constraints]) & HELD_OUT_COMBOS)


def generate_split(split: str, n: int) -> list[Instruction]:
    """``n`` instructions of the built-in ``split`` (train, val or test), deterministic."""
    if split not in SPLIT_SEEDS:
        raise EmbodiedPruneError(f"unknown split {split!r}; choose train, val or test.")
    rng = random.Random(SPLIT_SEEDS[split])
    test = split == "test"
    kinds = list(GENERATED_KINDS)
    out: list[Instruction] = []
    while len(out) < n:
        if test and len(out) % 3 == 0:
            # sorted: a frozenset's iteration order depends on the process's string-hash seed
            chosen = sorted(rng.choice(sorted(HELD_OUT_COMBOS, key=sorted)))
            rng.shuffle(chosen)
        else:
            k = rng.choices([1, 2, 3], weights=[4, 4, 2])[0]
            chosen = rng.sample(kinds, k)
        pairs = _type_pairs(chosen)
        if pairs & CONFLICTS or (not test and pairs & HELD_OUT_COMBOS):
            continue
        parts, constraints = [], []
        for kind in chosen:
            c = _sample_constraint(kind, rng)
            template = rng.choice(PHRASES[kind][1 if test else 0])
            c = _phrase_value_consistent(c, template)
            constraints.append(c)
            parts.append(_phrase(c, template))
        text = parts[0]
        for p in parts[1:]:
            text += rng.choice(JOINERS[1 if test else 0]) + p
        text = rng.choice(PREFIXES[1 if test else 0]) + text
        text = text[0].upper() + text[1:] + rng.choice([".", ".", "!", ""])
        i = len(out)
        out.append(Instruction(text, constraints, f"{split}-{i:04d}", {"seed": SCENARIO_BASE[split] + i}))
    return out


def load_instructions(path: str | os.PathLike) -> list[Instruction]:
    """Read a JSONL instruction file; a malformed line raises an error naming the file and line."""
    schema = "docs/driving.md, 'Instruction files'"
    out = read_jsonl(path, "instruction", schema, "instructions", parse_instruction)
    ids = [x.id for x in out]
    if len(set(ids)) != len(ids):
        dup = next(x for x in ids if ids.count(x) > 1)
        raise EmbodiedPruneError(f"instruction file {path} uses id {dup!r} twice; ids must be unique.")
    return out


def parse_instruction(raw: Any, where: str, default_id: str = "") -> Instruction:
    if not isinstance(raw, dict):
        raise EmbodiedPruneError(f"{where} must be a JSON object, got {type(raw).__name__}.")
    text = raw.get("text")
    if not isinstance(text, str) or not text.strip():
        raise EmbodiedPruneError(f"{where} needs a non-empty 'text' string.")
    cons = raw.get("constraints")
    if not isinstance(cons, list) or not cons:
        raise EmbodiedPruneError(f"{where} needs a non-empty 'constraints' list.")
    constraints = [validate_constraint(c, f"{where} constraint {j + 1}") for j, c in enumerate(cons)]
    scenario = raw.get("scenario", {})
    if not isinstance(scenario, dict):
        raise EmbodiedPruneError(f"{where} 'scenario' must be an object such as {{\"seed\": 7}}.")
    known = set(Scenario.__dataclass_fields__)
    bad = sorted(set(scenario) - known)
    if bad:
        raise EmbodiedPruneError(f"{where} 'scenario' has unknown fields {bad}; allowed: {sorted(known)}.")
    lanes = scenario.get("lanes", 3)
    for c in constraints:
        if "lane" in c and not 0 <= c["lane"] < lanes:
            raise EmbodiedPruneError(f"{where} names lane {c['lane']}, but the road has lanes 0..{lanes - 1}.")
    return Instruction(text.strip(), constraints, str(raw.get("id") or default_id), scenario)


def write_instructions(items: list[Instruction], path: str | os.PathLike) -> None:
    from ...io import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(x.to_json()) + "\n" for x in items))


# --- the teacher --------------------------------------------------------------------------------------


def teacher_params(constraints: list[dict[str, Any]], rng: random.Random | None = None) -> dict[str, Any]:
    """The reference mapping used for SFT labels: literal and reasonable, not closed-loop optimal
    (as a teacher LLM's labels would be). It reads each constraint at face value.

    With ``rng``, numeric values are jittered around that reading (a few m/s, half a second, one
    comfort step), as a sampled teacher's labels would be: the SFT controller then keeps a spread over
    values whose mode is the teacher's, which GRPO needs to explore.
    """

    def jitter(value: float, steps: list[float]) -> float:
        return value + (rng.choice(steps) if rng is not None else 0.0)

    p: dict[str, Any] = {}
    speed_steps = [-2.0, -1.0, 0.0, 0.0, 0.0, 1.0, 2.0]
    for c in constraints:
        kind = c["type"]
        if kind == "speed":
            p["target_speed"] = jitter(c["target"], [-1.0, 0.0, 0.0, 0.0, 1.0])
        elif kind == "speed_max":
            p["target_speed"] = jitter(c["limit"] - 1.0, speed_steps)
        elif kind == "speed_min":
            p["target_speed"] = jitter(c["limit"], speed_steps)
        elif kind == "lane":
            p["preferred_lane"] = c["lane"]
        elif kind == "avoid_lane":
            p["avoid_lane"] = c["lane"]
        elif kind == "headway":
            p["time_gap"] = jitter(c["min_s"], [-0.5, 0.0, 0.0, 0.0, 0.5])
        elif kind == "no_lane_change":
            p["allow_lane_change"] = False
        elif kind == "overtake":
            p["target_speed"] = jitter(30.0, speed_steps)
            p["lane_change_gain"] = jitter(0.1, [-0.05, 0.0, 0.0, 0.1])
        elif kind == "smooth":
            p["comfort_acc"] = jitter(1.5, [-0.5, 0.0, 0.0, 0.0, 0.5])
    return p
