"""Side-by-side speed and size of several models: parameters, weight bytes, prefill, decode, memory.

Speed is measured in one process with the models interleaved (each repeat runs every model once),
so drift of the machine hits all of them alike; each number is the median over repeats after
warm-up. Decoding is greedy with a KV cache for a fixed number of tokens (no early stop), timed
apart from the prefill. Peak memory is measured for each model in a fresh subprocess (peak resident
set size on the CPU, ``torch.cuda.max_memory_allocated`` on a GPU) above the process's footprint
after start-up, so one model's allocations do not hide another's.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import DynamicCache

from ..errors import EmbodiedPruneError


@dataclass
class BenchResult:
    """One model's row; the JSON written by ``embodied-prune bench`` is a list of these."""

    model: str
    params: int
    nonzero_params: int
    weight_bytes: int
    prefill_ms: float
    decode_tokens_per_s: float
    peak_memory_bytes: int | None
    prompt_len: int
    new_tokens: int
    repeats: int
    device: str
    threads: int

    def to_dict(self) -> dict:
        return asdict(self)


def count_parameters(model: nn.Module) -> tuple[int, int, int]:
    """``(parameters, non-zero parameters, bytes of parameters and persistent buffers)``; tied tensors once."""
    seen: set[int] = set()
    params = nonzero = nbytes = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        params += p.numel()
        nonzero += int(torch.count_nonzero(p))
        nbytes += p.numel() * p.element_size()
    for name, b in model.named_buffers():
        if id(b) not in seen and not name.endswith("inv_freq"):
            seen.add(id(b))
            nbytes += b.numel() * b.element_size()
    return params, nonzero, nbytes


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def time_prefill_decode(model: nn.Module, prompt: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    """Seconds for the prefill of ``prompt`` and for ``new_tokens`` greedy decode steps after it."""
    device = prompt.device
    cache = DynamicCache(config=model.config)
    _sync(device)
    t0 = time.perf_counter()
    out = model(input_ids=prompt, past_key_values=cache, use_cache=True)
    token = out.logits[:, -1:].argmax(-1)
    _sync(device)
    t1 = time.perf_counter()
    for _ in range(new_tokens):
        out = model(input_ids=token, past_key_values=out.past_key_values, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
    _sync(device)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def bench_models(
    models: dict[str, nn.Module],
    prompt_len: int = 64,
    new_tokens: int = 64,
    repeats: int = 5,
    warmup: int = 1,
    seed: int = 0,
    memory_specs: dict[str, str] | None = None,
    progress: bool = True,
) -> list[BenchResult]:
    """Benchmark ``models`` side by side (interleaved); ``memory_specs`` maps names to loadable specs
    (paths or ``builtin:NAME``) whose peak memory is measured in a subprocess (None: not measured)."""
    if not models:
        raise EmbodiedPruneError("nothing to benchmark; pass at least one model.")
    if prompt_len < 1 or new_tokens < 1 or repeats < 1:
        raise EmbodiedPruneError("prompt length, new tokens and repeats must all be at least 1.")
    first = next(iter(models.values()))
    device = next(first.parameters()).device
    vocab = min(m.config.vocab_size for m in models.values())
    prompt = torch.randint(0, vocab, (1, prompt_len), generator=torch.Generator().manual_seed(seed)).to(device)
    times: dict[str, list[tuple[float, float]]] = {n: [] for n in models}
    total = (warmup + repeats) * len(models)
    with tqdm(total=total, desc="bench", disable=not progress, leave=False) as bar:
        for r in range(warmup + repeats):
            for name, model in models.items():
                t = time_prefill_decode(model.eval(), prompt, new_tokens)
                if r >= warmup:
                    times[name].append(t)
                bar.update()
    rows = []
    for name, model in models.items():
        params, nonzero, nbytes = count_parameters(model)
        prefill = statistics.median(t[0] for t in times[name])
        decode = statistics.median(t[1] for t in times[name])
        spec = (memory_specs or {}).get(name)
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        peak = measure_peak_memory(spec, prompt_len, new_tokens, str(device), dtype) if spec else None
        rows.append(
            BenchResult(
                model=name,
                params=params,
                nonzero_params=nonzero,
                weight_bytes=nbytes,
                prefill_ms=prefill * 1e3,
                decode_tokens_per_s=new_tokens / decode,
                peak_memory_bytes=peak,
                prompt_len=prompt_len,
                new_tokens=new_tokens,
                repeats=repeats,
                device=str(device),
                threads=torch.get_num_threads(),
            )
        )
    return rows


def measure_peak_memory(
    spec: str, prompt_len: int, new_tokens: int, device: str = "cpu", dtype: str = "float32"
) -> int:
    """Peak memory (bytes) of loading ``spec`` in ``dtype`` and running one prefill + decode, in a fresh process."""
    cmd = [sys.executable, "-m", "embodied_prune.bench.memory", spec, str(prompt_len), str(new_tokens), device, dtype]
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise EmbodiedPruneError(f"the memory probe for {spec} failed: {tail}")
    return int(json.loads(proc.stdout.strip().splitlines()[-1])["peak_bytes"])
