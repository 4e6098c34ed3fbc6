"""The offline token probe (``benchmarks/tokens_probe.py``) on the policy whose visual tokens come out of vision layers.

Every layer × ranking of ``builtin:vla-metaworld-vit`` (two transformer layers over each camera's patches before
the projector, as a VLA's vision tower; an 8-layer backbone) at 30 % of its 324 visual tokens, plus the previous
query's action-row attention at layers 2 and 4 ranking the tokens dropped before each earlier layer; one expert
rollout per task, up to 30 queries. Writes ``benchmarks/results/tokens_probe_vit.*``; extra arguments go to
``tokens_probe.py``.

python benchmarks/tokens_probe_vit.py
"""

from __future__ import annotations

import sys

import tokens_probe

if __name__ == "__main__":
    tokens_probe.run_named("tokens_probe_vit", "builtin:vla-metaworld-vit", "2,4", sys.argv[1:])
