"""Regenerate the shipped VLA policy ``builtin:vla-metaworld``: expert demonstrations, then behaviour cloning.

    python -m embodied_prune.training.ship_vla            # into the package's assets folder

Demonstrations (60 per task, seed 0) are recorded into a temporary folder and deleted afterwards;
the policy is trained with the default :class:`~.manipulation.BCSettings` and saved in bfloat16
(a few MB), recording its settings and wall times in ``embodied_prune.json``. ``--noise`` (DART
demonstrations), ``--steps``, ``--bf16`` and ``--dagger-rounds`` (DAgger fine-tuning rounds) try other recipes;
the defaults regenerate the shipped policy.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from ..envs.manipulation.demos import generate_demos
from ..errors import EmbodiedPruneError
from ..io import atomic_write_text
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
    dagger_rounds: int = 0,
    dagger_episodes: int = 50,
    dagger_steps: int = 1500,
) -> Path:
    """Record the demonstrations, train the policy, save it as ``out/name``; the policy folder.

    With ``dagger_rounds`` > 0, each round records ``dagger_episodes`` rollouts per task of the current
    policy labelled by the expert and fine-tunes it for ``dagger_steps`` steps (learning rate 1e-4) on the
    demonstrations plus every round's rollouts so far.
    """
    if dagger_rounds < 0:
        raise EmbodiedPruneError(f"dagger_rounds must be 0 or more (--dagger-rounds), got {dagger_rounds}.")
    if dagger_episodes < 1 or dagger_steps < 1:
        raise EmbodiedPruneError(
            "dagger_episodes and dagger_steps must be 1 or more (--dagger-episodes, --dagger-steps), "
            f"got {dagger_episodes} and {dagger_steps}."
        )
    s = settings or BCSettings()
    with tempfile.TemporaryDirectory() as tmp:
        t_start = t0 = time.time()
        demos = generate_demos(Path(tmp) / "demos", episodes=episodes, progress=progress, noise=noise)
        record = {"demos_wall_s": time.time() - t0, "demo_episodes_per_task": episodes, "demo_noise": noise}
        print(f"demonstrations: {record['demos_wall_s']:.0f} s", flush=True)
        final = out / name
        policy = train_bc(
            demos,
            Path(tmp) / "bc" if dagger_rounds else final,
            s,
            overwrite=True,
            progress=progress,
            save_dtype=torch.float32 if dagger_rounds else torch.bfloat16,
            extra_record=record,
        )
        # the saved record is the last fine-tune's: keep the behaviour-cloning stage's steps and time in it
        bc = json.loads((policy / "embodied_prune.json").read_text())["history"][-1]
        record["bc"] = {"steps": bc["steps"], "wall_s": bc["wall_s"]}
        folders, rounds = [demos], []
        for r in range(dagger_rounds):
            t0 = time.time()
            corr = generate_demos(
                Path(tmp) / f"corrections{r}", episodes=dagger_episodes, seed=r, progress=progress, policy=policy
            )
            meta = json.loads((corr / "meta.json").read_text())["episodes"]
            rounds.append(
                {
                    "episodes_per_task": dagger_episodes,
                    "collect_s": time.time() - t0,
                    "policy_success": sum(e["success"] for e in meta) / len(meta),
                }
            )
            t1 = time.time()
            folders.append(corr)
            last = r == dagger_rounds - 1
            policy = train_bc(
                folders,
                final if last else Path(tmp) / f"round{r}",
                replace(s, steps=dagger_steps, learning_rate=1e-4),
                overwrite=True,
                progress=progress,
                save_dtype=torch.bfloat16 if last else torch.float32,
                extra_record=record if last else None,  # completed with the rounds below
                init=policy,
            )
            rounds[-1]["train_s"] = time.time() - t1
        if rounds:  # the last round's record was written before its training time was known: complete it
            meta_file = policy / "embodied_prune.json"
            saved = json.loads(meta_file.read_text())
            saved["history"][-1]["dagger"] = rounds
            saved["history"][-1]["recipe_wall_s"] = time.time() - t_start
            atomic_write_text(meta_file, json.dumps(saved, indent=2))
        return policy


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ASSETS, help=f"folder for the policy folder (default {ASSETS})")
    p.add_argument("--episodes", type=int, default=60, help="demonstrations per task (default 60)")
    p.add_argument("--noise", type=float, default=0.0, help="DART noise of the demonstrations (default 0)")
    p.add_argument("--steps", type=int, default=BCSettings.steps, help=f"BC steps (default {BCSettings.steps})")
    p.add_argument("--dagger-rounds", type=int, default=0, help="DAgger rounds after behaviour cloning (default 0)")
    p.add_argument(
        "--dagger-episodes", type=int, default=50, help="policy rollouts per task in each DAgger round (default 50)"
    )
    p.add_argument("--dagger-steps", type=int, default=1500, help="fine-tuning steps per DAgger round (default 1500)")
    p.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="train under bfloat16 autocast (see `train manipulation --bf16`; default: off)",
    )
    p.add_argument(
        "--visual-keep",
        type=float,
        default=1.0,
        help="share of visual tokens each training sample keeps (see `train manipulation --visual-keep`; default 1)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    a = p.parse_args(argv)
    settings = BCSettings(steps=a.steps, bf16=a.bf16, visual_keep=a.visual_keep)
    try:
        ship(
            a.out,
            a.episodes,
            not a.quiet,
            settings,
            a.noise,
            dagger_rounds=a.dagger_rounds,
            dagger_episodes=a.dagger_episodes,
            dagger_steps=a.dagger_steps,
        )
    except EmbodiedPruneError as e:
        p.error(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
