"""Visual-token pruning where a query's cost is in its tokens: ``benchmarks/tokens_vla.py`` on the 324-token policy.

Runs ``configs/tokens_vla_hires.yaml`` (``builtin:vla-metaworld-hires``: SpecPrune-VLA scoring the first decoder
layers as published, without its controller, FastV and random drop at its mean visual tokens per layer, and the
variant that prunes before the first layer; then SpecPrune pruning before layer 2, ranked by the action queries or
the instruction, with FastV and random drop at layer 2) and writes ``benchmarks/results/tokens_vla_hires.*``.

python benchmarks/tokens_vla_hires.py [--resume] [--out runs/bench-tokens-hires]
"""

from __future__ import annotations

import sys

import tokens_vla

if __name__ == "__main__":
    tokens_vla.run_named("tokens_vla_hires", "bench-tokens-hires", sys.argv[1:])
