"""Behaviour cloning of the tiny VLA on expert demonstrations (multi-task), with ``transformers.Trainer``.

Each sample is one step of one demonstration: both camera images (randomly shifted by a few pixels,
the standard augmentation for pixel-based imitation), the proprioception, the task's instruction and
the expert's next ``chunk`` actions (the last action repeated past the episode's end). Loss: L1, plus
(when the demonstrations carry the simulator's private object and goal positions) an auxiliary L1 loss
on where the object and the goal are relative to the gripper, read from the action queries: a training
target only, never an input, which teaches the backbone to find them in the images.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from transformers import LlamaConfig, Trainer, TrainingArguments

from ..envs.manipulation.demos import (
    BUILTIN_FRAMES,
    DemoSet,
    check_cameras,
    demo_folders,
    demos_path,
    load_demo_folders,
    load_demos,
)
from ..envs.manipulation.tasks import TASKS
from ..errors import EmbodiedPruneError
from ..models.devices import default_device, trainer_precision
from ..models.vla import (
    TOWER_PATCH,
    TinyVLA,
    TinyVLAConfig,
    VisionTower,
    build_tokenizer,
    encode_instructions,
    load_vla,
    patch_fits,
    save_vla,
)
from .runs import (
    WallClock,
    checkpointing_args,
    last_checkpoint,
    prepare_run,
    train_keeping_checkpoints,
    use_compact_progress,
)
from .tower_features import build_cache, load_cache


@dataclass
class BCSettings:
    """Behaviour-cloning recipe and the policy's shape."""

    steps: int = 4500
    batch_size: int = 16
    learning_rate: float = 3e-4
    hidden_size: int = 192
    layers: int = 4
    heads: int = 6
    kv_heads: int = 2
    intermediate_size: int = 512
    chunk: int = 8
    patch: int = 8  # camera patch size in pixels, every camera (16: a quarter of the visual tokens)
    shift: float = 1 / 32  # random-shift augmentation, as a fraction of the image size
    aux_weight: float = 0.5  # auxiliary object/goal-position loss (0: off; needs demonstrations with it)
    seed: int = 0
    bf16: bool = False  # bfloat16 autocast for the forward and backward passes (weights and optimizer stay fp32)
    visual_keep: float = 1.0  # share of visual tokens each training sample keeps (random; 1: all; see TinyVLA)
    vision_layers: int = 0  # transformer layers mixing each camera's patch tokens before the projector (0: none)
    # a frozen pretrained vision tower every camera is seen through (e.g. "builtin:dinov2-small"; None: the conv
    # encoders); its patch size replaces ``patch``, and training reads its features from a cache (tower_features)
    vision_tower: str | None = None


class DemoSteps(Dataset):
    """Every step of every demonstration as a training sample; with ``features`` (per episode, camera name → the
    vision tower's features of each frame, :func:`~.tower_features.load_cache`) a sample carries those instead
    of the images (no augmentation: the features are fixed)."""

    def __init__(
        self,
        demos: DemoSet,
        tokenizer,
        chunk: int,
        instruction_len: int,
        shift: float,
        seed: int,
        features: list[dict[str, np.ndarray]] | None = None,
    ) -> None:
        if features is not None and len(features) != len(demos.episodes):
            raise EmbodiedPruneError(
                f"{len(features)} episodes of tower features for {len(demos.episodes)} demonstration episodes: "
                "rebuild the feature cache of these demonstrations."
            )
        self.features = features
        self.episodes = demos.episodes
        self.index = [(e, t) for e, ep in enumerate(self.episodes) for t in range(len(ep["action"]))]
        self.chunk = chunk
        self.shift = shift
        self.rng = np.random.default_rng(seed)
        names = sorted({ep["task"] for ep in self.episodes})
        enc = encode_instructions(tokenizer, [TASKS.get(n).instruction for n in names], instruction_len)
        self.instr = {n: (enc["input_ids"][i], enc["attention_mask"][i]) for i, n in enumerate(names)}
        self.cameras = [c["name"] for c in demos.meta["cameras"]]
        self.aux = aux_targets(demos)  # per episode (T, 6), or None when the demonstrations lack them

    def __len__(self) -> int:
        return len(self.index)

    def _shifted(self, image: np.ndarray) -> np.ndarray:
        if self.shift <= 0:
            return image
        pad = max(1, round(image.shape[0] * self.shift))
        padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
        dy, dx = self.rng.integers(0, 2 * pad + 1, size=2)
        return padded[dy : dy + image.shape[0], dx : dx + image.shape[1]]

    def __getitem__(self, i: int) -> dict:
        e, t = self.index[i]
        ep = self.episodes[e]
        idx = np.minimum(np.arange(t, t + self.chunk), len(ep["action"]) - 1)
        ids, mask = self.instr[ep["task"]]
        extra = {"aux_targets": torch.from_numpy(self.aux[e][t])} if self.aux is not None else {}
        if self.features is not None:
            extra["features"] = {c: torch.from_numpy(f[t]) for c, f in self.features[e].items()}
        else:
            extra["images"] = {c: torch.from_numpy(self._shifted(ep[c][t])) for c in self.cameras}
        return {
            **extra,
            "input_ids": ids,
            "attention_mask": mask,
            "proprio": torch.from_numpy(ep["proprio"][t]),
            "actions": torch.from_numpy(ep["action"][idx]),
        }


def aux_targets(demos: DemoSet) -> list[np.ndarray] | None:
    """Per episode, the auxiliary targets of every step: object and goal positions minus the gripper's
    ((T, 6), metres); None when any episode was recorded without the privileged positions."""
    if not all("privileged" in ep for ep in demos.episodes):
        return None
    return [(ep["privileged"] - np.tile(ep["proprio"][:, :3], 2)).astype(np.float32) for ep in demos.episodes]


def collate(rows: list[dict]) -> dict:
    """Stack samples (the images or features dict camera by camera; a batch of features has images None)."""
    per_camera = ("images", "features")
    out = {k: torch.stack([r[k] for r in rows]) for k in rows[0] if k not in per_camera}
    for key in per_camera:
        if key in rows[0]:
            out[key] = {c: torch.stack([r[key][c] for r in rows]) for c in rows[0][key]}
    out.setdefault("images", None)
    return out


def check_patch(patch: int, sizes: list[int]) -> None:
    """Refuse, in one sentence, a patch size the camera encoder cannot use (:func:`~..models.vla.patch_fits`)."""
    if not all(patch_fits(z, patch) for z in sizes):
        raise EmbodiedPruneError(
            f"patch {patch} does not fit the cameras (image sizes {sorted(set(sizes))}): --patch must be a "
            "multiple of 4 that divides every image size (e.g. 8 or 16 for 112 and 64 pixels)."
        )


def check_tower_sizes(sizes: list[int]) -> None:
    """Refuse, in one sentence, camera sizes a vision tower cannot cut into its patches."""
    if any(z % TOWER_PATCH for z in sizes):
        raise EmbodiedPruneError(
            f"a policy seeing through a vision tower needs camera sizes that are multiples of {TOWER_PATCH} pixels, "
            f"but the demonstrations were recorded at {sorted(set(sizes))}: record them at the tower's sizes "
            "(e.g. 224 px front, 112 px side and wrist: generate_demos(..., cameras=cameras_for(TOWER_CAMERAS)))."
        )


def check_shape(s: BCSettings) -> None:
    """Refuse, in one sentence, a backbone shape that cannot be built (sizes below 1, or a width the attention
    heads do not divide, or query heads the key/value heads do not divide)."""
    if min(s.layers, s.hidden_size, s.heads, s.kv_heads, s.intermediate_size) < 1:
        raise EmbodiedPruneError(
            "--layers, --hidden-size, --heads, --kv-heads and --intermediate-size must be at least 1, got "
            f"{s.layers}, {s.hidden_size}, {s.heads}, {s.kv_heads} and {s.intermediate_size}."
        )
    if s.vision_layers < 0:
        raise EmbodiedPruneError(f"--vision-layers must be 0 or more, got {s.vision_layers}.")
    if s.hidden_size % s.heads or s.heads % s.kv_heads:
        raise EmbodiedPruneError(
            f"--hidden-size {s.hidden_size} must be a multiple of --heads {s.heads}, and --heads a multiple of "
            f"--kv-heads {s.kv_heads} (grouped-query attention); e.g. --hidden-size 192 --heads 6 --kv-heads 2."
        )


def build_policy(demos: DemoSet, s: BCSettings) -> tuple[TinyVLA, object]:
    """A fresh policy and tokenizer for ``demos``' tasks and cameras, proprioception statistics set."""
    tokenizer = build_tokenizer([TASKS.get(n).instruction for n in TASKS.names()])
    proprio = np.concatenate([ep["proprio"] for ep in demos.episodes])
    patch = TOWER_PATCH if s.vision_tower else s.patch
    cameras = [[c["name"], c["size"], patch] for c in demos.meta["cameras"]]
    tower = (
        {"vision_tower": s.vision_tower, "vision_dim": VisionTower(s.vision_tower).hidden_size()}
        if s.vision_tower
        else {}
    )
    aux: dict = {}
    rows = aux_targets(demos) if s.aux_weight > 0 else None
    if rows is not None:
        targets = np.concatenate(rows)
        aux = {
            "aux_dim": targets.shape[1],
            "aux_weight": s.aux_weight,
            "aux_mean": targets.mean(0).tolist(),
            "aux_std": np.maximum(targets.std(0), 1e-3).tolist(),
        }
    cfg = TinyVLAConfig(
        backbone_config=LlamaConfig(
            hidden_size=s.hidden_size,
            num_hidden_layers=s.layers,
            num_attention_heads=s.heads,
            num_key_value_heads=s.kv_heads,
            intermediate_size=s.intermediate_size,
            vocab_size=len(tokenizer),
            max_position_embeddings=1024,
            tie_word_embeddings=False,
        ),
        cameras=cameras,
        vision_layers=s.vision_layers,
        chunk=s.chunk,
        **tower,
        proprio_mean=proprio.mean(0).tolist(),
        proprio_std=np.maximum(proprio.std(0), 1e-3).tolist(),
        **aux,
    )
    return TinyVLA(cfg), tokenizer


def train_bc(
    demos: str | os.PathLike | list,
    out: str | os.PathLike,
    settings: BCSettings | None = None,
    overwrite: bool = False,
    progress: bool = True,
    save_dtype: torch.dtype = torch.float32,
    init: str | os.PathLike | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
) -> Path:
    """Train a policy on the demonstration folder ``demos`` (or several: a list or a comma-separated
    string, e.g. demonstrations plus a policy's labelled rollouts); save it to ``out`` (weights in
    ``save_dtype``). With ``init`` (a policy folder) that policy is fine-tuned instead of a fresh one
    built, and the settings' shape fields are ignored. ``checkpoint_every`` / ``resume``: resumable
    training (:func:`fit`); the checkpoints live in ``.<out name>.trainer`` beside ``out`` until it is saved.
    A resumed run must be given the same demonstrations and settings (the checkpoint's shapes are not
    those of another policy, and its data position means nothing for other data)."""
    s = settings or BCSettings()
    if not 0.0 < s.visual_keep <= 1.0:
        raise EmbodiedPruneError(f"visual_keep must be in (0, 1] (--visual-keep), got {s.visual_keep}.")
    if init is None:
        check_shape(s)  # a fine-tuned policy keeps its own shape
        tower = s.vision_tower
    else:
        model, tokenizer = load_vla(init)
        model = model.float()
        tower = model.config.vision_tower
    demo_set = load_demo_folders(demos, images=not tower)  # a tower policy trains on cached features
    if init is None and s.vision_tower:
        check_tower_sizes([c["size"] for c in demo_set.meta["cameras"]])
    elif init is None:
        check_patch(s.patch, [c["size"] for c in demo_set.meta["cameras"]])
    else:
        check_cameras(demo_set, model.config.cameras, f"the demonstrations {demos}")
    scratch = prepare_run(out, overwrite, s.seed)
    if init is None:
        model, tokenizer = build_policy(demo_set, s)
    model.train_visual_keep = s.visual_keep  # this run's token dropout (not saved: a loaded policy keeps all)
    features = None
    if model.tower is not None:  # the frozen tower's features, computed once per frame (tower_features)
        features = []
        for folder in demo_folders(demos):
            build_cache(
                folder, model.config.vision_tower, model.config.cameras, default_device() or "cpu", progress=progress
            )
            features += load_cache(folder, model.config.vision_tower, model.config.cameras)
    cfg = model.config
    data = DemoSteps(demo_set, tokenizer, cfg.chunk, cfg.instruction_len, s.shift, s.seed, features)
    model, clock = fit(
        model,
        data,
        s.steps,
        s.batch_size,
        s.learning_rate,
        s.seed,
        scratch,
        progress,
        bf16=s.bf16,
        checkpoint_every=checkpoint_every,
        resume=resume,
    )
    record = {
        "op": "train",
        "stage": "bc",
        "demos": [str(d) for d in demos] if isinstance(demos, list | tuple) else str(demos),
        "init": None if init is None else str(init),
        "samples": len(data),
        "aux_loss": data.aux is not None and model.aux_head is not None,
        **asdict(s),
        "wall_s": clock.elapsed(),
        "segments": clock.segments,
        "resumed_wall_s": clock.prior,
    }
    return save_vla(model.to(save_dtype), tokenizer, out, history=[record], overwrite=overwrite)


def fit(
    model,
    data: Dataset,
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    scratch: str,
    progress: bool,
    bf16: bool = False,
    checkpoint_every: int = 0,
    resume: bool = False,
) -> tuple[torch.nn.Module, WallClock]:
    """Train ``model`` (any module whose forward takes a collated batch and returns ``{"loss": …}``) on
    ``data`` for ``steps`` AdamW steps with a cosine schedule, through ``transformers.Trainer``.

    ``bf16`` runs the passes under bfloat16 autocast (Trainer's mixed precision, also on CPU), the
    master weights and AdamW state staying fp32: on a CPU with AVX512-BF16 a step of the default policy
    is 1.1–1.3× faster, to the same held-out error after 600 steps; its effect on closed-loop success is
    not established (a bf16-trained candidate did worse, with other changes; docs/manipulation.md).
    Without bfloat16 support in the hardware it is slower, not faster.

    ``checkpoint_every`` > 0 saves a trainer checkpoint (weights, AdamW state, schedule, data position) every
    that many steps into ``scratch``, kept when the run fails or is killed; ``resume`` then goes on from the
    last one (a run killed at step 2,000 of 3,000 redoes at most ``checkpoint_every`` steps). Returns the
    trained model and the run's wall clock (summed over resumed segments)."""
    args = TrainingArguments(
        output_dir=scratch,
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=min(100, steps // 10),
        weight_decay=0.01,
        **trainer_precision(default_device() or torch.device("cpu"), torch.bfloat16 if bf16 else None),
        report_to=[],
        **checkpointing_args(checkpoint_every),
        save_total_limit=1,
        logging_steps=25,
        seed=seed,
        data_seed=seed,
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )
    resume_from = last_checkpoint(scratch, resume)
    if resume_from is None:
        shutil.rmtree(scratch, ignore_errors=True)  # a killed run's checkpoints, not asked for: start clean
    clock = WallClock(resume_from)
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=collate, callbacks=[clock])
    use_compact_progress(trainer, ("loss",), progress)
    train_keeping_checkpoints(trainer, scratch, resume_from, keep_scratch=checkpoint_every > 0)
    shutil.rmtree(scratch, ignore_errors=True)
    return trainer.model, clock


def policy_calibration(
    model: TinyVLA, tokenizer, demos: str | os.PathLike | None, n_samples: int = 32, batch_size: int = 8, seed: int = 0
) -> list[dict]:
    """Calibration inputs for pruning a policy: ``n_samples`` seeded steps of a demonstration folder (None or
    ``"random"``: the shipped frames, :data:`~embodied_prune.envs.manipulation.demos.BUILTIN_FRAMES`), as ready
    ``model(**batch)`` dicts (images, instruction, proprioception; no augmentation)."""
    if demos is None or str(demos) == "random":
        demos = BUILTIN_FRAMES
    if not (demos_path(demos) / "meta.json").is_file():
        raise EmbodiedPruneError(
            f"calibrating a VLA policy needs its inputs, not text: pass --calibration DEMOS_FOLDER (made by "
            f"`embodied-prune demos manipulation`) or leave it out for {BUILTIN_FRAMES}, got {demos!r}."
        )
    demo_set = load_demos(demos)
    check_cameras(demo_set, model.config.cameras, f"the calibration demonstrations {demos}")
    data = DemoSteps(demo_set, tokenizer, model.config.chunk, model.config.instruction_len, 0.0, seed)
    picks = np.random.default_rng(seed).choice(len(data), size=min(n_samples, len(data)), replace=False)
    rows = [data[int(i)] for i in picks]
    out = []
    for start in range(0, len(rows), batch_size):
        batch = collate(rows[start : start + batch_size])
        batch.pop("actions")
        batch.pop("aux_targets", None)
        batch["bos_id"] = tokenizer.bos_token_id
        out.append(batch)
    return out


__all__ = [
    "BCSettings",
    "DemoSteps",
    "build_policy",
    "check_patch",
    "check_shape",
    "check_tower_sizes",
    "fit",
    "policy_calibration",
    "train_bc",
]
