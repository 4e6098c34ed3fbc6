"""``ManipulationEnv``: one Meta-World task behind gymnasium's API, seen through cameras.

Observations are ``{"front": uint8 HxWx3, "side": uint8 hxhx3, "wrist": uint8 hxhx3, "proprio": float32[4]}`` where
``proprio`` is the end-effector position (x, y, z in metres) and the gripper opening (0 closed … 1
open). Meta-World's own observation vector, which also holds the object and goal positions, is kept
private: only the scripted expert reads it. Actions are Meta-World's 4-D action in [−1, 1] (end-effector
displacement, gripper effort). An episode terminates on success and is truncated at the task's step limit.

Object and goal positions are drawn from the task's randomisation range by the ``seed`` of ``reset``,
so the same seed always gives the same scene.
"""

from __future__ import annotations

import warnings
from typing import Any

import gymnasium as gym
import numpy as np

from . import render as _render  # noqa: F401  (sets MUJOCO_GL through the package before mujoco loads)
from .render import DEFAULT_CAMERAS, CameraSpec, SceneRenderer
from .safety import KINDS, SafetyMonitor
from .tasks import TASKS, TaskSpec

PROPRIO_DIM = 4
ACTION_DIM = 4

# Meta-World's experts warn on every construction that their gains exceed the action range (the env clips).
warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high", category=UserWarning)


def _metaworld_env(env_name: str):
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE

    # The goal-observable variant exposes the goal to the expert; our observation never shows it.
    return ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[f"{env_name}-goal-observable"](seed=0)


class ManipulationEnv(gym.Env):
    """A Meta-World task with camera observations, proprioception and a safety monitor."""

    metadata = {"render_modes": []}  # noqa: RUF012

    def __init__(
        self,
        task: str | TaskSpec,
        cameras: tuple[CameraSpec, ...] = DEFAULT_CAMERAS,
        blank_images: bool = False,
        max_steps: int | None = None,
    ) -> None:
        self.task = TASKS.get(task) if isinstance(task, str) else task
        self.max_steps = max_steps or self.task.max_steps
        self.blank_images = blank_images
        self._mw = _metaworld_env(self.task.env_name)
        self._mw.max_path_length = max(self._mw.max_path_length, self.max_steps)
        self.renderer = SceneRenderer(self._mw.model, cameras)
        self.safety = SafetyMonitor(self._mw.model)
        self.observation_space = gym.spaces.Dict(
            {
                **{c.name: gym.spaces.Box(0, 255, (c.size, c.size, 3), np.uint8) for c in cameras},
                "proprio": gym.spaces.Box(-np.inf, np.inf, (PROPRIO_DIM,), np.float32),
            }
        )
        self.action_space = gym.spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)
        self._state: np.ndarray | None = None
        self._steps = 0
        self._expert = None

    @property
    def instruction(self) -> str:
        return self.task.instruction

    def _observe(self) -> dict[str, np.ndarray]:
        images = self.renderer.render(self._mw.data)
        if self.blank_images:
            images = {k: np.zeros_like(v) for k, v in images.items()}
        assert self._state is not None
        return {**images, "proprio": self._state[:PROPRIO_DIM].astype(np.float32)}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        # Meta-World draws the scene from its own generator when the random vector is not frozen; some
        # tasks redraw until object and goal are far enough apart (a frozen invalid draw loops forever).
        self._mw._freeze_rand_vec = False
        self._mw.seeded_rand_vec = True
        self._mw.np_random = np.random.Generator(np.random.PCG64(int(self.np_random.integers(2**63))))
        self._state, _ = self._mw.reset()
        self.safety.start(self._mw.data)
        self._steps = 0
        return self._observe(), {"instruction": self.instruction}

    def step(self, action):
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        self._state, _, _, _, mw_info = self._mw.step(action)
        self._steps += 1
        success = bool(mw_info["success"])
        info = {"success": success, "safety": self.safety.events(self._mw.data), "step": self._steps}
        return self._observe(), float(success), success, self._steps >= self.max_steps, info

    def privileged(self) -> np.ndarray:
        """The object's and the goal's positions (x, y, z each, metres) from Meta-World's private state.

        Never part of the observation: behaviour cloning uses them only as auxiliary training targets.
        """
        assert self._state is not None
        return np.concatenate([self._state[4:7], self._state[-3:]]).astype(np.float32)

    def expert_action(self) -> np.ndarray:
        """Meta-World's scripted expert's action for the current state (reads the privileged state)."""
        if self._expert is None:
            from metaworld.policies import ENV_POLICY_MAP

            self._expert = ENV_POLICY_MAP[self.task.env_name]()
        assert self._state is not None
        return np.clip(self._expert.get_action(self._state), -1.0, 1.0).astype(np.float32)

    @property
    def mj_model(self):
        return self._mw.model

    @property
    def mj_data(self):
        return self._mw.data

    def close(self) -> None:
        self.renderer.close()
        self._mw.close()


__all__ = ["ACTION_DIM", "KINDS", "PROPRIO_DIM", "ManipulationEnv"]
