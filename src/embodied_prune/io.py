"""Atomic output folders: write to a temporary sibling, then rename, so nothing is half-written; and the JSONL
reader the user-facing record files share."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from .errors import EmbodiedPruneError

T = TypeVar("T")


def read_jsonl(
    path: str | os.PathLike, kind: str, schema: str, records: str, parse: Callable[[Any, str, str], T]
) -> list[T]:
    """The records of the JSONL ``kind`` file ``path``, each line through ``parse(raw, where, default_id)`` (``where``
    is "FILE line N", the default id "STEM-NNNN"); blank lines are skipped. A missing file (the message points at
    ``schema``), a line that is not JSON, or a file without ``records`` stops with one sentence naming the file and
    line."""
    path = Path(path)
    if not path.is_file():
        raise EmbodiedPruneError(f"{kind} file {path} does not exist; pass a JSONL file (schema: {schema}).")
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path} line {i}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as e:
            raise EmbodiedPruneError(f"{where} is not valid JSON ({e.msg}); fix that line.") from None
        out.append(parse(raw, where, f"{path.stem}-{i:04d}"))
    if not out:
        raise EmbodiedPruneError(f"{kind} file {path} holds no {records}.")
    return out


def cache_dir() -> Path:
    """This toolkit's cache folder: ``$EMBODIED_PRUNE_CACHE``, default ``~/.cache/embodied_prune``."""
    return Path(os.environ.get("EMBODIED_PRUNE_CACHE", Path.home() / ".cache" / "embodied_prune"))


def check_output_dir(out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Validate an output folder before any work starts (fail fast, before expensive compute)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise EmbodiedPruneError(f"output path {out} exists and is a file; choose a folder path.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise EmbodiedPruneError(
            f"output folder {out} already exists and is not empty; choose a new path or pass --overwrite."
        )
    return out


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success it replaces ``out``, on error it is removed."""
    out = check_output_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; the result is an ordinary folder
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _ordinary_modes(tmp)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def _ordinary_modes(folder: Path) -> None:
    """Give the files written into ``folder`` the modes the umask allows: some writers (transformers'
    safetensors shards) create them through ``mkstemp``, readable by their owner only."""
    mask = _umask()
    for f in folder.rglob("*"):
        if f.is_file() and not f.is_symlink():
            os.chmod(f, (0o666 | (f.stat().st_mode & 0o111)) & ~mask)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
