"""Where llama.cpp's converter comes from.

The ``llama-cpp-python`` wheel holds the compiled library but not llama.cpp's Python converter; its source
distribution (on PyPI, the same release) vendors llama.cpp whole. We take ``convert_hf_to_gguf.py``, the
``conversion`` package and ``gguf-py`` from that archive once and cache them under
``$EMBODIED_PRUNE_CACHE/llama.cpp/<version>/``, so the converter always matches the runtime that loads its
files (a newer ``gguf`` wheel may know tensor layouts the compiled library does not). ``make setup`` prepares
the cache; ``$EMBODIED_PRUNE_LLAMA_CPP`` points at a llama.cpp checkout instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from ..errors import EmbodiedPruneError
from ..io import cache_dir

ENV_VAR = "EMBODIED_PRUNE_LLAMA_CPP"
CONVERTER = "convert_hf_to_gguf.py"
# What the converter needs of the vendored tree (the rest is the C++ source, built into the wheel already).
_MEMBERS = (CONVERTER, "conversion", "gguf-py", "LICENSE")
DEPLOY_INSTALL = 'pip install -e ".[deploy]"  (llama-cpp-python builds from source: about 12 minutes on 2 cores)'


def llama_cpp_version() -> str:
    """The installed ``llama-cpp-python`` release, or a clear error naming the install command."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama-cpp-python")
    except PackageNotFoundError:
        raise EmbodiedPruneError(f"llama.cpp is not installed; run {DEPLOY_INSTALL}.") from None


def _complete(folder: Path) -> bool:
    return (folder / CONVERTER).is_file() and (folder / "conversion").is_dir() and (folder / "gguf-py").is_dir()


def converter_dir(fetch: bool = True) -> Path:
    """A folder holding llama.cpp's ``convert_hf_to_gguf.py`` with its ``conversion`` and ``gguf-py`` beside it.

    ``$EMBODIED_PRUNE_LLAMA_CPP`` wins; else the cache for the installed release, extracted on first use from
    that release's source distribution (``pip download``, a package registry) when ``fetch`` is true.
    """
    override = os.environ.get(ENV_VAR)
    if override:
        folder = Path(override).expanduser()
        if not _complete(folder):
            raise EmbodiedPruneError(
                f"${ENV_VAR}={override} holds no {CONVERTER} with conversion/ and gguf-py/ beside it; point it at a "
                "llama.cpp checkout or unset it."
            )
        return folder
    release = llama_cpp_version()
    folder = cache_dir() / "llama.cpp" / release
    if _complete(folder):
        return folder
    if not fetch:
        raise EmbodiedPruneError(
            f"llama.cpp's converter for llama-cpp-python {release} is not prepared; run "
            "`python -m embodied_prune.deploy.source` (or `make setup`)."
        )
    _extract(release, folder)
    return folder


def _extract(release: str, folder: Path) -> None:
    """Download the ``llama-cpp-python==release`` sdist and copy the converter's files into ``folder``."""
    with tempfile.TemporaryDirectory(prefix="llama-cpp-sdist.") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
        proc = subprocess.run([*cmd, "-d", tmp, f"llama-cpp-python=={release}"], capture_output=True, text=True)
        archives = sorted(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if proc.returncode != 0 or not archives:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise EmbodiedPruneError(
                f"could not fetch the llama-cpp-python {release} source for llama.cpp's converter ({tail}); "
                f"set ${ENV_VAR} to a llama.cpp checkout instead."
            )
        staging = Path(tmp) / "tree"
        with tarfile.open(archives[0]) as tar:
            root = f"{tar.getnames()[0].split('/')[0]}/vendor/llama.cpp/"
            members = [m for m in tar.getmembers() if m.name.startswith(tuple(root + x for x in _MEMBERS))]
            tar.extractall(staging, members=members, filter="data")
        vendored = staging / root
        if not _complete(vendored):
            raise EmbodiedPruneError(
                f"the llama-cpp-python {release} source holds no vendored {CONVERTER}; set ${ENV_VAR} to a llama.cpp "
                "checkout."
            )
        folder.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            for name in _MEMBERS:
                src = vendored / name
                if src.is_dir():
                    shutil.copytree(src, partial / name)
                elif src.is_file():
                    shutil.copy2(src, partial / name)
            os.replace(partial, folder)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise


if __name__ == "__main__":  # `python -m embodied_prune.deploy.source`: prepare the cache (make setup runs it)
    try:
        print(converter_dir())
    except EmbodiedPruneError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
