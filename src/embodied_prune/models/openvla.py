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
  processor's outputs on demonstration frames
  (:func:`~embodied_prune.evaluation.openvla.openvla_calibration`), fed as ``model(**batch)``;
- **evaluation** — :class:`~embodied_prune.evaluation.openvla.OpenVLAPolicy` has the interface of
  :class:`~embodied_prune.evaluation.manipulation.VLAPolicy` (``reset``, ``act``, ``latencies_ms``), so
  ``eval manipulation --model DIR --trust-remote-code`` runs it in the Meta-World episodes (the wrapper lives
  with evaluation: this module knows the model, not the tasks or the token pruners);
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
from pathlib import Path

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


__all__ = [
    "OPENVLA_ADAPTER",
    "PROMPT",
    "image_size",
    "is_openvla_folder",
    "load_openvla",
    "token_cameras",
    "visual_token_count",
]
