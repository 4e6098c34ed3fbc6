"""Visual-token pruning on a deep backbone: ``benchmarks/tokens_vla.py`` on the 16-layer, 324-token policy.

Runs ``configs/tokens_vla_deep.yaml`` (``builtin:vla-metaworld-deep``: SpecPrune-VLA pruning before layer 2, so
that 14 of the 16 layers run on the kept tokens, with FastV and random drop at layer 2 at its mean visual tokens per
layer; the same three before layer 6; SpecPrune before layer 4 with V_global from layer 6) and writes
``benchmarks/results/tokens_vla_deep.*``.

python benchmarks/tokens_vla_deep.py [--resume] [--out runs/bench-tokens-deep]
"""

from __future__ import annotations

import sys

import tokens_vla

if __name__ == "__main__":
    tokens_vla.run_named("tokens_vla_deep", "bench-tokens-deep", sys.argv[1:])
