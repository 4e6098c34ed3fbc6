"""Recovery of pruned models: GLUESTICK low-rank corrections."""

from .gluestick import (
    FACTORS_FILE,
    SVD_METHODS,
    GluestickLinear,
    GluestickReport,
    LayerFactors,
    attach_factors,
    compute_factors,
    gap_factors,
    gluestick_layers,
    load_factors,
    read_factors,
    save_factors,
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
