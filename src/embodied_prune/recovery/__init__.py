"""Recovery of pruned models: GLUESTICK low-rank corrections (the corrected layer lives in models.lowrank)."""

from ..models.lowrank import (
    FACTORS_FILE,
    GluestickLinear,
    LayerFactors,
    attach_factors,
    gluestick_layers,
    load_factors,
    read_factors,
    save_factors,
)
from .gluestick import (
    SVD_METHODS,
    GluestickReport,
    compute_factors,
    gap_factors,
)

__all__ = [
    "FACTORS_FILE",
    "SVD_METHODS",
    "GluestickLinear",
    "GluestickReport",
    "LayerFactors",
    "attach_factors",
    "compute_factors",
    "gap_factors",
    "gluestick_layers",
    "load_factors",
    "read_factors",
    "save_factors",
]
