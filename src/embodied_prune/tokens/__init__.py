"""Visual-token pruning at inference for VLA policies: SpecPrune-VLA, FastV and random drop.

``pruned_query`` runs a policy query layer by layer and lets a ``TokenPruner`` drop visual tokens
between layers; the pruners are registered in ``TOKEN_PRUNERS``. See docs/tokens.md.
"""

from .forward import QueryState, QueryStats, pruned_query
from .pruners import (
    TOKEN_PRUNERS,
    FastV,
    RandomDrop,
    SpecPrune,
    SpecPruneSettings,
    TokenPruner,
    build_token_pruner,
    pruner_options,
)

__all__ = [
    "TOKEN_PRUNERS",
    "FastV",
    "QueryState",
    "QueryStats",
    "RandomDrop",
    "SpecPrune",
    "SpecPruneSettings",
    "TokenPruner",
    "build_token_pruner",
    "pruned_query",
    "pruner_options",
]
