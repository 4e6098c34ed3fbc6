"""The offline token probe (``benchmarks/tokens_probe.py``) on the policy that sees through DINOv2 ViT-S/14.

Every layer × ranking of ``builtin:vla-metaworld-dino`` (each camera's image through the frozen pretrained tower:
256 + 64 + 64 patch features, projected into a 4-layer, 192-wide backbone) at 30 % of its 384 visual tokens, plus
the previous query's action-row attention at layer 2 ranking the tokens dropped before layers 0 and 1; one expert
rollout per task, up to 30 queries. Writes ``benchmarks/results/tokens_probe_dino.*``; extra arguments go to
``tokens_probe.py``.

python benchmarks/tokens_probe_dino.py
"""

from __future__ import annotations

import sys

import tokens_probe

if __name__ == "__main__":
    tokens_probe.run_named("tokens_probe_dino", "builtin:vla-metaworld-dino", "2", sys.argv[1:])
