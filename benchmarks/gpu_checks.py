"""Every verb on a CUDA GPU, in a few minutes: the prepared script to run whenever a session is lent one.

Each check is one ``embodied-prune`` command with ``--device cuda`` in a fresh process (wall time, exit status,
peak GPU memory from ``torch.cuda.max_memory_allocated``, peak host memory): a random-weight bf16 Qwen2.5-1.5B
(``embodied_prune.models.scale``) pruned structurally (L2 and Taylor), by Wanda and SparseGPT 2:4, recovered by
GLUESTICK, benched against the pruned copy; the shipped driving controller ``builtin:driving-l-grpo`` evaluated in
closed loop and on decisions; a few SFT steps of a controller (the BPF experiment is left out: minutes of simulator
time, CPU-bound). Then the two GPU latency scripts that already existed (visual-token pruning, 2:4 + GLUESTICK).
Writes ``benchmarks/results/gpu_checks.{json,md}`` (a BENCHMARKS.md section) and, with ``--out DIR``, copies of
both there (the device tool brings back what lands under ``$OUT``).

``--smoke`` runs the same commands on the CPU at a tiny random shape (``builtin:qwen2-tiny``) to check the script
itself, writing nothing under benchmarks/results. Without CUDA (and without ``--smoke``) it exits with the reason.

python benchmarks/gpu_checks.py [--shape qwen2.5-1.5b] [--out $OUT] [--skip-latency] [--smoke]

On the lent machine (its python3 has torch, transformers, peft, accelerate, safetensors, tqdm; nothing can be
fetched there), from the repository root, ~5 minutes for the language-model checks:

    PYTHONPATH=src:benchmarks PYTHONUNBUFFERED=1 python3 benchmarks/gpu_checks.py --out $OUT

The driving checks are skipped there unless gymnasium, highway-env, trl and datasets travel as wheels (device tool
README: ``pip download --no-deps --only-binary=:all: --python-version 3.12 … -d .whl NAME==VERSION`` here, name
``.whl`` in ``carry``, install them with ``--target /tmp/site`` there and add it to PYTHONPATH).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import RESULTS, gib, machine, run_verb, today, write_result

HERE = Path(__file__).resolve().parent
CALIB = ["--calibration", "random", "--calibration-samples", "16", "--calibration-seq-len", "256"]


def checks(dense: str, work: Path, smoke: bool) -> list[tuple[str, list[str], tuple[str, ...]]]:
    """``(name, argv, modules it needs)`` of every check; outputs go under ``work``. The device machine's image
    holds torch, transformers, peft, accelerate and safetensors; the driving checks also need gymnasium,
    highway-env (and for training trl and datasets), carried as wheels (see the module docstring)."""
    controller = "builtin:qwen2-tiny" if smoke else "builtin:driving-l-grpo"  # shipped in the repository
    evals = ["--limit", "2"] if smoke else ["--limit", "40", "--workers", "8"]
    lm = ("transformers", "safetensors")
    sim = ("gymnasium", "highway_env")
    return [
        (
            "prune structured l2 30%",
            [
                "prune",
                "--model",
                dense,
                "--method",
                "structured",
                "--sparsity",
                "0.3",
                "--round-to",
                "64",
                "--out",
                f"{work}/s30",
            ],
            lm,
        ),
        (
            "prune structured taylor 30%",
            [
                "prune",
                "--model",
                dense,
                "--method",
                "structured",
                "--importance",
                "taylor",
                "--sparsity",
                "0.3",
                "--calibration-samples",
                "16",
                "--calibration-seq-len",
                "128",
                "--out",
                f"{work}/t30",
            ],
            lm,
        ),
        (
            "prune wanda 2:4",
            ["prune", "--model", dense, "--method", "wanda", "--pattern", "2:4", *CALIB, "--out", f"{work}/w24"],
            lm,
        ),
        (
            "prune sparsegpt 2:4",
            ["prune", "--model", dense, "--method", "sparsegpt", "--pattern", "2:4", *CALIB, "--out", f"{work}/g24"],
            lm,
        ),
        (
            "recover gluestick r64",
            [
                "recover",
                "--dense",
                dense,
                "--pruned",
                f"{work}/w24",
                "--rank",
                "64",
                "--svd",
                "randomized",
                "--out",
                f"{work}/w24-r64",
            ],
            lm,
        ),
        (
            "bench dense vs structured 30%",
            ["bench", "--model", dense, "--model", f"{work}/s30", "--new-tokens", "64", "--repeats", "5"],
            lm,
        ),
        ("eval driving", ["eval", "driving", "--model", controller, *evals], sim),
        ("eval decision", ["eval", "decision", "--model", controller, *evals], sim),
        (
            "train driving sft (4 steps)",
            ["train", "driving", "--stage", "sft", "--size", "s", "--max-steps", "4", "--out", f"{work}/sft"],
            (*sim, "trl", "datasets"),
        ),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="qwen2.5-1.5b", help="reference shape of the random model (models/scale.py)")
    ap.add_argument("--out", help="also copy the result files here (e.g. $OUT on the device machine)")
    ap.add_argument("--skip-latency", action="store_true", help="skip the two GPU latency scripts")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny shape: check the script, write nothing")
    a = ap.parse_args()
    import torch

    if not a.smoke and not torch.cuda.is_available():
        sys.exit("gpu_checks.py needs a CUDA GPU (torch.cuda.is_available() is False); --smoke checks it on the CPU.")
    device = "cpu" if a.smoke else "cuda"
    t0 = time.time()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if a.smoke:
            dense = "builtin:qwen2-tiny"
        else:
            from embodied_prune.models.scale import write_random_checkpoint

            dense = str(write_random_checkpoint(a.shape, work / "dense", progress=False))
        for name, argv, needs in checks(dense, work, a.smoke):
            missing = [m for m in needs if importlib.util.find_spec(m) is None]
            if missing:
                rows.append({"check": name, "argv": ["embodied-prune", *argv], "skipped": f"no {', '.join(missing)}"})
                print(f"{name}: skipped (no {', '.join(missing)} here; carry their wheels)", flush=True)
                continue
            result = run_verb([*argv, "--device", device, "-q"], work / "verb.log")
            rows.append({"check": name, "argv": ["embodied-prune", *argv], **result})
            print(
                f"{name}: rc {result['rc']}, {result['wall_s']:.1f} s, GPU {gib(result['peak_cuda_bytes'])}", flush=True
            )
            if result["rc"] != 0:
                print("\n".join(result["log_tail"]), flush=True)
    latency = {}
    if not a.skip_latency:
        for script in ("tokens_gpu_latency.py", "gluestick_gpu_latency.py"):
            cmd = [sys.executable, str(HERE / script)] + (
                ["--smoke"] if a.smoke and script.startswith("tokens") else []
            )
            if a.smoke and not script.startswith("tokens"):
                continue  # it has no CPU mode
            proc = subprocess.run(cmd, capture_output=True, text=True)
            latency[script] = {"rc": proc.returncode, "tail": (proc.stdout + proc.stderr).strip().splitlines()[-25:]}
            print(f"{script}: rc {proc.returncode}", flush=True)
    if a.smoke:
        bad = [r["check"] for r in rows if r.get("rc", 0) != 0]
        print("smoke: all checks ran" if not bad else f"smoke: failed: {', '.join(bad)}")
        sys.exit(1 if bad else 0)
    table = ["| check | wall | peak GPU memory | peak host memory | exit |", "|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            table.append(f"| {r['check']} | skipped: {r['skipped']} | | | |")
            continue
        table.append(
            f"| {r['check']} | {r['wall_s']:.1f} s | {gib(r['peak_cuda_bytes'])} | {gib(r['peak_rss_bytes'])} "
            f"| {r['rc']} |"
        )
    body = (
        f"Random-weight bf16 {a.shape} (`embodied_prune.models.scale`) and `builtin:driving-l-grpo`, every "
        "verb with `--device cuda` in a fresh process; GPU memory is `torch.cuda.max_memory_allocated` of that "
        f"process. GPU: {torch.cuda.get_device_name()}.\n\n" + "\n".join(table)
    )
    if latency:
        body += "\n\nThe GPU latency scripts (their own sections, when they succeed, are "
        body += (
            "`tokens_gpu_latency` and `gluestick_gpu_latency`): "
            + ", ".join(f"{k} exit {v['rc']}" for k, v in latency.items())
            + "."
        )
    write_result(
        "gpu_checks",
        "Every verb on a GPU",
        body,
        {"rows": rows, "latency": latency, "machine": machine(), "date": today()},
        time.time() - t0,
    )
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        for f in RESULTS.glob("*gpu*"):
            if f.is_file():
                shutil.copy(f, Path(a.out) / f.name)
        (Path(a.out) / "latency.json").write_text(json.dumps(latency, indent=2))


if __name__ == "__main__":
    main()
