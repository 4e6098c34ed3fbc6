"""The manipulation side of ``embodied-prune``: ``demos``, ``train manipulation``, ``eval manipulation``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

from .errors import EmbodiedPruneError

TRAIN_HELP = (
    "\n\nmanipulation: behaviour cloning of the tiny VLA on a demonstration folder made by `demos`:\n"
    "  embodied-prune demos manipulation --out runs/demos\n"
    "  embodied-prune train manipulation --demos runs/demos --out runs/vla"
)
EVAL_HELP = (
    "\n\nmanipulation: run a VLA policy in closed loop on the Meta-World tasks; success rate per task\n"
    "with Wilson 95 % CIs, safety violations (arm-table contact, joints near limits, fast objects) and\n"
    "the median policy-query latency. --seed picks fresh object positions (never a demonstration's).\n"
    "  embodied-prune eval manipulation --model builtin:vla-metaworld --episodes 50 --json runs/vla.json\n"
    "With --token-pruner specprune|fastv|random [--keep K | --alpha A] each policy query drops visual\n"
    "tokens inside the backbone (an OpenVLA folder's too, through hooks on its language model); the JSON\n"
    "gains kept_tokens_mean and backbone_flops_ratio.\n"
    "  embodied-prune eval manipulation --model builtin:vla-metaworld --token-pruner specprune --alpha 0.5"
)


def cmd_demos(a: argparse.Namespace) -> None:
    from .envs.manipulation.demos import generate_demos
    from .evaluation.manipulation import record_corrections

    common = dict(
        tasks=a.tasks, episodes=a.episodes, seed=a.seed, overwrite=a.overwrite, progress=not a.quiet, workers=a.workers
    )
    if a.policy and a.tower_cameras:
        raise EmbodiedPruneError("--tower-cameras is for expert demonstrations; --policy records through its cameras.")
    if a.policy:
        out = record_corrections(a.policy, a.out, noise=a.noise, **common)
    else:
        cameras = None
        if a.tower_cameras:
            from .envs.manipulation.render import cameras_for
            from .models.vla import TOWER_CAMERAS

            cameras = cameras_for(TOWER_CAMERAS)
        out = generate_demos(a.out, noise=a.noise, cameras=cameras, **common)
    meta = json.loads((out / "meta.json").read_text())
    steps = sum(e["length"] for e in meta["episodes"])
    if a.policy:
        won = sum(e["success"] for e in meta["episodes"])
        print(f"wrote {len(meta['episodes'])} rollouts of {a.policy} ({won} successful; {steps} steps, every one")
        print(f"labelled by the expert) → {out}")
        print(
            f"fine-tune on them with the demonstrations: embodied-prune train manipulation --init {a.policy} "
            f"--demos DEMOS,{out} --learning-rate 1e-4 --max-steps 1500 --out runs/vla-dagger"
        )
        return
    print(f"wrote {len(meta['episodes'])} expert episodes ({steps} steps) → {out}")
    print(f"train on them: embodied-prune train manipulation --demos {out} --out runs/vla")


def cmd_train(a: argparse.Namespace) -> None:
    from .training.manipulation import BCSettings, train_bc

    if not a.demos:
        raise EmbodiedPruneError(
            "train manipulation needs --demos DIR (make one with `embodied-prune demos manipulation`)."
        )
    if a.stage or a.beta is not None or a.anchor is not None or a.lora is not None:
        raise EmbodiedPruneError(
            "--stage, --beta, --anchor and --lora are for train driving; manipulation trains by behaviour cloning."
        )
    if a.prune_to is not None:
        raise EmbodiedPruneError("--prune-to is for train driving (pruning during RL); prune a policy with `prune`.")
    given = {
        "learning_rate": a.learning_rate,
        "steps": a.max_steps,
        "batch_size": a.batch_size,
        "visual_keep": a.visual_keep,
        "patch": a.patch,
        "vision_tower": a.vision_tower,
    }
    import torch

    from .models.devices import default_placement, resolve_autocast, resolve_device

    device = resolve_device(a.device)
    autocast = resolve_autocast(a.dtype, device)
    if a.bf16 and a.dtype not in ("auto", "bfloat16"):
        raise EmbodiedPruneError(f"--bf16 asks for bfloat16 autocast, --dtype for {a.dtype}; pass one of them.")
    if autocast not in (None, torch.bfloat16):
        raise EmbodiedPruneError("train manipulation autocasts in bfloat16 only; pass --dtype bfloat16 or float32.")
    bf16 = a.bf16 or autocast == torch.bfloat16
    s = BCSettings(seed=a.seed, bf16=bf16, **{k: v for k, v in given.items() if v is not None})
    with default_placement(device):
        path = train_bc(
            a.demos,
            a.out,
            s,
            overwrite=a.overwrite,
            progress=not a.quiet,
            init=a.init,
            checkpoint_every=a.save_every,
            resume=a.resume,
        )
    record = json.loads((path / "embodied_prune.json").read_text())["history"][-1]
    print(f"trained the VLA policy in {record['wall_s']:.0f} s → {path}")
    print(f"evaluate it: embodied-prune eval manipulation --model {path}")


def cmd_eval(a: argparse.Namespace) -> None:
    from .evaluation.manipulation import evaluate_manipulation
    from .io import atomic_write_text

    if a.backend != "torch":
        raise EmbodiedPruneError("--backend llama.cpp runs language-model controllers (eval driving / decision) only.")
    from .cli_args import placement
    from .models.devices import dtype_name

    device, dtype = placement(a, a.model, whole_model=True)
    episodes = 50 if a.episodes is None else a.episodes
    if episodes < 1:
        raise EmbodiedPruneError(f"--episodes must be at least 1, got {episodes}.")
    if a.workers < 1:
        raise EmbodiedPruneError(f"--workers must be at least 1, got {a.workers}.")
    from .models.checkpoint import read_side_file, resolve_model_path
    from .models.openvla import is_openvla_folder
    from .models.vla import load_vla
    from .tokens import pruner_options

    token_pruner, openvla = None, None
    wants_tokens = a.token_pruner != "none" or a.keep is not None or a.alpha is not None
    path = resolve_model_path(a.model)
    recorded = read_side_file(path).get("token_pruning") or {}
    knobs = dict(prune_layer=a.prune_layer, score_layers=a.score_layers, score_rows=a.score_rows)
    knobs |= dict(drop_layers=a.drop_layers, global_layers=a.global_layers, controller=a.controller)
    options, source = pruner_options(a.token_pruner, recorded.get("pruners"), **knobs)
    if is_openvla_folder(path):
        from .evaluation.openvla import OpenVLAPolicy
        from .models.openvla import load_openvla, token_cameras, visual_token_count

        openvla = {"trust_remote_code": a.trust_remote_code, "unnorm_key": a.unnorm_key}
        # fail here, once, with a clear message (not inside every worker): the code flag, the action statistics
        model, processor = load_openvla(path, trust_remote_code=a.trust_remote_code)
        OpenVLAPolicy(model, processor, unnorm_key=a.unnorm_key)
        if wants_tokens:  # the patch grid a pruner's frame differences compare, the visual tokens to budget
            cameras, visual_total = token_cameras(model), visual_token_count(model)
    else:
        model, _ = load_vla(a.model)  # fail here, with a clear message, rather than inside every worker
        visual = model.layout().visual
        cameras, visual_total = model.config.cameras, visual[1] - visual[0]
    if wants_tokens:
        from .tokens import build_token_pruner

        if a.token_pruner == "none":
            raise EmbodiedPruneError("--keep and --alpha set a token pruner's budget: add --token-pruner NAME.")
        token_pruner = {"name": a.token_pruner, "keep": a.keep, "alpha": a.alpha, "options": options}
        if source == "recorded":
            print(
                f"{a.token_pruner} at this policy's recorded working point {json.dumps(options)} "
                f"({recorded.get('study', 'its token study')}); --prune-layer, --score-layers, --score-rows, "
                "--drop-layers, --global-layers or --no-controller run another"
            )
        # checks the name, the camera grid and the budget against this policy's visual tokens before any worker starts
        build_token_pruner(**token_pruner, cameras=cameras).budget(visual_total)
    del model
    report = evaluate_manipulation(
        a.model,
        a.tasks,
        episodes,
        seed=0 if a.seed is None else a.seed,
        workers=a.workers,
        execute=a.execute,
        blank_images=a.blank_images,
        progress=not a.quiet,
        token_pruner=token_pruner,
        openvla=openvla,
        device=str(device),
        dtype=dtype_name(dtype),
    )
    print(report.markdown())
    if a.json:
        atomic_write_text(a.json, json.dumps(report.to_dict(), indent=2) + "\n")
        print(f"wrote {a.json}")


def add_train_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--demos",
        metavar="DIR[,DIR...]",
        help="manipulation: the demonstration folder(s) to clone (several: comma-separated, e.g. demos plus a "
        "policy's labelled rollouts from `demos manipulation --policy`); with --init POLICY that policy is "
        "fine-tuned instead of a fresh one trained",
    )
    sp.add_argument("--batch-size", type=int, help="manipulation: samples per step (default 16)")
    sp.add_argument(
        "--bf16",
        action="store_true",
        help="manipulation: bfloat16 autocast while training (1.1-1.3x faster on CPUs with AVX512-BF16; "
        "weights stay fp32; effect on closed-loop success not established, see docs/manipulation.md)",
    )
    sp.add_argument(
        "--patch",
        type=int,
        metavar="PIXELS",
        help="manipulation: camera patch size of a new policy, one visual token per patch (16 gives a quarter of "
        "the tokens of the default 8 and a step about 3.5x faster; ignored with --init)",
    )
    sp.add_argument(
        "--visual-keep",
        type=float,
        metavar="SHARE",
        help="manipulation: each training sample feeds the backbone a random SHARE of its visual tokens "
        "(patch dropout; 0.5 makes a step about twice as fast; the policy still sees every token when it acts; "
        "closed-loop effect so far not good, see docs/manipulation.md; default 1: all)",
    )
    sp.add_argument(
        "--vision-tower",
        metavar="SPEC",
        help="manipulation: a new policy sees every camera through this frozen pretrained tower, e.g. "
        "builtin:dinov2-small (needs demonstrations from `demos manipulation --tower-cameras`; the tower's features "
        "of every frame are computed once and cached beside the frames; --patch unused; ignored with --init)",
    )


def add_eval_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--tasks", help="manipulation: comma-separated tasks (default all six)")
    sp.add_argument(
        "--execute", type=int, help="manipulation: actions executed per predicted chunk (default: the whole chunk)"
    )
    sp.add_argument(
        "--blank-images", action="store_true", help="manipulation: black camera images (does the policy need its eyes?)"
    )
    sp.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="manipulation: run the model code an OpenVLA checkpoint folder ships (read it first)",
    )
    sp.add_argument(
        "--unnorm-key", help="manipulation: an OpenVLA checkpoint's action statistics to use (default: its only one)"
    )
    from .choices import SCORE_ROWS, TOKEN_PRUNERS

    sp.add_argument(
        "--token-pruner",
        default="none",
        choices=TOKEN_PRUNERS,
        help="manipulation: drop visual tokens inside each policy query: specprune (SpecPrune-VLA), fastv, random, "
        "or none (default); a shipped policy runs each at the working point its token study found (recorded in its "
        "side file, printed) unless a knob below is given; see docs/tokens.md",
    )
    sp.add_argument("--keep", type=int, help="manipulation: visual tokens a token pruner keeps (default: 30 %%)")
    sp.add_argument("--alpha", type=float, help="manipulation: kept fraction of visual tokens, in (0, 1] (or --keep)")
    sp.add_argument(
        "--prune-layer",
        type=int,
        metavar="L",
        help="manipulation: decoder layer before which visual tokens leave (specprune prune_layer, fastv/random layer; "
        "published default 0 for specprune, 1 for fastv)",
    )
    sp.add_argument(
        "--score-layers",
        type=_layers,
        metavar="L[,L...]",
        help="manipulation, specprune: layers whose attention scores the current query's tokens (default: every "
        "layer up to --prune-layer)",
    )
    sp.add_argument(
        "--score-rows",
        choices=SCORE_ROWS,
        help="manipulation: whose attention ranks the tokens: instruction (specprune default), action, or "
        "after_visual (fastv default)",
    )
    sp.add_argument(
        "--drop-layers",
        type=_layers,
        metavar="L[,L...]",
        help="manipulation, specprune: layers that drop 10 %% more of the kept tokens (default 2)",
    )
    sp.add_argument(
        "--global-layers",
        type=_layers,
        metavar="L[,L...]",
        help="manipulation, specprune: layers of the previous query whose attention makes the global set (default 2)",
    )
    sp.add_argument(
        "--no-controller",
        dest="controller",
        action="store_const",
        const=False,
        help="manipulation, specprune: no action-aware controller (the same budget in fine motion)",
    )


def _layers(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of layer numbers, e.g. 1,2") from None


def add_verbs(verb: Callable[..., argparse.ArgumentParser]) -> None:
    """Register ``demos`` with the main parser's ``verb`` helper."""
    from .cli_args import add_output_args
    from .envs.manipulation.tasks import TASKS

    sp = verb(
        "demos",
        cmd_demos,
        "record expert demonstrations of the Meta-World tasks (for train manipulation)",
        "Run Meta-World's scripted experts over randomised object positions and store each successful\n"
        "episode (front and wrist camera images, proprioception, actions) in a folder whose format is\n"
        "documented in docs/manipulation.md.\n\n"
        f"Tasks: {', '.join(TASKS.names())}.\n\n"
        "Example:\n"
        "  embodied-prune demos manipulation --episodes 60 --out runs/demos\n\n"
        "DAgger: with --policy DIR the episodes are that policy's own rollouts (every step labelled with\n"
        "the expert's action, failures kept), to fine-tune it on together with the demonstrations:\n"
        "  embodied-prune demos manipulation --policy runs/vla --episodes 50 --out runs/corrections\n"
        "  embodied-prune train manipulation --init runs/vla --demos runs/demos,runs/corrections \\\n"
        "      --learning-rate 1e-4 --max-steps 1500 --out runs/vla-dagger",
    )
    sp.add_argument("task", choices=["manipulation"], help="the task family (manipulation)")
    sp.add_argument("--tasks", help="comma-separated tasks (default all six)")
    sp.add_argument(
        "--episodes", type=int, default=60, help="successful episodes per task (default 60, as the shipped policy)"
    )
    sp.add_argument("--seed", type=int, default=0, help="seed of the object positions (default 0)")
    sp.add_argument("--workers", type=int, default=2, help="processes recording tasks in parallel (default 2)")
    sp.add_argument(
        "--policy",
        metavar="DIR",
        help="DAgger: record this VLA policy's rollouts, labelled by the expert, instead of the expert's own",
    )
    sp.add_argument(
        "--tower-cameras",
        action="store_true",
        help="record the cameras at the sizes a policy seeing through a vision tower uses (224 px front, 112 px "
        "side and wrist: 14-pixel patches, 384 visual tokens; for train manipulation --vision-tower)",
    )
    sp.add_argument(
        "--noise",
        type=float,
        default=0.0,
        help="DART: add correlated noise of this scale to the executed motion (labels stay the expert's clean "
        "actions) so the policy sees states off the expert's path; 0.05 is mild (default 0: none)",
    )
    add_output_args(sp)
