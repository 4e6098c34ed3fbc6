"""Closed-loop evaluation of a VLA policy on the Meta-World tasks (success, safety, latency).

Episodes run in a process pool (each worker loads the policy once, one torch thread, and keeps one
environment per task) or in this process with ``workers=1``. An episode that raises is recorded as
failed with its reason and evaluation goes on. Episode scenes come from
:func:`~embodied_prune.envs.manipulation.demos.scene_seed` with the evaluation stream, so they never
repeat a demonstration's scene, and any ``seed`` gives fresh object positions.
"""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing as mp
import os
import time
import traceback
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..envs.manipulation.demos import EVAL_STREAM, scene_seed
from ..envs.manipulation.safety import KINDS
from ..envs.manipulation.tasks import resolve_tasks
from .report import markdown_table, percent_ci
from .stats import wilson_ci


class VLAPolicy:
    """Queries the policy for an action chunk and executes its first ``execute`` actions; with a
    ``token_pruner`` (see :mod:`embodied_prune.tokens`) each query drops visual tokens between layers."""

    def __init__(self, model, tokenizer, execute: int | None = None, token_pruner=None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.execute = execute or model.config.chunk
        self.pruner = token_pruner
        self._queue: deque = deque()
        self.latencies_ms: list[float] = []

    def reset(self, seed: int | None = None) -> None:
        self._queue.clear()
        if self.pruner is not None:
            self.pruner.reset(seed)

    def _query(self, images, enc, proprio) -> torch.Tensor:
        bos = self.tokenizer.bos_token_id
        if self.pruner is None:
            return self.model(images, enc["input_ids"], enc["attention_mask"], proprio, bos_id=bos)["actions"][0]
        from ..tokens import pruned_query

        return pruned_query(self.model, self.pruner, images, enc["input_ids"], enc["attention_mask"], proprio, bos)[0]

    def relative_flops(self, visual_per_layer: list[int]) -> float:
        """Backbone FLOPs of a pruned query that kept ``visual_per_layer`` visual tokens, relative to dense."""
        from ..tokens.flops import relative_backbone_flops

        return relative_backbone_flops(self.model, visual_per_layer)

    def act(self, obs: dict[str, np.ndarray], instruction: str) -> np.ndarray:
        if self.pruner is not None:
            self.pruner.observe(obs)
        if not self._queue:
            from ..models.vla import encode_instructions

            device = next(self.model.parameters()).device
            enc = encode_instructions(self.tokenizer, [instruction], self.model.config.instruction_len)
            enc = {k: v.to(device) for k, v in enc.items()}
            images = {name: torch.from_numpy(obs[name][None]).to(device) for name, _, _ in self.model.config.cameras}
            proprio = torch.from_numpy(obs["proprio"][None]).to(device)
            t0 = time.perf_counter()
            with torch.inference_mode():
                chunk = self._query(images, enc, proprio)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
            self.latencies_ms.append((time.perf_counter() - t0) * 1e3)
            self._queue.extend(np.clip(chunk.float().cpu().numpy(), -1.0, 1.0)[: self.execute])
        return self._queue.popleft()


class _InstructedPolicy:
    """A :class:`VLAPolicy` bound to one task's instruction: the actor interface of ``generate_demos``."""

    def __init__(self, policy: VLAPolicy, instruction: str) -> None:
        self.policy, self.instruction = policy, instruction

    def reset(self, seed: int | None = None) -> None:
        self.policy.reset(seed)

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return self.policy.act(obs, self.instruction)


@dataclass(frozen=True)
class PolicyRollouts:
    """The VLA policy folder ``path`` as the actor of :func:`~embodied_prune.envs.manipulation.demos.generate_demos`
    (its rollouts, labelled by the expert: DAgger); picklable, so every pool worker loads the policy itself."""

    path: str

    @property
    def name(self) -> str:
        return self.path

    def __call__(self, env, one_thread: bool) -> _InstructedPolicy:
        from ..models.vla import load_vla

        if one_thread:  # pool workers share the cores
            torch.set_num_threads(1)
        return _InstructedPolicy(VLAPolicy(*load_vla(self.path)), env.instruction)


def record_corrections(policy: str | os.PathLike, out: str | os.PathLike, cameras=None, **kwargs) -> Path:
    """One DAgger round's data: ``policy``'s own rollouts with the expert's action as every step's label and
    every episode kept, through the cameras the policy was trained on (``cameras``, when given, must be
    those); ``kwargs`` go to :func:`~embodied_prune.envs.manipulation.demos.generate_demos`."""
    from ..envs.manipulation.demos import generate_demos
    from ..envs.manipulation.render import cameras_for
    from ..errors import EmbodiedPruneError
    from ..models.vla import load_vla

    policy = str(policy)
    want = cameras_for(load_vla(policy)[0].config.cameras)  # also refuses a folder that is not a VLA policy
    if cameras is not None and tuple(cameras) != tuple(want):
        raise EmbodiedPruneError(f"the policy {policy} sees {[c.name for c in want]}: record through its cameras.")
    return generate_demos(out, cameras=want, actor=PolicyRollouts(policy), **kwargs)


@dataclass
class EpisodeResult:
    task: str
    index: int
    seed: int
    success: bool
    steps: int
    safety: dict[str, int]
    latencies_ms: list[float] = field(default_factory=list)
    failure: str | None = None
    wall_s: float = 0.0
    kept_tokens: list[float] = field(default_factory=list)  # per query: visual tokens per layer, mean
    backbone_flops: list[float] = field(default_factory=list)  # per query: estimated, relative to dense
    fine_queries: int = 0


def _replay_observations(tasks, steps: int, seed: int, cameras) -> list[tuple[Any, list[dict]]]:
    """Per task, the observations of an expert rollout through ``cameras`` (the policies replay them for timing)."""
    from ..envs.manipulation.env import ManipulationEnv

    out = []
    for spec in tasks:
        env = ManipulationEnv(spec, cameras=cameras)
        obs, _ = env.reset(seed=scene_seed(seed, spec.name, 0, EVAL_STREAM))
        seq = [obs]
        for _ in range(steps - 1):
            obs, _, done, trunc, _ = env.step(env.expert_action())
            seq.append(obs)
            if done or trunc:
                break
        env.close()
        out.append((spec, seq))
    return out


def side_by_side_latency(
    variants: dict[str, tuple[str, dict | None]], tasks, queries: int, seed: int = 0
) -> dict[str, float]:
    """Median policy-query latency (ms) of each variant, timed side by side: every variant, given as (model
    folder or ``builtin:NAME``, token-pruner spec or None), answers the same recorded observations, interleaved
    query by query so that all see the same machine load, on one torch thread (as each evaluation worker runs).
    The observations are ``queries`` steps of expert rollouts spread over ``tasks`` (scenes of ``seed``)."""
    from ..envs.manipulation.render import cameras_for
    from ..errors import EmbodiedPruneError
    from ..models.vla import load_vla
    from ..tokens import build_token_pruner

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        loaded = {path: load_vla(path) for path in dict.fromkeys(path for path, _ in variants.values())}
        cams = {json.dumps(model.config.cameras) for model, _ in loaded.values()}
        if len(cams) != 1:
            raise EmbodiedPruneError(
                f"side-by-side latency needs policies that see the same cameras, got {sorted(cams)}; time them apart."
            )
        policies = {}
        for name, (path, spec) in variants.items():
            model, tok = loaded[path]
            pruner = build_token_pruner(cameras=model.config.cameras, **spec) if spec else None
            policies[name] = VLAPolicy(model, tok, execute=1, token_pruner=pruner)
        per_task = max(1, queries // len(tasks))
        for task, seq in _replay_observations(tasks, per_task + 1, seed, cameras_for(json.loads(cams.pop()))):
            for p in policies.values():
                p.reset(0)
            for obs in seq[:per_task]:
                for p in policies.values():  # interleaved: the same load for every variant
                    p.act(obs, task.instruction)
        return {name: float(np.median(p.latencies_ms)) for name, p in policies.items()}
    finally:
        torch.set_num_threads(threads)


def run_episode(env, policy: VLAPolicy, task: str, index: int, seed: int) -> EpisodeResult:
    """One closed-loop episode; exceptions become a failed episode with the reason."""
    counts = dict.fromkeys(KINDS, 0)
    policy.reset(seed)  # also clears the pruner's per-query records
    n_lat = len(policy.latencies_ms)
    pruner = policy.pruner
    steps, success = 0, False
    t0 = time.perf_counter()
    try:
        obs, _ = env.reset(seed=seed)
        for steps in range(1, env.max_steps + 1):  # noqa: B007
            obs, _, success, truncated, info = env.step(policy.act(obs, env.instruction))
            for k, v in info["safety"].items():
                counts[k] += int(v)
            if success or truncated:
                break
        failure = None
    except Exception as e:
        failure = f"{type(e).__name__}: {e}".splitlines()[0]
        success = False
        traceback.print_exc()
    result = EpisodeResult(task, index, seed, bool(success), steps, counts, policy.latencies_ms[n_lat:], failure)
    result.wall_s = time.perf_counter() - t0
    if pruner is not None:
        result.kept_tokens = [q.kept_tokens_mean for q in pruner.queries]
        result.backbone_flops = [policy.relative_flops(q.visual_per_layer) for q in pruner.queries]
        result.fine_queries = sum(pruner.fine_queries)
    return result


# --- worker pool --------------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _init_worker(
    model_path: str,
    execute: int | None,
    blank_images: bool,
    one_thread: bool = True,
    token_pruner=None,
    openvla: dict | None = None,
    device: str | None = None,
    dtype: str | None = None,
) -> None:
    from ..models.devices import DTYPES, default_placement

    placed = torch.device(device) if device else None
    with default_placement(placed, DTYPES[dtype] if dtype else None):
        _load_worker(model_path, execute, blank_images, one_thread, token_pruner, openvla, placed)


def _load_worker(model_path, execute, blank_images, one_thread, token_pruner, openvla, device) -> None:
    if one_thread:  # pool workers share the cores; the in-process path leaves the caller's setting alone
        torch.set_num_threads(1)
    from ..envs.manipulation.render import cameras_for
    from ..models.openvla import is_openvla_folder
    from ..tokens import build_token_pruner

    wants_tokens = token_pruner is not None and token_pruner.get("name", "none") != "none"
    if is_openvla_folder(model_path):
        from ..models.openvla import image_size, load_openvla, token_cameras
        from .openvla import OpenVLAPolicy

        opts = openvla or {}
        model, processor = load_openvla(model_path, trust_remote_code=opts.get("trust_remote_code", False))
        if device is not None:
            model = model.to(device)
        pruner = build_token_pruner(cameras=token_cameras(model), **token_pruner) if wants_tokens else None
        policy = OpenVLAPolicy(
            model, processor, unnorm_key=opts.get("unnorm_key"), execute=execute, token_pruner=pruner
        )
        cameras = cameras_for([[c, image_size(model)] for c in policy.cameras])
        _WORKER.update(policy=policy, envs={}, blank=blank_images, cameras=cameras)
        return
    from ..models.vla import load_vla

    model, tok = load_vla(model_path)
    pruner = build_token_pruner(cameras=model.config.cameras, **token_pruner) if wants_tokens else None
    cameras = cameras_for(model.config.cameras)  # render what this policy was trained to see
    _WORKER.update(policy=VLAPolicy(model, tok, execute, pruner), envs={}, blank=blank_images, cameras=cameras)


def _worker_episode(job: tuple[str, int, int]) -> EpisodeResult:
    from ..envs.manipulation.env import ManipulationEnv

    task, index, seed = job
    envs = _WORKER["envs"]
    if task not in envs:
        envs[task] = ManipulationEnv(task, cameras=_WORKER["cameras"], blank_images=_WORKER["blank"])
    return run_episode(envs[task], _WORKER["policy"], task, index, seed)


@dataclass
class ManipulationReport:
    """Aggregates of an evaluation (``to_dict`` is the JSON written by ``eval manipulation``)."""

    model: str
    results: list[EpisodeResult]
    seed: int
    wall_s: float
    blank_images: bool = False
    token_pruner: dict | None = None

    def to_dict(self) -> dict[str, Any]:
        n = len(self.results)
        wins = sum(r.success for r in self.results)
        per_task = {}
        for task in dict.fromkeys(r.task for r in self.results):
            rs = [r for r in self.results if r.task == task]
            k = sum(r.success for r in rs)
            per_task[task] = {"success_rate": k / len(rs), "ci95": list(wilson_ci(k, len(rs))), "episodes": len(rs)}
        lat = [x for r in self.results for x in r.latencies_ms]
        kept = [x for r in self.results for x in r.kept_tokens]
        flops = [x for r in self.results for x in r.backbone_flops]
        queries = len(lat)
        return {
            "model": self.model,
            "success_rate": wins / n if n else float("nan"),
            "ci95": list(wilson_ci(wins, n)),
            "episodes": n,
            "per_task": per_task,
            "safety_violations": {k: sum(r.safety[k] for r in self.results) for k in KINDS},
            "episodes_with_violation": {k: sum(r.safety[k] > 0 for r in self.results) for k in KINDS},
            "latency_ms_median": float(np.median(lat)) if lat else float("nan"),
            "queries": queries,
            "episode_s_median": float(np.median([r.wall_s for r in self.results])) if n else float("nan"),
            "token_pruner": self.token_pruner or {"name": "none"},
            "kept_tokens_mean": float(np.mean(kept)) if kept else None,
            "backbone_flops_ratio": float(np.mean(flops)) if flops else 1.0,
            "fine_query_fraction": sum(r.fine_queries for r in self.results) / queries if kept and queries else None,
            "failed_episodes": sum(r.failure is not None for r in self.results),
            "blank_images": self.blank_images,
            "seed": self.seed,
            "wall_s": self.wall_s,
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "per_episode": [
                {k: v for k, v in asdict(r).items() if k not in ("latencies_ms", "kept_tokens", "backbone_flops")}
                for r in self.results
            ],
        }

    def markdown(self) -> str:
        d = self.to_dict()
        rows = [
            {"task": t, "success": percent_ci(v["success_rate"], v["ci95"]), "n": v["episodes"]}
            for t, v in d["per_task"].items()
        ]
        rows.append({"task": "**all**", "success": percent_ci(d["success_rate"], d["ci95"]), "n": d["episodes"]})
        table = markdown_table(rows, [("task", "task"), ("success", "success (95 % CI)"), ("n", "episodes")])
        v = d["safety_violations"]
        tokens = ""
        if d["kept_tokens_mean"] is not None:
            tokens = (
                f" Token pruner {d['token_pruner']['name']}: {d['kept_tokens_mean']:.1f} visual tokens per layer on "
                f"average, estimated backbone FLOPs {100 * d['backbone_flops_ratio']:.0f} % of dense."
            )
        return (
            f"{table}\n\nsafety violations (steps): table contact {v['table_contact']}, joint limit "
            f"{v['joint_limit']}, fast object {v['fast_object']}; policy query latency median "
            f"{d['latency_ms_median']:.1f} ms over {d['queries']} queries; failed episodes {d['failed_episodes']}."
            + tokens
        )


def evaluate_manipulation(
    model_path: str | os.PathLike,
    tasks: str | list[str] | None = None,
    episodes: int = 50,
    seed: int = 0,
    workers: int = 2,
    execute: int | None = None,
    blank_images: bool = False,
    progress: bool = True,
    token_pruner: dict | None = None,
    openvla: dict | None = None,
    device: str | None = None,
    dtype: str | None = None,
) -> ManipulationReport:
    """Evaluate the policy saved at ``model_path`` on ``episodes`` fresh scenes per task; ``token_pruner``
    is ``{"name", "keep", "alpha", "options"}`` of a registered visual-token pruner (see
    :func:`embodied_prune.tokens.build_token_pruner`; None or name ``"none"``: the plain forward).
    An OpenVLA checkpoint folder (see :mod:`embodied_prune.models.openvla`) takes ``openvla`` =
    ``{"trust_remote_code": bool, "unnorm_key": str | None}``. Each worker loads the policy on ``device`` in
    ``dtype`` (names, e.g. ``"cuda"``, ``"bfloat16"``; default the CPU in float32)."""
    from ..models.devices import default_device, default_dtype, dtype_name

    if device is None and default_device() is not None:  # workers are fresh processes: pass the placement on
        device = str(default_device())
    if dtype is None and default_dtype() is not None:
        dtype = dtype_name(default_dtype())
    specs = resolve_tasks(tasks)
    jobs = [(s.name, i, scene_seed(seed, s.name, i, EVAL_STREAM)) for s in specs for i in range(episodes)]
    t0 = time.time()
    bar = tqdm(total=len(jobs), desc="episodes", unit="ep", disable=not progress)
    results: list[EpisodeResult] = []
    if workers > 1:
        ctx = mp.get_context("forkserver")
        with ProcessPoolExecutor(
            workers,
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(str(model_path), execute, blank_images, True, token_pruner, openvla, device, dtype),
        ) as pool:
            for r in pool.map(_worker_episode, jobs):
                results.append(r)
                bar.update()
    else:
        _init_worker(str(model_path), execute, blank_images, False, token_pruner, openvla, device, dtype)
        try:
            for job in jobs:
                results.append(_worker_episode(job))
                bar.update()
        finally:
            for env in _WORKER.pop("envs", {}).values():
                env.close()
            _WORKER.clear()
    bar.close()
    return ManipulationReport(str(model_path), results, seed, time.time() - t0, blank_images, token_pruner)


__all__ = [
    "EpisodeResult",
    "ManipulationReport",
    "PolicyRollouts",
    "VLAPolicy",
    "evaluate_manipulation",
    "record_corrections",
    "run_episode",
]
