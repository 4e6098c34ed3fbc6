"""Regenerate every number in BENCHMARKS.md: run each benchmark script, then join their sections.

python benchmarks/run_all.py            # run everything, then rebuild BENCHMARKS.md
python benchmarks/run_all.py --report   # only rebuild BENCHMARKS.md from benchmarks/results/*.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import stale_models  # noqa: E402

# Order of the sections in BENCHMARKS.md.
SCRIPTS = [
    "structured_decode",
    "unstructured_fidelity",
    "pretrained_lm",
    "llmcompressor_compare",
    "llmcompressor_smollm2",
    "driving_controllers",
    "driving_ladder",
    "driving_headroom",
    "robotxr1_smollm2",
    "bpf_study",
    "deploy_llamacpp",
    "scale",
    "manipulation_vla",
    "tokens_vla",
    "tokens_vla_hires",
    "tokens_vla_deep",
    "tokens_vla_vit",
    "tokens_probe",
    "tokens_probe_deep",
    "tokens_probe_vit",
    "gluestick_vla",
    "gluestick_driving",
]

HEADER = """# Benchmarks

Every number below was produced by a script in `benchmarks/`; each section names its command, the
machine and the date. `python benchmarks/run_all.py` reruns them all and rebuilds this file
(`--report` only rebuilds it from `benchmarks/results/`). Ratios are measured side by side in one run.
A section measured on a built-in model that has since been retrained under the same name says so under
its title (the results keep the fingerprints of the models they measured).

"""


def section(name: str) -> str | None:
    """The markdown section of one script, with a warning under its title when a built-in model it measured has
    been retrained since (its numbers then describe the earlier weights until the script is rerun)."""
    md, js = HERE / "results" / f"{name}.md", HERE / "results" / f"{name}.json"
    if not md.exists():
        return None
    text = md.read_text()
    data = json.loads(js.read_text()) if js.exists() else {}
    stale = stale_models(data) if isinstance(data, dict) else []
    if stale:
        title, _, rest = text.partition("\n")
        names = ", ".join(f"`{m}`" for m in stale)
        warning = (
            f"> **Stale:** measured on an earlier {names} than the one shipped now (retrained since, same name); "
            f"rerun `python benchmarks/{name}.py` to refresh these numbers.\n"
        )
        text = f"{title}\n\n{warning}{rest}"
    return text


def build_report() -> None:
    sections = [section(name) for name in SCRIPTS]
    body = "\n".join(t for t in sections if t is not None)
    (HERE.parent / "BENCHMARKS.md").write_text(HEADER + body)
    print(f"wrote {HERE.parent / 'BENCHMARKS.md'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--report", action="store_true", help="only rebuild BENCHMARKS.md")
    a = ap.parse_args()
    if not a.report:
        for name in SCRIPTS:
            subprocess.run([sys.executable, str(HERE / f"{name}.py")], cwd=HERE, check=True)
    build_report()


if __name__ == "__main__":
    main()
