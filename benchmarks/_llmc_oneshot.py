"""Runs inside the llm-compressor virtual environment (see ``make llmc-venv``); no embodied_prune here.

    python _llmc_oneshot.py MODEL_DIR CALIB.safetensors OUT_DIR

Prunes MODEL_DIR with llm-compressor's one-shot Wanda and SparseGPT (50 % unstructured and 2:4), on
the calibration ids in CALIB.safetensors (tensor ``input_ids``), and saves each result under OUT_DIR;
prints one JSON line with the wall time of every ``oneshot`` call.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ["HF_HUB_OFFLINE"] = "1"

import torch
from datasets import Dataset
from llmcompressor import oneshot
from llmcompressor.modifiers.pruning import WandaPruningModifier
from llmcompressor.modifiers.pruning.sparsegpt import SparseGPTModifier
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def main(model_dir: str, calib_path: str, out_dir: str, batch_size: int = 8) -> None:
    ids = load_file(calib_path)["input_ids"]
    data = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
    times = {}
    for method in ("wanda", "sparsegpt"):
        for structure in ("0:0", "2:4"):
            common = dict(
                sparsity=0.5, mask_structure=structure, targets=["re:.*layers\\.\\d+$"], ignore=["re:.*lm_head"]
            )
            recipe = (
                WandaPruningModifier(**common)
                if method == "wanda"
                else SparseGPTModifier(**common, dampening_frac=0.01, block_size=128)
            )
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
            t = time.perf_counter()
            oneshot(
                model=model,
                recipe=recipe,
                dataset=data,
                num_calibration_samples=ids.shape[0],
                max_seq_length=ids.shape[1],
                batch_size=batch_size,
                pipeline="sequential",
            )
            name = f"{method}-{'2of4' if structure == '2:4' else '50'}"
            times[name] = time.perf_counter() - t
            model.save_pretrained(os.path.join(out_dir, name))
    import llmcompressor
    import transformers

    print(
        json.dumps(
            {"wall_s": times, "llmcompressor": llmcompressor.__version__, "transformers": transformers.__version__}
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:4])
