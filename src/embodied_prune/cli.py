"""``embodied-prune``: one console script, one verb per task; each verb is a thin call into the library.

Every model argument takes a checkpoint folder, a Hugging Face hub id, ``builtin:NAME`` (``embodied-prune
models`` lists those) or a GGUF file. Bad input ends with one line naming the problem and the fix,
exit status 2, and nothing half-written on disk.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence

from .cli_args import add_device_args, add_output_args, load_kwargs, placement
from .errors import EmbodiedPruneError

EXIT_USAGE = 2

EPILOG_MODELS = "Model arguments take a checkpoint folder, a hub id, or builtin:NAME (see `embodied-prune models`)."


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=34, width=100)


class _Parser(argparse.ArgumentParser):
    """argparse with our exit convention: usage errors print one line and exit 2."""

    def error(self, message: str) -> None:
        self.print_usage(sys.stderr)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def _sparsity(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"sparsity {text!r} is not a number; pass e.g. 0.5") from None


# --- verbs ------------------------------------------------------------------------------------------


def cmd_prune(a: argparse.Namespace) -> None:
    from .api import prune
    from .models.devices import resolve_device

    device = resolve_device(a.device)
    outcome = prune(
        a.model,
        a.method,
        a.sparsity,
        a.pattern,
        a.importance,
        a.taylor,
        a.attention,
        a.layers,
        a.calibration,
        a.calibration_samples,
        a.calibration_seq_len,
        a.seed,
        a.out,
        a.overwrite,
        progress=not a.quiet,
        round_to=a.round_to,
        device=device,
        dtype=a.dtype,
        grad_dtype=a.grad_dtype,
    )
    from .bench.speed import count_parameters

    params, nonzero, nbytes = count_parameters(outcome.model)
    r = outcome.record
    print(f"pruned {a.model} with {a.method} on {r['device']} ({r['dtype']} weights) → {outcome.path}")
    _say_builtin_frames(outcome.record, a.calibration == "random")
    print(f"parameters: {params:,} (non-zero {nonzero:,}), weights {nbytes / 2**20:.1f} MiB")
    side = json.loads((outcome.path / "embodied_prune.json").read_text())
    if side["layer_shapes"]:
        print("layer shapes differ: load it with embodied_prune.load_model (plain from_pretrained cannot).")
    else:
        print("embodied_prune.load_model (or plain from_pretrained for a causal LM) loads this folder.")


def _say_builtin_frames(record: dict, defaulted: bool) -> None:
    """One line when a policy was calibrated on the shipped frames (``record``: the operation's history entry; no
    demonstrations folder was given)."""
    from .choices import BUILTIN_FRAMES

    if defaulted and record.get("calibration") == BUILTIN_FRAMES:
        print(
            f"calibrated on {BUILTIN_FRAMES} ({record['calibration_samples'][0]} steps of shipped expert "
            "demonstrations); --calibration DEMOS_FOLDER uses your own"
        )


def cmd_recover(a: argparse.Namespace) -> None:
    from .api import recover
    from .models.devices import resolve_device

    device = resolve_device(a.device)
    outcome = recover(
        a.dense,
        a.pruned,
        a.rank,
        a.svd,
        a.include,
        a.exclude,
        a.out,
        a.overwrite,
        budget=a.budget,
        dtype=a.factor_dtype,
        calibration=a.calibration,
        n_samples=a.calibration_samples,
        seq_len=a.calibration_seq_len,
        seed=a.seed,
        device=device,
        model_dtype=a.dtype,
        progress=not a.quiet,
    )
    rep = outcome.details
    _say_builtin_frames(outcome.record, a.calibration is None)
    ranks = [f.rank for f in rep.layers]
    how = (
        f"rank {a.rank}"
        if a.rank is not None
        else f"budget {a.budget:g} by {rep.allocation} (ranks {min(ranks)}–{max(ranks)})"
    )
    print(f"GLUESTICK {how}, {a.factor_dtype} factors, on {len(rep.layers)} layers → {outcome.path}")
    print(
        f"extra parameters: {rep.extra_parameters:,} ({100 * rep.overhead:.1f} % of the corrected layers' "
        f"{rep.base_parameters:,}); captured {100 * rep.energy:.1f} % of the gaps' energy (squared Frobenius norm)"
    )


def cmd_bench(a: argparse.Namespace) -> None:
    if a.backend == "llama.cpp":
        return _bench_llama_cpp(a)
    import torch

    from .bench.speed import bench_models
    from .models.checkpoint import load_model

    if a.threads:
        torch.set_num_threads(a.threads)
    names = _unique_names(a.model)
    models = {}
    for n, spec in zip(names, a.model, strict=True):
        device, dtype = placement(a, spec, whole_model=True)
        models[n] = load_model(spec, **load_kwargs(spec, device, dtype))
    rows = bench_models(
        models,
        a.prompt_len,
        a.new_tokens,
        a.repeats,
        a.warmup,
        a.seed,
        memory_specs=None if a.no_memory else dict(zip(names, a.model, strict=True)),
        progress=not a.quiet,
    )
    where = f"{rows[0].device}, {rows[0].threads} threads"
    _print_bench(a, rows, ("weight_bytes", "weights"), [("nonzero_params", "non-zero")], [], where)


def _print_bench(
    a: argparse.Namespace,
    rows: list,
    size: tuple[str, str],
    before: list[tuple[str, str]],
    after: list[tuple[str, str]],
    where: str,
) -> None:
    """Print bench rows (either backend's) as one table, sizes in human units and decode speed-ups over the first
    row, the line under it (``where``, prompt, tokens, repeats), and write the JSON file when asked. ``size`` is the
    rows' byte field and its column title; ``before`` / ``after`` are the backend's own columns around it."""
    from .evaluation.report import human_bytes, markdown_table
    from .io import atomic_write_text

    base = rows[0]
    field, title = size
    table = [
        {
            **r.to_dict(),
            "size": human_bytes(getattr(r, field)),
            "peak": human_bytes(r.peak_memory_bytes),
            "speedup": r.decode_tokens_per_s / base.decode_tokens_per_s,
        }
        for r in rows
    ]
    columns = [
        ("model", "model"),
        ("params", "params"),
        *before,
        ("size", title),
        ("prefill_ms", "prefill ms"),
        ("decode_tokens_per_s", "decode tok/s"),
        *after,
        ("speedup", f"decode × vs {base.model}"),
        ("peak", "peak memory"),
    ]
    print(markdown_table(table, columns))
    print(f"\n{where}, prompt {a.prompt_len}, {a.new_tokens} new tokens, median of {a.repeats}")
    if a.json:
        atomic_write_text(a.json, json.dumps([r.to_dict() for r in rows], indent=2) + "\n")
        print(f"wrote {a.json}")


def _bench_llama_cpp(a: argparse.Namespace) -> None:
    from .bench.llamacpp import bench_gguf

    if a.device not in ("auto", "cpu") or a.dtype != "auto":
        raise EmbodiedPruneError(
            "--backend llama.cpp runs GGUF files on the CPU in their own types; drop --device and --dtype."
        )
    names = _unique_names(a.model)
    rows = bench_gguf(
        dict(zip(names, a.model, strict=True)),
        a.prompt_len,
        a.new_tokens,
        a.repeats,
        a.warmup,
        a.threads or None,
        a.seed,
        memory=not a.no_memory,
        progress=not a.quiet,
    )
    latency = [("token_ms_p50", "token ms p50"), ("token_ms_p99", "token ms p99")]
    _print_bench(a, rows, ("file_bytes", "file"), [], latency, f"llama.cpp, {rows[0].threads} threads, batch 1")


def cmd_export(a: argparse.Namespace) -> None:
    from .deploy.export import export_gguf
    from .evaluation.report import human_bytes

    if a.format != "gguf":
        raise EmbodiedPruneError(f"unknown export format {a.format!r}; gguf is the one supported.")
    device, dtype = placement(a, a.model, whole_model=False)
    report = export_gguf(
        a.model, a.out, a.quant, overwrite=a.overwrite, threads=a.threads or None, device=device, dtype=dtype
    )
    types = ", ".join(f"{k} {v}" for k, v in report.tensor_types.items())
    print(
        f"exported {a.model} → {report.path} ({human_bytes(report.file_bytes)}, llama.cpp architecture "
        f"{report.architecture}; tensors: {types})"
    )
    for note in report.notes:
        print(f"note: {note}")
    print(f"run it: embodied-prune eval driving --backend llama.cpp --model {report.path}")


def _unique_names(specs: Sequence[str]) -> list[str]:
    names: list[str] = []
    for s in specs:
        base = s if s.startswith("builtin:") else os.path.basename(os.path.normpath(s)) or s
        name, k = base, 2
        while name in names:
            name, k = f"{base}#{k}", k + 1
        names.append(name)
    return names


def cmd_models(a: argparse.Namespace) -> None:
    from .models.builtin import list_builtins

    for m in list_builtins():
        print(f"builtin:{m.name:<14} [{m.status()}] {m.description}")


def cmd_experiment(a: argparse.Namespace) -> None:
    from .models.devices import DTYPES, default_placement, resolve_device

    device = resolve_device(a.device)
    with default_placement(device, None if a.dtype == "auto" else DTYPES[a.dtype]):
        _run_experiment(a)


def _run_experiment(a: argparse.Namespace) -> None:
    out = a.out or f"runs/{a.kind}"
    if a.kind == "tokens":
        from .experiments.tokens import run_tokens_experiment

        path = run_tokens_experiment(a.config, out, overwrite=a.overwrite)
        plots = "speedup_vs_success.png"
    elif a.kind == "bpf":
        from .experiments.bpf import run_bpf_experiment

        path = run_bpf_experiment(a.config, out, overwrite=a.overwrite, progress=not a.quiet)
        plots = "results.json, adaptability_vs_params.png, decode_speed.png"
    else:
        from .experiments.gluestick import run_gluestick_experiment

        path = run_gluestick_experiment(a.config, out, overwrite=a.overwrite, progress=not a.quiet)
        plots = "success_vs_extra.png, violations_vs_extra.png"
    print((path / "report.md").read_text())
    print(f"wrote {path}/report.md, summary.json, {plots}")


def cmd_demo(a: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(out=a.out, full=a.full, overwrite=a.overwrite, progress=not a.quiet)


# --- parser -----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from .choices import (
        ATTENTION_MODES,
        CALIBRATION_HELP,
        FACTOR_DTYPES,
        GGUF_TYPES,
        IMPORTANCE_CRITERIA,
        SVD_METHODS,
        TAYLOR_VARIANTS,
    )

    p = _Parser(prog="embodied-prune", description=__doc__, formatter_class=_formatter)
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB", parser_class=_Parser)

    def verb(name: str, fn: Callable, help: str, description: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=description, epilog=EPILOG_MODELS, formatter_class=_formatter)
        sp.set_defaults(fn=fn)
        sp.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
        return sp

    sp = verb(
        "prune",
        cmd_prune,
        "prune a causal LM or a VLA policy's backbone (structured, magnitude, Wanda, SparseGPT, N:M)",
        "Prune the decoder layers of a causal LM and save it as a Hugging Face checkpoint.\n\n"
        "  structured  removes whole attention heads (with their KV groups) and MLP channels, LLM-Pruner\n"
        "              style: the model gets physically smaller and faster. --sparsity is the fraction of\n"
        "              heads and MLP channels removed per pruned layer.\n"
        "  magnitude   zeroes the smallest |w| of each layer (no data needed).\n"
        "  wanda       zeroes the smallest |w|·sqrt(E[x²]) per output row (needs calibration data).\n"
        "  sparsegpt   prunes with second-order weight updates (needs calibration data).\n\n"
        "Unstructured methods take --sparsity or an N:M --pattern (2:4 keeps 2 of every 4 inputs).\n"
        "Example:\n"
        "  embodied-prune prune --model builtin:tinylm --method wanda --pattern 2:4 --out runs/tinylm-w24",
    )
    sp.add_argument("--model", required=True, help="model to prune")
    sp.add_argument("--method", required=True, help="structured, magnitude, wanda or sparsegpt")
    sp.add_argument("--sparsity", type=_sparsity, help="fraction removed, in [0, 1) (e.g. 0.5)")
    sp.add_argument(
        "--pattern", metavar="N:M", help="N:M sparsity for unstructured methods (e.g. 2:4); implies the sparsity"
    )
    sp.add_argument(
        "--importance",
        default="l2",
        help=f"structured: criterion ranking the groups, one of {', '.join(IMPORTANCE_CRITERIA)} (default l2)",
    )
    sp.add_argument(
        "--taylor",
        default="param_first",
        help=f"structured + taylor: variant, one of {', '.join(TAYLOR_VARIANTS)} (default param_first)",
    )
    sp.add_argument(
        "--attention",
        default="auto",
        help=f"structured: how heads go, one of {', '.join(ATTENTION_MODES)} "
        "(auto picks whole KV groups or query heads within groups, whichever lands closer to the sparsity)",
    )
    sp.add_argument(
        "--layers",
        metavar="START:END",
        help="prune only decoder layers START..END-1 (e.g. 4:30 leaves the first 4 and the last dense)",
    )
    sp.add_argument(
        "--round-to",
        type=int,
        default=1,
        metavar="K",
        help="structured: keep a multiple of K MLP channels per layer (e.g. 256, llama.cpp's k-quant block, so the "
        "down projection quantises in whole blocks; default 1)",
    )
    sp.add_argument(
        "--calibration",
        default="random",
        help=CALIBRATION_HELP + " (default random); for a VLA policy a demonstrations folder (`embodied-prune demos "
        "manipulation`), by default builtin:metaworld-frames, expert frames shipped with the package",
    )
    sp.add_argument("--calibration-samples", type=int, default=32, help="number of calibration sequences (default 32)")
    sp.add_argument(
        "--calibration-seq-len", type=int, default=128, help="tokens per calibration sequence (default 128)"
    )
    sp.add_argument("--seed", type=int, default=0, help="seed for calibration sampling and random importance")
    sp.add_argument(
        "--grad-dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="structured + taylor: dtype of the summed gradient, kept only where the variant needs it (param_first "
        "over several calibration batches, param_mix); bfloat16 halves that memory (default float32)",
    )
    add_device_args(sp, whole_model=False)
    add_output_args(sp)

    sp = verb(
        "recover",
        cmd_recover,
        "GLUESTICK: training-free low-rank recovery of a pruned model",
        "For every pruned linear layer, the truncated SVD (rank R) of W_dense − W_pruned gives factors\n"
        "applied beside the sparse weight at inference: y = W_pruned·x + U_r(V_rᵀx). No training.\n"
        "The output folder holds the pruned checkpoint plus gluestick.safetensors; embodied_prune.load_model\n"
        "loads both (plain from_pretrained loads the pruned model without the correction).\n\n"
        "Example:\n"
        "  embodied-prune recover --dense builtin:tinylm --pruned runs/tinylm-w24 --rank 16 --out runs/tinylm-w24-r16\n"
        "  embodied-prune recover --dense builtin:tinylm --pruned runs/tinylm-w24 --budget 0.15 \\\n"
        "      --factor-dtype int8 --out runs/tinylm-w24-b15\n"
        "  embodied-prune recover --dense builtin:vla-metaworld --pruned runs/vla-w24 --budget 0.15 \\\n"
        "      --calibration runs/demos --out runs/vla-w24-b15",
    )
    sp.add_argument("--dense", required=True, help="the dense model the pruned one was made from")
    sp.add_argument("--pruned", required=True, help="the pruned model (same layer shapes: unstructured or N:M pruning)")
    how = sp.add_mutually_exclusive_group(required=True)
    how.add_argument("--rank", type=int, help="rank R of every correction (clipped to each layer's min(d_in, d_out))")
    how.add_argument(
        "--budget",
        type=float,
        metavar="FRACTION",
        help="extra parameters as a fraction of the corrected layers' parameters (e.g. 0.15), spent per layer "
        "where a rank buys the most per parameter (exact SVD): the largest share of its layer's output on "
        "--calibration inputs, or without them the largest singular value",
    )
    sp.add_argument(
        "--factor-dtype",
        default="float32",
        choices=list(FACTOR_DTYPES),
        help="storage of the factors: float32 (default), bfloat16, float16, or int8 with a per-tensor scale",
    )
    sp.add_argument(
        "--svd", default="exact", choices=SVD_METHODS, help="exact SVD or randomized (faster on large layers)"
    )
    sp.add_argument(
        "--include",
        nargs="*",
        metavar="PATTERN",
        help="only layers matching these glob patterns or last names (e.g. down_proj)",
    )
    sp.add_argument(
        "--exclude", nargs="*", default=["lm_head"], metavar="PATTERN", help="skip these layers (default lm_head)"
    )
    sp.add_argument(
        "--calibration",
        help="with --budget: inputs on which each rank's share of its layer's output is measured: for a VLA "
        "policy a demonstrations folder (`embodied-prune demos manipulation`), for a causal LM "
        + CALIBRATION_HELP
        + ". Without it the budget follows the gaps' singular values (no data; measured worse on the VLA), except "
        "for a VLA policy, which then calibrates on builtin:metaworld-frames",
    )
    sp.add_argument("--calibration-samples", type=int, default=32, help="calibration samples (default 32)")
    sp.add_argument(
        "--calibration-seq-len", type=int, default=128, help="tokens per calibration sequence (default 128)"
    )
    sp.add_argument("--seed", type=int, default=0, help="seed for calibration sampling (default 0)")
    add_device_args(sp, whole_model=False)
    add_output_args(sp)

    sp = verb(
        "export",
        cmd_export,
        "export a causal LM (dense, pruned, recovered) to GGUF for llama.cpp, quantised or not",
        "Writes a GGUF file through llama.cpp's own converter (f32, f16, bf16, q8_0) and quantiser (q4_k_m\n"
        "and the other block types), then loads it in llama.cpp once as a check. Llama and Qwen2 families.\n"
        "Structured models whose layers differ in shape (pruned with --layers) become llama.cpp's deci\n"
        "architecture (Llama family only); GLUESTICK factors are merged into dense weights; unstructured and\n"
        "2:4 models export as dense matrices with their zeros (llama.cpp has no sparse kernels). A matrix\n"
        "whose rows are not a multiple of 256 long cannot use k-quant blocks and falls back to a wider type:\n"
        "the export warns (prune with --round-to 256 to keep MLP widths in whole blocks).\n\n"
        'Needs the deploy extra (pip install -e ".[deploy]"; make setup installs it).\n\n'
        "Example:\n"
        "  embodied-prune export --model builtin:driving-smollm2-grpo --quant q8_0 --out runs/smol-q8_0.gguf",
    )
    sp.add_argument("--model", required=True, help="the checkpoint to export (a folder or builtin:NAME)")
    sp.add_argument("--format", default="gguf", help="output format (gguf, the default and only one)")
    sp.add_argument("--quant", default="f16", help=f"GGUF type, one of {', '.join(GGUF_TYPES)} (default f16)")
    sp.add_argument("--out", required=True, help="the .gguf file to write")
    sp.add_argument("--threads", type=int, default=0, help="quantiser threads (default: all cores)")
    sp.add_argument("--overwrite", action="store_true", help="replace an existing file")
    add_device_args(sp, whole_model=False)  # used where GLUESTICK factors are folded into the weights

    sp = verb(
        "bench",
        cmd_bench,
        "side-by-side size, prefill, decode speed and memory of several models",
        "Measures parameters, weight bytes, prefill latency, greedy decode tokens/s (KV cache, fixed\n"
        "length, warm-up, median of repeats, models interleaved) and peak memory (fresh subprocess per\n"
        "model) for every --model, in one run. Speed-ups are relative to the first model.\n\n"
        "Example:\n"
        "  embodied-prune bench --model builtin:llama-130m --model runs/llama-130m-s50 --json bench.json\n"
        "  embodied-prune bench --backend llama.cpp --model runs/smol-f16.gguf --model runs/smol-s30-f16.gguf",
    )
    sp.add_argument("--model", action="append", required=True, help="a model to measure (repeat the option for more)")
    sp.add_argument("--prompt-len", type=int, default=64, help="prompt tokens for prefill (default 64)")
    sp.add_argument("--new-tokens", type=int, default=64, help="greedy tokens decoded after the prompt (default 64)")
    sp.add_argument(
        "--repeats", type=int, default=5, help="timed repeats per model; the median is reported (default 5)"
    )
    sp.add_argument("--warmup", type=int, default=1, help="untimed warm-up rounds (default 1)")
    sp.add_argument(
        "--threads", type=int, default=0, help="CPU threads (default: torch's choice; llama.cpp: all cores)"
    )
    add_device_args(sp, whole_model=True)
    sp.add_argument(
        "--backend",
        choices=["torch", "llama.cpp"],
        default="torch",
        help="time checkpoints in PyTorch (default) or .gguf files (from `embodied-prune export`) in llama.cpp, "
        "with per-token latency p50 / p99",
    )
    sp.add_argument("--seed", type=int, default=0, help="seed of the random prompt")
    sp.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    sp.add_argument("--json", help="write the rows to this JSON file (a list of objects)")

    from .cli_driving import add_data_verb
    from .cli_driving import add_verbs as add_driving_verbs

    add_driving_verbs(verb)
    add_data_verb(verb)
    from .cli_manipulation import add_verbs as add_manipulation_verbs

    add_manipulation_verbs(verb)

    verb("models", cmd_models, "list the built-in models", "List the models addressable as builtin:NAME.")

    sp = verb(
        "experiment",
        cmd_experiment,
        "run a closed-loop experiment from a config (tokens: visual-token pruning; gluestick: recovery; "
        "bpf: pruning during training)",
        "tokens: evaluate the VLA dense and with every visual-token pruner variant of the config on the same\n"
        "episodes (success with CIs, safety violations, kept tokens, estimated FLOPs, latency), then time\n"
        "all variants side by side on the same recorded observations. Writes report.md, summary.json,\n"
        "speedup_vs_success.png and one JSON per variant.\n\n"
        "gluestick: prune the VLA's backbone (methods, sparsities, N:M) and recover it with GLUESTICK (global\n"
        "ranks, per-layer budgets, factor dtypes); evaluate every cell and the dense policy on the same\n"
        "episodes. Writes report.md, summary.json, success_vs_extra.png, violations_vs_extra.png.\n\n"
        "bpf: train the driving controller by every strategy of the BPF study (dense, smaller dense, post-training\n"
        "pruning with and without RL recovery, SFT-stage pruning, BPF-RL, BPF-SFT/RL) at each sparsity and seed,\n"
        "evaluate all on the same held-out instructions, time decoding side by side and report the trade-off\n"
        "(removed parameters per lost point of adaptability). Writes report.md, summary.json, results.json and\n"
        "two plots. Hours on 2 cores for the full config; configs/bpf_quick.yaml runs in minutes.\n\n"
        "All resume: a finished variant, cell or trained model is not recomputed (--overwrite starts afresh).\n\n"
        "Examples:\n"
        "  embodied-prune experiment tokens --config configs/tokens_vla.yaml --out runs/tokens\n"
        "  embodied-prune experiment gluestick --config configs/gluestick_vla.yaml --out runs/gluestick\n"
        "  embodied-prune experiment bpf --config configs/bpf.yaml --out runs/bpf",
    )
    sp.add_argument("kind", choices=["tokens", "gluestick", "bpf"], help="the experiment")
    sp.add_argument("--config", required=True, help="YAML config (see configs/)")
    sp.add_argument("--out", help="output folder (default runs/KIND)")
    sp.add_argument("--overwrite", action="store_true", help="start afresh instead of resuming")
    from .cli_args import EXPERIMENT_DTYPE_HELP

    add_device_args(sp, whole_model=True, dtype_help=EXPERIMENT_DTYPE_HELP)

    sp = verb(
        "demo",
        cmd_demo,
        "prune, recover and evaluate the shipped models end to end (language model, driving, manipulation)",
        "Prunes builtin:tinylm structurally (Taylor, 50 %) and with 2:4 Wanda, recovers the 2:4 model with\n"
        "GLUESTICK at several ranks, and prints one table of parameters, output fidelity (KL to the dense\n"
        "model on held-out text) and speed; evaluates the shipped driving controller builtin:driving-l-grpo in\n"
        "closed loop before and after 30 % structured pruning and at 50 % by post-training pruning vs BPF-RL;\n"
        "then the shipped VLA builtin:vla-metaworld on the six Meta-World tasks dense vs 2:4 Wanda backbone vs\n"
        "GLUESTICK, and builtin:vla-metaworld-hires dense vs SpecPrune-VLA visual-token pruning at its recorded\n"
        "working point, with the query speed-ups timed side by side. About 5 minutes on 2 cores (40 driving\n"
        "instructions, 20 BPF GRPO steps, 3 episodes per task: wide CIs, printed); --full adds decode speed of\n"
        "builtin:llama-130m dense vs 50 % structured and takes larger samples (about 11 minutes). Artefacts go\n"
        "to --out.",
    )
    sp.add_argument(
        "--out", default="runs/demo", help="folder for the pruned checkpoints and the report (default runs/demo)"
    )
    sp.add_argument(
        "--full",
        action="store_true",
        help="add the 130 M-parameter speed section; 100 driving instructions instead of 40, 60 BPF GRPO steps "
        "instead of 20, 10 manipulation episodes per task instead of 3 (about 11 minutes instead of 5)",
    )
    sp.add_argument("--overwrite", action="store_true", default=True, help=argparse.SUPPRESS)
    return p


def _version() -> str:
    from . import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        args.fn(args)
    except EmbodiedPruneError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
