"""The offline token probe (``benchmarks/tokens_probe.py``) on the 16-layer policy, with later layers' attention.

Every layer × ranking of ``builtin:vla-metaworld-deep`` at 30 % of its 324 visual tokens, plus the previous
query's action-row attention at layers 6 and 10 ranking the tokens dropped before each earlier layer (SpecPrune's
V_global premise); one expert rollout per task, up to 30 queries (the 16 layers make every query 16 × 4 pruned
ones). Writes ``benchmarks/results/tokens_probe_deep.*``; extra arguments go to ``tokens_probe.py``.

python benchmarks/tokens_probe_deep.py
"""

from __future__ import annotations

import sys

import tokens_probe

if __name__ == "__main__":
    tokens_probe.run_named("tokens_probe_deep", "builtin:vla-metaworld-deep", "6,10", sys.argv[1:])
