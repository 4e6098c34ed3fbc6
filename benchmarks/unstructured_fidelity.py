"""Open-loop fidelity of unstructured / 2:4 pruning and GLUESTICK recovery on the trained tiny LM.

``builtin:tinylm`` (trained on the synthetic instruction corpus) is pruned by magnitude, Wanda and
SparseGPT at 50 % unstructured and 2:4, calibrated on corpus text of seed 1; fidelity (KL to the
dense model, top-1 agreement, held-out perplexity) is measured on text of seed 2. The Wanda 2:4 model
is then recovered with GLUESTICK over a rank sweep. One-shot wall times are reported as measured.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch

from _common import write_result
from embodied_prune import load_model, prune, recover
from embodied_prune.data.corpus import instruction_corpus
from embodied_prune.evaluation.fidelity import logit_fidelity
from embodied_prune.evaluation.report import markdown_table
from embodied_prune.models import load_tokenizer

MODEL = "builtin:tinylm"


@torch.inference_mode()
def perplexity(model, ids: torch.Tensor) -> float:
    return math.exp(float(model(input_ids=ids, labels=ids).loss))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ranks", nargs="+", type=int, default=[4, 8, 16, 32, 64])
    ap.add_argument("--samples", type=int, default=64, help="calibration sequences")
    a = ap.parse_args()
    t0 = time.time()
    tok = load_tokenizer(MODEL)
    ids = torch.tensor(tok(instruction_corpus(600, seed=2))["input_ids"])
    heldout = ids[: (ids.numel() // 128) * 128].reshape(-1, 128)[:48]
    dense = load_model(MODEL)
    rows = [{"variant": "dense", "kl": 0.0, "top1": 1.0, "ppl": perplexity(dense, heldout), "wall_s": None, "extra": 0}]
    with tempfile.TemporaryDirectory() as tmp:
        calib = Path(tmp) / "calib.txt"
        calib.write_text(instruction_corpus(4000, seed=1))
        paths = {}
        for method in ("magnitude", "wanda", "sparsegpt"):
            for pattern in (None, "2:4"):
                name = f"{method} {'2:4' if pattern else '50%'}"
                t = time.time()
                out = prune(
                    MODEL,
                    method,
                    None if pattern else 0.5,
                    pattern=pattern,
                    calibration=calib,
                    n_samples=a.samples,
                    out=Path(tmp) / name.replace(" ", "_").replace(":", "of"),
                    progress=False,
                )
                wall = time.time() - t
                paths[name] = out.path
                fid = logit_fidelity(dense, out.model, heldout)
                rows.append(
                    {
                        "variant": name,
                        "kl": fid.kl,
                        "top1": fid.top1_agreement,
                        "ppl": perplexity(out.model, heldout),
                        "wall_s": wall,
                        "extra": 0,
                    }
                )
        for r in a.ranks:
            t = time.time()
            rec = recover(MODEL, paths["wanda 2:4"], rank=r)
            wall = time.time() - t
            fid = logit_fidelity(dense, rec.model, heldout)
            rows.append(
                {
                    "variant": f"wanda 2:4 + GLUESTICK r={r}",
                    "kl": fid.kl,
                    "top1": fid.top1_agreement,
                    "ppl": perplexity(rec.model, heldout),
                    "wall_s": wall,
                    "extra": rec.details.extra_parameters,
                    "overhead": rec.details.overhead,
                }
            )
    table = markdown_table(
        rows,
        [
            ("variant", "variant"),
            ("kl", "KL to dense (nats/token)"),
            ("top1", "top-1 agreement"),
            ("ppl", "held-out perplexity"),
            ("extra", "extra params"),
            ("overhead", "extra / corrected layers"),
            ("wall_s", "wall s"),
        ],
    )
    body = (
        f"`{MODEL}` (1.1 M parameters, 4 layers), every decoder linear pruned; calibration: {a.samples} × 128 "
        f"tokens of corpus seed 1; fidelity on {heldout.shape[0]} × 128 held-out tokens of corpus seed 2. "
        "`wall s` is the one-shot pruning (or factor computation) time, calibration included.\n\n" + table
    )
    write_result(
        "unstructured_fidelity",
        "Unstructured / 2:4 pruning and GLUESTICK: open-loop fidelity",
        body,
        rows,
        time.time() - t0,
    )


if __name__ == "__main__":
    main()
