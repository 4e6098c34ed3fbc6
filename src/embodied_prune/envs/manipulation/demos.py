"""Expert demonstrations: generation with Meta-World's scripted experts, and the on-disk format.

Format (a folder; ``FORMAT_VERSION`` 1)::

    meta.json                 {"format": 1, "cameras": [{"name", "size"}...], "tasks": {name: instruction},
                               "episodes": [{"file", "task", "seed", "length", "success"}...],
                               "proprio": ["ee_x", "ee_y", "ee_z", "gripper"], "action": [...]}
    episodes/<task>_<i>.npz   one uint8 (T,s,s,3) array per camera (front, side, wrist), proprio (T,4)
                              float32, action (T,4) float32, privileged (T,6) float32

Step t's images and proprioception are what the policy sees before acting; ``action[t]`` is the
expert's answer. ``privileged[t]`` holds the object's and the goal's positions (Meta-World's private
state, see ``meta.json``'s ``"privileged"`` names): never a policy input, only an auxiliary training
target (folders recorded before it existed simply lack it). Only successful expert episodes are kept
(a failure is skipped and the next seed drawn), except in a policy's labelled rollouts (DAgger, see
:func:`generate_demos`), where ``action[t]`` is the expert's answer in the state the policy reached and
``"success"`` is the policy's.
A simple format instead of LeRobot's: that needs the ``lerobot`` package with its video codecs, and
our episodes are tiny arrays.

Scene seeds: demonstrations draw from ``SeedSequence([seed, task, episode, DEMO_STREAM])`` and
evaluation from the same with ``EVAL_STREAM``, so no evaluation scene is a training scene.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm.auto import tqdm

from ...choices import BUILTIN_FRAMES
from ...errors import EmbodiedPruneError
from ...io import atomic_dir
from .env import ManipulationEnv
from .render import DEFAULT_CAMERAS, CameraSpec
from .tasks import TASKS, TaskSpec, resolve_tasks

FORMAT_VERSION = 1
# A few frames of expert demonstrations shipped with the package (``assets/metaworld-frames``, made by
# :func:`make_builtin_frames`): what pruning or recovering a VLA policy calibrates on when no folder is given
# (its name, BUILTIN_FRAMES, is one of the command line's choices).
BUILTIN_FRAMES_DIR = Path(__file__).resolve().parents[2] / "assets" / "metaworld-frames"
DEMO_STREAM, EVAL_STREAM, CORRECTION_STREAM = 1, 2, 3  # the last: scenes of a policy's labelled rollouts
PROPRIO_NAMES = ["ee_x", "ee_y", "ee_z", "gripper"]
PRIVILEGED_NAMES = ["obj_x", "obj_y", "obj_z", "goal_x", "goal_y", "goal_z"]
ACTION_NAMES = ["dx", "dy", "dz", "grip"]
NOISE_RHO = 0.8  # step-to-step correlation of the DART motion noise (a drift, not a jitter the expert undoes)


def scene_seed(seed: int, task: str, episode: int, stream: int) -> int:
    """A scene seed for ``episode`` of ``task``; ``stream`` keeps demonstrations and evaluation apart."""
    task_index = TASKS.names().index(task)
    return int(np.random.SeedSequence([seed, task_index, episode, stream]).generate_state(1)[0])


def motion_noise(rng: np.random.Generator, steps: int, sigma: float, rho: float = NOISE_RHO) -> np.ndarray:
    """Temporally correlated (AR(1)) noise for the three motion dimensions of ``steps`` actions, the
    gripper's column zero: ``n_t = rho * n_{t-1} + sigma * e_t``; zeros when ``sigma`` is 0."""
    out = np.zeros((steps, len(ACTION_NAMES)), dtype=np.float32)
    if sigma <= 0:
        return out
    e = rng.standard_normal((steps, 3)) * sigma
    for t in range(steps):
        out[t, :3] = e[t] + (rho * out[t - 1, :3] if t else 0.0)
    return out


def record_episode(
    env: ManipulationEnv, seed: int, noise: float = 0.0, act: Callable[[dict], np.ndarray] | None = None
) -> tuple[dict[str, np.ndarray], bool]:
    """Run the expert for one episode; the arrays of observations and actions, and whether it succeeded.

    With ``noise`` > 0 the executed action is the expert's plus :func:`motion_noise` of that scale
    (DART, Laskey et al. 2017): the arm strays from the expert's path and the recorded label is still
    the expert's clean action at each visited state, so the policy learns to recover from its own drift.
    With ``act`` (observation → action, e.g. a policy's) that is what runs instead (DAgger, Ross et al.
    2011): the labels are the expert's answers in the states the policy itself reaches.
    """
    obs, _ = env.reset(seed=seed)
    rows: dict[str, list[np.ndarray]] = {k: [] for k in [*obs, "action", "privileged"]}
    perturb = motion_noise(np.random.default_rng(seed), env.max_steps, noise)
    success = False
    for t in range(env.max_steps):
        action = env.expert_action()
        for k, v in obs.items():
            rows[k].append(v)
        rows["action"].append(action)
        rows["privileged"].append(env.privileged())
        obs, _, success, truncated, _ = env.step(action + perturb[t] if act is None else act(obs))
        if success or truncated:
            break
    return {k: np.stack(v) for k, v in rows.items()}, success


class Actor(Protocol):
    """What drives a recorded episode instead of the expert: ``act(obs) → action``, ``reset(seed)`` per episode."""

    def reset(self, seed: int | None = None) -> None: ...

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray: ...


class ActorFactory(Protocol):
    """Makes the :class:`Actor` of one task's environment (inside a pool worker when ``one_thread``); picklable.
    ``name`` is recorded in ``meta.json``'s ``generator.policy``. The VLA policies' factory is
    :class:`embodied_prune.evaluation.manipulation.PolicyRollouts` (this module knows no models)."""

    name: str

    def __call__(self, env: ManipulationEnv, one_thread: bool) -> Actor: ...


def _record_task(
    task: str,
    episodes: int,
    seed: int,
    folder: str,
    cameras: tuple[CameraSpec, ...],
    noise: float = 0.0,
    actor: ActorFactory | None = None,
    one_thread: bool = False,
) -> list[dict]:
    """Record ``episodes`` successful expert episodes of ``task`` into ``folder`` (with ``actor``: that
    many of its rollouts, labelled by the expert, successful or not); their meta entries."""
    env = ManipulationEnv(task, cameras=cameras)
    vla = actor(env, one_thread) if actor is not None else None
    act = vla.act if vla is not None else None
    entries: list[dict] = []
    try:
        tried = 0
        while len(entries) < episodes:
            if tried >= 2 * episodes + 10:
                hint = f" under noise {noise}; lower --noise" if noise > 0 else ""
                raise EmbodiedPruneError(f"the {task} expert failed {tried - len(entries)} of {tried} episodes{hint}.")
            s = scene_seed(seed, task, tried, DEMO_STREAM if vla is None else CORRECTION_STREAM)
            tried += 1
            if vla is not None:
                vla.reset(s)
            arrays, success = record_episode(env, s, noise, act)
            if not success and vla is None:
                continue
            name = f"{task}_{len(entries):04d}.npz"
            np.savez_compressed(Path(folder) / name, **arrays)
            entries.append({"file": name, "task": task, "seed": s, "length": len(arrays["action"]), "success": success})
    finally:
        env.close()
    return entries


def generate_demos(
    out: str | os.PathLike,
    tasks: str | list[str] | None = None,
    episodes: int = 40,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    workers: int = 2,
    cameras: tuple[CameraSpec, ...] | None = None,
    noise: float = 0.0,
    actor: ActorFactory | None = None,
) -> Path:
    """Record ``episodes`` successful expert episodes per task into the folder ``out`` (format above),
    seen through ``cameras`` (default: all three); ``noise`` > 0 perturbs the executed actions as
    :func:`record_episode` describes (labels stay clean).

    With ``actor`` the episodes are its own rollouts, every step labelled with the expert's action and every
    episode kept (``"success"`` is the actor's), on scenes of their own stream (never a demonstration's or an
    evaluation's): with a VLA policy as the actor, one DAgger round's data
    (:func:`embodied_prune.evaluation.manipulation.record_corrections` records them through the policy's
    cameras). Train on them together with the demonstrations (``train_bc`` takes several folders).

    Tasks are recorded in parallel by ``workers`` processes; the result does not depend on their number.
    """
    if episodes < 1:
        raise EmbodiedPruneError(f"episodes must be at least 1, got {episodes}.")
    if not 0.0 <= noise <= 1.0:
        raise EmbodiedPruneError(f"noise is a scale of the [-1, 1] actions and must lie in [0, 1], got {noise}.")
    specs = resolve_tasks(tasks)
    if actor is not None and noise > 0:
        raise EmbodiedPruneError(
            "noise perturbs the expert's demonstrations; a policy's rollouts (--policy) take none."
        )
    cameras = DEFAULT_CAMERAS if cameras is None else tuple(cameras)
    with atomic_dir(out, overwrite) as tmp:
        (tmp / "episodes").mkdir()
        folder = str(tmp / "episodes")
        bar = tqdm(total=len(specs), desc="demos", unit="task", disable=not progress)
        by_task: dict[str, list[dict]] = {}
        if workers > 1 and len(specs) > 1:
            ctx = mp.get_context("forkserver")
            with ProcessPoolExecutor(min(workers, len(specs)), mp_context=ctx) as pool:
                futures = {
                    pool.submit(_record_task, s.name, episodes, seed, folder, cameras, noise, actor, True): s.name
                    for s in specs
                }
                for f in as_completed(futures):
                    by_task[futures[f]] = f.result()
                    bar.update()
        else:
            for s in specs:
                by_task[s.name] = _record_task(s.name, episodes, seed, folder, cameras, noise, actor)
                bar.update()
        bar.close()
        meta = {
            "format": FORMAT_VERSION,
            "cameras": [{"name": c.name, "size": c.size} for c in cameras],
            "tasks": {s.name: s.instruction for s in specs},
            "proprio": PROPRIO_NAMES,
            "action": ACTION_NAMES,
            "privileged": PRIVILEGED_NAMES,
            "generator": {
                "seed": seed,
                "episodes_per_task": episodes,
                "noise": noise,
                "noise_rho": NOISE_RHO,
                "policy": actor.name if actor is not None else None,
            },
            "episodes": [e for s in specs for e in by_task[s.name]],
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


def demos_path(spec: str | os.PathLike) -> Path:
    """The folder of a demonstration spec: a path, or :data:`BUILTIN_FRAMES` for the shipped frames."""
    return BUILTIN_FRAMES_DIR if str(spec) == BUILTIN_FRAMES else Path(spec)


def calibration_frames(
    source: str | os.PathLike, out: str | os.PathLike, per_episode: int = 4, note: str | None = None
) -> Path:
    """Write ``per_episode`` evenly spaced steps of every episode of the demonstration folder ``source`` as a
    folder of the same format (how :data:`BUILTIN_FRAMES` was made, from one expert episode per task): enough to
    calibrate activation-aware pruning, small enough to ship. Its steps are not consecutive, so its action
    chunks mean nothing: calibration only, never training (``generator.calibration_frames`` says so; ``note``,
    default the source's path, is recorded as ``generator.source``)."""
    demo_set = load_demos(source)
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "episodes").mkdir()
        entries = []
        for e, ep in zip(demo_set.meta["episodes"], demo_set.episodes, strict=True):
            steps = np.unique(np.linspace(0, e["length"] - 1, per_episode).round().astype(int))
            np.savez_compressed(tmp / "episodes" / e["file"], **{k: v[steps] for k, v in ep.items() if k != "task"})
            entries.append(e | {"length": len(steps)})
        meta = demo_set.meta | {"episodes": entries}
        meta["generator"] = meta["generator"] | {"calibration_frames": per_episode, "source": note or str(source)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return Path(out)


def make_builtin_frames(work: str | os.PathLike, out: str | os.PathLike = BUILTIN_FRAMES_DIR) -> Path:
    """Regenerate :data:`BUILTIN_FRAMES` into ``out``: one expert episode per task (seed 7, all three cameras),
    four evenly spaced steps of each (about 400 kB; a minute on 2 cores)."""
    full = generate_demos(Path(work) / "full", episodes=1, seed=7, workers=1, progress=False, overwrite=True)
    note = "make_builtin_frames: generate_demos(episodes=1, seed=7), 4 steps each"
    return calibration_frames(full, out, 4, note=note)


def read_meta(path: str | os.PathLike) -> dict:
    """The ``meta.json`` of a demonstration folder (or :data:`BUILTIN_FRAMES`), without its episodes; clear errors
    for anything else."""
    path = demos_path(path)
    meta_file = path / "meta.json"
    if not meta_file.is_file():
        raise EmbodiedPruneError(f"{path} is not a demonstration folder (no meta.json); make one with `demos`.")
    meta = json.loads(meta_file.read_text())
    if meta.get("format") != FORMAT_VERSION:
        raise EmbodiedPruneError(f"{meta_file} has format {meta.get('format')!r}; this version reads {FORMAT_VERSION}.")
    return meta


def load_demos(path: str | os.PathLike, images: bool = True) -> DemoSet:
    """Load a demonstration folder written by :func:`generate_demos` (or :data:`BUILTIN_FRAMES`); clear errors
    for anything else. ``images=False`` leaves the camera frames on disk (a policy trained from a vision tower's
    cached features needs only actions, proprioception and positions: a fifth of the memory)."""
    path = demos_path(path)
    meta = read_meta(path)
    skip = set() if images else {c["name"] for c in meta["cameras"]}
    episodes = []
    for e in meta["episodes"]:
        with np.load(path / "episodes" / e["file"]) as z:
            episodes.append({k: z[k] for k in z.files if k not in skip} | {"task": e["task"]})
    return DemoSet(meta, episodes)


def demo_folders(paths: str | os.PathLike | list) -> list:
    """The folders named by ``paths``: a list, a comma-separated string, or one folder."""
    if isinstance(paths, list | tuple):
        return list(paths)
    if isinstance(paths, str) and "," in paths:
        return [p.strip() for p in paths.split(",") if p.strip()]
    return [paths]


def load_demo_folders(paths: str | os.PathLike | list, images: bool = True) -> DemoSet:
    """One folder (:func:`load_demos`) or several (a list, or a comma-separated string) as one set: their
    episodes in order, their tasks joined; the folders must share cameras."""
    folders = demo_folders(paths)
    if len(folders) == 1 and not isinstance(paths, list | tuple):
        return load_demos(folders[0], images)
    paths = folders
    sets = [load_demos(p, images) for p in paths]
    first = sets[0].meta
    for p, d in zip(paths[1:], sets[1:], strict=True):
        if d.meta["cameras"] != first["cameras"]:
            raise EmbodiedPruneError(
                f"{p} was recorded through cameras {d.meta['cameras']}, {paths[0]} through {first['cameras']}: "
                "train on folders recorded through the same cameras."
            )
    meta = {
        **first,
        "tasks": {k: v for d in sets for k, v in d.meta["tasks"].items()},
        "folders": [str(p) for p in paths],
    }
    meta["episodes"] = [e for d in sets for e in d.meta["episodes"]]
    return DemoSet(meta, [e for d in sets for e in d.episodes])


def check_cameras(demos: DemoSet, config_cameras: list[list], where: str) -> None:
    """Refuse demonstrations recorded through other cameras than a policy's ``[name, size, …]`` entries."""
    have = [(c["name"], c["size"]) for c in demos.meta["cameras"]]
    want = [(c[0], c[1]) for c in config_cameras]
    if not set(want) <= set(have):
        raise EmbodiedPruneError(
            f"{where} were recorded through cameras {have}, but the policy sees {want}; record demonstrations "
            "for it with generate_demos(..., cameras=cameras_for(policy.config.cameras))."
        )
