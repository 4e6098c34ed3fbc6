"""The controller parameters an LLM chooses, their ranges and defaults, and the answer format.

An answer is ``<answer>{json object}</answer>`` whose keys are parameter names; missing keys take
the defaults, numbers are clipped into their ranges. Anything else is a parse failure.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class ParamSpec:
    """One controller parameter: its type, range, default and meaning."""

    name: str
    kind: type
    low: float | None
    high: float | None
    default: Any
    meaning: str


PARAM_SPECS: tuple[ParamSpec, ...] = (
    ParamSpec("target_speed", float, 10.0, 35.0, 25.0, "IDM desired speed [m/s]"),
    ParamSpec("time_gap", float, 0.5, 4.0, 1.5, "IDM desired time gap to the car ahead [s]"),
    ParamSpec("min_distance", float, 2.0, 30.0, 10.0, "IDM jam distance to the car ahead [m]"),
    ParamSpec("comfort_acc", float, 0.3, 4.0, 3.0, "IDM comfortable acceleration and a third of the braking [m/s²]"),
    ParamSpec("politeness", float, 0.0, 1.0, 0.0, "MOBIL politeness towards other drivers"),
    ParamSpec("lane_change_gain", float, 0.0, 3.0, 0.2, "MOBIL acceleration gain needed to change lane [m/s²]"),
    ParamSpec("allow_lane_change", bool, None, None, True, "whether the car may change lanes at all"),
    ParamSpec("preferred_lane", int, 0, 2, None, "lane to move to and keep (0 left … 2 right), or null"),
    ParamSpec("avoid_lane", int, 0, 2, None, "lane never to enter and to leave when safe, or null"),
)
SPECS = {s.name: s for s in PARAM_SPECS}


@dataclass(frozen=True)
class ControllerParams:
    """A full parameter set (defaults for anything not given)."""

    target_speed: float = 25.0
    time_gap: float = 1.5
    min_distance: float = 10.0
    comfort_acc: float = 3.0
    politeness: float = 0.0
    lane_change_gain: float = 0.2
    allow_lane_change: bool = True
    preferred_lane: int | None = None
    avoid_lane: int | None = None

    def key(self) -> tuple:
        """A hashable, rounded identity (for memoising rollouts)."""
        return tuple(round(v, 3) if isinstance(v, float) else v for v in asdict(self).values())

    def changed(self) -> dict[str, Any]:
        """Only the parameters that differ from the defaults."""
        default = ControllerParams()
        return {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != getattr(default, f.name)
        }


DEFAULT_PARAMS = ControllerParams()
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


@dataclass
class ParsedAnswer:
    """The result of parsing a completion: params (None when unparseable) and what went wrong."""

    params: ControllerParams | None
    has_format: bool
    unknown_keys: list[str]
    error: str | None = None


def format_answer(params: dict[str, Any] | ControllerParams) -> str:
    """The canonical answer text for ``params`` (only non-default values when given a ControllerParams)."""
    values = params.changed() if isinstance(params, ControllerParams) else dict(params)
    ordered = {s.name: _canonical(s, values[s.name]) for s in PARAM_SPECS if s.name in values}
    return "<answer>" + json.dumps(ordered, separators=(", ", ": ")) + "</answer>"


def _canonical(spec: ParamSpec, value: Any) -> Any:
    if value is None or spec.kind is bool:
        return value
    if spec.kind is int:
        return int(value)
    return round(float(value), 1)


def parse_answer(text: str) -> ParsedAnswer:
    """Parse a completion; never raises. Unknown keys are ignored but reported."""
    found = _ANSWER.findall(text)
    if len(found) != 1:
        return ParsedAnswer(None, False, [], "no single <answer>…</answer> block")
    try:
        raw = json.loads(found[0])
    except json.JSONDecodeError as e:
        return ParsedAnswer(None, True, [], f"answer is not JSON ({e.msg})")
    if not isinstance(raw, dict):
        return ParsedAnswer(None, True, [], "answer is not a JSON object")
    unknown = [k for k in raw if k not in SPECS]
    values: dict[str, Any] = {}
    for name, value in raw.items():
        spec = SPECS.get(name)
        if spec is None:
            continue
        ok, coerced = _coerce(spec, value)
        if not ok:
            return ParsedAnswer(None, True, unknown, f"{name} has an invalid value {value!r}")
        values[name] = coerced
    return ParsedAnswer(ControllerParams(**values), True, unknown)


def _coerce(spec: ParamSpec, value: Any) -> tuple[bool, Any]:
    if spec.kind is bool:
        return isinstance(value, bool), value
    if value is None:
        return spec.default is None, None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False, None
    clipped = min(max(float(value), spec.low), spec.high)
    return True, round(clipped) if spec.kind is int else clipped
