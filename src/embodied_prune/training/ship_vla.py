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


def ship(
    out: Path,
    episodes: int = 60,
    progress: bool = True,
    settings: BCSettings | None = None,
    noise: float = 0.0,
    name: str = NAME,
) -> Path:
    """Record the demonstrations, train the policy, save it as ``out/name``; the policy folder."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        demos = generate_demos(Path(tmp) / "demos", episodes=episodes, progress=progress, noise=noise)
        demo_s = time.time() - t0
        print(f"demonstrations: {demo_s:.0f} s", flush=True)
        return train_bc(
            demos,
            out / name,
            settings or BCSettings(),
            overwrite=True,
            progress=progress,
            save_dtype=torch.bfloat16,
            extra_record={"demos_wall_s": demo_s, "demo_episodes_per_task": episodes, "demo_noise": noise},
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ASSETS, help=f"folder for the policy folder (default {ASSETS})")
    p.add_argument("--episodes", type=int, default=60, help="demonstrations per task (default 60)")
    p.add_argument("--noise", type=float, default=0.0, help="DART noise of the demonstrations (default 0)")
    p.add_argument("--steps", type=int, default=BCSettings.steps, help=f"BC steps (default {BCSettings.steps})")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    a = p.parse_args(argv)
    ship(a.out, a.episodes, progress=not a.quiet, settings=BCSettings(steps=a.steps), noise=a.noise)
    return 0


if __name__ == "__main__":
    sys.exit(main())
