"""Run by ``tests/test_schedules.py`` under ``accelerate launch --num_processes 2 --cpu``.

SFT then GRPO of the smallest driving controller, each with a :class:`PruningCallback` whose last cut comes
before the end of training (so training goes on through DDP after it); every rank writes the cuts it made,
its final layer shapes and a checksum of its weights to ``OUT/rank<i>-<stage>.json``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from embodied_prune.models.adapters import adapter_for
from embodied_prune.schedules import PruningCallback
from embodied_prune.training.driving import GRPOSettings, SFTSettings, train_grpo, train_sft


class Probe(TrainerCallback):
    """Record this rank's view of the trained model at the end of training."""

    def __init__(self, folder: Path, stage: str, callback: PruningCallback) -> None:
        self.folder, self.stage, self.callback = folder, stage, callback

    def on_train_end(self, args, state, control, model=None, **kwargs):
        flat = torch.cat([p.detach().double().flatten() for p in model.parameters()])
        row = {
            "world_size": dist.get_world_size() if dist.is_initialized() else 1,
            "plans": [[asdict(p) for p in plans] for plans in self.callback.plans],
            "shapes": [asdict(s) for s in adapter_for(model).layer_shapes(model)],
            "checksum": [float(flat.sum()), float(flat.abs().sum()), float((flat * flat).sum())],
            "history": self.callback.history,
        }
        rank = dist.get_rank() if dist.is_initialized() else 0
        (self.folder / f"rank{rank}-{self.stage}.json").write_text(json.dumps(row))


def main(out: Path) -> None:
    sft_cut = PruningCallback(0.25, cuts=2, interval=2, importance="taylor", grad_window=2)
    sft = train_sft(
        out / "sft",
        SFTSettings(size="s", n_train=96, max_steps=6, batch_size=4),
        callbacks=[sft_cut, Probe(out, "sft", sft_cut)],
        progress=False,
    )
    grpo_cut = PruningCallback(0.5, cuts=2, interval=1, importance="taylor", grad_window=1)
    train_grpo(
        sft,
        out / "grpo",
        GRPOSettings.full_weights(steps=3, prompts_per_step=2, num_generations=2, workers=1, scenarios=1, n_train=16),
        callbacks=[grpo_cut, Probe(out, "grpo", grpo_cut)],
        progress=False,
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
