"""A tiny vision-language-action policy shaped like OpenVLA-OFT, with a Llama decoder as backbone.

One policy query lays its sequence out as ``[BOS, visual tokens, instruction tokens, action queries]``:

- **vision encoder**: per camera a small convolutional stem and a patch convolution, one token per
  patch (by default 112 px front view at 8 px patches → 196 tokens, 64 px side and wrist views → 64 tokens
  each: 324 visual tokens; the shipped policy uses 16 px patches: 49 + 16 + 16 = 81), plus a learned
  position embedding per patch and camera; optionally (``vision_layers`` > 0) a few pre-norm transformer
  encoder layers over each camera's patch tokens (torch's ``nn.TransformerEncoderLayer``), so that the
  tokens reach the backbone already mixed, as a real VLA's come out of its ViT (default 0: bare patches);
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
        self.encoders = nn.ModuleDict(
            {
                name: CameraEncoder(
                    size, patch, config.stem_channels, config.vision_dim, config.vision_layers, config.vision_heads
                )
                for name, size, patch in config.cameras
            }
        )
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

    def visual_embeddings(self, images: dict[str, torch.Tensor]) -> torch.Tensor:
        """Projected visual tokens of all cameras, in layout order: (B, N_visual, hidden)."""
        tokens = [self.encoders[name](images[name]) for name, _, _ in self.config.cameras]
        return self.projector(torch.cat(tokens, dim=1))

    def build_inputs(
        self,
        images: dict[str, torch.Tensor],
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        proprio: torch.Tensor,
        bos_id: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The embedded sequence ``[BOS, visual, instruction, action queries]`` and its attention mask."""
        b = input_ids.shape[0]
        embed = self.backbone.embed_tokens
        bos = embed(torch.full((b, 1), bos_id, dtype=torch.long, device=input_ids.device))
        visual = self.visual_embeddings(images)
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
    ) -> dict[str, torch.Tensor]:
        """Predict an action chunk; with target ``actions`` (B, chunk, action_dim) also the L1 loss, to
        which ``aux_targets`` (B, aux_dim; raw, normalised here) add the weighted auxiliary L1 loss."""
        x, mask = self.build_inputs(images, input_ids, attention_mask, proprio, bos_id)
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
    """Multiply-accumulates of one policy query by part (vision+projector, backbone, action head)."""
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
            with FlopCounterMode(display=False) as fc:
                visual = model.visual_embeddings(images)
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
    "VLA_ADAPTER",
    "TinyVLA",
    "TinyVLAConfig",
    "TokenLayout",
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
