"""Subprocess entry point: peak memory of loading one model and running a prefill + decode.

``python -m embodied_prune.bench.memory SPEC PROMPT_LEN NEW_TOKENS DEVICE [DTYPE]`` prints ``{"peak_bytes": N}``.
On the CPU, N is the peak resident set size (``VmHWM``) minus the resident size after imports; on
CUDA it is ``torch.cuda.max_memory_allocated``. ``VmHWM`` belongs to this process's own address space;
``getrusage``'s ``ru_maxrss`` would not do, because Linux carries it over from the parent across
``exec``, so a large parent would hide the model's footprint.
"""

from __future__ import annotations

import json
import sys


def status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def main(argv: list[str]) -> None:
    spec, prompt_len, new_tokens, device = argv[0], int(argv[1]), int(argv[2]), argv[3]
    import torch

    from ..models.checkpoint import load_model
    from ..models.devices import DTYPES
    from .speed import time_prefill_decode

    torch.zeros(1) @ torch.zeros(1)  # let torch finish its lazy initialisation before the baseline
    base = status_bytes("VmRSS")
    model = load_model(spec, dtype=DTYPES[argv[4] if len(argv) > 4 else "float32"], device=device)
    prompt = torch.zeros(1, prompt_len, dtype=torch.long, device=device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        time_prefill_decode(model, prompt, new_tokens)
        peak = torch.cuda.max_memory_allocated()
    else:
        time_prefill_decode(model, prompt, new_tokens)
        peak = status_bytes("VmHWM") - base
    print(json.dumps({"peak_bytes": int(peak)}))


if __name__ == "__main__":
    main(sys.argv[1:])
