"""Side-by-side speed of GGUF files in llama.cpp: prefill, decode tokens/s, per-token latency, peak memory.

The same protocol as :mod:`.speed` (models interleaved in one process, warm-up, median over repeats, greedy decoding
of a fixed number of tokens with the KV cache), run through ``llama_cpp.Llama`` at batch 1, the way a robot's
controller decodes. Peak memory is measured per file in a fresh subprocess (``VmHWM`` above the resident size after
imports, see :mod:`.memory`).

``python -m embodied_prune.bench.llamacpp FILE PROMPT_LEN NEW_TOKENS THREADS`` is that subprocess.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
from tqdm.auto import tqdm

from ..deploy.runtime import LlamaCppModel
from ..errors import EmbodiedPruneError


@dataclass
class GGUFBenchResult:
    """One GGUF file's row; the JSON written by ``embodied-prune bench --backend llama.cpp`` is a list of these."""

    model: str
    params: int
    file_bytes: int
    prefill_ms: float
    decode_tokens_per_s: float
    token_ms_p50: float
    token_ms_p99: float
    peak_memory_bytes: int | None
    prompt_len: int
    new_tokens: int
    repeats: int
    threads: int
    backend: str = "llama.cpp"

    def to_dict(self) -> dict:
        return asdict(self)


def gguf_parameters(path: str | os.PathLike) -> int:
    """Number of weights stored in a GGUF file (every tensor's element count)."""
    from gguf import GGUFReader

    return int(sum(int(np.prod([int(x) for x in t.shape])) for t in GGUFReader(str(path)).tensors))


def time_gguf(model: LlamaCppModel, prompt: list[int], new_tokens: int) -> tuple[float, list[float]]:
    """Seconds of the prefill of ``prompt`` and of each of ``new_tokens`` greedy decode steps after it."""
    llm = model.llm
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt)
    prefill = time.perf_counter() - t0
    steps = []
    for _ in range(new_tokens):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        t = time.perf_counter()
        llm.eval([token])
        steps.append(time.perf_counter() - t)
    return prefill, steps


def bench_gguf(
    files: dict[str, str],
    prompt_len: int = 64,
    new_tokens: int = 64,
    repeats: int = 5,
    warmup: int = 1,
    threads: int | None = None,
    seed: int = 0,
    memory: bool = True,
    progress: bool = True,
) -> list[GGUFBenchResult]:
    """Benchmark the GGUF ``files`` (name → path) side by side in llama.cpp."""
    if not files:
        raise EmbodiedPruneError("nothing to benchmark; pass at least one .gguf file.")
    if prompt_len < 1 or new_tokens < 1 or repeats < 1:
        raise EmbodiedPruneError("prompt length, new tokens and repeats must all be at least 1.")
    threads = threads or os.cpu_count() or 1
    ctx = prompt_len + new_tokens + 8
    models = {n: LlamaCppModel(p, threads=threads, n_ctx=ctx) for n, p in files.items()}
    try:
        vocab = min(m.llm.n_vocab() for m in models.values())
        prompt = np.random.default_rng(seed).integers(0, vocab, prompt_len).tolist()
        times: dict[str, list[tuple[float, list[float]]]] = {n: [] for n in models}
        with tqdm(total=(warmup + repeats) * len(models), desc="bench", disable=not progress, leave=False) as bar:
            for r in range(warmup + repeats):
                for name, model in models.items():
                    t = time_gguf(model, prompt, new_tokens)
                    if r >= warmup:
                        times[name].append(t)
                    bar.update()
    finally:
        for m in models.values():
            m.close()
    rows = []
    for name, path in files.items():
        steps = [s for _, per in times[name] for s in per]
        decode = statistics.median(sum(per) for _, per in times[name])
        rows.append(
            GGUFBenchResult(
                model=name,
                params=gguf_parameters(path),
                file_bytes=os.path.getsize(path),
                prefill_ms=statistics.median(p for p, _ in times[name]) * 1e3,
                decode_tokens_per_s=new_tokens / decode,
                token_ms_p50=float(np.percentile(steps, 50)) * 1e3,
                token_ms_p99=float(np.percentile(steps, 99)) * 1e3,
                peak_memory_bytes=gguf_peak_memory(path, prompt_len, new_tokens, threads) if memory else None,
                prompt_len=prompt_len,
                new_tokens=new_tokens,
                repeats=repeats,
                threads=threads,
            )
        )
    return rows


def gguf_peak_memory(path: str | os.PathLike, prompt_len: int, new_tokens: int, threads: int) -> int:
    """Peak resident memory (bytes) of loading ``path`` in llama.cpp and running one prefill + decode, in a fresh
    process."""
    cmd = [sys.executable, "-m", "embodied_prune.bench.llamacpp", str(path), str(prompt_len), str(new_tokens)]
    proc = subprocess.run([*cmd, str(threads)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise EmbodiedPruneError(f"the memory probe for {path} failed: {tail}")
    return int(json.loads(proc.stdout.strip().splitlines()[-1])["peak_bytes"])


def _probe(argv: list[str]) -> None:
    from .memory import status_bytes

    path, prompt_len, new_tokens, threads = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    import llama_cpp  # noqa: F401  (imported before the baseline: the library is not the model)

    base = status_bytes("VmRSS")
    model = LlamaCppModel(path, threads=threads, n_ctx=prompt_len + new_tokens + 8)
    time_gguf(model, [0] * prompt_len, new_tokens)
    peak = status_bytes("VmHWM") - base
    model.close()
    print(json.dumps({"peak_bytes": int(peak)}))


if __name__ == "__main__":
    _probe(sys.argv[1:])
