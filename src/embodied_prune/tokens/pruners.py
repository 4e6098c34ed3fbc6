"""Visual-token pruners: SpecPrune-VLA and the FastV and random-drop baselines (one registry).

A pruner lives for an evaluation worker: ``reset`` at each episode's start, ``observe`` at every
environment step (frames and proprioception, for the frame-difference set and the controller),
``select`` before each decoder layer of a policy query (returns the visual tokens that go on, or
None to keep the current set), ``finish`` after the query. Budgets: ``keep`` visual tokens after the
pruning layer, or ``alpha``, the kept fraction of all visual tokens.

SpecPrune-VLA as built here (the paper's method on a policy whose backbone has only a few layers):

- *Static, action-level*: before layer ``prune_layer`` the kept set is V_global ∪ V_dynamic ∪ V_local:
  V_global = the top ``global_fraction`` of the budget by the instruction→visual attention of the
  *previous* query at ``global_layers``; V_dynamic = up to ``dynamic_fraction`` of the budget among
  patches whose cosine similarity to the same patch ``frame_gap`` steps back is below
  ``similarity_threshold``, least similar first; V_local fills the rest of the budget by the current
  query's instruction→visual attention at layers 0 … ``prune_layer`` (or only at ``local_layers``), each
  computed from its layer's input before that layer runs (the self-speculative part: early-layer
  attention stands in for the final layers'). The paper scores layers 1 and 2 of a 32-layer model; in a
  4-layer backbone running one layer on every token to score the next costs a quarter of the backbone,
  so the default prunes before the first layer (``prune_layer=0``, local scores of layer 0, computed
  from the embeddings) and takes V_global from the previous query's layer 2, whose scores the
  layer-level step computes anyway. ``prune_layer=1`` gives the paper's two-layer variant. On the
  324-token policy only pruning from layer 2 on holds success (``prune_layer=2, local_layers=(2,),
  layer_dynamic=(3,)``); on the 81-token one no pruning point does at 30 % of the tokens, and on the 16-layer
  one SpecPrune keeps no more success than random drop does, pruning at layer 2 or at layer 6 (docs/tokens.md).
- *Dynamic, layer-level*: at ``layer_dynamic`` layers (indices past the backbone's depth are ignored),
  drop ``layer_drop`` of the remaining visual tokens by rank weight × confidence of that layer's
  attention, smoothed with the earlier layers' by an EMA (``ema``).
- *Per-camera quotas* (``camera_quota``, our addition for multi-camera policies): the static budget
  is split between the cameras in proportion to their token counts and each set is chosen within each
  camera, so one camera's attention cannot crowd another camera out of the kept set. The paper's
  policy has one third-person camera; with ``camera_quota=False`` the three sets rank all cameras'
  tokens together, as the paper's single image does.
- *Scoring rows* (``score_rows``, our addition): the three attention sets rank visual tokens by the attention
  of the instruction tokens, as published; ``action`` ranks them by the attention of the action queries
  (OpenVLA-OFT decodes its actions from those), ``after_visual`` by both.
- *Action-aware controller*: while the hand moves slowly and not faster than at the previous query
  (fine motion), keep ``fine_scale`` × the budget and skip the layer-level pruning. Meta-World's
  action has no wrist rotation, so the controller reads translational speed only.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import EmbodiedPruneError
from ..models.vla import DEFAULT_CAMERAS
from ..registry import Registry
from .forward import SCORE_ROWS, QueryState, QueryStats
from .scores import (
    changed_tokens,
    direction_similarity,
    frame_gap,
    is_fine_motion,
    patch_directions,
    rank_confidence,
    top_k,
)

DEFAULT_ALPHA = 0.3  # kept fraction of visual tokens when no budget is given


def check_rows(option: str, rows: str) -> None:
    """Refuse, in one sentence, score rows (given as the pruner option ``option``) that :meth:`QueryState.scores`
    does not know."""
    if rows not in SCORE_ROWS:
        raise EmbodiedPruneError(f"{option} must be one of {list(SCORE_ROWS)}, got {rows!r}.")


def resolve_budget(keep: int | None, alpha: float | None, visual_total: int) -> int:
    """The kept-token budget from ``keep`` (a count) or ``alpha`` (a fraction; default
    ``DEFAULT_ALPHA``), checked against the total."""
    if keep is not None and alpha is not None:
        raise EmbodiedPruneError("give either --keep (visual tokens kept) or --alpha (kept fraction), not both.")
    if alpha is not None:
        if not 0.0 < alpha <= 1.0:
            raise EmbodiedPruneError(f"--alpha is the kept fraction of visual tokens, in (0, 1]; got {alpha}.")
        return max(1, round(alpha * visual_total))
    if keep is None:
        return max(1, round(DEFAULT_ALPHA * visual_total))
    if not 1 <= keep <= visual_total:
        raise EmbodiedPruneError(f"--keep must be between 1 and the {visual_total} visual tokens; got {keep}.")
    return keep


class TokenPruner:
    """Base class: keeps every token (the bit-identical reference); subclasses override ``select``."""

    name = "none"

    def __init__(self, keep: int | None = None, alpha: float | None = None) -> None:
        self.keep_arg, self.alpha_arg = keep, alpha
        self.queries: list[QueryStats] = []
        self.fine_queries: list[bool] = []

    def budget(self, visual_total: int) -> int:
        return resolve_budget(self.keep_arg, self.alpha_arg, visual_total)

    def reset(self, seed: int | None = None) -> None:
        """Start of an episode: forget the previous episode's frames, attention and per-query records."""
        self.queries.clear()
        self.fine_queries.clear()

    def observe(self, obs: dict[str, np.ndarray]) -> None:
        """Every environment step's observation (whether or not the policy is queried)."""

    def select(self, state: QueryState) -> torch.Tensor | None:
        return None

    def finish(self, stats: QueryStats) -> None:
        self.queries.append(stats)


TOKEN_PRUNERS: Registry[type[TokenPruner]] = Registry("token pruner")
TOKEN_PRUNERS.add("none", TokenPruner)


@TOKEN_PRUNERS.register("fastv")
class FastV(TokenPruner):
    """FastV: after layer ``layer``, keep the visual tokens that receive the most attention from the tokens
    after the image (instruction and action queries), averaged over heads and rows; ``rows`` ranks by other
    rows instead (see :data:`~.forward.SCORE_ROWS`)."""

    name = "fastv"

    def __init__(
        self, keep: int | None = None, alpha: float | None = None, layer: int = 1, rows: str = "after_visual"
    ) -> None:
        super().__init__(keep, alpha)
        check_rows("fastv rows", rows)
        self.layer, self.rows = layer, rows

    def select(self, state: QueryState) -> torch.Tensor | None:
        if state.layer != self.layer:
            return None
        kept = top_k(state.scores(self.rows), self.budget(state.visual_total))
        return torch.sort(state.visual[kept]).values


@TOKEN_PRUNERS.register("random")
class RandomDrop(TokenPruner):
    """Uniformly random visual tokens kept from layer ``layer`` on (default 0: where SpecPrune prunes; it
    needs no scores), seeded per episode."""

    name = "random"

    def __init__(self, keep: int | None = None, alpha: float | None = None, layer: int = 0, seed: int = 0) -> None:
        super().__init__(keep, alpha)
        self.layer = layer
        self.rng = np.random.default_rng(seed)

    def reset(self, seed: int | None = None) -> None:
        super().reset(seed)
        if seed is not None:
            self.rng = np.random.default_rng(seed)

    def select(self, state: QueryState) -> torch.Tensor | None:
        if state.layer != self.layer:
            return None
        vis = state.visual
        pick = self.rng.choice(len(vis), size=min(self.budget(state.visual_total), len(vis)), replace=False)
        return torch.sort(vis[torch.from_numpy(pick)]).values


@dataclass
class SpecPruneSettings:
    """SpecPrune-VLA's knobs (see the module docstring); speeds in metres per environment step."""

    prune_layer: int = 0
    local_layers: tuple[int, ...] | None = None  # layers whose scores make V_local (None: every layer to prune_layer)
    global_fraction: float = 0.3
    dynamic_fraction: float = 0.2
    global_layers: tuple[int, ...] = (2,)
    similarity_threshold: float = 0.95
    gap_slow: int = 11
    gap_fast: int = 6
    max_speed: float = 0.01  # Meta-World moves the hand at most 1 cm per step
    layer_dynamic: tuple[int, ...] = (2,)
    layer_drop: float = 0.1
    ema: float = 0.5
    controller: bool = True
    fine_speed: float = 0.003
    fine_scale: float = 1.25
    speed_window: int = 4
    camera_quota: bool = False
    # whose attention ranks visual tokens: instruction (as published), action or after_visual (forward.SCORE_ROWS)
    score_rows: str = "instruction"
    cameras: list[list] = field(default_factory=lambda: [list(c) for c in DEFAULT_CAMERAS])


@TOKEN_PRUNERS.register("specprune")
class SpecPrune(TokenPruner):
    """SpecPrune-VLA (see the module docstring)."""

    name = "specprune"

    def __init__(
        self, keep: int | None = None, alpha: float | None = None, settings: SpecPruneSettings | None = None
    ) -> None:
        self.s = settings or SpecPruneSettings()
        super().__init__(keep, alpha)
        self.reset()

    # --- episode state ---------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> None:
        super().reset(seed)
        # per step: (camera images, their patch unit vectors — filled when a query first compares that frame:
        # a frame is compared as "now" and again as "then" up to gap_slow steps later, and patchified once)
        self._frames: deque = deque(maxlen=self.s.gap_slow + 1)
        self._positions: deque = deque(maxlen=self.s.speed_window + 1)
        self._global: torch.Tensor | None = None  # previous query's attention at the global layers
        self._next_global: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._previous_speed: float | None = None

    def observe(self, obs: dict[str, np.ndarray]) -> None:
        self._frames.append(({name: obs[name] for name, _, _ in self.s.cameras if name in obs}, {}))
        self._positions.append(np.asarray(obs["proprio"][:3], dtype=np.float64))

    def speed(self) -> float:
        """Mean hand displacement per step over the last ``speed_window`` steps (m/step)."""
        if len(self._positions) < 2:
            return 0.0
        p = np.stack(self._positions)
        return float(np.linalg.norm(np.diff(p, axis=0), axis=1).mean())

    # --- the three sets ------------------------------------------------------------------------------
    def similarities(self, speed: float) -> np.ndarray | None:
        """Each visual token's (layout order) patch similarity to ``frame_gap`` steps back; None before the
        episode's second frame."""
        if len(self._frames) < 2:
            return None
        gap = min(frame_gap(speed, self.s.max_speed, self.s.gap_slow, self.s.gap_fast), len(self._frames) - 1)
        return np.concatenate(
            [
                direction_similarity(self._patches(0, name, patch), self._patches(gap, name, patch))
                for name, _, patch in self.s.cameras
            ]
        )

    def _patches(self, back: int, camera: str, patch: int) -> np.ndarray:
        """The patch unit vectors of ``camera``'s frame ``back`` steps before the latest (computed once)."""
        images, cache = self._frames[-1 - back]
        if camera not in cache:
            cache[camera] = patch_directions(images[camera], patch)
        return cache[camera]

    def camera_groups(self, total: int, budget: int) -> list[tuple[int, int, int]]:
        """(first token, end, budget) per camera with ``camera_quota`` (budgets in proportion to token
        counts, largest remainders first), else one group of all ``total`` tokens."""
        counts = [(size // patch) ** 2 for _, size, patch in self.s.cameras]
        if not self.s.camera_quota or sum(counts) != total:
            return [(0, total, budget)]
        exact = [budget * c / total for c in counts]
        quota = [int(x) for x in exact]
        for i in sorted(range(len(counts)), key=lambda i: quota[i] - exact[i])[: budget - sum(quota)]:
            quota[i] += 1
        starts = np.cumsum([0, *counts])
        return [(int(starts[i]), int(starts[i + 1]), quota[i]) for i in range(len(counts))]

    def _static(self, state: QueryState) -> torch.Tensor:
        total = state.visual_total
        speed = self.speed()
        self._fine = self.s.controller and is_fine_motion(speed, self._previous_speed, self.s.fine_speed)
        self._previous_speed = speed
        budget = self.budget(total)
        if self._fine:
            budget = min(total, round(budget * self.s.fine_scale))
        chosen = torch.zeros(total, dtype=torch.bool)
        sims = self.similarities(speed)
        local = torch.stack(self._local).mean(0)
        for lo, hi, quota in self.camera_groups(total, budget):
            part = chosen[lo:hi]  # a view: marking it marks ``chosen``
            if self._global is not None:
                part[top_k(self._global[lo:hi], round(self.s.global_fraction * quota))] = True
            if sims is not None:
                dyn = changed_tokens(sims[lo:hi], self.s.similarity_threshold, round(self.s.dynamic_fraction * quota))
                part[torch.from_numpy(dyn)] = True
            room = quota - int(part.sum())
            if room > 0:
                part[top_k(local[lo:hi], room, exclude=part)] = True
        kept = torch.nonzero(chosen).flatten()
        self._importance = rank_confidence(local)[kept]
        return kept

    def select(self, state: QueryState) -> torch.Tensor | None:
        s = self.s
        if state.layer == 0:
            self._local, self._next_global, self._fine = [], [], False
            self._visual_total = state.visual_total
        if state.layer in {g % state.num_layers for g in s.global_layers}:
            self._next_global.append((state.visual, state.scores(s.score_rows)))
        if state.layer <= s.prune_layer:
            if s.local_layers is None or state.layer in s.local_layers:
                self._local.append(state.scores(s.score_rows))
            if state.layer < s.prune_layer:
                return None
            return self._static(state)
        if state.layer in s.layer_dynamic and not self._fine and s.layer_drop > 0:
            scores = state.scores(s.score_rows)
            self._importance = s.ema * self._importance + (1 - s.ema) * rank_confidence(scores)
            n = len(scores)
            drop = int(np.ceil(s.layer_drop * n))
            if drop == 0 or drop >= n:
                return None
            kept = top_k(self._importance, n - drop)
            kept = torch.sort(kept).values
            self._importance = self._importance[kept]
            return state.visual[kept]
        return None

    def finish(self, stats: QueryStats) -> None:
        super().finish(stats)
        self.fine_queries.append(bool(self._fine))
        if self._next_global:
            g = torch.zeros(self._visual_total, dtype=torch.float64)  # pruned tokens score 0
            for visual, scores in self._next_global:
                g[visual] += scores.double() / len(self._next_global)
            self._global = g


def build_token_pruner(
    name: str,
    keep: int | None = None,
    alpha: float | None = None,
    cameras: list | None = None,
    options: dict | None = None,
) -> TokenPruner:
    """A pruner by registry name with its budget. ``cameras`` (the policy config's ``cameras``) tell
    SpecPrune how the frames map to visual tokens; ``options`` are :class:`SpecPruneSettings` fields for
    ``specprune`` (e.g. ``{"layer_drop": 0, "controller": False}``) or ``layer``/``seed`` for the baselines."""
    cls = TOKEN_PRUNERS.get(name)
    options = dict(options or {})
    if cls is SpecPrune:
        known = set(SpecPruneSettings.__dataclass_fields__)
        unknown = sorted(set(options) - known)
        if unknown:
            raise EmbodiedPruneError(f"unknown specprune option(s) {unknown}; known: {sorted(known)}.")
        check_rows("specprune score_rows", options.get("score_rows", "instruction"))
        for key in ("global_layers", "layer_dynamic", "local_layers"):
            if options.get(key) is not None:
                options[key] = tuple(options[key])
        if cameras:
            options["cameras"] = [list(c) for c in cameras]
        local, prune_layer = options.get("local_layers"), options.get("prune_layer", SpecPruneSettings.prune_layer)
        if local is not None and not any(0 <= i <= prune_layer for i in local):
            raise EmbodiedPruneError(
                f"specprune local_layers {list(local)} name no layer from 0 to prune_layer {prune_layer}: V_local is "
                "scored at layers that run before the pruning; e.g. local_layers: [prune_layer]."
            )
        return SpecPrune(keep, alpha, SpecPruneSettings(**options))
    try:
        return cls(keep, alpha, **options)
    except TypeError as e:
        raise EmbodiedPruneError(f"token pruner {name!r} does not take these options {sorted(options)}: {e}.") from None


# Each pruner's command-line knobs as its option names: --prune-layer, --score-layers, --score-rows, --drop-layers,
# --global-layers, --no-controller (controller False).
_KNOBS = {
    "specprune": {
        "prune_layer": "prune_layer",
        "score_layers": "local_layers",
        "score_rows": "score_rows",
        "drop_layers": "layer_dynamic",
        "global_layers": "global_layers",
        "controller": "controller",
    },
    "fastv": {"prune_layer": "layer", "score_rows": "rows"},
    "random": {"prune_layer": "layer"},
}


def pruner_options(name: str, recorded: dict | None = None, **given) -> tuple[dict, str]:
    """The options of token pruner ``name`` and where they came from (``"recorded"``, ``"given"`` or
    ``"defaults"``). ``recorded`` is a policy's working points (its side file's ``token_pruning``: pruner name →
    options, as the token study found them); ``given`` are the command line's knobs (``prune_layer``,
    ``score_layers``, ``score_rows``, ``drop_layers``, ``global_layers``, ``controller``; None = not given). Any
    knob given starts from the pruner's published defaults rather than the recorded point, whose fields depend on
    one another (scoring layers must run before the pruning layer), so a run is either the study's cell or
    exactly what was asked."""
    knobs = _KNOBS.get(name, {})
    asked = {k: v for k, v in given.items() if v is not None}
    if name == "none":
        if asked:
            raise EmbodiedPruneError(f"{', '.join('--' + k.replace('_', '-') for k in asked)} need a --token-pruner.")
        return {}, "defaults"
    wrong = sorted(set(asked) - set(knobs))
    if wrong:
        flags = ", ".join("--" + k.replace("_", "-") for k in wrong)
        takes = ", ".join("--" + k.replace("_", "-") for k in knobs) or "none of them"
        raise EmbodiedPruneError(f"the {name} token pruner has no {flags}; it takes {takes}.")
    if asked:
        options = {}
        for k, v in asked.items():
            options[knobs[k]] = list(v) if isinstance(v, (list, tuple)) else v
        return options, "given"
    point = dict((recorded or {}).get(name) or {})
    return point, "recorded" if point else "defaults"


__all__ = [
    "DEFAULT_ALPHA",
    "TOKEN_PRUNERS",
    "FastV",
    "RandomDrop",
    "SpecPrune",
    "SpecPruneSettings",
    "TokenPruner",
    "build_token_pruner",
    "pruner_options",
    "resolve_budget",
]
