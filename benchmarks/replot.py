"""Redraw every committed figure from the results already in benchmarks/results/ (no evaluation runs):

python benchmarks/replot.py

The BPF, GLUESTICK and token-study figures come from the same plotting functions the experiments call
(``embodied_prune.experiments.plots`` gives them one style), so a change of style reaches the committed PNGs without
rerunning hours of closed-loop evaluation.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from _common import RESULTS
from embodied_prune.experiments.bpf import plot_bpf
from embodied_prune.experiments.gluestick import plot_gluestick
from embodied_prune.experiments.tokens import plot_tokens

TOKEN_STUDIES = ("tokens_vla", "tokens_vla_hires", "tokens_vla_deep", "tokens_vla_vit")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bpf = json.loads((RESULTS / "bpf_study.json").read_text())
        plot_bpf(bpf["strategies"], tmp, bpf["config"])
        for plot in ("adaptability_vs_params.png", "decode_speed.png"):
            shutil.copy(tmp / plot, RESULTS / f"bpf_{plot}")
        plot_gluestick(json.loads((RESULTS / "gluestick_vla.json").read_text()), tmp)
        for plot in ("success_vs_extra.png", "violations_vs_extra.png"):
            shutil.copy(tmp / plot, RESULTS / f"gluestick_vla_{plot}")
    for name in TOKEN_STUDIES:
        plot_tokens(json.loads((RESULTS / f"{name}.json").read_text()), RESULTS / f"{name}.png")
    print("redrew the BPF, GLUESTICK and token-study figures in", RESULTS)


if __name__ == "__main__":
    main()
