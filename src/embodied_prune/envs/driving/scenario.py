"""The traffic scenario of an episode and the trajectory it produces (plain data; no simulator import)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Scenario:
    """The traffic an episode runs in; the same scenario and parameters give the same episode."""

    seed: int
    lanes: int = 3
    vehicles: int = 10
    duration: float = 15.0  # [s]
    density: float = 1.0
    simulation_frequency: int = 10  # [Hz]
    policy_frequency: int = 5  # [Hz], the rate at which the trajectory is recorded

    def key(self) -> tuple:
        return (
            self.seed,
            self.lanes,
            self.vehicles,
            self.duration,
            self.density,
            self.simulation_frequency,
            self.policy_frequency,
        )


@dataclass
class Trajectory:
    """What the ego did, sampled at the policy frequency, plus the events of the episode."""

    dt: float
    speed: np.ndarray
    lane: np.ndarray
    accel: np.ndarray
    headway: np.ndarray  # [s] to the car ahead in the same lane; nan when none within range
    lane_changes: int
    overtakes: int
    crashed: bool
    lanes: int
    error: str | None = None  # a simulator exception, if one ended the episode
    extra: dict = field(default_factory=dict)

    @property
    def duration(self) -> float:
        return self.dt * len(self.speed)
