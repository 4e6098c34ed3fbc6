"""Running a real OpenVLA / OpenVLA-OFT checkpoint on our Meta-World tasks.

:class:`OpenVLAPolicy` puts a loaded checkpoint (:func:`embodied_prune.models.openvla.load_openvla`) behind
:class:`~embodied_prune.evaluation.manipulation.VLAPolicy`'s interface, optionally with a visual-token pruner;
:func:`to_metaworld` maps its actions to Meta-World's; :func:`openvla_calibration` makes pruning calibration
batches from a demonstration folder. What the checkpoint is and how it loads and prunes:
:mod:`embodied_prune.models.openvla`.
"""

from __future__ import annotations

import os
import time
from collections import deque

import numpy as np
import torch

from ..errors import EmbodiedPruneError
from ..models.openvla import PROMPT, visual_token_count


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
            inputs = inputs.to(self.model.device, dtype=self.model.dtype)  # pixel values in the model's dtype
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
