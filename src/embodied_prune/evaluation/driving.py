"""Closed-loop evaluation of a driving controller: generate answers, drive, report adaptability."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from ..envs.driving.instructions import Instruction
from ..envs.driving.scoring import ClosedLoopScorer, InstructionScore
from .report import markdown_table, percent_ci
from .stats import bootstrap_mean_ci, wilson_ci

MAX_NEW_TOKENS = 64


@torch.inference_mode()
def generate_completions(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int = MAX_NEW_TOKENS,
    batch_size: int = 32,
    progress: bool = False,
    desc: str = "generate",
) -> list[str]:
    """Greedy completions of formatted ``prompts`` (left-padded batches, stop at EOS).

    A model with a ``complete(prompts, max_new_tokens)`` method (a GGUF file in llama.cpp,
    :class:`~embodied_prune.deploy.runtime.LlamaCppModel`) generates them itself, one prompt at a time.
    """
    if hasattr(model, "complete"):
        return model.complete(prompts, max_new_tokens)
    model.eval()
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    out: list[str] = []
    for i in tqdm(range(0, len(prompts), batch_size), desc=desc, disable=not progress, leave=False):
        enc = tokenizer(prompts[i : i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        enc = enc.to(device)
        gen = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        out += tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return out


def generate_answers(model, tokenizer, prompts: list[str], batch_size: int = 32, progress: bool = False) -> list[str]:
    """Greedy parameter answers to the instruction texts ``prompts``, in the controller's prompt format."""
    from ..envs.driving.prompts import parameter_prompt

    formatted = [parameter_prompt(tokenizer, p) for p in prompts]
    return generate_completions(model, tokenizer, formatted, batch_size=batch_size, progress=progress)


def _mean_reduction(episodes: list[InstructionScore]) -> float | None:
    """The mean reduction over an instruction's scored episodes (None when none could be scored)."""
    valid = [s.reduction for s in episodes if s.reduction is not None]
    return sum(valid) / len(valid) if valid else None


@dataclass
class DrivingReport:
    """Aggregate and per-instruction results (``to_dict`` is the JSON written by ``eval driving``)."""

    model: str
    scores: list[InstructionScore]
    seed: int | None
    episodes: int
    wall_s: float

    def _by_instruction(self) -> dict[str, list[InstructionScore]]:
        groups: dict[str, list[InstructionScore]] = {}
        for s in self.scores:
            groups.setdefault(s.id, []).append(s)
        return groups

    def instruction_reductions(self) -> list[float | None]:
        """Each instruction's mean reduction over its scored episodes (None when none could be scored), in
        instruction order: the unit the adaptability CI resamples, and what paired comparisons pair."""
        return [_mean_reduction(group) for group in self._by_instruction().values()]

    def to_dict(self) -> dict[str, Any]:
        """Aggregates over instructions (episodes of one instruction are averaged first, so the CIs resample
        instructions, not correlated episodes of the same one) and the per-episode records."""
        groups = self._by_instruction().values()
        reductions = [_mean_reduction(g) for g in groups]
        valid = [r for r in reductions if r is not None]
        n = len(self.scores)
        sat = sum(s.satisfied for s in self.scores)
        mean = sum(valid) / len(valid) if valid else float("nan")
        if self.episodes == 1:
            sat_ci = wilson_ci(sat, n)
        else:
            sat_ci = bootstrap_mean_ci([sum(s.satisfied for s in g) / len(g) for g in groups])
        return {
            "model": self.model,
            "adaptability": mean,
            "ci95": list(bootstrap_mean_ci(valid)),
            "satisfied": sat / n if n else float("nan"),
            "satisfied_ci95": list(sat_ci),
            "instructions": len(reductions),
            "reductions": reductions,
            "episodes": n,
            "episodes_per_instruction": self.episodes,
            "collisions": sum(s.collision for s in self.scores),
            "collisions_default": sum(s.collision_default for s in self.scores),
            "parse_failures": sum(s.parse_failure is not None for s in self.scores),
            "failed_episodes": sum(s.failure is not None for s in self.scores),
            "seed": self.seed,
            "wall_s": self.wall_s,
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "per_instruction": [s.to_dict() for s in self.scores],  # one record per episode
        }

    def markdown(self) -> str:
        d = self.to_dict()
        row = {
            "model": d["model"],
            "adaptability": percent_ci(d["adaptability"], d["ci95"]),
            "satisfied": percent_ci(d["satisfied"], d["satisfied_ci95"]),
            "episodes": d["episodes"],
            "collisions": d["collisions"],
            "collisions_default": d["collisions_default"],
            "parse_failures": d["parse_failures"],
            "failed": d["failed_episodes"],
        }
        table = markdown_table(
            [row],
            [
                ("model", "model"),
                ("adaptability", "adaptability (95 % CI)"),
                ("satisfied", "all constraints met (95 % CI)"),
                ("episodes", "episodes"),
                ("collisions", "collisions"),
                ("collisions_default", "collisions (default params)"),
                ("parse_failures", "parse failures"),
                ("failed", "failed episodes"),
            ],
        )
        return table + (
            "\n\nAdaptability: mean relative task-error reduction against the default parameters on the same "
            "traffic, clipped to [−4, 1] per instruction (RobotxR1's definition); CI by bootstrap over instructions."
        )


def evaluate_driving(
    model,
    tokenizer,
    instructions: list[Instruction],
    seed: int | None = None,
    episodes: int = 1,
    workers: int = 2,
    name: str = "model",
    progress: bool = True,
    scorer: ClosedLoopScorer | None = None,
) -> DrivingReport:
    """Evaluate ``model`` on ``instructions``: ``episodes`` scenarios each (seeded by ``seed`` when given,
    else each instruction's own scenario first), in closed loop."""
    t0 = time.time()
    completions = generate_answers(model, tokenizer, [x.text for x in instructions], progress=progress)
    report = score_completions(instructions, completions, seed, episodes, workers, name, progress, scorer)
    report.wall_s = time.time() - t0
    return report


def score_completions(
    instructions: list[Instruction],
    completions: list[str],
    seed: int | None = None,
    episodes: int = 1,
    workers: int = 2,
    name: str = "answers",
    progress: bool = True,
    scorer: ClosedLoopScorer | None = None,
) -> DrivingReport:
    """Score given answers (one per instruction) in closed loop, on the traffic :func:`evaluate_driving` uses:
    a model's, the teacher's or hand-written ones are then directly comparable."""
    t0 = time.time()
    rows, comps, scenarios = [], [], []
    for i, (ins, comp) in enumerate(zip(instructions, completions, strict=True)):
        for k in range(episodes):
            own = seed is None and k == 0 and "seed" in ins.scenario
            scenario_seed = None if own else _episode_seed(seed, i, k)
            rows.append(ins)
            comps.append(comp)
            scenarios.append(ins.make_scenario(scenario_seed))
    own_scorer = scorer is None
    scorer = scorer or ClosedLoopScorer(workers)
    try:
        scores = []
        step = 64
        for j in tqdm(range(0, len(rows), step), desc="closed loop", disable=not progress, leave=False):
            scores += scorer.score(rows[j : j + step], comps[j : j + step], scenarios[j : j + step])
    finally:
        if own_scorer:
            scorer.close()
    return DrivingReport(name, scores, seed, episodes, time.time() - t0)


def _episode_seed(seed: int | None, index: int, episode: int) -> int:
    return 3_000_000 + 100_003 * (seed or 0) + 1_009 * index + episode
