"""GPU policy-query latency of visual-token pruning at OpenVLA-OFT-like shapes, side by side (needs CUDA).

A :class:`~embodied_prune.models.vla.TinyVLA` whose language backbone has the widths of OpenVLA-OFT's Llama 2
7B (hidden 4096, MLP 11008, 32 heads; random weights; ``--layers`` of its 32 layers, so that the run fits the
device time a session is lent) in fp16, fed by two 256-px cameras with 16-px patches: 512 visual tokens +
BOS + a 48-token instruction + 8 action queries = 569 positions per query (OpenVLA-OFT feeds about 600). The
cameras see a synthetic episode: a fixed random scene in which a bright square (the "object") moves a few
pixels per step, and a hand whose speed alternates between fast and fine motion, so SpecPrune's
frame-difference set and its action-aware controller both act. Every variant answers the same
observations, interleaved query by query; each query's time is wall clock from the observation to the
action chunk on the host (the pruner's host-side work included), synchronised, median of ``--queries``
after a warm-up. Variants: dense (the model's own forward), SpecPrune-VLA (default settings and its
two-layer variant), FastV and random drop at SpecPrune's budget (``--alpha`` of the visual tokens).
Without CUDA it exits with the reason; ``--smoke`` runs narrow widths on the CPU to check the script and
writes nothing (the CPU numbers of the shipped policy are in the SpecPrune section of BENCHMARKS.md).
Not part of ``run_all.py``'s default list: run it where a GPU is lent.

python benchmarks/tokens_gpu_latency.py [--layers 4] [--queries 40] [--alpha 0.3] [--smoke]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch

from _common import OPENVLA_BACKBONE, write_result
from embodied_prune.errors import EmbodiedPruneError

CAMERAS = [["front", 256, 16], ["wrist", 256, 16]]
VARIANTS = {
    "dense": None,
    "specprune": {"name": "specprune"},
    "specprune two-layer": {"name": "specprune", "options": {"prune_layer": 1}},
    "specprune layer 2": {
        "name": "specprune",
        "options": {"prune_layer": 2, "local_layers": [2], "layer_dynamic": [3]},
    },
    "fastv": {"name": "fastv"},
    "random": {"name": "random"},
}


def synthetic_episode(steps: int, size: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Observations of a scene whose object square drifts and whose hand alternates fast and fine motion."""
    rng = np.random.default_rng(seed)
    scene = {name: rng.integers(0, 200, (s, s, 3), dtype=np.uint8) for name, s, _ in CAMERAS}
    hand = np.zeros(3)
    out = []
    for t in range(steps):
        fine = (t // 8) % 2 == 1  # 8 steps of reaching, 8 of fine motion, ...
        hand = hand + (0.001 if fine else 0.008) * np.array([1.0, 0.5, -0.2])
        obs = {}
        for name, s, _ in CAMERAS:
            img = scene[name].copy()
            x = (20 + 3 * t) % (s - 40)
            img[40:72, x : x + 32] = 255
            obs[name] = img
        obs["proprio"] = np.concatenate([hand, [0.5]]).astype(np.float32)
        out.append(obs)
    return out


def build_model(layers: int, widths: dict, device: str, dtype: torch.dtype):
    """The TinyVLA with a backbone of ``widths`` (LlamaConfig fields): vision side and heads in fp32, the
    backbone in ``dtype``."""
    from transformers import LlamaConfig

    from embodied_prune.models.vla import TinyVLA, TinyVLAConfig

    backbone = LlamaConfig(
        **widths,
        num_hidden_layers=layers,
        vocab_size=64,
        max_position_embeddings=1024,
        attn_implementation="sdpa",  # token pruning needs a dense mask (see tokens.forward)
    )
    cfg = TinyVLAConfig(backbone, cameras=CAMERAS, instruction_len=48, chunk=8)
    torch.manual_seed(0)
    model = TinyVLA(cfg).to(device).eval()
    model.backbone.to(dtype)
    return model


def timed_queries(model, episode, alpha: float, device: str, warmup: int) -> dict[str, dict]:
    """Median query ms and mean kept visual tokens per layer of every variant, interleaved query by query."""
    from embodied_prune.tokens import build_token_pruner, pruned_query

    pruners = {
        k: build_token_pruner(v["name"], alpha=alpha, cameras=CAMERAS, options=v.get("options"))
        for k, v in VARIANTS.items()
        if v is not None
    }
    for p in pruners.values():
        p.reset(0)
    ids = torch.randint(3, 64, (1, model.config.instruction_len), device=device)
    mask = torch.ones_like(ids)
    times: dict[str, list[float]] = {k: [] for k in VARIANTS}
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    with torch.inference_mode():
        for step, obs in enumerate(episode):
            for name in VARIANTS:
                pruner = pruners.get(name)
                sync()
                t0 = time.perf_counter()
                images = {n: torch.from_numpy(obs[n][None]).to(device) for n, _, _ in CAMERAS}
                proprio = torch.from_numpy(obs["proprio"][None]).to(device)
                if pruner is None:
                    chunk = model(images, ids, mask, proprio, bos_id=2)["actions"]
                else:
                    pruner.observe(obs)
                    chunk = pruned_query(model, pruner, images, ids, mask, proprio, 2)
                chunk.cpu()  # the host needs the actions: this synchronises too
                if step >= warmup:
                    times[name].append((time.perf_counter() - t0) * 1e3)
    visual = sum(model.config.visual_tokens().values())
    out = {}
    for name, ms in times.items():
        p = pruners.get(name)
        kept = [q.kept_tokens_mean for q in p.queries[warmup:]] if p is not None else [visual]
        fine = sum(p.fine_queries[warmup:]) if p is not None and p.name == "specprune" else None
        out[name] = {"ms": statistics.median(ms), "kept": float(np.mean(kept)), "fine_queries": fine}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=4, help="decoder layers (OpenVLA's Llama 2 7B has 32)")
    ap.add_argument("--queries", type=int, default=40, help="timed queries per variant (after --warmup)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed first queries (kernel choice, caches)")
    ap.add_argument("--alpha", type=float, default=0.3, help="kept fraction of the visual tokens (default 0.3)")
    ap.add_argument("--smoke", action="store_true", help="narrow widths on the CPU, nothing written")
    a = ap.parse_args()
    if min(a.layers, a.queries) < 1 or a.warmup < 0 or not 0.0 < a.alpha <= 1.0:
        ap.error("--layers and --queries must be at least 1, --warmup at least 0, --alpha in (0, 1].")
    t0 = time.time()
    if a.smoke:
        narrow = {"hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 4, "num_key_value_heads": 4}
        device, dtype, widths = "cpu", torch.float32, narrow
    else:
        if not torch.cuda.is_available():
            raise EmbodiedPruneError("no CUDA device here; run this script where a GPU is lent (or pass --smoke).")
        device, dtype, widths = "cuda", torch.float16, OPENVLA_BACKBONE
    model = build_model(a.layers, widths, device=device, dtype=dtype)
    episode = synthetic_episode(a.warmup + a.queries, CAMERAS[0][1])
    res = timed_queries(model, episode, a.alpha, device, a.warmup)
    dense = res["dense"]["ms"]
    rows = "\n".join(
        f"| {k} | {v['ms']:.2f} | {dense / v['ms']:.2f}× | {v['kept']:.0f} | "
        f"{'–' if v['fine_queries'] is None else v['fine_queries']} |"
        for k, v in res.items()
    )
    device_name = torch.cuda.get_device_name() if device == "cuda" else "CPU (smoke)"
    body = (
        f"TinyVLA with a Llama backbone at OpenVLA-OFT's widths (hidden {widths['hidden_size']}, MLP "
        f"{widths['intermediate_size']}, {widths['num_attention_heads']} heads), {a.layers} layers, random weights, "
        f"backbone in {str(dtype).split('.')[-1]} on "
        f"{device_name}; two 256-px cameras = 512 visual tokens, 569 positions per query; a synthetic episode "
        f"(moving object, hand alternating 8 fast and 8 fine steps). Median of {a.queries} interleaved queries "
        f"after {a.warmup} warm-up ones, observation to action chunk on the host. Budget: {a.alpha:g} of the "
        "visual tokens.\n\n"
        "| variant | query ms | speed-up vs dense | visual tokens per layer (mean) | fine-motion queries |\n"
        f"|---|---|---|---|---|\n{rows}\n"
    )
    if a.smoke:
        print(body)
        return
    write_result(
        "tokens_gpu_latency",
        "Visual-token pruning: GPU query latency at OpenVLA-OFT-like shapes",
        body,
        {"args": vars(a), "results": res, "device": device_name},
        time.time() - t0,
    )


if __name__ == "__main__":
    try:
        main()
    except EmbodiedPruneError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
