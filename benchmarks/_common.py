"""Shared helpers of the benchmark scripts: machine description and result fragments.

Every script writes ``benchmarks/results/<name>.json`` (raw numbers) and ``<name>.md`` (a section of
BENCHMARKS.md naming its command, machine and date); ``make_report.py`` joins the sections into
BENCHMARKS.md, so every number there comes from a script.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

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


def write_result(name: str, title: str, body: str, data: object, wall_s: float) -> None:
    """Write ``results/<name>.json`` and the markdown section ``results/<name>.md``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    header = f"## {title}\n\n- command: `{command()}` ({wall_s:.0f} s)\n- machine: {machine()}\n- date: {today()}\n\n"
    (RESULTS / f"{name}.md").write_text(header + body.strip() + "\n")
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    print(header + body)
