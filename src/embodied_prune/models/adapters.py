"""Architecture adapters: where the layers, projections and config fields of a decoder family are.

No library function assumes ``model.model.layers``: it asks the adapter. The adapter also names the
*coupled groups* used by structured pruning (which rows and columns of which projections belong to one
attention head or one MLP channel). It has to: torch-pruning's automatic dependency graph hangs on
transformers >= 4.54 and on grouped-query attention in any version (torch-pruning issue #527), so, as
LLM-Pruner does for Llama, the coupling is spelled out here per family.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..errors import EmbodiedPruneError
from ..registry import Registry


@dataclass(frozen=True)
class LayerShape:
    """The prunable sizes of one decoder layer."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int

    @property
    def group_size(self) -> int:
        """Query heads per key/value head (1 for multi-head attention)."""
        return self.num_heads // self.num_kv_heads


@dataclass(frozen=True)
class DecoderAdapter:
    """Module paths of a Llama-like decoder (pre-norm, q/k/v/o attention, gated MLP).

    Paths are dotted attribute paths: ``layers`` from the root module handed to the adapter, the others
    from one decoder layer. ``config`` is the path of the config object to update after pruning
    (``"config"`` for a ``*ForCausalLM``; a VLA adapter points it at its language backbone's config).
    """

    family: str
    layers: str = "model.layers"
    config: str = "config"
    q_proj: str = "self_attn.q_proj"
    k_proj: str = "self_attn.k_proj"
    v_proj: str = "self_attn.v_proj"
    o_proj: str = "self_attn.o_proj"
    gate_proj: str = "mlp.gate_proj"
    up_proj: str = "mlp.up_proj"
    down_proj: str = "mlp.down_proj"
    attention: str = "self_attn"
    # projections that read the same input tensor (one set of input statistics serves each group)
    shared_inputs: tuple[tuple[str, ...], ...] = (
        ("q_proj", "k_proj", "v_proj"),
        ("o_proj",),
        ("gate_proj", "up_proj"),
        ("down_proj",),
    )

    # --- lookup -------------------------------------------------------------------------------
    def get_layers(self, model: nn.Module) -> nn.ModuleList:
        return _get(model, self.layers)

    def get_config(self, model: nn.Module):
        return _get(model, self.config)

    def linear(self, layer: nn.Module, role: str) -> nn.Linear:
        """The linear module of ``role`` (one of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)."""
        return _get(layer, getattr(self, role))

    def set_linear(self, layer: nn.Module, role: str, module: nn.Module) -> None:
        parent_path, _, name = getattr(self, role).rpartition(".")
        setattr(_get(layer, parent_path) if parent_path else layer, name, module)

    def linear_names(self, model: nn.Module) -> list[str]:
        """Qualified names (as in ``model.named_modules()``) of every prunable linear in the decoder layers."""
        return [
            f"{self.layers}.{i}.{getattr(self, role)}" for i in range(len(self.get_layers(model))) for role in ROLES
        ]

    def head_dim(self, model: nn.Module) -> int:
        cfg = self.get_config(model)
        return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    def layer_shape(self, model: nn.Module, index: int) -> LayerShape:
        layer = self.get_layers(model)[index]
        hd = self.head_dim(model)
        return LayerShape(
            num_heads=self.linear(layer, "q_proj").out_features // hd,
            num_kv_heads=self.linear(layer, "k_proj").out_features // hd,
            head_dim=hd,
            intermediate_size=self.linear(layer, "gate_proj").out_features,
        )

    def layer_shapes(self, model: nn.Module) -> list[LayerShape]:
        return [self.layer_shape(model, i) for i in range(len(self.get_layers(model)))]

    # --- after pruning --------------------------------------------------------------------------
    def sync(self, model: nn.Module) -> list[LayerShape]:
        """Make the config and the attention modules agree with the (possibly pruned) weights.

        Sets ``num_key_value_groups`` on every attention module (transformers reads it in forward), an
        explicit ``head_dim`` (so the rotary embedding keeps its size when the head count changes) and,
        when every layer has the same shape, the head counts and intermediate size of the config. When
        shapes differ per layer the config keeps the largest sizes and the per-layer sizes travel in
        the side file written by :func:`embodied_prune.models.checkpoint.save_model`.
        """
        shapes = self.layer_shapes(model)
        cfg = self.get_config(model)
        for layer, shape in zip(self.get_layers(model), shapes, strict=True):
            _get(layer, self.attention).num_key_value_groups = shape.group_size
        cfg.head_dim = shapes[0].head_dim
        widest = max(shapes, key=lambda s: (s.num_heads, s.num_kv_heads))
        cfg.num_attention_heads = widest.num_heads
        cfg.num_key_value_heads = widest.num_kv_heads
        cfg.intermediate_size = max(s.intermediate_size for s in shapes)
        return shapes


ROLES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

ADAPTERS: Registry[DecoderAdapter] = Registry("model architecture")
# Llama, Mistral, Qwen2 (q/k/v biases) and Qwen3 (per-head q/k norms, explicit head_dim) share one
# layout: the norms act on head_dim, which structured pruning never changes.
for _family in ("llama", "mistral", "qwen2", "qwen3"):
    ADAPTERS.add(_family, DecoderAdapter(family=_family))
# OpenVLA / Prismatic VLAs keep their Llama-2 language model under ``language_model`` (models/openvla.py)
for _family in ("openvla", "prismatic"):
    ADAPTERS.add(
        _family, DecoderAdapter(family=_family, layers="language_model.model.layers", config="language_model.config")
    )


def adapter_for(model: nn.Module) -> DecoderAdapter:
    """The adapter registered for ``model`` (by ``model.embodied_prune_adapter`` or its config's model_type)."""
    custom = getattr(model, "embodied_prune_adapter", None)
    if isinstance(custom, DecoderAdapter):
        return custom
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ADAPTERS:
        raise EmbodiedPruneError(
            f"unsupported architecture {model_type!r}; supported: {', '.join(ADAPTERS.names())} "
            "(register a DecoderAdapter in embodied_prune.models.adapters.ADAPTERS to add one)."
        )
    return ADAPTERS.get(model_type)


def _get(root: object, path: str):
    obj = root
    for part in path.split("."):
        if not part:
            continue
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj
