"""Visual-token pruning on mixed visual tokens: ``benchmarks/tokens_vla.py`` on the vision-layer policy.

Runs ``configs/tokens_vla_vit.yaml`` (``builtin:vla-metaworld-vit``: two transformer layers over each camera's 324
patch tokens before an 8-layer backbone; SpecPrune-VLA pruning before layer 1, so that 7 of the 8 layers run on the
kept tokens, with FastV and random drop at layer 1 at its mean visual tokens per layer) and writes
``benchmarks/results/tokens_vla_vit.*``.

python benchmarks/tokens_vla_vit.py [--resume] [--out runs/bench-tokens-vit]
"""

from __future__ import annotations

import sys

import tokens_vla

if __name__ == "__main__":
    tokens_vla.run_named("tokens_vla_vit", "bench-tokens-vit", sys.argv[1:])
