"""GPU latency of a 2:4 backbone, with and without GLUESTICK, at OpenVLA-like shapes, side by side (needs CUDA).

A Llama decoder with the widths of OpenVLA-OFT's language model (hidden 4096, MLP 11008, 32 heads; random
weights; ``--layers`` of its 32 layers, so that it fits the device time a session is lent), fp16; one policy
query is a forward over ``--tokens`` positions (OpenVLA-OFT feeds about 600). Variants, timed interleaved with
CUDA events after a warm-up, median of ``--repeats``: dense; 2:4 magnitude stored dense; the same 2:4 weights
in PyTorch's semi-structured sparse format (:mod:`embodied_prune.pruning.semi_structured`); and that with
GLUESTICK factors of rank ``--rank`` beside every pruned layer. Without a CUDA GPU of compute capability 8.0
or newer it exits with the reason (the CPU numbers are in the GLUESTICK VLA section of BENCHMARKS.md).
Not part of ``run_all.py``'s default list: run it where a GPU is lent.

python benchmarks/gluestick_gpu_latency.py [--layers 4] [--tokens 600] [--rank 64] [--repeats 50]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

import torch

from _common import OPENVLA_BACKBONE, write_result
from embodied_prune.errors import EmbodiedPruneError


def timed(variants: dict[str, torch.nn.Module], x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median forward time (ms) of each model on ``x``, interleaved repeat by repeat, CUDA events."""
    times: dict[str, list[float]] = {k: [] for k in variants}
    with torch.inference_mode():
        for _ in range(5):  # warm-up: kernels chosen, caches filled
            for m in variants.values():
                m(inputs_embeds=x)
        for _ in range(repeats):
            for name, m in variants.items():
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                m(inputs_embeds=x)
                end.record()
                torch.cuda.synchronize()
                times[name].append(start.elapsed_time(end))
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=4, help="decoder layers (OpenVLA's Llama 2 7B has 32)")
    ap.add_argument("--tokens", type=int, default=600, help="positions per policy query")
    ap.add_argument("--rank", type=int, default=64, help="GLUESTICK rank of every pruned layer")
    ap.add_argument("--repeats", type=int, default=50)
    a = ap.parse_args()
    if min(a.layers, a.tokens, a.rank, a.repeats) < 1:
        ap.error("--layers, --tokens, --rank and --repeats must be at least 1.")
    from transformers import LlamaConfig, LlamaForCausalLM

    from embodied_prune.models.lowrank import attach_factors
    from embodied_prune.pruning import prune_unstructured
    from embodied_prune.pruning.semi_structured import semi_structured_unsupported, to_semi_structured
    from embodied_prune.recovery.gluestick import compute_factors

    reason = semi_structured_unsupported("cuda")
    if reason:
        raise EmbodiedPruneError(f"{reason}; run this script where a GPU is lent.")
    t0 = time.time()
    torch.manual_seed(0)
    cfg = LlamaConfig(
        **OPENVLA_BACKBONE,
        num_hidden_layers=a.layers,
        vocab_size=32,  # a query's output is its action head's business: no real vocabulary
    )
    dense = LlamaForCausalLM(cfg).to("cuda", torch.float16).eval()
    pruned = copy.deepcopy(dense)
    prune_unstructured(pruned, "magnitude", 0.0, pattern=(2, 4), progress=False)
    sparse = copy.deepcopy(pruned)
    skipped = to_semi_structured(sparse)
    recovered = copy.deepcopy(pruned)
    # factors from the fp32 gap (the SVD wants fp32), stored in fp16
    report = compute_factors(dense.float(), recovered.float(), rank=a.rank, method="randomized", dtype="float16")
    dense.half()
    recovered.half()
    attach_factors(recovered, report.layers)
    to_semi_structured(recovered)
    x = torch.randn(1, a.tokens, cfg.hidden_size, device="cuda", dtype=torch.float16)
    variants = {"dense": dense, "2:4 stored dense": pruned, "2:4 sparse kernels": sparse}
    variants[f"2:4 sparse kernels + GLUESTICK r{a.rank}"] = recovered
    ms = timed(variants, x, a.repeats)
    rows = "\n".join(f"| {k} | {v:.2f} | {ms['dense'] / v:.2f}× |" for k, v in ms.items())
    body = (
        f"Llama decoder at OpenVLA-OFT's widths (hidden 4096, MLP 11008, 32 heads), {a.layers} layers, random "
        f"weights, fp16; one query = a forward over {a.tokens} positions; median of {a.repeats} interleaved "
        "repeats (CUDA events). 2:4 by magnitude on every decoder linear; GLUESTICK factors (randomized SVD, "
        f"fp16) at rank {a.rank} beside every pruned layer.\n\n| variant | query ms | speed-up vs dense |\n"
        f"|---|---|---|\n{rows}\n" + (f"\nLayers left dense (the kernels refused them): {skipped}\n" if skipped else "")
    )
    write_result(
        "gluestick_gpu_latency",
        "GLUESTICK and 2:4 sparse kernels: GPU latency at OpenVLA-like shapes",
        body,
        {"args": vars(a), "ms": ms, "skipped": skipped},
        time.time() - t0,
    )
    print(body)


if __name__ == "__main__":
    try:
        main()
    except EmbodiedPruneError as e:
        sys.exit(f"error: {e}")
