"""embodied-prune: make embodied foundation models small and fast without breaking them in closed loop.

The public API is imported lazily (PEP 562), so ``embodied-prune --help`` does not pay for
importing transformers.
"""

from __future__ import annotations

from ._lazy import lazy_getattr

__version__ = "0.1.0"

_EXPORTS = {
    "EmbodiedPruneError": ".errors",
    "Outcome": ".api",
    "prune": ".api",
    "recover": ".api",
    "bench_models": ".bench",
    "build_tiny": ".models",
    "load_model": ".models",
    "load_pruned": ".models",
    "save_model": ".models",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS)
