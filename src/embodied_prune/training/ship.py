"""Regenerate the shipped driving controllers (``builtin:driving-<size>-{sft,grpo}``).

    python -m embodied_prune.training.ship            # all sizes, into the package's assets folder

Each size is trained by SFT from scratch, then by GRPO from its SFT checkpoint, with the default
settings of :mod:`.driving` and seed 0; the checkpoints are saved in bfloat16 (a few MB each) and
record their settings and wall time in ``embodied_prune.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..models.builtin import ASSETS
from ..models.ladder import SIZES
from .driving import GRPOSettings, SFTSettings, train_grpo, train_sft


def ship(sizes: list[str], out: Path, stages: tuple[str, ...] = ("sft", "grpo"), progress: bool = True) -> None:
    for size in sizes:
        sft = out / f"driving-{size}-sft"
        if "sft" in stages:
            print(f"[{size}] SFT → {sft}", flush=True)
            train_sft(sft, SFTSettings(size=size), overwrite=True, save_dtype=torch.bfloat16, progress=progress)
        if "grpo" in stages:
            grpo = out / f"driving-{size}-grpo"
            print(f"[{size}] GRPO → {grpo}", flush=True)
            train_grpo(
                grpo_init(sft), grpo, GRPOSettings(), overwrite=True, save_dtype=torch.bfloat16, progress=progress
            )


def grpo_init(sft: Path) -> str:
    """How GRPO names the SFT checkpoint ``sft`` it starts from: ``builtin:<folder>`` when it lies in the package's
    assets folder (so the GRPO checkpoint records a name, not this machine's path), else its path."""
    return f"builtin:{sft.name}" if sft.parent.resolve() == ASSETS.resolve() else str(sft)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES), help="sizes to train (default all)")
    p.add_argument(
        "--stages", nargs="+", default=["sft", "grpo"], choices=["sft", "grpo"], help="stages (default both)"
    )
    p.add_argument("--out", type=Path, default=ASSETS, help=f"folder for the checkpoints (default {ASSETS})")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    a = p.parse_args(argv)
    ship(a.sizes, a.out, tuple(a.stages), progress=not a.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
