"""Architecture adapters, loaders and built-in models (exports imported lazily)."""

from __future__ import annotations

from .._lazy import lazy_getattr

_EXPORTS = {
    "ADAPTERS": ".adapters",
    "DecoderAdapter": ".adapters",
    "LayerShape": ".adapters",
    "adapter_for": ".adapters",
    "BUILTINS": ".builtin",
    "builtin_path": ".builtin",
    "list_builtins": ".builtin",
    "load_model": ".checkpoint",
    "load_pruned": ".checkpoint",
    "load_tokenizer": ".checkpoint",
    "save_model": ".checkpoint",
    "build_tiny": ".tiny",
    "tiny_config": ".tiny",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS)
