"""Regenerate the shipped VLA policy ``builtin:vla-metaworld``: demonstrations, behaviour cloning, DAgger.

    python -m embodied_prune.training.ship_vla            # into the package's assets folder (~75 min on 2 cores)

The recipe (the defaults): 150 expert demonstrations per task (seed 0) recorded under DART noise 0.05
(the executed motion perturbed, the labels the expert's clean actions); 5,000 behaviour-cloning steps of
the default :class:`~.manipulation.BCSettings` in float32 with 16-pixel camera patches (81 visual tokens);
then four DAgger rounds: 50 rollouts per task of the current policy labelled by the expert, and 1,500
fine-tuning steps at 1e-4 on the demonstrations plus every round's rollouts. The stages live in a
temporary folder, deleted at the end (``--work DIR`` keeps every stage there, and a rerun continues after
the last finished one); the policy is saved in bfloat16 (a few MB) with its settings and every stage's
wall time in ``embodied_prune.json``.
``--episodes``, ``--noise``, ``--steps``, ``--patch``, ``--visual-keep``, ``--bf16/--no-bf16``, the backbone's
shape (``--layers``, ``--hidden-size``, ``--heads``, ``--kv-heads``, ``--intermediate-size``) and the
``--dagger-*`` flags try other recipes (``--dagger-rounds 0``: behaviour cloning only).
``--data-from WORK`` trains on another run's data instead of recording its own: the demonstrations and every
DAgger round's expert-labelled rollouts kept in that run's ``--work`` folder (the cameras' images do not depend
on the patch size, so a 16-pixel recipe's data trains an 8-pixel policy). ``builtin:vla-metaworld-deep``, the
16-layer policy for token pruning, is made this way from the default recipe's data::

    python -m embodied_prune.training.ship_vla --work W                  # the default recipe, its stages kept in W
    python -m embodied_prune.training.ship_vla --data-from W --name vla-metaworld-deep --patch 8 --layers 16 \
        --hidden-size 128 --heads 4 --kv-heads 2 --intermediate-size 256 --steps 4000 --dagger-rounds 0
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import torch

from ..envs.manipulation.demos import generate_demos
from ..envs.manipulation.render import DEFAULT_CAMERAS, cameras_for
from ..errors import EmbodiedPruneError
from ..evaluation.manipulation import record_corrections
from ..io import atomic_write_text
from ..models.builtin import ASSETS
from ..models.vla import TOWER_CAMERAS, load_vla, save_vla
from .manipulation import BCSettings, check_patch, check_shape, train_bc

NAME = "vla-metaworld"
BC_STEPS = 5000  # the recipe's behaviour-cloning steps (BCSettings' default is a shorter run)
# The recipe's camera patch size: 16-pixel patches (81 visual tokens) make every step about 3.5x cheaper than
# the default 8 (324 tokens), which is what fits the recipe in 90 minutes on 2 cores (docs/manipulation.md).
PATCH = 16


STAGES_FILE = "stages.json"
CHECKPOINT_EVERY = 100  # BC / DAgger steps between trainer checkpoints when the work folder is kept


def borrowed_data(work: Path) -> tuple[list[Path], dict]:
    """The data folders another recipe run kept in its work folder ``work``: its demonstrations and every finished
    DAgger round's rollouts, in the order made; and a record of them (that run's recipe, the stages, their
    recording wall time)."""
    file = Path(work) / STAGES_FILE
    if not file.is_file():
        raise EmbodiedPruneError(
            f"--data-from {work} holds no {STAGES_FILE}: point it at the --work folder of an earlier ship_vla run."
        )
    saved = json.loads(file.read_text())
    names = [n for n in saved["stages"] if (n == "demos" or n.startswith("corrections")) and (Path(work) / n).is_dir()]
    if "demos" not in names:
        raise EmbodiedPruneError(
            f"--data-from {work} has no finished demonstrations stage: let its ship_vla run record them first."
        )
    record = {
        "recipe": saved["recipe"],
        "stages": names,
        "wall_s": sum(saved["stages"][n]["wall_s"] for n in names),
    }
    return [Path(work) / n for n in names], record


def bc_recipe(s: BCSettings) -> dict:
    """The behaviour-cloning settings as a recipe records them: ``vision_layers`` only when set, so that work
    folders from before the option (whose recipes lack it) still match a run of their settings."""
    d = asdict(s)
    if d["vision_layers"] == 0:
        del d["vision_layers"]
    if d["vision_tower"] is None:
        del d["vision_tower"]
    return d


class _Stages:
    """The stages a recipe run has finished in its work folder, with their records (``stages.json``):
    a finished stage's folder is reused by a later run of the same recipe instead of being made again."""

    def __init__(self, work: Path, recipe: dict) -> None:
        self.work, self.file = work, work / STAGES_FILE
        self.saved = json.loads(self.file.read_text()) if self.file.is_file() else {"recipe": recipe, "stages": {}}
        if self.saved["recipe"] != recipe:
            changed = sorted(k for k in recipe if recipe[k] != self.saved["recipe"].get(k))
            raise EmbodiedPruneError(
                f"the work folder {work} holds the stages of another recipe (it differs in {', '.join(changed)}): "
                "rerun with its settings, or pass another --work folder."
            )
        self.reused: list[str] = []

    def run(self, name: str, make: Callable[[Path], dict | None]) -> tuple[Path, dict]:
        """Stage ``name``'s folder and record: reused when an earlier run finished it, else ``make(folder)``
        builds it (returning extra record fields) and its wall time is recorded."""
        folder = self.work / name
        done = list(self.saved["stages"])
        if name in done and folder.is_dir():
            self.reused.append(name)
            return folder, self.saved["stages"][name]
        if name in done:  # its folder is gone: the stages made from it are stale too, and are made again
            for later in done[done.index(name) :]:
                del self.saved["stages"][later]
        t0 = time.time()
        extra = make(folder) or {}
        # a stage resumed from a killed run's trainer checkpoint also spent that run's training time
        self.saved["stages"][name] = {"wall_s": time.time() - t0 + extra.get("resumed_wall_s", 0.0), **extra}
        atomic_write_text(self.file, json.dumps(self.saved, indent=2))
        return folder, self.saved["stages"][name]


def _resumed(policy: Path) -> dict:
    """The training time an earlier, killed run of this stage spent before the checkpoint it resumed from."""
    last = json.loads((policy / "embodied_prune.json").read_text())["history"][-1]
    return {"resumed_wall_s": last["resumed_wall_s"], "segments": last["segments"]} if last["segments"] > 1 else {}


def ship(
    out: Path,
    episodes: int = 150,
    progress: bool = True,
    settings: BCSettings | None = None,
    noise: float = 0.05,
    name: str = NAME,
    dagger_rounds: int = 4,
    dagger_episodes: int = 50,
    dagger_steps: int = 1500,
    work: Path | None = None,
    data_from: Path | None = None,
) -> Path:
    """Record the demonstrations, train the policy, save it as ``out/name`` (bfloat16); the policy folder.

    With ``dagger_rounds`` > 0, each round records ``dagger_episodes`` rollouts per task of the current
    policy labelled by the expert and fine-tunes it for ``dagger_steps`` steps (learning rate 1e-4) on the
    demonstrations plus every round's rollouts so far.

    The stages (``demos``, ``bc``, ``corrections<r>``, ``round<r>``: folders, policies in fp32) live in
    ``work``, a temporary folder unless given. A given ``work`` folder is kept, and a later call with the
    same recipe (more rounds allowed) continues after the last stage it finished; its record names the
    reused stages, and its wall times are those measured when each stage was made. A stage whose folder
    was deleted is made again, and so is every stage after it. Inside a stage, training keeps a trainer
    checkpoint every ``CHECKPOINT_EVERY`` steps in ``work``: a killed run goes on from the last one, and the
    stage's time adds the training time spent before it (``resumed_wall_s``; time spent on the tower feature
    cache before the kill is recorded in the cache's own ``meta.json``).

    With ``data_from`` (another run's ``work`` folder) no demonstrations are recorded (``episodes`` and ``noise``
    are unused): behaviour cloning and the rounds train on that run's demonstrations and rollouts
    (:func:`borrowed_data`), and the record names them (``data_from``) instead of ``demo_*`` fields.
    """
    if dagger_rounds < 0:
        raise EmbodiedPruneError(f"dagger_rounds must be 0 or more (--dagger-rounds), got {dagger_rounds}.")
    if dagger_episodes < 1 or dagger_steps < 1:
        raise EmbodiedPruneError(
            "dagger_episodes and dagger_steps must be 1 or more (--dagger-episodes, --dagger-steps), "
            f"got {dagger_episodes} and {dagger_steps}."
        )
    s = settings or BCSettings(steps=BC_STEPS, patch=PATCH)
    # a policy seeing through a vision tower sees the cameras at the tower's sizes (224 px front: 256 patches)
    cameras = cameras_for(TOWER_CAMERAS) if s.vision_tower else DEFAULT_CAMERAS
    if not s.vision_tower:
        check_patch(s.patch, [c.size for c in cameras])  # before minutes of demonstrations, not after
    check_shape(s)
    borrowed, data = borrowed_data(Path(data_from)) if data_from is not None else (None, None)
    recipe = {
        **({"data_from": data} if data else {"episodes": episodes, "noise": noise}),
        "bc": bc_recipe(s),
        "dagger_episodes": dagger_episodes,
        "dagger_steps": dagger_steps,
    }
    # a kept work folder makes training resumable inside a stage too: a trainer checkpoint every CHECKPOINT_EVERY
    # steps (a killed BC run of an hour redoes a few minutes, not the hour)
    run = {"checkpoint_every": CHECKPOINT_EVERY, "resume": True} if work is not None else {}
    with contextlib.ExitStack() as stack:
        if work is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        else:
            Path(work).mkdir(parents=True, exist_ok=True)
        stages = _Stages(Path(work), recipe)

        def record_demos(folder: Path) -> None:
            generate_demos(folder, episodes=episodes, progress=progress, noise=noise, overwrite=True, cameras=cameras)

        if borrowed is None:
            demos, info = stages.run("demos", record_demos)
            record = {"demos_wall_s": info["wall_s"], "demo_episodes_per_task": episodes, "demo_noise": noise}
            print(f"demonstrations: {record['demos_wall_s']:.0f} s", flush=True)
            folders = [demos]
        else:  # the recording time was spent by the other run: recorded apart, not in this recipe's wall time
            record = {"data_from": {"work": str(data_from), **data}}
            folders = list(borrowed)

        def behaviour_cloning(folder: Path, data: tuple = tuple(folders)) -> dict:
            train_bc(list(data) if len(data) > 1 else data[0], folder, s, overwrite=True, progress=progress, **run)
            return _resumed(folder)

        policy, info = stages.run("bc", behaviour_cloning)
        record["bc"] = {"steps": s.steps, "wall_s": info["wall_s"]}
        rounds = []
        tune = replace(s, steps=dagger_steps, learning_rate=1e-4)
        for r in range(dagger_rounds):

            def rollouts(folder: Path, r: int = r, policy: Path = policy) -> dict:
                record_corrections(policy, folder, episodes=dagger_episodes, seed=r, progress=progress, overwrite=True)
                meta = json.loads((folder / "meta.json").read_text())["episodes"]
                return {"policy_success": sum(e["success"] for e in meta) / len(meta)}

            corr, collect = stages.run(f"corrections{r}", rollouts)
            folders.append(corr)

            def fine_tune(folder: Path, init: Path = policy, data: tuple = tuple(folders)) -> dict:
                train_bc(list(data), folder, tune, overwrite=True, progress=progress, init=init, **run)
                return _resumed(folder)

            policy, trained = stages.run(f"round{r}", fine_tune)
            rounds.append(
                {
                    "episodes_per_task": dagger_episodes,
                    "collect_s": collect["wall_s"],
                    "policy_success": collect["policy_success"],
                    "train_s": trained["wall_s"],
                }
            )
        # the shipped record is the last stage's training record plus the recipe's stages and wall times
        last = json.loads((policy / "embodied_prune.json").read_text())["history"][-1]
        total = (
            record.get("demos_wall_s", 0.0)
            + record["bc"]["wall_s"]
            + sum(x["collect_s"] + x["train_s"] for x in rounds)
        )
        final = {**last, **record, "recipe_wall_s": total}
        if rounds:
            final["dagger"] = rounds
        if stages.reused:
            final["reused_stages"] = {"work": str(work), "stages": stages.reused}
        model, tokenizer = load_vla(policy)
        return save_vla(model.to(torch.bfloat16), tokenizer, out / name, history=[final], overwrite=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ASSETS, help=f"folder for the policy folder (default {ASSETS})")
    p.add_argument(
        "--name",
        default=NAME,
        help=f"name of the policy folder inside --out, i.e. the built-in name (default {NAME}; the 8-pixel "
        "policy for token pruning is vla-metaworld-hires)",
    )
    p.add_argument("--episodes", type=int, default=150, help="demonstrations per task (default 150)")
    p.add_argument("--noise", type=float, default=0.05, help="DART noise of the demonstrations (default 0.05)")
    p.add_argument("--steps", type=int, default=BC_STEPS, help=f"BC steps (default {BC_STEPS})")
    p.add_argument("--dagger-rounds", type=int, default=4, help="DAgger rounds after behaviour cloning (default 4)")
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
        "--patch",
        type=int,
        default=PATCH,
        help=f"camera patch size in pixels, one visual token per patch (see `train manipulation --patch`; "
        f"default {PATCH})",
    )
    p.add_argument(
        "--visual-keep",
        type=float,
        default=1.0,
        help="share of visual tokens each training sample keeps (see `train manipulation --visual-keep`; default 1)",
    )
    shape = BCSettings()
    p.add_argument(
        "--vision-layers",
        type=int,
        default=shape.vision_layers,
        help="transformer layers mixing each camera's patch tokens before the backbone, as a VLA's vision tower "
        f"does (default {shape.vision_layers}: bare patch embeddings)",
    )
    p.add_argument(
        "--vision-tower",
        default=None,
        metavar="SPEC",
        help="see every camera through this frozen pretrained tower (e.g. builtin:dinov2-small: 224 px front, "
        "112 px side and wrist, 14-pixel patches, 384 visual tokens; --patch and --vision-layers unused); its "
        "features of each demonstration frame are computed once and cached beside the frames (default: none)",
    )
    p.add_argument("--layers", type=int, default=shape.layers, help=f"backbone decoder layers (default {shape.layers})")
    p.add_argument(
        "--hidden-size", type=int, default=shape.hidden_size, help=f"backbone width (default {shape.hidden_size})"
    )
    p.add_argument("--heads", type=int, default=shape.heads, help=f"attention heads (default {shape.heads})")
    p.add_argument(
        "--kv-heads",
        type=int,
        default=shape.kv_heads,
        help=f"key/value heads, dividing --heads (default {shape.kv_heads})",
    )
    p.add_argument(
        "--intermediate-size",
        type=int,
        default=shape.intermediate_size,
        help=f"MLP width (default {shape.intermediate_size})",
    )
    p.add_argument(
        "--work",
        type=Path,
        default=None,
        help="keep every stage here (demonstrations, the policy after BC and after each round, stages.json) "
        "and, run again with the same settings, continue after the last finished stage "
        "(default: a temporary folder, deleted at the end)",
    )
    p.add_argument(
        "--data-from",
        type=Path,
        default=None,
        metavar="WORK",
        help="train on the demonstrations and DAgger rollouts kept in another run's --work folder instead of "
        "recording new demonstrations (--episodes and --noise unused; e.g. an 8-pixel or deeper policy from the "
        "default recipe's data)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    a = p.parse_args(argv)
    recipe = (
        "steps",
        "bf16",
        "visual_keep",
        "patch",
        "layers",
        "hidden_size",
        "heads",
        "kv_heads",
        "intermediate_size",
        "vision_layers",
        "vision_tower",
    )
    settings = BCSettings(**{name: getattr(a, name) for name in recipe})  # the flags' names are the fields' names
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
            work=a.work,
            name=a.name,
            data_from=a.data_from,
        )
    except EmbodiedPruneError as e:
        p.error(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
