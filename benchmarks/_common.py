"""Shared helpers of the benchmark scripts: machine description and result fragments.

Every script writes ``benchmarks/results/<name>.json`` (raw numbers) and ``<name>.md`` (a section of
BENCHMARKS.md naming its command, machine and date); ``make_report.py`` joins the sections into
BENCHMARKS.md, so every number there comes from a script.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
# The language backbone of OpenVLA / OpenVLA-OFT (Llama 2 7B): the widths the GPU latency scripts build at.
OPENVLA_BACKBONE = {
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
}

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # benchmarks use built-in models only


def quiet_transformers() -> None:
    """No per-load progress bars from transformers in benchmark logs."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


quiet_transformers()


def machine() -> str:
    """One line describing the machine and software the numbers were measured on."""
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM{gpu}; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), transformers {transformers.__version__}, "
        f"Python {platform.python_version()}"
    )


def today() -> str:
    return dt.date.today().isoformat()


def command() -> str:
    return "python " + " ".join([os.path.relpath(sys.argv[0], Path.cwd()), *sys.argv[1:]])


def write_result(
    name: str, title: str, body: str, data: object, wall_s: float, models: list[str] | tuple[str, ...] = ()
) -> None:
    """Write ``results/<name>.json`` and the markdown section ``results/<name>.md``.

    ``models``: the model specs the section measured (e.g. ``builtin:vla-metaworld``); their fingerprints are
    kept in the JSON (``model_fingerprints``, ``data`` must then be a dict) so that ``run_all.py --report`` can
    mark the section stale once a model of that name is retrained."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    if models:
        from embodied_prune.experiments.common import model_fingerprint

        data = {**data, "model_fingerprints": {m: model_fingerprint(m) for m in models}}
    header = f"## {title}\n\n- command: `{command()}` ({wall_s:.0f} s)\n- machine: {machine()}\n- date: {today()}\n\n"
    (RESULTS / f"{name}.md").write_text(header + body.strip() + "\n")
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    print(header + body)


def study_parser(doc: str, config: str, out: str, cells: str) -> argparse.ArgumentParser:
    """The options every study with a :class:`CellStore` takes: ``--config``, ``--out``, ``--cells`` (defaults:
    ``configs/<config>``, ``runs/<out>``, ``benchmarks/results/<cells>``) and ``--overwrite``."""
    root = RESULTS.parent.parent
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(root / "configs" / config))
    ap.add_argument("--out", default=str(root / "runs" / out))
    ap.add_argument("--cells", default=str(RESULTS / cells), help="where evaluated cells are kept")
    ap.add_argument("--overwrite", action="store_true", help="start afresh instead of resuming")
    return ap


class CellStore:
    """A committed folder keeping an experiment's evaluated cells (a few kB each) across working sessions.

    A study that outlasts one session cannot rely on ``runs/`` (not kept between sessions): its cells are copied
    from the store into the run folder before the run (``restore``) and back after it, also when it is
    interrupted (``save``), and each invocation is logged in ``sessions.jsonl`` (start, end, machine, the cells
    it evaluated)."""

    def __init__(self, folder: str | os.PathLike, pattern: str = "*.json") -> None:
        self.folder, self.pattern = Path(folder), pattern

    def check(self, cfg: dict, error: type[Exception]) -> None:
        """Raise ``error`` when the store keeps cells of another config."""
        kept = self.folder / "config.json"
        if kept.is_file() and json.loads(kept.read_text()) != cfg:
            raise error(
                f"{self.folder} keeps cells of another config; pass --overwrite to start afresh or choose "
                "another --cells."
            )

    def restore(self, out: Path, cfg: dict, overwrite: bool) -> dict[str, bytes]:
        """Copy the kept cells into ``out/cells`` (a fresh store for ``overwrite``); return the cells ``out``
        then holds (name → contents, a few kB each)."""
        from embodied_prune.io import atomic_write_text

        if overwrite and self.folder.exists():
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.folder / "config.json", json.dumps(cfg, indent=2) + "\n")
        for cell in self._cells(self.folder):
            if not (out / "cells" / cell.name).is_file():
                shutil.copy(cell, out / "cells" / cell.name)
        return {c.name: c.read_bytes() for c in self._cells(out / "cells")}

    def run(self, out: Path, cfg: dict, overwrite: bool, experiment: Callable[[], object]) -> None:
        """Restore the kept cells into ``out``, call ``experiment`` and save the cells back, also when it fails
        or is killed with SIGTERM."""
        started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        before = self.restore(out, cfg, overwrite)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a `kill` unwinds through the `finally`
        try:
            experiment()
        finally:
            self.save(out, started, before)

    def save(self, out: Path, started: str, before: dict[str, bytes]) -> None:
        """Copy ``out``'s cells into the store and log this invocation: its own cells are those new or changed
        since ``before`` (a kept cell evaluated again, e.g. for a retrained model, keeps its name)."""
        cells = self._cells(out / "cells")
        for cell in cells:
            shutil.copy(cell, self.folder / cell.name)
        entry = {"start": started, "end": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        entry |= {
            "machine": machine(),
            "cells_evaluated": [c.stem for c in cells if before.get(c.name) != c.read_bytes()],
        }
        with open(self.folder / "sessions.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")

    def sessions(self) -> list[dict]:
        """The logged invocations, oldest first."""
        log = self.folder / "sessions.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []

    def _cells(self, folder: Path) -> list[Path]:
        return sorted(p for p in folder.glob(self.pattern) if p.name != "config.json")


def stale_models(data: dict) -> list[str]:
    """The built-in models a result's ``model_fingerprints`` names whose weights have changed since (retrained
    under the same name) or that no longer exist: the result no longer describes them. Paths outside the
    package are not checked."""
    from embodied_prune.errors import EmbodiedPruneError
    from embodied_prune.experiments.common import model_fingerprint

    def changed(spec: str, fp: str) -> bool:
        try:
            return model_fingerprint(spec) != fp
        except EmbodiedPruneError:  # a built-in model since removed
            return True

    return [
        spec
        for spec, fp in (data.get("model_fingerprints") or {}).items()
        if spec.startswith("builtin:") and changed(spec, fp)
    ]


def nan_array(values: Iterable[float | None]) -> np.ndarray:
    """Per-instruction values as a float array, None (an instruction no episode could score) as NaN."""
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def run_verb(argv: list[str], log: Path) -> dict:
    """Run ``embodied-prune ARGV`` in a fresh process; its wall time, exit status and peak resident memory."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve().parent / "_verb_peak.py"), *argv],
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    wall = time.perf_counter() - t0
    lines = log.read_text().strip().splitlines()
    peak = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    return {
        "rc": proc.returncode,
        "wall_s": wall,
        "peak_rss_bytes": peak.get("peak_rss_bytes"),
        "peak_anon_bytes": peak.get("peak_anon_bytes"),
        "peak_cuda_bytes": peak.get("peak_cuda_bytes"),
        "log_tail": lines[-3:],
    }


def gib(n: int | None) -> str:
    return "–" if n is None else f"{n / 2**30:.1f} GiB"
