"""GLUESTICK on the policy that sees through DINOv2: ``benchmarks/gluestick_vla.py`` on ``builtin:vla-metaworld-dino``.

Runs ``configs/gluestick_vla_dino.yaml`` (dense; 2:4 Wanda of the backbone, unrecovered and recovered by GLUESTICK
at the 15 % budget), keeps its cells in ``benchmarks/results/gluestick_vla_dino_cells`` and writes
``benchmarks/results/gluestick_vla_dino.*``: does the recovery won back on the from-scratch policy hold when the
visual features are pretrained?

python benchmarks/gluestick_vla_dino.py [--out runs/gluestick-dino] [--overwrite]
"""

from __future__ import annotations

import sys

import gluestick_vla

from embodied_prune.errors import EmbodiedPruneError

if __name__ == "__main__":
    try:
        gluestick_vla.main(sys.argv[1:], name="gluestick_vla_dino", out="gluestick-dino")
    except EmbodiedPruneError as e:
        sys.exit(f"error: {e}")
