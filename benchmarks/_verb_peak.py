"""Run one ``embodied-prune`` command in this process, then print its peak memory as the last line.

``python benchmarks/_verb_peak.py VERB ARGS…`` → the verb's own output, then one JSON line: ``rc``; ``peak_rss_bytes``
(``VmHWM``: the peak resident set, which also counts the file pages of safetensors shards mapped while loading —
clean page cache the kernel can drop under pressure); ``peak_anon_bytes`` (the peak of ``RssAnon``, the memory the
process itself holds, sampled every 50 ms: what must fit in RAM); ``peak_cuda_bytes`` (``torch.cuda.
max_memory_allocated`` when the verb used CUDA, else null). ``VmHWM`` belongs to this process's address space
(``getrusage`` of a child would carry the parent's over across ``exec``, see ``embodied_prune.bench.memory``).
"""

from __future__ import annotations

import json
import sys
import threading

from embodied_prune.cli import main
from embodied_prune.models.devices import peak_rss_bytes


def _rss_anon() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


class _AnonPeak(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = _rss_anon()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.05):
            self.peak = max(self.peak, _rss_anon())


if __name__ == "__main__":
    sampler = _AnonPeak()
    sampler.start()
    rc = main(sys.argv[1:])
    sampler.done.set()
    sampler.join()
    sampler.peak = max(sampler.peak, _rss_anon())
    sys.stdout.flush()
    cuda = None
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = torch.cuda.max_memory_allocated()
    peaks = {"peak_rss_bytes": peak_rss_bytes(), "peak_anon_bytes": sampler.peak, "peak_cuda_bytes": cuda}
    print(json.dumps({"rc": rc, **peaks}), flush=True)
    sys.exit(rc)
