"""Regenerate the shipped pretrained driving controllers (``builtin:driving-smollm2-{sft,grpo}``).

    python -m embodied_prune.training.ship_pretrained --work runs/ship-smollm2     # SFT (~45 min), GRPO (~2 h)

SFT fine-tunes SmolLM2-135M-Instruct with LoRA on both RobotxR1 tasks (:meth:`.driving.SFTSettings.pretrained`),
GRPO goes on from it (:meth:`.driving.GRPOSettings.pretrained`, a trainer checkpoint every 10 steps: a killed run
resumes where it stopped when the same command is run again). Each run's merged float32 checkpoint stays in
``--work``; what ships (``assets/NAME``) is only its LoRA delta (``adapter/``, bf16, a few MB) and its side
file, merged into the base at first use (:func:`embodied_prune.models.builtin.merge_adapter`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from ..io import atomic_dir
from ..models.builtin import ADAPTER_DIR, ASSETS
from ..models.checkpoint import SIDE_FILE
from .driving import GRPOSettings, SFTSettings, train_grpo, train_sft

NAMES = {"sft": "driving-smollm2-sft", "grpo": "driving-smollm2-grpo"}


def install(run: Path, name: str, assets: Path = ASSETS) -> Path:
    """Copy the LoRA delta and side file of the training output ``run`` into ``assets/name`` (atomically)."""
    if not (run / ADAPTER_DIR / "adapter_config.json").is_file():
        raise SystemExit(f"{run} holds no LoRA adapter ({ADAPTER_DIR}/); it is not a pretrained controller's run.")
    record = json.loads((run / SIDE_FILE).read_text())["history"][-1]
    with atomic_dir(assets / name, overwrite=True) as tmp:
        shutil.copytree(run / ADAPTER_DIR, tmp / ADAPTER_DIR)
        shutil.copy(run / SIDE_FILE, tmp / SIDE_FILE)
        # PEFT records the base's folder, a path on the training machine; name the built-in it was trained on
        config = tmp / ADAPTER_DIR / "adapter_config.json"
        fields = json.loads(config.read_text())
        fields["base_model_name_or_path"] = record.get("base") or record.get("init")
        config.write_text(json.dumps(fields, indent=2, sort_keys=True) + "\n")
    return assets / name


def _done(run: Path) -> bool:
    return (run / "config.json").is_file() and (run / ADAPTER_DIR).is_dir()


def ship(work: Path, stages: tuple[str, ...], progress: bool = True) -> None:
    sft = work / NAMES["sft"]
    if "sft" in stages:
        if not _done(sft):
            print(f"SFT → {sft}", flush=True)
            train_sft(sft, SFTSettings.pretrained(), overwrite=True, progress=progress)
        print(f"installed {install(sft, NAMES['sft'])}", flush=True)
    if "grpo" in stages:
        grpo = work / NAMES["grpo"]
        if not _done(grpo):
            print(f"GRPO → {grpo}", flush=True)
            train_grpo(
                sft,
                grpo,
                GRPOSettings.pretrained(),
                overwrite=True,
                progress=progress,
                checkpoint_every=10,
                resume=True,
            )
        print(f"installed {install(grpo, NAMES['grpo'])}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True, help="folder for the full training outputs")
    p.add_argument("--stages", nargs="+", default=["sft", "grpo"], choices=["sft", "grpo"], help="default both")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    a = p.parse_args(argv)
    ship(a.work, tuple(a.stages), progress=not a.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
