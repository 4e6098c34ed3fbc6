"""What every training entry point shares: output-folder checks, seeding, the scratch folder, one progress bar."""

from __future__ import annotations

import os
from pathlib import Path

from tqdm.auto import tqdm
from transformers import TrainerCallback, set_seed
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from ..io import check_output_dir


class CompactProgress(TrainerCallback):
    """One tqdm bar with a few chosen metrics, instead of the Trainer's per-log dict dumps."""

    def __init__(self, keys: tuple[str, ...], progress: bool = True) -> None:
        self.keys, self.progress, self.bar = keys, progress, None

    def on_train_begin(self, args, state, control, **kwargs):
        if self.progress:
            self.bar = tqdm(total=state.max_steps, desc="train", dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and logs:
            self.bar.set_postfix(
                {k.split("/")[-2] if "/" in k else k: f"{logs[k]:.3g}" for k in self.keys if k in logs}
            )

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()


def prepare_run(out: str | os.PathLike, overwrite: bool, seed: int) -> str:
    """Check the output folder, seed everything; returns the trainer's scratch folder beside ``out``."""
    check_output_dir(out, overwrite)
    set_seed(seed)
    return str(Path(out).parent / f".{Path(out).name}.trainer")


def use_compact_progress(trainer, keys: tuple[str, ...], progress: bool) -> None:
    """Replace the Trainer's own progress bar and log printer by :class:`CompactProgress`."""
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(CompactProgress(keys, progress))
