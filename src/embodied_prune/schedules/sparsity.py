"""Sparsity schedules by name: the cumulative sparsity after each of ``cuts`` cuts, ending exactly on the target.

Each schedule is a pure function ``(start, target, cuts) -> [s_1, …, s_cuts]`` with ``s_cuts == target``;
sparsities are measured against the dense model (``0.3`` = 30 % of the dense heads and channels gone) and
``start`` is where the model already is (0 for a dense model, more when an earlier stage pruned it). With
``f = k / cuts``:

* ``linear``   — equal amounts per cut: s_k = start + (target − start) · f.
* ``constant`` — the same fraction of what is left at every cut:
  1 − s_k = (1 − start) · ((1 − target) / (1 − start))^f.
* ``cubic``    — front-loaded, as in gradual magnitude pruning (Zhu & Gupta, 2017):
  s_k = start + (target − start) · (1 − (1 − f)³); most is removed while the model still trains hard.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import EmbodiedPruneError
from ..pruning.masks import check_sparsity
from ..registry import Registry

Schedule = Callable[[float, float, int], list[float]]
SCHEDULES: Registry[Schedule] = Registry("sparsity schedule")


def _fractions(cuts: int) -> list[float]:
    if cuts < 1:
        raise EmbodiedPruneError(f"a pruning schedule needs at least one cut; got {cuts}.")
    return [k / cuts for k in range(1, cuts + 1)]


@SCHEDULES.register("linear")
def linear_schedule(start: float, target: float, cuts: int) -> list[float]:
    """Equal sparsity increments."""
    return [start + (target - start) * f for f in _fractions(cuts)]


@SCHEDULES.register("constant")
def constant_schedule(start: float, target: float, cuts: int) -> list[float]:
    """The same fraction of the remaining structure removed at every cut."""
    return [1.0 - (1.0 - start) * ((1.0 - target) / (1.0 - start)) ** f for f in _fractions(cuts)]


@SCHEDULES.register("cubic")
def cubic_schedule(start: float, target: float, cuts: int) -> list[float]:
    """Zhu & Gupta's cubic ramp: large cuts first, small ones last."""
    return [start + (target - start) * (1.0 - (1.0 - f) ** 3) for f in _fractions(cuts)]


def sparsity_steps(schedule: str, target: float, cuts: int, start: float = 0.0) -> list[float]:
    """The cumulative sparsity after each cut of the named ``schedule`` from ``start``; the last is exactly
    ``target``."""
    check_sparsity(target)
    check_sparsity(start)
    if start > target:
        raise EmbodiedPruneError(
            f"the model is already at sparsity {start:.3f}, past the target {target}; raise the target."
        )
    steps = SCHEDULES.get(schedule)(start, target, cuts)
    steps[-1] = target  # exact, whatever the floating-point path
    return steps


def cut_steps(first: int, interval: int, cuts: int) -> list[int]:
    """The optimizer steps after which the cuts happen: ``first``, ``first + interval``, …"""
    if first < 1 or interval < 1:
        raise EmbodiedPruneError(
            f"pruning cuts happen after optimizer step first={first} and every interval={interval} steps; "
            "both must be at least 1."
        )
    return [first + k * interval for k in range(cuts)]


__all__ = ["SCHEDULES", "constant_schedule", "cubic_schedule", "cut_steps", "linear_schedule", "sparsity_steps"]
