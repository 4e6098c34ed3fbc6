"""Expert demonstrations: generation with Meta-World's scripted experts, and the on-disk format.

Format (a folder; ``FORMAT_VERSION`` 1)::

    meta.json                 {"format": 1, "cameras": [{"name", "size"}...], "tasks": {name: instruction},
                               "episodes": [{"file", "task", "seed", "length", "success"}...],
                               "proprio": ["ee_x", "ee_y", "ee_z", "gripper"], "action": [...]}
    episodes/<task>_<i>.npz   front (T,H,W,3) uint8, wrist (T,h,w,3) uint8, proprio (T,4) float32,
                              action (T,4) float32 — the observation at step t and the expert's action

Step t's images and proprioception are what the policy sees before acting; ``action[t]`` is the
expert's answer. Only successful expert episodes are kept (the experts succeed on every seed tried
here; a failure would be skipped and the next seed drawn). A simple format instead of LeRobot's: that
needs the ``lerobot`` package with its video codecs, and our episodes are tiny arrays.

Scene seeds: demonstrations draw from ``SeedSequence([seed, task, episode, DEMO_STREAM])`` and
evaluation from the same with ``EVAL_STREAM``, so no evaluation scene is a training scene.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ...errors import EmbodiedPruneError
from ...io import atomic_dir
from .env import ManipulationEnv
from .render import DEFAULT_CAMERAS
from .tasks import TASKS, TaskSpec, resolve_tasks

FORMAT_VERSION = 1
DEMO_STREAM, EVAL_STREAM = 1, 2
PROPRIO_NAMES = ["ee_x", "ee_y", "ee_z", "gripper"]
ACTION_NAMES = ["dx", "dy", "dz", "grip"]


def scene_seed(seed: int, task: str, episode: int, stream: int) -> int:
    """A scene seed for ``episode`` of ``task``; ``stream`` keeps demonstrations and evaluation apart."""
    task_index = TASKS.names().index(task)
    return int(np.random.SeedSequence([seed, task_index, episode, stream]).generate_state(1)[0])


def record_episode(env: ManipulationEnv, seed: int) -> tuple[dict[str, np.ndarray], bool]:
    """Run the expert for one episode; the arrays of observations and actions, and whether it succeeded."""
    obs, _ = env.reset(seed=seed)
    rows: dict[str, list[np.ndarray]] = {k: [] for k in [*obs, "action"]}
    success = False
    for _ in range(env.max_steps):
        action = env.expert_action()
        for k, v in obs.items():
            rows[k].append(v)
        rows["action"].append(action)
        obs, _, success, truncated, _ = env.step(action)
        if success or truncated:
            break
    return {k: np.stack(v) for k, v in rows.items()}, success


def generate_demos(
    out: str | os.PathLike,
    tasks: str | list[str] | None = None,
    episodes: int = 40,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Record ``episodes`` successful expert episodes per task into the folder ``out`` (format above)."""
    if episodes < 1:
        raise EmbodiedPruneError(f"episodes must be at least 1, got {episodes}.")
    specs = resolve_tasks(tasks)
    with atomic_dir(out, overwrite) as tmp:
        (tmp / "episodes").mkdir()
        meta_eps = []
        bar = tqdm(total=episodes * len(specs), desc="demos", unit="ep", disable=not progress)
        for spec in specs:
            env = ManipulationEnv(spec)
            try:
                kept, tried = 0, 0
                while kept < episodes:
                    if tried >= 2 * episodes + 10:
                        raise EmbodiedPruneError(f"the {spec.name} expert failed {tried - kept} of {tried} episodes.")
                    s = scene_seed(seed, spec.name, tried, DEMO_STREAM)
                    tried += 1
                    arrays, success = record_episode(env, s)
                    if not success:
                        continue
                    name = f"{spec.name}_{kept:04d}.npz"
                    np.savez_compressed(tmp / "episodes" / name, **arrays)
                    meta_eps.append(
                        {"file": name, "task": spec.name, "seed": s, "length": len(arrays["action"]), "success": True}
                    )
                    kept += 1
                    bar.update()
            finally:
                env.close()
        bar.close()
        meta = {
            "format": FORMAT_VERSION,
            "cameras": [{"name": c.name, "size": c.size} for c in DEFAULT_CAMERAS],
            "tasks": {s.name: s.instruction for s in specs},
            "proprio": PROPRIO_NAMES,
            "action": ACTION_NAMES,
            "generator": {"seed": seed, "episodes_per_task": episodes},
            "episodes": meta_eps,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return Path(out)


@dataclass
class DemoSet:
    """Demonstrations loaded in memory: per-episode arrays plus the meta data."""

    meta: dict
    episodes: list[dict[str, np.ndarray]]

    @property
    def tasks(self) -> list[TaskSpec]:
        return [TASKS.get(t) for t in self.meta["tasks"]]


def load_demos(path: str | os.PathLike) -> DemoSet:
    """Load a demonstration folder written by :func:`generate_demos`; clear errors for anything else."""
    path = Path(path)
    meta_file = path / "meta.json"
    if not meta_file.is_file():
        raise EmbodiedPruneError(f"{path} is not a demonstration folder (no meta.json); make one with `demos`.")
    meta = json.loads(meta_file.read_text())
    if meta.get("format") != FORMAT_VERSION:
        raise EmbodiedPruneError(f"{meta_file} has format {meta.get('format')!r}; this version reads {FORMAT_VERSION}.")
    episodes = []
    for e in meta["episodes"]:
        with np.load(path / "episodes" / e["file"]) as z:
            episodes.append({k: z[k] for k in z.files} | {"task": e["task"]})
    return DemoSet(meta, episodes)
