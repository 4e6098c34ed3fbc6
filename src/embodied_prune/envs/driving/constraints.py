"""Measurable constraints of an instruction, and their errors on a trajectory (pure functions).

Each constraint type maps a :class:`~.sim.Trajectory` to a non-negative *error* (0 = fully met,
about 1 = clearly violated) and decides whether it is *satisfied*. The first ``WARMUP_S`` seconds are
ignored by the state constraints (speed, lane, headway): the car needs them to get there.

==============  ========================  ==============================================  =============================
type            fields                    error                                           satisfied when
==============  ========================  ==============================================  =============================
speed           target [m/s]              RMS(speed − target) / 5 m/s                     |mean speed − target| ≤ 1.5
speed_max       limit [m/s]               mean(max(0, speed − limit)) / 5 m/s             speed ≤ limit + 1 throughout
speed_min       limit [m/s]               mean(max(0, limit − speed)) / 5 m/s             speed ≥ limit − 1 throughout
lane            lane (0 left … 2 right)   share of time outside the lane                  share ≤ 0.1
avoid_lane      lane                      share of time inside the lane                   share ≤ 0.1
headway         min_s [s]                 mean(max(0, min_s − headway)) / min_s           headway ≥ 0.85·min_s always
no_lane_change  –                         lane changes / 2                                no lane change
overtake        count                     max(0, count − overtakes) / count               overtakes ≥ count
smooth          max_rms_acc [m/s²]        max(0, RMS(acc) − max_rms_acc) / max_rms_acc    RMS(acc) ≤ max_rms_acc
==============  ========================  ==============================================  =============================

A collision is a safety violation; the scorer gives the episode a fixed large error for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import EmbodiedPruneError
from ...registry import Registry
from .scenario import Trajectory

WARMUP_S = 3.0
SPEED_SCALE = 5.0  # [m/s] an error of 1 is this far off


@dataclass(frozen=True)
class ConstraintType:
    """A constraint type: its required fields, error and satisfaction test."""

    name: str
    fields: dict[str, type]
    error: Callable[[Trajectory, dict[str, Any]], float]
    satisfied: Callable[[Trajectory, dict[str, Any]], bool]


CONSTRAINTS: Registry[ConstraintType] = Registry("constraint type")


def settled(tr: Trajectory, values: np.ndarray) -> np.ndarray:
    """``values`` after the first ``WARMUP_S`` seconds (what the state constraints test)."""
    start = min(round(WARMUP_S / tr.dt), max(len(values) - 1, 0))
    return values[start:]


def _speed(tr: Trajectory) -> np.ndarray:
    return settled(tr, tr.speed)


def rms(x: np.ndarray) -> float:
    """Root mean square (0 for an empty array)."""
    return float(np.sqrt(np.mean(np.square(x)))) if len(x) else 0.0


def _register(name: str, fields: dict[str, type], error, satisfied) -> None:
    CONSTRAINTS.add(name, ConstraintType(name, fields, error, satisfied))


_register(
    "speed",
    {"target": float},
    lambda tr, c: rms(_speed(tr) - c["target"]) / SPEED_SCALE,
    lambda tr, c: abs(float(np.mean(_speed(tr))) - c["target"]) <= 1.5,
)
_register(
    "speed_max",
    {"limit": float},
    lambda tr, c: float(np.mean(np.maximum(0.0, _speed(tr) - c["limit"]))) / SPEED_SCALE,
    lambda tr, c: bool(np.all(_speed(tr) <= c["limit"] + 1.0)),
)
_register(
    "speed_min",
    {"limit": float},
    lambda tr, c: float(np.mean(np.maximum(0.0, c["limit"] - _speed(tr)))) / SPEED_SCALE,
    lambda tr, c: bool(np.all(_speed(tr) >= c["limit"] - 1.0)),
)


def share_in(tr: Trajectory, lane: int) -> float:
    """The share of the settled time spent in ``lane``."""
    lanes = settled(tr, tr.lane)
    return float(np.mean(lanes == lane)) if len(lanes) else 0.0


_register(
    "lane",
    {"lane": int},
    lambda tr, c: 1.0 - share_in(tr, c["lane"]),
    lambda tr, c: 1.0 - share_in(tr, c["lane"]) <= 0.1,
)
_register(
    "avoid_lane", {"lane": int}, lambda tr, c: share_in(tr, c["lane"]), lambda tr, c: share_in(tr, c["lane"]) <= 0.1
)


def headways(tr: Trajectory) -> np.ndarray:
    """The settled time gaps to a car ahead (samples with none within range left out)."""
    h = settled(tr, tr.headway)
    return h[~np.isnan(h)]


_register(
    "headway",
    {"min_s": float},
    lambda tr, c: float(np.mean(np.maximum(0.0, c["min_s"] - headways(tr)))) / c["min_s"] if len(headways(tr)) else 0.0,
    lambda tr, c: bool(np.all(headways(tr) >= 0.85 * c["min_s"])),
)
_register("no_lane_change", {}, lambda tr, c: tr.lane_changes / 2.0, lambda tr, c: tr.lane_changes == 0)
_register(
    "overtake",
    {"count": int},
    lambda tr, c: max(0, c["count"] - tr.overtakes) / c["count"],
    lambda tr, c: tr.overtakes >= c["count"],
)
_register(
    "smooth",
    {"max_rms_acc": float},
    lambda tr, c: max(0.0, rms(tr.accel) - c["max_rms_acc"]) / c["max_rms_acc"],
    lambda tr, c: rms(tr.accel) <= c["max_rms_acc"],
)


def validate_constraint(c: Any, where: str = "constraint") -> dict[str, Any]:
    """Check one constraint dict against its type; raises a clear error naming ``where``."""
    if not isinstance(c, dict) or "type" not in c:
        raise EmbodiedPruneError(f"{where} must be an object with a 'type' field, got {c!r}.")
    kind = CONSTRAINTS.get(c["type"]) if c["type"] in CONSTRAINTS else None
    if kind is None:
        raise EmbodiedPruneError(
            f"{where} has unknown type {c['type']!r}; choose one of: {', '.join(CONSTRAINTS.names())}."
        )
    out = {"type": c["type"]}
    for name, typ in kind.fields.items():
        value = c.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise EmbodiedPruneError(f"{where} ({c['type']}) needs a numeric field {name!r}, got {value!r}.")
        if typ is int and value != int(value):
            raise EmbodiedPruneError(f"{where} ({c['type']}) needs an integer {name!r}, got {value!r}.")
        if value < 0 or (name in ("target", "limit", "min_s", "count", "max_rms_acc") and value <= 0):
            raise EmbodiedPruneError(f"{where} ({c['type']}) field {name!r} must be positive, got {value!r}.")
        out[name] = typ(value)
    return out


def constraint_error(tr: Trajectory, c: dict[str, Any]) -> float:
    return float(CONSTRAINTS.get(c["type"]).error(tr, c))


def constraint_satisfied(tr: Trajectory, c: dict[str, Any]) -> bool:
    return bool(CONSTRAINTS.get(c["type"]).satisfied(tr, c))


def task_error(tr: Trajectory, constraints: list[dict[str, Any]]) -> float:
    """Mean error over the instruction's constraints."""
    return float(np.mean([constraint_error(tr, c) for c in constraints]))
