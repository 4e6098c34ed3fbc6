"""What the experiment runners share: config files, names on disk, table cells and figures."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import EmbodiedPruneError


def read_config(path: str | os.PathLike, example: str) -> dict[str, Any]:
    """A YAML mapping from ``path``; a missing or malformed file names ``example`` as the place to start."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise EmbodiedPruneError(f"config {p} does not exist; start from {example}.")
    try:
        cfg = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise EmbodiedPruneError(f"config {p} is not valid YAML ({str(e).splitlines()[0]}); see {example}.") from None
    if not isinstance(cfg, dict):
        raise EmbodiedPruneError(f"config {p} must be a mapping of settings; see {example}.")
    return cfg


def open_run_folder(out: str | os.PathLike, cfg: dict, overwrite: bool, cells: str, same_config: bool) -> Path:
    """Make ``out`` (emptied first with ``overwrite``) with its ``cells`` subfolder and save ``cfg`` there as
    ``config.json``. ``same_config``: a folder holding a run of another config is an error (for experiments
    whose finished cells are kept by name alone); otherwise each cell checks its own inputs when resumed."""
    import json
    import shutil

    from ..io import atomic_write_text

    out = Path(out)
    if out.exists() and overwrite:
        shutil.rmtree(out)
    saved = out / "config.json"
    if same_config and saved.is_file() and json.loads(saved.read_text()) != cfg:
        raise EmbodiedPruneError(
            f"{out} holds a run of another config ({saved}); pass --overwrite to start afresh or choose a new --out."
        )
    (out / cells).mkdir(parents=True, exist_ok=True)
    atomic_write_text(saved, json.dumps(cfg, indent=2) + "\n")
    return out


def model_fingerprint(spec: str | os.PathLike) -> str:
    """A short hash of a model folder's config and weight files: a result kept for resuming must come from
    the same model (a retrained ``builtin:`` policy keeps its name but not its weights)."""
    import hashlib

    from ..models.checkpoint import resolve_model_path

    folder = Path(resolve_model_path(spec))
    h = hashlib.sha1()
    for f in sorted([folder / "config.json", *folder.glob("*.safetensors")]):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def slug(name: str) -> str:
    """A file-name-safe form of a variant or cell name."""
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def violations_cell(v: dict[str, int]) -> str:
    """Safety-violation steps as ``table / joints / fast``."""
    return f"{v['table_contact']} / {v['joint_limit']} / {v['fast_object']}"
