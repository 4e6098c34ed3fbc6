"""Sparsity schedules by name and the trainer callback that prunes on them during SFT and GRPO (BPF)."""

from .callback import PruningCallback, remap_parameter
from .sparsity import SCHEDULES, cut_steps, sparsity_steps

__all__ = ["SCHEDULES", "PruningCallback", "cut_steps", "remap_parameter", "sparsity_steps"]
