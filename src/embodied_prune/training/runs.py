"""What every training entry point shares: output-folder checks, seeding, the scratch folder, one progress bar."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm
from transformers import TrainerCallback, set_seed
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from ..errors import EmbodiedPruneError
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


class WallClock(TrainerCallback):
    """A run's training wall time across resumed segments: each trainer checkpoint records the time so far, and a
    run resumed from that checkpoint counts on from it (a budget is then measured over the whole run)."""

    FILE = "wall_clock.json"

    def __init__(self, resume_from: str | os.PathLike | None = None) -> None:
        self.prior, self.segments = 0.0, 1
        if resume_from is not None and (Path(resume_from) / self.FILE).is_file():
            saved = json.loads((Path(resume_from) / self.FILE).read_text())
            self.prior, self.segments = saved["wall_s"], saved["segments"] + 1
        self.t0 = time.time()

    def elapsed(self) -> float:
        return self.prior + time.time() - self.t0

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir() and state.is_world_process_zero:
            (folder / self.FILE).write_text(json.dumps({"wall_s": self.elapsed(), "segments": self.segments}))


def checkpointing_args(every: int) -> dict[str, Any]:
    """The ``TrainingArguments`` fields of a resumable checkpoint every ``every`` steps (0: no checkpoints)."""
    if every < 0:
        raise EmbodiedPruneError(f"checkpoint_every is a number of steps (0 = no checkpoints); got {every}.")
    return {"save_strategy": "steps", "save_steps": every} if every else {"save_strategy": "no"}


def last_checkpoint(scratch: str | os.PathLike, resume: bool) -> str | None:
    """The last trainer checkpoint in ``scratch`` when resuming (None: start afresh, and say so when a resume
    was asked for and there is nothing to resume)."""
    found = sorted(Path(scratch).glob("checkpoint-*"), key=lambda p: int(p.name.rpartition("-")[2]))
    if not resume or not found:
        if resume:
            print(f"no checkpoint in {scratch} to resume from; starting afresh", flush=True)
        return None
    return str(found[-1])


def train_keeping_checkpoints(trainer, scratch: str, resume_from: str | None, keep_scratch: bool) -> None:
    """``trainer.train()``. On failure the scratch folder goes too (nothing half-written stays) unless it
    holds checkpoints to resume from."""
    try:
        trainer.train(resume_from_checkpoint=resume_from)
    except BaseException:
        if not keep_scratch:
            shutil.rmtree(scratch, ignore_errors=True)
        raise


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
