"""Where in the backbone can a VLA's visual tokens be dropped? An offline probe, no closed loop.

For each decoder layer L and each ranking — the attention the visual tokens receive from the instruction rows
(SpecPrune-VLA's rows), from the action queries, from both (FastV's rows), or none (uniformly random) — one
policy query keeps only the top ``alpha`` of its visual tokens from layer L on, and the probe measures how far
its first action moves from the dense query's, on the observations of expert rollouts (every task, scenes of
``--seed``'s evaluation stream). A ranking that finds the tokens the action reads keeps that distance small;
the layer where the distance first falls says how much of the backbone must run on every token first.
As a scale, the table gives how far the dense policy's own first action moves from one query to the next.
With ``--score-layers``, one more ranking per given layer S, at every layer L below it: the action queries'
attention at S in the *previous* dense query (SpecPrune-VLA's V_global premise: can a later layer's attention,
from one step back, pick the tokens to drop before an earlier one?).

python benchmarks/tokens_probe.py [--model builtin:vla-metaworld-hires] [--alpha 0.3] [--episodes 2] [--steps 80]
    [--score-layers 6]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from _common import quiet_transformers, write_result
from embodied_prune.envs.manipulation.demos import scene_seed
from embodied_prune.envs.manipulation.env import ManipulationEnv
from embodied_prune.envs.manipulation.render import cameras_for
from embodied_prune.envs.manipulation.tasks import resolve_tasks
from embodied_prune.evaluation.manipulation import EVAL_STREAM
from embodied_prune.models.vla import encode_instructions, load_vla
from embodied_prune.tokens import FastV, RandomDrop, TokenPruner, pruned_query
from embodied_prune.tokens.forward import QueryState
from embodied_prune.tokens.scores import top_k

RANKINGS = ("instruction", "action", "after_visual", "random")
DEFAULT_MODEL = "builtin:vla-metaworld-hires"


def _previous(layer: int) -> str:
    """The ranking's name in the table: the action queries' attention at ``layer`` of the previous query."""
    return f"action, layer {layer} of the previous query"


class _Recorder(TokenPruner):
    """Keeps every token; records the action queries' attention at ``layers`` (by original visual index)."""

    def __init__(self, layers: tuple[int, ...]) -> None:
        super().__init__(keep=1)
        self.layers, self.scores = set(layers), {}

    def select(self, state: QueryState) -> None:
        if state.layer in self.layers:
            self.scores[state.layer] = state.scores("action")
        return None


class _Fixed(TokenPruner):
    """Keeps the given visual tokens from ``layer`` on."""

    def __init__(self, kept: torch.Tensor, layer: int) -> None:
        super().__init__(keep=1)
        self.kept, self.layer = torch.sort(kept).values, layer

    def select(self, state: QueryState) -> torch.Tensor | None:
        return self.kept if state.layer == self.layer else None


def probe(
    model_spec: str, alpha: float, episodes: int, steps: int, seed: int, score_layers: tuple[int, ...] = ()
) -> dict:
    """Mean distance of the pruned first action from the dense one, per (layer, ranking) and task; with
    ``score_layers``, also ranked by the previous dense query's action-row attention at each of them."""
    model, tok = load_vla(model_spec)
    model.eval()
    layers = model.backbone.config.num_hidden_layers
    visual = sum(model.config.visual_tokens().values())
    keep = max(1, round(alpha * visual))
    pruners = {
        # FastV's pruner with the rows to rank by: the top ``keep`` by their attention at ``layer``, from it on
        (layer, rank): RandomDrop(keep=keep, layer=layer) if rank == "random" else FastV(keep, layer=layer, rows=rank)
        for layer in range(layers)
        for rank in RANKINGS
    }
    bad = [s for s in score_layers if not 0 < s < layers]
    if bad:
        raise SystemExit(f"--score-layers {bad} are not layers 1..{layers - 1} of this policy's backbone.")
    later = [(layer, _previous(s)) for s in score_layers for layer in range(s)]
    tasks = resolve_tasks(None)
    dist: dict[tuple[int, str], dict[str, list[float]]] = {k: {} for k in [*pruners, *later]}
    drift: dict[str, list[float]] = {}
    cams = cameras_for(model.config.cameras)
    for spec in tasks:
        enc = encode_instructions(tok, [spec.instruction], model.config.instruction_len)
        for ep in range(episodes):
            env = ManipulationEnv(spec, cameras=cams)
            obs, _ = env.reset(seed=scene_seed(seed, spec.name, ep, EVAL_STREAM))
            for p in pruners.values():
                p.reset(ep)
            previous, earlier = None, {}
            for _ in range(steps):
                images = {n: torch.from_numpy(obs[n][None]) for n, _, _ in model.config.cameras}
                proprio = torch.from_numpy(obs["proprio"][None])
                with torch.inference_mode():
                    args = (images, enc["input_ids"], enc["attention_mask"], proprio, tok.bos_token_id)
                    # the dense query (keeping every token is bit-identical to the model), recording the
                    # score layers' attention for the next step's query
                    rec = _Recorder(score_layers)
                    dense = pruned_query(model, rec, *args)[0, 0].clamp(-1, 1)
                    for k, p in pruners.items():
                        a = pruned_query(model, p, *args)
                        dist[k].setdefault(spec.name, []).append(float((a[0, 0].clamp(-1, 1) - dense).norm()))
                    for s in score_layers if earlier else ():
                        for layer in range(s):
                            a = pruned_query(model, _Fixed(top_k(earlier[s], keep), layer), *args)
                            d = float((a[0, 0].clamp(-1, 1) - dense).norm())
                            dist[(layer, _previous(s))].setdefault(spec.name, []).append(d)
                    earlier = rec.scores
                if previous is not None:
                    drift.setdefault(spec.name, []).append(float((dense - previous).norm()))
                previous = dense
                obs, _, done, truncated, _ = env.step(env.expert_action())
                if done or truncated:
                    break
            env.close()
        print(f"{spec.name}: {len(drift.get(spec.name, []))} query pairs", flush=True)
    names = [t.name for t in tasks]
    rows = []
    for (layer, rank), per_task in sorted(dist.items(), key=lambda kv: kv[0][0]):  # by layer, rankings in order
        means = [float(np.mean(per_task[t])) for t in names]
        rows.append(
            {
                "layer": layer,
                "ranking": rank,
                "per_task": dict(zip(names, means, strict=True)),
                "mean": float(np.mean(means)),
            }
        )
    scale = {t: float(np.mean(drift[t])) for t in names}
    return {
        "model": model_spec,
        "alpha": alpha,
        "keep": keep,
        "visual_tokens": visual,
        "episodes_per_task": episodes,
        "steps": steps,
        "seed": seed,
        "queries": sum(len(v) for v in dist[(0, "random")].values()),
        "rows": rows,
        "dense_step_change": {"per_task": scale, "mean": float(np.mean(list(scale.values())))},
    }


def report(d: dict) -> str:
    tasks = list(d["dense_step_change"]["per_task"])
    head = "| prune before layer | ranked by | " + " | ".join(tasks) + " | mean |"
    lines = [head, "|" + "---|" * (len(tasks) + 3)]
    for r in d["rows"]:
        cells = " | ".join(f"{r['per_task'][t]:.3f}" for t in tasks)
        lines.append(f"| {r['layer']} | {r['ranking']} | {cells} | **{r['mean']:.3f}** |")
    s = d["dense_step_change"]
    lines.append(
        "| – | dense, query to next query | "
        + " | ".join(f"{s['per_task'][t]:.3f}" for t in tasks)
        + f" | {s['mean']:.3f} |"
    )
    return (
        f"Policy `{d['model']}` ({d['visual_tokens']} visual tokens), keeping {d['keep']} (alpha {d['alpha']}) from "
        f"the given layer on; {d['queries']} queries on expert rollouts ({d['episodes_per_task']} per task, up to "
        f"{d['steps']} steps, scenes of seed {d['seed']}). Cells: mean Euclidean distance of the first action (4-D, "
        "clipped to [-1, 1]) from the dense query's. Rankings: attention received from the instruction rows, the "
        "action queries, both (after_visual, FastV's rows), each computed from the layer's input; random: uniform "
        "(seeded per episode); 'layer S of the previous query': the action queries' attention at layer S of the dense "
        "query one step back (none at an episode's first step). Last row: the dense policy's own change of its "
        "first action from one query to the next, for scale.\n\n" + "\n".join(lines) + "\n"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL, help=f"policy (default {DEFAULT_MODEL})")
    ap.add_argument("--alpha", type=float, default=0.3, help="kept fraction of visual tokens (default 0.3)")
    ap.add_argument("--episodes", type=int, default=2, help="expert rollouts per task (default 2)")
    ap.add_argument("--steps", type=int, default=80, help="queries per rollout at most (default 80)")
    ap.add_argument("--seed", type=int, default=7, help="scenes of this seed's evaluation stream (default 7)")
    ap.add_argument(
        "--score-layers",
        default="",
        help="comma-separated layers S: also rank by the previous query's action-row attention at S, pruning at "
        "each layer below S (default: none)",
    )
    ap.add_argument("--name", default="tokens_probe", help="result name under benchmarks/results/")
    a = ap.parse_args(argv)
    if not 0 < a.alpha <= 1 or a.episodes < 1 or a.steps < 2:
        ap.error("--alpha must be in (0, 1], --episodes at least 1 and --steps at least 2.")
    try:
        score_layers = tuple(int(s) for s in a.score_layers.split(",") if s.strip())
    except ValueError:
        ap.error(f"--score-layers takes comma-separated layer numbers, e.g. 6 or 4,6; got {a.score_layers!r}.")
    quiet_transformers()
    torch.set_num_threads(2)
    t0 = time.time()
    d = probe(a.model, a.alpha, a.episodes, a.steps, a.seed, score_layers)
    write_result(
        a.name,
        "Visual-token pruning: where the action's tokens can be found (offline probe"
        + ("" if a.model == DEFAULT_MODEL else f", `{a.model}`")
        + ")",
        report(d),
        d,
        time.time() - t0,
        models=(a.model,),
    )


def run_named(name: str, model: str, score_layers: str, argv: list[str]) -> None:
    """The probe on ``model`` with the previous query's attention at ``score_layers``, one expert rollout per task
    of up to 30 queries (a deep backbone makes every query layers × rankings pruned ones), its result named
    ``name``; ``argv`` overrides any of it."""
    main(["--model", model, "--episodes", "1", "--steps", "30", "--score-layers", score_layers, "--name", name, *argv])


if __name__ == "__main__":
    main()
