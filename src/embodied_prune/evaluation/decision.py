"""Evaluation of DecisionxLLM's task: does the car's behaviour in a state readout adhere to the instruction?

Accuracy against the rule labels (:mod:`..envs.driving.decision`), with a Wilson 95 % CI; a parse failure is a
wrong answer and is counted. Broken out by constraint type (over the examples holding that type), by label (the
true-positive and true-negative rates; the built-in splits are balanced), and by whether the instruction pairs
constraint types training never pairs.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

from ..envs.driving.decision import DECISION_MAX_NEW_TOKENS, DecisionExample, parse_decision
from .driving import generate_completions
from .report import markdown_table, percent_ci
from .stats import wilson_ci


@dataclass
class DecisionRecord:
    """One example's answer and verdict."""

    id: str
    adheres: bool
    predicted: bool | None
    completion: str
    parse_failure: str | None
    types: list[str]
    held_out_combo: bool

    @property
    def correct(self) -> bool:
        return self.predicted is not None and self.predicted == self.adheres


def _rate(records: list[DecisionRecord]) -> dict[str, Any]:
    k, n = sum(r.correct for r in records), len(records)
    return {"accuracy": k / n if n else float("nan"), "ci95": list(wilson_ci(k, n)), "n": n}


@dataclass
class DecisionReport:
    """Aggregates and per-example records (``to_dict`` is the JSON ``eval decision`` writes)."""

    model: str
    records: list[DecisionRecord]
    wall_s: float

    def to_dict(self) -> dict[str, Any]:
        rs = self.records
        types = sorted({t for r in rs for t in r.types})
        return {
            "model": self.model,
            **_rate(rs),
            "examples": len(rs),
            "parse_failures": sum(r.parse_failure is not None for r in rs),
            "true_positive_rate": _rate([r for r in rs if r.adheres]),
            "true_negative_rate": _rate([r for r in rs if not r.adheres]),
            "by_type": {t: _rate([r for r in rs if t in r.types]) for t in types},
            "held_out_combos": _rate([r for r in rs if r.held_out_combo]),
            "seen_combos": _rate([r for r in rs if not r.held_out_combo]),
            "correct": [r.correct for r in rs],
            "wall_s": self.wall_s,
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "per_example": [{**r.__dict__, "correct": r.correct} for r in rs],
        }

    def markdown(self) -> str:
        d = self.to_dict()

        def cell(x: dict[str, Any]) -> str:
            return f"{percent_ci(x['accuracy'], x['ci95'])} (n={x['n']})" if x["n"] else "–"

        row = {
            "model": d["model"],
            "accuracy": cell(d),
            "tpr": cell(d["true_positive_rate"]),
            "tnr": cell(d["true_negative_rate"]),
            "held": cell(d["held_out_combos"]),
            "parse": d["parse_failures"],
        }
        table = markdown_table(
            [row],
            [
                ("model", "model"),
                ("accuracy", "accuracy (95 % CI)"),
                ("tpr", "on adhering"),
                ("tnr", "on not adhering"),
                ("held", "held-out combinations"),
                ("parse", "parse failures"),
            ],
        )
        types = markdown_table(
            [{"type": t, "accuracy": cell(x)} for t, x in d["by_type"].items()],
            [("type", "constraint type"), ("accuracy", "accuracy (95 % CI)")],
        )
        return (
            table
            + "\n\n"
            + types
            + "\n\nAccuracy against rule labels computed from the same readout; a parse failure counts as wrong; "
            "Wilson 95 % CIs."
        )


def score_decisions(examples: list[DecisionExample], completions: list[str], name: str = "answers") -> DecisionReport:
    """Score given answers (one per example): a model's, or hand-written ones."""
    records = []
    for ex, comp in zip(examples, completions, strict=True):
        p = parse_decision(comp)
        records.append(
            DecisionRecord(
                id=ex.id,
                adheres=ex.adheres,
                predicted=p.adheres,
                completion=comp,
                parse_failure=p.error,
                types=sorted({c["type"] for c in ex.constraints}),
                held_out_combo=ex.held_out_combo,
            )
        )
    return DecisionReport(name, records, 0.0)


def evaluate_decision(
    model, tokenizer, examples: list[DecisionExample], name: str = "model", progress: bool = True, batch_size: int = 16
) -> DecisionReport:
    """Ask ``model`` (greedy) whether each example's behaviour adheres, in its prompt format; score the answers."""
    from ..envs.driving.prompts import decision_prompt

    t0 = time.time()
    prompts = [decision_prompt(tokenizer, x.instruction, x.state) for x in examples]
    completions = generate_completions(
        model, tokenizer, prompts, DECISION_MAX_NEW_TOKENS, batch_size, progress, desc="decide"
    )
    report = score_decisions(examples, completions, name)
    report.wall_s = time.time() - t0
    return report
