"""Train the built-in tiny language model ``builtin:tinylm`` on the synthetic instruction corpus.

Regenerate the shipped checkpoint with::

    python -m embodied_prune.models.train_lm src/embodied_prune/assets/tinylm

Training uses ``transformers.Trainer`` on the CPU; it is deterministic for a given seed and thread
count (about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments, set_seed

from ..data.corpus import instruction_corpus
from ..io import atomic_dir
from .tiny import build_tiny
from .tokenizer import byte_tokenizer

TINYLM_CONFIG = dict(
    hidden_size=128,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=4,
    intermediate_size=512,
    vocab_size=320,
    max_position_embeddings=512,
)


class _Windows(torch.utils.data.Dataset):
    def __init__(self, ids: torch.Tensor, seq_len: int) -> None:
        n = (ids.numel() - 1) // seq_len
        self.rows = ids[: n * seq_len].reshape(n, seq_len)

    def __len__(self) -> int:
        return self.rows.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.rows[i], "labels": self.rows[i]}


def train_tiny_lm(
    out: str | os.PathLike,
    steps: int = 600,
    seq_len: int = 128,
    batch_size: int = 32,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Train ``builtin:tinylm`` from scratch and save it (with its byte tokenizer) to ``out``."""
    set_seed(seed)
    tok = byte_tokenizer()
    text = instruction_corpus(20000, seed=seed)
    ids = torch.tensor(tok(text)["input_ids"], dtype=torch.long)
    model = build_tiny("llama", seed=seed, **TINYLM_CONFIG)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        args = TrainingArguments(
            output_dir=str(tmp / "trainer"),
            max_steps=steps,
            per_device_train_batch_size=batch_size,
            learning_rate=3e-3,
            warmup_steps=steps // 20,
            lr_scheduler_type="cosine",
            weight_decay=0.01,
            logging_steps=max(steps // 10, 1),
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            seed=seed,
            data_seed=seed,
            disable_tqdm=False,
        )
        Trainer(model=model, args=args, train_dataset=_Windows(ids, seq_len)).train()
        import shutil

        shutil.rmtree(tmp / "trainer", ignore_errors=True)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return Path(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="folder to write the checkpoint to")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true")
    a = parser.parse_args()
    train_tiny_lm(a.out, steps=a.steps, seed=a.seed, overwrite=a.overwrite)


if __name__ == "__main__":
    main()
