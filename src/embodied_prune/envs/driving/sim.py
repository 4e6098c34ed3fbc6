"""Closed-loop episodes on highway-env with an instruction-controlled ego vehicle.

highway-env has no config option for the ego's class, so after ``reset`` the ego is replaced by an
:class:`InstructedVehicle` (an ``IDMVehicle`` made with ``create_from``) whose IDM/MOBIL parameters are
the controller parameters, and the road, the controlled-vehicle list, the action type and the
observation type are pointed at it. The ego drives itself, so the env's observation is replaced by a
null one: highway-env's Kinematics observation (pandas) would otherwise take ~60 % of the episode.
"""

from __future__ import annotations

import gymnasium as gym
import highway_env  # noqa: F401  (registers the highway-v0 environment)
import numpy as np
from gymnasium import spaces
from highway_env.envs.common.observation import ObservationType
from highway_env.vehicle.behavior import IDMVehicle

from .params import ControllerParams
from .scenario import Scenario, Trajectory

HEADWAY_RANGE_M = 100.0  # a car further ahead than this does not constrain the headway


class InstructedVehicle(IDMVehicle):
    """IDM + MOBIL with instance-level parameters and an optional preferred lane.

    With ``preferred_lane`` set, MOBIL only accepts lane changes towards that lane (subject to its
    usual safety criterion) and never leaves it. With ``avoid_lane`` set, MOBIL never changes into that
    lane and, when the car is in it, leaves it as soon as that is safe.
    """

    preferred_lane: int | None = None
    avoid_lane: int | None = None

    def configure(self, p: ControllerParams) -> InstructedVehicle:
        self.target_speed = p.target_speed
        self.TIME_WANTED = p.time_gap
        self.DISTANCE_WANTED = p.min_distance
        self.COMFORT_ACC_MAX = p.comfort_acc
        self.COMFORT_ACC_MIN = -max(p.comfort_acc * 5.0 / 3.0, 1.0)
        self.POLITENESS = p.politeness
        self.LANE_CHANGE_MIN_ACC_GAIN = p.lane_change_gain
        self.enable_lane_change = p.allow_lane_change
        self.preferred_lane = p.preferred_lane
        self.avoid_lane = p.avoid_lane
        return self

    def mobil(self, lane_index) -> bool:
        current, candidate = self.lane_index[2], lane_index[2]
        if self.avoid_lane is not None:
            if candidate == self.avoid_lane:
                return False
            if current == self.avoid_lane:
                return self._safe_for_new_follower(lane_index)
        if self.preferred_lane is None:
            return super().mobil(lane_index)
        if abs(candidate - self.preferred_lane) >= abs(current - self.preferred_lane):
            return False
        return self._safe_for_new_follower(lane_index)

    def _safe_for_new_follower(self, lane_index) -> bool:
        """MOBIL's safety criterion alone: the new follower need not brake harder than allowed."""
        _, new_following = self.road.neighbour_vehicles(self, lane_index)
        braking = self.acceleration(ego_vehicle=new_following, front_vehicle=self)
        return braking >= -self.LANE_CHANGE_MAX_BRAKING_IMPOSED


class _NullObservation(ObservationType):
    """The ego drives itself; nothing needs observing."""

    def space(self) -> spaces.Space:
        return spaces.Box(0.0, 0.0, shape=(1,), dtype=np.float32)

    def observe(self) -> np.ndarray:
        return np.zeros(1, dtype=np.float32)


def make_env(scenario: Scenario) -> gym.Env:
    return gym.make(
        "highway-v0",
        config={
            "lanes_count": scenario.lanes,
            "vehicles_count": scenario.vehicles,
            "duration": scenario.duration,
            "vehicles_density": scenario.density,
            "simulation_frequency": scenario.simulation_frequency,
            "policy_frequency": scenario.policy_frequency,
            "action": {"type": "DiscreteMetaAction"},
        },
        disable_env_checker=True,  # the null observation is not in the Kinematics observation space
    )


def run_episode(params: ControllerParams, scenario: Scenario) -> Trajectory:
    """Drive one episode; a simulator exception ends it and is recorded in ``Trajectory.error``."""
    env = make_env(scenario)
    try:
        env.reset(seed=scenario.seed)
        sim = env.unwrapped
        sim.observation_type = _NullObservation(sim)
        old = sim.vehicle
        ego = InstructedVehicle.create_from(old).configure(params)
        sim.road.vehicles[sim.road.vehicles.index(old)] = ego
        sim.controlled_vehicles = [ego]
        sim.action_type.controlled_vehicle = ego
        sim.observation_type.observer_vehicle = ego
        others = [v for v in sim.road.vehicles if v is not ego]
        ahead_at_start = {id(v) for v in others if v.position[0] > ego.position[0]}
        speed, lane, headway = [], [], []
        error = None
        done = False
        while not done:
            try:
                _, _, terminated, truncated, _ = env.step(1)  # the action is ignored: the ego drives itself
            except Exception as e:
                error = f"{type(e).__name__}: {e}"
                break
            done = terminated or truncated
            speed.append(float(ego.speed))
            lane.append(int(ego.lane_index[2]))
            front, _ = sim.road.neighbour_vehicles(ego, ego.lane_index)
            gap = ego.lane_distance_to(front) if front is not None else np.inf
            headway.append(gap / max(ego.speed, 0.1) if gap < HEADWAY_RANGE_M else np.nan)
        dt = 1.0 / scenario.policy_frequency
        speeds = np.asarray(speed)
        lanes = np.asarray(lane, dtype=int)
        behind_at_end = {id(v) for v in others if v.position[0] < ego.position[0]}
        return Trajectory(
            dt=dt,
            speed=speeds,
            lane=lanes,
            accel=np.diff(speeds, prepend=speeds[:1]) / dt if len(speeds) else speeds,
            headway=np.asarray(headway, dtype=float),
            lane_changes=int(np.count_nonzero(np.diff(lanes))) if len(lanes) else 0,
            overtakes=len(ahead_at_start & behind_at_end),
            crashed=bool(ego.crashed),
            lanes=scenario.lanes,
            error=error,
        )
    finally:
        env.close()
