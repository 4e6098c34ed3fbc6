"""Importance criteria, structured pruning, unstructured and N:M pruning, calibration."""

from ..choices import CALIBRATION_HELP
from .calibration import LayerwiseRunner, accumulate_gradients, calibration_ids
from .importance import CRITERIA, TAYLOR_VARIANTS, Importance, make_importance
from .masks import check_sparsity, parse_pattern
from .structured import (
    ATTENTION_MODES,
    LayerPlan,
    StructuredResult,
    apply_structured,
    plan_structured,
    prune_structured,
)
from .unstructured import METHODS, UnstructuredResult, prune_unstructured

__all__ = [
    "ATTENTION_MODES",
    "CALIBRATION_HELP",
    "CRITERIA",
    "METHODS",
    "TAYLOR_VARIANTS",
    "Importance",
    "LayerPlan",
    "LayerwiseRunner",
    "StructuredResult",
    "UnstructuredResult",
    "accumulate_gradients",
    "apply_structured",
    "calibration_ids",
    "check_sparsity",
    "make_importance",
    "parse_pattern",
    "plan_structured",
    "prune_structured",
    "prune_unstructured",
]
