"""Regenerate the shipped VLA policy ``builtin:vla-metaworld``: expert demonstrations, then behaviour cloning.

    python -m embodied_prune.training.ship_vla            # into the package's assets folder

Demonstrations (60 per task, seed 0) are recorded into a temporary folder and deleted afterwards;
the policy is trained with the default :class:`~.manipulation.BCSettings` and saved in bfloat16
(a few MB), recording its settings and wall times in ``embodied_prune.json``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from ..envs.manipulation.demos import generate_demos
from ..models.builtin import ASSETS
from .manipulation import BCSettings, train_bc

NAME = "vla-metaworld"


def ship(out: Path, episodes: int = 60, progress: bool = True, settings: BCSettings | None = None) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        demos = generate_demos(Path(tmp) / "demos", episodes=episodes, progress=progress)
        demo_s = time.time() - t0
        print(f"demonstrations: {demo_s:.0f} s", flush=True)
        return train_bc(
            demos,
            out / NAME,
            settings or BCSettings(),
            overwrite=True,
            progress=progress,
            save_dtype=torch.bfloat16,
            extra_record={"demos_wall_s": demo_s, "demo_episodes_per_task": episodes},
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ASSETS, help=f"folder for the policy folder (default {ASSETS})")
    p.add_argument("--episodes", type=int, default=60, help="demonstrations per task (default 60)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    a = p.parse_args(argv)
    ship(a.out, a.episodes, progress=not a.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
