"""Real English text that every machine with Python has, for calibration and held-out evaluation.

No dataset can be downloaded here, so the texts come from the Python installation itself (PSF licence):

- ``python-topics``: the Language Reference topics behind ``help()`` (``pydoc_data/topics.py``, ~465 k
  characters of prose and examples), the **held-out** text: pruned models are evaluated on it.
- ``python-docstrings``: the docstrings of the standard library's modules, classes and functions (read with
  ``ast`` from the sources, nothing imported; tests, IDLE, demos and ``pydoc_data`` left out), the
  **calibration / training** text: Wanda, SparseGPT, Taylor importance, GLUESTICK budgets and LoRA recovery
  read it. Any paragraph that also occurs in the topics is dropped, so the two never overlap.

Both depend on the Python version (its documentation changes between releases): results record it. Each
text is built once per process; ``--calibration builtin:NAME`` takes them wherever a calibration file is taken.
"""

from __future__ import annotations

import ast
import functools
import re
import sys
import sysconfig
from pathlib import Path

from ..errors import EmbodiedPruneError
from ..registry import Registry

TEXTS: Registry = Registry("built-in text")
_SKIP_DIRS = {"test", "tests", "idlelib", "pydoc_data", "turtledemo", "site-packages", "dist-packages", "__phello__"}


def _paragraphs(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]


def _norm(paragraph: str) -> str:
    return " ".join(paragraph.split())


@functools.cache
def python_topics() -> str:
    """The Language Reference topics of this Python (``pydoc_data.topics``), joined in name order."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[name].strip() for name in sorted(topics)) + "\n"


@functools.cache
def python_docstrings() -> str:
    """The standard library's docstrings, file by file in path order, minus paragraphs found in the topics
    (built in ~7 s on first use, then read from the cache folder)."""
    from ..io import atomic_write_text, cache_dir

    cached = cache_dir() / "texts" / f"python-docstrings-{sys.version.split()[0]}-v{_VERSION}.txt"
    if cached.is_file():
        return cached.read_text()
    text = _collect_docstrings()
    atomic_write_text(cached, text)
    return text


_VERSION = 1  # bump when the collection below changes


def _collect_docstrings() -> str:
    root = Path(sysconfig.get_paths()["stdlib"])
    held_out = {_norm(p) for p in _paragraphs(python_topics())}
    out: list[str] = []
    for path in sorted(root.rglob("*.py")):
        if _SKIP_DIRS & set(path.relative_to(root).parts[:-1]):
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= 80:
                    out.extend(p for p in _paragraphs(doc) if _norm(p) not in held_out)
    if not out:
        raise EmbodiedPruneError(
            f"found no docstrings under {root}; this Python ships without its standard library sources, so pass a "
            ".txt or .jsonl calibration file instead."
        )
    return "\n\n".join(out) + "\n"


TEXTS.add("python-topics", python_topics)
TEXTS.add("python-docstrings", python_docstrings)
HELD_OUT = "python-topics"
CALIBRATION = "python-docstrings"


def builtin_text(name: str) -> str:
    """The built-in text ``name`` (``python-topics`` or ``python-docstrings``)."""
    return TEXTS.get(name)()


def describe() -> str:
    """One line naming the texts and the Python they came from, for reports."""
    return f"texts of Python {sys.version.split()[0]}: held-out {HELD_OUT}, calibration {CALIBRATION}"
