"""Closed-loop scoring of controller outputs: rollouts (memoised, in parallel), errors, rewards.

Per instruction: the task error ``E`` of the instructed quantities (mean over its constraints, see
:mod:`.constraints`) with the model's parameters and with the default parameters, on the same
scenario. The relative error reduction ``r = (E_default − E_model) / max(E_default, 0.25)`` is clipped
to ``[−4, 1]`` (RobotxR1's reward clip; 1 is a perfect score). A collision or an unparseable answer
gets the fixed error ``E_FAIL``; a simulator exception marks the episode failed, with its reason.
**Control adaptability** is the mean of ``r`` over instructions, as RobotxR1 defines it.
"""

from __future__ import annotations

import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .constraints import constraint_error, constraint_satisfied
from .instructions import Instruction
from .params import DEFAULT_PARAMS, ControllerParams, parse_answer
from .scenario import Scenario, Trajectory
from .sim import run_episode

E_FAIL = 2.0
# The denominator's floor: where the default parameters already (nearly) meet an instruction, a small
# model error would otherwise count as a many-fold loss; a quarter of a clear violation is the unit then.
E_FLOOR = 0.25
R_MIN, R_MAX = -4.0, 1.0


@dataclass
class Outcome:
    """The per-constraint errors and events of one episode (what is kept of a trajectory)."""

    errors: list[float]
    satisfied: list[bool]
    collision: bool
    failure: str | None
    mean_speed: float
    lane_changes: int

    @property
    def error(self) -> float:
        return E_FAIL if (self.collision or self.failure) else float(np.mean(self.errors))


@dataclass
class InstructionScore:
    """One instruction's closed-loop result."""

    id: str
    text: str
    completion: str
    params: dict[str, Any] | None
    error_default: float | None
    error_model: float
    reduction: float | None
    satisfied: bool
    collision: bool
    collision_default: bool
    parse_failure: str | None
    failure: str | None = None
    per_constraint: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarise(tr: Trajectory, constraints: list[dict[str, Any]]) -> Outcome:
    return Outcome(
        errors=[constraint_error(tr, c) for c in constraints] if len(tr.speed) else [E_FAIL] * len(constraints),
        satisfied=[constraint_satisfied(tr, c) for c in constraints] if len(tr.speed) else [False] * len(constraints),
        collision=tr.crashed,
        failure=tr.error,
        mean_speed=float(np.mean(tr.speed)) if len(tr.speed) else float("nan"),
        lane_changes=tr.lane_changes,
    )


def relative_reduction(e_default: float, e_model: float) -> float:
    return float(np.clip((e_default - e_model) / max(e_default, E_FLOOR), R_MIN, R_MAX))


def _rollout(job: tuple[ControllerParams, Scenario]) -> Trajectory:
    return run_episode(*job)


class ClosedLoopScorer:
    """Scores completions in closed loop; identical (parameters, scenario) rollouts run once.

    ``workers > 1`` runs rollouts in a process pool (forkserver, so the parent's torch threads are
    not forked); ``workers=1`` runs them in this process.
    """

    def __init__(self, workers: int = 2) -> None:
        self.workers = workers
        self._cache: dict[tuple, Trajectory] = {}
        self._pool: ProcessPoolExecutor | None = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __enter__(self) -> ClosedLoopScorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def rollouts(self, jobs: list[tuple[ControllerParams, Scenario]]) -> list[Trajectory]:
        keys = [(p.key(), s.key()) for p, s in jobs]
        todo = {k: job for k, job in zip(keys, jobs, strict=True) if k not in self._cache}
        if todo:
            if self.workers > 1 and len(todo) > 1:
                if self._pool is None:
                    self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("forkserver"))
                results = list(
                    self._pool.map(_rollout, todo.values(), chunksize=max(1, len(todo) // (4 * self.workers)))
                )
            else:
                results = [_rollout(j) for j in todo.values()]
            self._cache.update(zip(todo.keys(), results, strict=True))
        return [self._cache[k] for k in keys]

    def score(
        self, instructions: list[Instruction], completions: list[str], scenarios: list[Scenario]
    ) -> list[InstructionScore]:
        """Score each completion for its instruction on its scenario (lists of equal length)."""
        parsed = [parse_answer(c) for c in completions]
        jobs = [(DEFAULT_PARAMS, s) for s in scenarios]
        jobs += [(p.params, s) for p, s in zip(parsed, scenarios, strict=True) if p.params is not None]
        trajectories = iter(self.rollouts(jobs))
        defaults = [next(trajectories) for _ in scenarios]
        out = []
        for ins, comp, p, d_tr in zip(instructions, completions, parsed, defaults, strict=True):
            d = summarise(d_tr, ins.constraints)
            m = summarise(next(trajectories), ins.constraints) if p.params is not None else None
            e_model = m.error if m is not None else E_FAIL
            failure = (d.failure and f"default episode failed: {d.failure}") or (m.failure if m else None)
            e_default = None if d.failure else d.error
            out.append(
                InstructionScore(
                    id=ins.id,
                    text=ins.text,
                    completion=comp,
                    params=p.params.changed() if p.params is not None else None,
                    error_default=e_default,
                    error_model=e_model,
                    reduction=None if e_default is None else relative_reduction(e_default, e_model),
                    satisfied=bool(m is not None and all(m.satisfied) and not m.collision and not m.failure),
                    collision=bool(m is not None and m.collision),
                    collision_default=d.collision,
                    parse_failure=p.error,
                    failure=failure,
                    per_constraint=[
                        {**c, "error_default": ed, "error_model": em, "satisfied": sm}
                        for c, ed, em, sm in zip(
                            ins.constraints,
                            d.errors,
                            m.errors if m else [None] * len(ins.constraints),
                            m.satisfied if m else [False] * len(ins.constraints),
                            strict=True,
                        )
                    ],
                )
            )
        return out
