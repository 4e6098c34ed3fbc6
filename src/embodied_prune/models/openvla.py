"""Real OpenVLA / OpenVLA-OFT checkpoints in the same evaluation and pruning code as the tiny VLA.

An OpenVLA checkpoint on the Hugging Face hub (``openvla/openvla-7b``, or a fine-tuned OpenVLA-OFT) is a
Prismatic model whose code ships in the folder (``trust_remote_code``): ``vision_backbone`` (a ViT
``featurizer``, plus a ``fused_featurizer`` for the SigLIP + DINOv2 variant), ``projector`` and
``language_model`` (a ``LlamaForCausalLM``). Its sequence is ``[BOS, patch tokens, prompt tokens]``,
the same layout as our tiny VLA's, and ``predict_action`` returns one action (OpenVLA: 7 de-tokenised
values) or, for OpenVLA-OFT, an action chunk.

What plugs in where:

- **pruning** — :data:`OPENVLA_ADAPTER` points the pruning code at ``language_model.model.layers`` and
  the language model's config (registered for the ``openvla`` and ``prismatic`` model types), so
  structured, magnitude, Wanda, SparseGPT and 2:4 pruning work unchanged; calibration batches are the
  processor's outputs on demonstration frames (:func:`openvla_calibration`), fed as ``model(**batch)``;
- **evaluation** — :class:`OpenVLAPolicy` has the interface of
  :class:`~embodied_prune.evaluation.manipulation.VLAPolicy` (``reset``, ``act``, ``latencies_ms``), so
  ``eval manipulation --model DIR --trust-remote-code`` runs it in the Meta-World episodes;
  :func:`load_openvla` loads the folder's own classes from its ``auto_map`` (transformers 5 no longer
  has ``AutoModelForVision2Seq``, the auto class OpenVLA's config names).

- **visual-token pruning** — ``OpenVLAPolicy(token_pruner=...)`` (``eval manipulation --token-pruner``) lets a
  pruner drop patch tokens between ``language_model.model``'s decoder layers through forward hooks
  (:class:`~embodied_prune.tokens.hooks.TokenPruningHooks`), whatever the checkpoint's own code does around
  them; SpecPrune's frame differences compare the camera images on the model's patch grid (:func:`token_cameras`).

Not covered: a real 7 B checkpoint in our tests (nothing is downloaded here); the tests run every path above on
a tiny stand-in with the same module names, code loaded from its folder exactly as a hub checkpoint's is.
OpenVLA's remote code was written for transformers 4.40; whether it imports under transformers 5 is up
to that code.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch

from ..errors import EmbodiedPruneError
from .adapters import ADAPTERS

OPENVLA_ADAPTER = ADAPTERS.get("openvla")
OPENVLA_MODEL_TYPES = ("openvla", "prismatic")
PROMPT = "In: What action should the robot take to {instruction}?\nOut:"
# the auto classes a Prismatic config's auto_map may name for the model (the first one present is used)
MODEL_AUTO_CLASSES = ("AutoModelForVision2Seq", "AutoModelForImageTextToText", "AutoModelForCausalLM")


def is_openvla_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a checkpoint folder whose config declares an OpenVLA / Prismatic model."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("model_type") in OPENVLA_MODEL_TYPES
    except json.JSONDecodeError:
        return False


def load_openvla(path: str | os.PathLike, trust_remote_code: bool = False, dtype: torch.dtype = torch.float32):
    """The model and processor of an OpenVLA folder, built from the classes its ``auto_map`` names.

    Running that code is what ``trust_remote_code`` means: without the flag the folder is refused.
    """
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    path = Path(path)
    if not trust_remote_code:
        raise EmbodiedPruneError(
            f"{path} is an OpenVLA checkpoint whose model code ships in the folder; read that code, then pass "
            "--trust-remote-code to run it."
        )
    auto_map = json.loads((path / "config.json").read_text()).get("auto_map", {})
    model_ref = next((auto_map[k] for k in MODEL_AUTO_CLASSES if k in auto_map), None)
    proc_ref = auto_map.get("AutoProcessor") or _processor_ref(path)
    if model_ref is None or proc_ref is None:
        raise EmbodiedPruneError(
            f"{path}/config.json names no model class and processor class in its auto_map "
            f"(looked for {', '.join(MODEL_AUTO_CLASSES)} and AutoProcessor); re-export the checkpoint with its code."
        )
    model_cls = get_class_from_dynamic_module(model_ref, str(path))
    proc_cls = get_class_from_dynamic_module(proc_ref, str(path))
    model = model_cls.from_pretrained(str(path), dtype=dtype).eval()
    processor = proc_cls.from_pretrained(str(path), trust_remote_code=True)
    return model, processor


def _processor_ref(path: Path) -> str | None:
    f = path / "processor_config.json"
    if f.is_file():
        return json.loads(f.read_text()).get("auto_map", {}).get("AutoProcessor")
    return None


def visual_token_count(model) -> int:
    """Patch tokens an OpenVLA query carries: patches per image × images in the input."""
    vb = model.vision_backbone
    per_image = vb.featurizer.patch_embed.num_patches
    return per_image * int(getattr(vb, "num_images_in_input", 1))


def image_size(model) -> int:
    """The side in pixels of the images an OpenVLA model's processor feeds it (224 unless its config says)."""
    return int((getattr(model.config, "image_sizes", None) or [224])[0])


def token_cameras(model, cameras: tuple[str, ...] = ("front",)) -> list[list]:
    """``[name, image size, patch]`` per input image of an OpenVLA model, on its patch grid (what a token
    pruner's frame differences compare): the processor's image size and the ViT's patches per side."""
    per_image = visual_token_count(model) // int(getattr(model.vision_backbone, "num_images_in_input", 1))
    size = image_size(model)
    side = math.isqrt(per_image)
    if side * side != per_image or size % side:
        raise EmbodiedPruneError(
            f"this OpenVLA model's {per_image} patches per image do not tile its {size}-pixel image in a square "
            "grid; token pruning here needs one (or use --token-pruner fastv/random, which compare no frames)."
        )
    return [[name, size, size // side] for name in cameras]


def to_metaworld(action: np.ndarray) -> np.ndarray:
    """One OpenVLA action as Meta-World's 4-D action.

    A checkpoint fine-tuned on this benchmark's demonstrations predicts the 4-D action itself (used as is).
    OpenVLA's own 7-D actions (Δx, Δy, Δz in metres, Δroll, Δpitch, Δyaw, gripper with 1 = open) map to
    (Δxyz in Meta-World's 1-cm units, gripper effort with +1 = close); the rotation is dropped.
    """
    a = np.asarray(action, dtype=np.float64).reshape(-1)
    if a.shape[0] == 4:
        out = a
    elif a.shape[0] == 7:
        out = np.concatenate([a[:3] * 100.0, [1.0 - 2.0 * a[6]]])
    else:
        raise EmbodiedPruneError(f"an OpenVLA action has {a.shape[0]} values; expected 4 (fine-tuned here) or 7.")
    return np.clip(out, -1.0, 1.0).astype(np.float32)


class OpenVLAPolicy:
    """An OpenVLA / OpenVLA-OFT model behind :class:`~embodied_prune.evaluation.manipulation.VLAPolicy`'s
    interface: the prompt and the camera image(s) through the checkpoint's processor, ``predict_action``
    (greedy), and the first ``execute`` actions of a returned chunk executed in turn. With a ``token_pruner``
    (see :mod:`embodied_prune.tokens`), every forward that carries the image drops visual tokens between the
    language model's layers (:class:`~embodied_prune.tokens.hooks.TokenPruningHooks`)."""

    def __init__(
        self,
        model,
        processor,
        cameras: tuple[str, ...] = ("front",),
        unnorm_key: str | None = None,
        execute: int | None = None,
        prompt: str = PROMPT,
        token_pruner=None,
    ) -> None:
        self.model = model.eval()
        self.processor = processor
        self.cameras = tuple(cameras)
        self.unnorm_key = unnorm_key if unnorm_key is not None else _only_key(model)
        self.execute = execute
        self.prompt = prompt
        self._queue: deque = deque()
        self.latencies_ms: list[float] = []
        self.pruner = token_pruner
        self.hooks = None
        self._other = 0  # non-visual tokens of the last query
        if token_pruner is not None:
            from ..tokens.hooks import TokenPruningHooks

            self.hooks = TokenPruningHooks(model.language_model.model, token_pruner)

    def reset(self, seed: int | None = None) -> None:
        self._queue.clear()
        if self.pruner is not None:
            self.pruner.reset(seed)

    def relative_flops(self, visual_per_layer: list[int]) -> float:
        """Language-model FLOPs of a pruned query that kept ``visual_per_layer`` visual tokens, relative to dense."""
        from ..tokens.flops import relative_flops

        return relative_flops(
            self.model.language_model.config, visual_token_count(self.model), self._other, visual_per_layer
        )

    def act(self, obs: dict[str, np.ndarray], instruction: str) -> np.ndarray:
        if self.pruner is not None:
            self.pruner.observe(obs)
        if not self._queue:
            from PIL import Image

            images = [Image.fromarray(obs[c]) for c in self.cameras]
            text = self.prompt.format(instruction=instruction)
            inputs = self.processor(text, images[0] if len(images) == 1 else images)
            if self.hooks is not None:  # the sequence: BOS, the patches, the prompt, then anything the model adds
                n, prompt = visual_token_count(self.model), inputs["input_ids"].shape[1] - 1
                self.hooks.set_spans((1, 1 + n), (1 + n, 1 + n + prompt))
                self._other = 1 + prompt
            t0 = time.perf_counter()
            with torch.inference_mode():
                out = self.model.predict_action(**inputs, unnorm_key=self.unnorm_key, do_sample=False)
            self.latencies_ms.append((time.perf_counter() - t0) * 1e3)
            actions = out[0] if isinstance(out, tuple) else out  # OpenVLA-OFT also returns hidden states
            chunk = np.atleast_2d(np.asarray(actions))
            self._queue.extend(to_metaworld(a) for a in chunk[: self.execute or len(chunk)])
        return self._queue.popleft()


def _only_key(model) -> str | None:
    stats = getattr(model, "norm_stats", None) or {}
    if len(stats) > 1:
        raise EmbodiedPruneError(
            f"this OpenVLA checkpoint has action statistics for {', '.join(sorted(stats))}; pick one with --unnorm-key."
        )
    return next(iter(stats), None)


def openvla_calibration(
    processor, demos: str | os.PathLike, n_samples: int = 16, camera: str = "front", seed: int = 0
) -> list[dict]:
    """Calibration batches for pruning an OpenVLA model: the processor's outputs (one sample each) on
    ``n_samples`` seeded frames of a demonstration folder, with each task's instruction in the prompt."""
    from PIL import Image

    from ..envs.manipulation.demos import load_demos

    demo_set = load_demos(demos)
    frames = [(ep, t) for ep in demo_set.episodes for t in range(len(ep["action"]))]
    picks = np.random.default_rng(seed).choice(len(frames), size=min(n_samples, len(frames)), replace=False)
    out = []
    for i in picks:
        ep, t = frames[int(i)]
        text = PROMPT.format(instruction=demo_set.meta["tasks"][ep["task"]])
        out.append(dict(processor(text, Image.fromarray(ep[camera][t]))))
    return out


__all__ = [
    "OPENVLA_ADAPTER",
    "PROMPT",
    "OpenVLAPolicy",
    "image_size",
    "is_openvla_folder",
    "load_openvla",
    "openvla_calibration",
    "to_metaworld",
    "token_cameras",
    "visual_token_count",
]
