"""The ``train driving`` and ``eval driving`` verbs of ``embodied-prune`` (the closed-loop driving task)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

from .errors import EmbodiedPruneError

STAGES = ("sft", "grpo")


def cmd_train(a: argparse.Namespace) -> None:
    if a.task == "manipulation":
        from .cli_manipulation import cmd_train as train_manipulation

        return train_manipulation(a)
    from .training.driving import GRPOSettings, SFTSettings, train_grpo, train_sft

    if a.stage is None:
        raise EmbodiedPruneError("train driving needs --stage sft or --stage grpo.")
    if a.demos or a.batch_size or a.bf16 or a.visual_keep is not None or a.patch is not None or a.vision_tower:
        raise EmbodiedPruneError(
            "--demos, --batch-size, --bf16, --patch, --visual-keep and --vision-tower are for train manipulation."
        )
    from .models.devices import default_placement, resolve_autocast, resolve_device

    device = resolve_device(a.device)
    autocast = resolve_autocast(a.dtype, device)
    placed = {"device": device, "autocast": autocast}
    run = {"overwrite": a.overwrite, "progress": not a.quiet, "checkpoint_every": a.save_every, "resume": a.resume}
    if a.decision is not None and a.decision < 0:
        raise EmbodiedPruneError(f"--decision is a number of decision examples; got {a.decision}.")
    if a.decision_file and not a.decision:
        raise EmbodiedPruneError("--decision-file needs --decision N, the number of its examples to use.")
    if a.stage == "sft":
        if a.init:
            raise EmbodiedPruneError(
                "--init is for --stage grpo; SFT trains a fresh controller of --size, or --base MODEL with LoRA."
            )
        if a.beta is not None or a.anchor is not None:
            raise EmbodiedPruneError("--beta and --anchor are for --stage grpo.")
        given = {
            "epochs": a.epochs,
            "learning_rate": a.learning_rate,
            "max_steps": a.max_steps,
            "lora_rank": a.lora,
            "decision": a.decision,
            "decision_file": a.decision_file,
        }
        given = {k: v for k, v in given.items() if v is not None}
        if a.base:
            s = SFTSettings.pretrained(a.base, seed=a.seed, **given)
        else:
            if a.lora:
                raise EmbodiedPruneError(
                    "--lora in SFT fine-tunes a pretrained --base; a fresh controller trains whole."
                )
            s = SFTSettings(size=a.size, seed=a.seed, **given)

        def tokenizer():
            from .models.checkpoint import load_tokenizer
            from .training.controller import train_tokenizer

            return load_tokenizer(a.base) if a.base else train_tokenizer()

        with default_placement(device):
            path = train_sft(a.out, s, callbacks=_pruning(a, s.total_steps(), tokenizer), **run, **placed)
    else:
        if not a.init:
            raise EmbodiedPruneError(
                "--stage grpo needs --init, the SFT controller to start from (e.g. builtin:driving-l-sft)."
            )
        if a.base:
            raise EmbodiedPruneError("--base is for --stage sft; GRPO starts from --init, an SFT controller.")
        given = {
            "learning_rate": a.learning_rate,
            "steps": a.max_steps,
            "beta": a.beta,
            "anchor_coef": a.anchor,
            "lora_rank": a.lora,
            "decision": a.decision,
            "decision_file": a.decision_file,
        }
        given = {k: v for k, v in given.items() if v is not None}
        from .envs.driving.prompts import is_chat
        from .models.checkpoint import load_tokenizer

        # pruning during GRPO cuts the model's own weights: every weight trains (no LoRA) unless told otherwise;
        # a pretrained controller (chat prompts) gets the recipe sized for it
        if a.prune_to is not None or a.lora == 0:
            make = GRPOSettings.full_weights
        elif is_chat(load_tokenizer(a.init)):
            make = GRPOSettings.pretrained
        else:
            make = GRPOSettings
        s = make(seed=a.seed, workers=a.workers, **given)

        with default_placement(device):
            callbacks = _pruning(a, s.steps, lambda: load_tokenizer(a.init))
            path = train_grpo(a.init, a.out, s, callbacks=callbacks, **run, **placed)
    record = json.loads((path / "embodied_prune.json").read_text())["history"][-1]
    print(f"trained {a.stage} controller in {record['wall_s']:.0f} s → {path}")
    for p in record.get("pruning", []):
        cuts = ", ".join(f"step {c['step']}: {c['sparsity']:.0%} ({c['parameters']:,} parameters)" for c in p["cuts"])
        print(f"pruned during training to {p['target']:.0%} ({p['schedule']}): {cuts}")
    print(f"evaluate it: embodied-prune eval driving --model {path}")


def _pruning(a: argparse.Namespace, total_steps: int, tokenizer: Callable[[], object]) -> list:
    """A :class:`~.schedules.PruningCallback` from the --prune-* options (none without --prune-to);
    ``tokenizer()`` gives the controller's tokenizer for teacher-text Taylor calibration."""
    if a.prune_to is None:
        if a.cuts is not None or a.cut_every is not None or a.prune_reference:
            raise EmbodiedPruneError("--cuts, --cut-every and --prune-reference need --prune-to SPARSITY.")
        return []
    from .schedules import PruningCallback
    from .training.driving import teacher_calibration

    teacher = a.importance == "taylor" and a.taylor_data == "teacher"

    cuts = 4 if a.cuts is None else a.cuts
    every = a.cut_every if a.cut_every is not None else max(1, total_steps // (cuts + 1))
    cb = PruningCallback(
        a.prune_to,
        cuts=cuts,
        interval=every,
        schedule=a.schedule,
        importance=a.importance,
        reference=a.prune_reference,
        seed=a.seed,
        calibration=teacher_calibration(tokenizer()) if teacher else None,
    )
    cb.check_steps(total_steps)
    return [cb]


def cmd_eval(a: argparse.Namespace) -> None:
    if a.task == "manipulation":
        from .cli_manipulation import cmd_eval as eval_manipulation

        return eval_manipulation(a)
    if a.task == "decision":
        return eval_decision(a)
    _no_manipulation_flags(a)
    if a.decisions:
        raise EmbodiedPruneError("--decisions is for eval decision; eval driving takes --instructions FILE.")
    a.episodes = 1 if a.episodes is None else a.episodes
    from .envs.driving.instructions import generate_split, load_instructions
    from .evaluation.driving import evaluate_driving

    if a.episodes < 1:
        raise EmbodiedPruneError(f"--episodes must be at least 1, got {a.episodes}.")
    _check_limit(a)
    if a.instructions and a.split:
        raise EmbodiedPruneError("pass either --instructions FILE or --split, not both.")
    if a.instructions:
        instructions = load_instructions(a.instructions)
        if a.limit:
            instructions = instructions[: a.limit]
    else:
        instructions = generate_split(a.split or "test", a.limit or 200)
    model, tok = _controller(a)
    report = evaluate_driving(
        model,
        tok,
        instructions,
        seed=a.seed,
        episodes=a.episodes,
        workers=a.workers,
        name=a.model,
        progress=not a.quiet,
    )
    _report(report, "instructions", a.json)


def _controller(a: argparse.Namespace) -> tuple[object, object]:
    """``(model, tokenizer)`` of the controller to evaluate: a PyTorch checkpoint, or with ``--backend llama.cpp`` a
    GGUF file run by llama.cpp, whose own chat template then formats the prompts."""
    if a.backend == "llama.cpp":
        from .deploy.runtime import ChatTemplate, LlamaCppModel

        if a.device not in ("auto", "cpu") or a.dtype != "auto":
            raise EmbodiedPruneError(
                "--backend llama.cpp runs the GGUF file on the CPU in its own types; drop --device and --dtype."
            )
        model = LlamaCppModel(a.model, threads=a.threads or None)
        return model, ChatTemplate(model.chat_template)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    from .cli_args import load_kwargs, placement
    from .models.checkpoint import load_model, load_tokenizer

    device, dtype = placement(a, a.model, whole_model=True)
    tok = load_tokenizer(a.model)
    if tok is None:
        raise EmbodiedPruneError(f"{a.model} has no tokenizer files; a driving controller needs its tokenizer.")
    return load_model(a.model, **load_kwargs(a.model, device, dtype)), tok


def _check_limit(a: argparse.Namespace) -> None:
    if a.limit is not None and a.limit < 1:
        raise EmbodiedPruneError(f"--limit must be at least 1, got {a.limit}.")


def _no_manipulation_flags(a: argparse.Namespace) -> None:
    knobs = (a.keep, a.alpha, a.prune_layer, a.score_layers, a.score_rows, a.drop_layers, a.global_layers, a.controller)
    if a.tasks or a.blank_images or a.execute or a.token_pruner != "none" or any(k is not None for k in knobs):
        raise EmbodiedPruneError(
            "--tasks, --execute, --blank-images and the token-pruning options (--token-pruner, --keep, --alpha, "
            "--prune-layer, --score-layers, --score-rows, --drop-layers, --global-layers, --no-controller) are for "
            "eval manipulation."
        )


def eval_decision(a: argparse.Namespace) -> None:
    """``eval decision``: accuracy of adherence verdicts on a decision file or built-in split."""
    if a.instructions or a.episodes is not None or a.seed is not None:
        raise EmbodiedPruneError("--instructions, --episodes and --seed are for eval driving; pass --decisions FILE.")
    _no_manipulation_flags(a)
    _check_limit(a)
    if a.decisions and a.split:
        raise EmbodiedPruneError("pass either --decisions FILE or --split, not both.")
    from .envs.driving.decision import builtin_decisions, load_decisions
    from .evaluation.decision import evaluate_decision

    model, tok = _controller(a)
    if a.decisions:
        examples = load_decisions(a.decisions)[: a.limit]
    else:
        examples = builtin_decisions(a.split or "test", a.limit, a.workers, progress=not a.quiet)
    report = evaluate_decision(model, tok, examples, name=a.model, progress=not a.quiet)
    _report(report, "examples", a.json)


def _report(report, count: str, json_path: str | None) -> None:
    """Print an evaluation report, its size (``count`` names the unit) and time; write its JSON when asked."""
    from .io import atomic_write_text

    print(report.markdown())
    d = report.to_dict()
    print(f"\n{d[count]} {count}, {d['wall_s']:.0f} s")
    if json_path:
        atomic_write_text(json_path, json.dumps(d, indent=2) + "\n")
        print(f"wrote {json_path}")


def cmd_data(a: argparse.Namespace) -> None:
    """``data decision``: write a built-in decision split as JSONL (the schema users' own files follow)."""
    from .envs.driving.decision import builtin_decisions, write_decisions

    _check_limit(a)
    items = builtin_decisions(a.split, a.limit, a.workers, progress=not a.quiet)
    write_decisions(items, a.out)
    print(f"wrote {len(items)} {a.split} decision examples ({sum(x.adheres for x in items)} adhering) → {a.out}")


def add_verbs(verb: Callable[..., argparse.ArgumentParser]) -> None:
    """Register ``train`` and ``eval`` with the main parser's ``verb`` helper."""
    from .choices import CONTROLLER_SIZES, IMPORTANCE_CRITERIA, SCHEDULES
    from .cli_args import TRAIN_DTYPE_HELP, add_device_args, add_output_args
    from .cli_manipulation import EVAL_HELP, TRAIN_HELP, add_eval_arguments, add_train_arguments

    sp = verb(
        "train",
        cmd_train,
        "train a driving controller LLM (SFT, then GRPO with a closed-loop reward) or a VLA policy (behaviour cloning)",
        "Train the LLM controller that turns driving instructions into IDM/MOBIL parameters of a\n"
        "highway-env vehicle.\n\n"
        "  --stage sft   trains a fresh controller of --size on teacher labels (TRL SFTTrainer).\n"
        "  --stage grpo  improves --init with GRPO (TRL GRPOTrainer); the reward is the relative task-error\n"
        "                reduction measured by driving each sampled answer in closed loop.\n\n"
        "Pruning during training (BPF): --prune-to S removes attention heads and MLP channels (structured,\n"
        "LLM-Pruner groups) in --cuts steps, every --cut-every optimizer steps, until S of the dense\n"
        "structure is gone; training goes on between cuts so the controller adapts. The saved controller is\n"
        "physically smaller. A GRPO stage after a pruned SFT stage continues from where that one stopped\n"
        "when --prune-reference names the dense model the target is measured against.\n\n"
        "Examples:\n"
        "  embodied-prune train driving --stage sft --size s --out runs/ctl-s-sft\n"
        "  embodied-prune train driving --stage grpo --init runs/ctl-s-sft --out runs/ctl-s-grpo\n"
        "  embodied-prune train driving --stage grpo --init builtin:driving-l-sft --prune-to 0.5 --out runs/bpf-rl\n"
        "  embodied-prune train driving --stage sft --size l --prune-to 0.25 --save-every 100 --out runs/bpf-sft\n"
        "  embodied-prune train driving --stage sft --base builtin:smollm2-135m-instruct --out runs/smol-sft\n"
        "  (killed? run the same command with --resume)" + TRAIN_HELP,
    )
    sp.add_argument("task", choices=["driving", "manipulation"], help="the task (driving or manipulation)")
    sp.add_argument("--stage", choices=STAGES, help="driving: sft or grpo")
    sp.add_argument("--size", default="l", choices=CONTROLLER_SIZES, help="sft: controller size (default l)")
    sp.add_argument(
        "--base",
        metavar="MODEL",
        help="sft: fine-tune this pretrained instruct model with LoRA instead of training a fresh --size "
        "(e.g. builtin:smollm2-135m-instruct; defaults then: 1,200 parameter + 400 decision examples once, "
        "lr 1e-3, batch 8, LoRA rank 8)",
    )
    sp.add_argument(
        "--decision",
        type=int,
        metavar="N",
        help="mix N decision examples (does the behaviour adhere to the instruction?, built-in train split) "
        "into the data: sft labels them by rule, grpo rewards a correct verdict (default 0; 400 with --base)",
    )
    sp.add_argument(
        "--decision-file",
        metavar="FILE",
        help="draw the --decision examples from this JSONL decision file (schema: embodied-prune data --help)",
    )
    sp.add_argument(
        "--init",
        help="grpo: the controller to start from (an SFT checkpoint or builtin:driving-*-sft); "
        "manipulation: the VLA policy to fine-tune",
    )
    sp.add_argument("--epochs", type=float, help="sft: epochs over the 16,000 training instructions (default 1.5)")
    sp.add_argument(
        "--max-steps",
        type=int,
        help="optimizer steps (sft: overrides --epochs; grpo default 300, 80 from a pretrained controller)",
    )
    sp.add_argument(
        "--learning-rate",
        type=float,
        help="learning rate (sft default 2e-3, 1e-3 with --base; grpo default 1e-3 for the LoRA update, "
        "2e-4 from a pretrained controller, with --lora 0 or with --prune-to)",
    )
    sp.add_argument("--beta", type=float, help="grpo: KL coefficient to the --init controller (default 0.02)")
    sp.add_argument(
        "--anchor",
        type=float,
        metavar="COEF",
        help="grpo: add COEF × the SFT loss on teacher-labelled training instructions to every step "
        "(InstructGPT's PPO-ptx; keeps what RL does not sample, e.g. unseen constraint combinations; default 0)",
    )
    sp.add_argument(
        "--lora",
        type=int,
        metavar="RANK",
        help="rank of the LoRA update (PEFT), merged before saving; grpo: a low-rank update forgets less of "
        "what RL never samples (default 8; 0 = every weight trains, as pruning during GRPO needs); "
        "sft with --base (default 8)",
    )
    sp.add_argument("--workers", type=int, default=2, help="grpo: simulator processes (default 2)")
    sp.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    sp.add_argument("--prune-to", type=float, metavar="SPARSITY", help="prune during training to this sparsity")
    sp.add_argument("--cuts", type=int, help="number of pruning cuts (default 4)")
    sp.add_argument(
        "--cut-every", type=int, metavar="STEPS", help="optimizer steps between cuts (default: spread over the run)"
    )
    sp.add_argument("--schedule", default="linear", choices=SCHEDULES, help="sparsity after each cut (default linear)")
    sp.add_argument(
        "--importance",
        default="taylor",
        choices=IMPORTANCE_CRITERIA,
        help="how heads and channels are ranked: taylor (loss gradients, default) or a weight norm",
    )
    sp.add_argument(
        "--taylor-data",
        default="teacher",
        choices=["teacher", "trainer"],
        help="taylor: the LM loss on 64 teacher-labelled training instructions at each cut (default; LLM-Pruner's "
        "way), or the trainer's own loss of the steps before the cut (in GRPO, the advantage-weighted "
        "policy-gradient loss, which says little when a group's answers drive alike)",
    )
    sp.add_argument(
        "--prune-reference",
        metavar="MODEL",
        help="the dense model the target is measured against (default: this stage's start)",
    )
    sp.add_argument("--save-every", type=int, default=0, metavar="STEPS", help="resumable checkpoint every STEPS")
    sp.add_argument("--resume", action="store_true", help="go on from a killed run's last checkpoint")
    add_train_arguments(sp)
    add_device_args(sp, whole_model=True, dtype_help=TRAIN_DTYPE_HELP)
    add_output_args(sp)

    sp = verb(
        "eval",
        cmd_eval,
        "evaluate in closed loop: a driving controller (adaptability, collisions), its adherence decisions, "
        "or a VLA policy (success, safety)",
        "Generate parameters for each instruction (greedy), drive them in highway-env, and compare the\n"
        "task error with that of the default parameters on the same traffic. Reports control adaptability\n"
        "(mean relative error reduction, RobotxR1's definition) with a bootstrap 95 % CI, the share of\n"
        "instructions with every constraint met, collisions and parse failures. Any causal-LM checkpoint\n"
        "folder with the controller's tokenizer works, pruned ones included.\n\n"
        "Instructions come from --split (built-in, generated; default test) or --instructions FILE (JSONL,\n"
        "schema in docs/driving.md). With --seed, every instruction drives in --episodes traffic scenarios drawn\n"
        "from that seed; without it, the first episode uses the instruction's own scenario.\n\n"
        "eval decision asks instead whether the car's behaviour in a state readout adheres to an instruction\n"
        "(DecisionxLLM's task): accuracy against rule labels with a Wilson 95 % CI, per constraint type,\n"
        "parse failures counted as wrong. Examples come from --split (built-in, default test, 400) or\n"
        "--decisions FILE (JSONL; schema: embodied-prune data --help).\n\n"
        "Examples:\n"
        "  embodied-prune eval driving --model builtin:driving-l-grpo --split test --json runs/eval.json\n"
        "  embodied-prune eval decision --model runs/smol-sft --split test\n"
        "  embodied-prune eval driving --backend llama.cpp --model runs/smol-q8_0.gguf --split test" + EVAL_HELP,
    )
    sp.add_argument(
        "task", choices=["driving", "decision", "manipulation"], help="the task (driving, decision or manipulation)"
    )
    sp.add_argument("--model", required=True, help="the controller to evaluate")
    sp.add_argument("--instructions", metavar="FILE", help="a JSONL instruction file")
    sp.add_argument("--decisions", metavar="FILE", help="decision: a JSONL decision file")
    sp.add_argument("--split", choices=["train", "val", "test"], help="a built-in split (default test)")
    sp.add_argument(
        "--limit", type=int, help="number of instructions (built-in split default 200, decision 400; file: all)"
    )
    sp.add_argument(
        "--episodes",
        type=int,
        help="driving: traffic scenarios per instruction (default 1); manipulation: episodes per task (default 50)",
    )
    sp.add_argument(
        "--seed",
        type=int,
        help="driving: seed of the traffic scenarios (default: each instruction's own); manipulation: of the "
        "object positions (default 0)",
    )
    sp.add_argument("--workers", type=int, default=2, help="simulator processes (default 2)")
    sp.add_argument(
        "--backend",
        choices=["torch", "llama.cpp"],
        default="torch",
        help="driving / decision: run the controller in PyTorch (default) or, for a .gguf file from `embodied-prune "
        "export`, in llama.cpp (greedy, batch 1), the runtime the robot uses",
    )
    sp.add_argument("--threads", type=int, default=0, help="CPU threads of the backend (default: all cores)")
    add_device_args(sp, whole_model=True)
    add_eval_arguments(sp)
    sp.add_argument("--json", metavar="FILE", help="write the full result (with per-instruction rows) here")


def add_data_verb(verb: Callable[..., argparse.ArgumentParser]) -> None:
    """Register ``data`` (write a built-in decision split as a JSONL file)."""
    from .envs.driving import decision

    sp = verb(
        "data",
        cmd_data,
        "write a built-in decision split (state readout, instruction, label) as JSONL",
        "Drive the built-in decision split's episodes (cached after the first build) and write them as a\n"
        "JSONL file in the schema that eval decision reads (and your own files follow).\n\n" + decision.DECISION_SCHEMA,
    )
    sp.add_argument("what", choices=["decision"], help="the data set (decision)")
    sp.add_argument("--split", default="test", choices=list(decision.DECISION_SIZES), help="split (default test)")
    sp.add_argument("--limit", type=int, help="number of examples (default: the split's size)")
    sp.add_argument("--workers", type=int, default=2, help="simulator processes (default 2)")
    sp.add_argument("--out", required=True, help="the JSONL file to write")
