"""Run one ``embodied-prune`` command in this process, then print its peak resident memory as the last line.

``python benchmarks/_verb_peak.py VERB ARGS…`` → the verb's own output, then ``{"rc": N, "peak_rss_bytes": M,
"peak_cuda_bytes": G}`` (G: ``torch.cuda.max_memory_allocated`` when the verb used CUDA, else null).
``VmHWM`` belongs to this process's address space (``getrusage`` of a child would carry the parent's over across
``exec``, see ``embodied_prune.bench.memory``), so the number is the verb's own peak, imports included.
"""

from __future__ import annotations

import json
import sys

from embodied_prune.cli import main
from embodied_prune.models.devices import peak_rss_bytes

if __name__ == "__main__":
    rc = main(sys.argv[1:])
    sys.stdout.flush()
    cuda = None
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = torch.cuda.max_memory_allocated()
    print(json.dumps({"rc": rc, "peak_rss_bytes": peak_rss_bytes(), "peak_cuda_bytes": cuda}), flush=True)
    sys.exit(rc)
