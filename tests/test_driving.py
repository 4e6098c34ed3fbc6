"""The driving task: answer parser, constraint checks, scoring, instruction files, failures, training smoke."""

import dataclasses
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from embodied_prune.envs.driving.constraints import CONSTRAINTS, constraint_error, constraint_satisfied
from embodied_prune.envs.driving.instructions import (
    HELD_OUT_COMBOS,
    JOINERS,
    PARTS,
    PHRASES,
    Instruction,
    generate_split,
    has_held_out_combo,
    load_instructions,
    teacher_params,
    write_instructions,
)
from embodied_prune.envs.driving.params import DEFAULT_PARAMS, SPECS, ControllerParams, format_answer, parse_answer
from embodied_prune.envs.driving.scenario import Scenario, Trajectory
from embodied_prune.envs.driving.scoring import E_FAIL, ClosedLoopScorer
from embodied_prune.envs.driving.sim import InstructedVehicle, run_episode
from embodied_prune.errors import EmbodiedPruneError

SHORT = {"duration": 6.0, "vehicles": 6}


# --- the answer parser -------------------------------------------------------------------------------


def test_answer_round_trip_and_defaults():
    p = ControllerParams(target_speed=18.0, preferred_lane=2, allow_lane_change=False)
    parsed = parse_answer("noise " + format_answer(p) + " trailing")
    assert parsed.params == p and parsed.error is None and parsed.unknown_keys == []
    assert parse_answer("<answer>{}</answer>").params == DEFAULT_PARAMS


def test_answer_values_are_clipped_and_unknown_keys_reported():
    parsed = parse_answer('<answer>{"target_speed": 99, "preferred_lane": -3, "wheels": 5}</answer>')
    assert parsed.params.target_speed == SPECS["target_speed"].high
    assert parsed.params.preferred_lane == 0
    assert parsed.unknown_keys == ["wheels"]


@pytest.mark.parametrize(
    "text,needle",
    [
        ("target_speed 20", "no single"),
        ("<answer>{}</answer><answer>{}</answer>", "no single"),
        ('<answer>{"target_speed": 2O}</answer>', "not JSON"),
        ("<answer>[1, 2]</answer>", "not a JSON object"),
        ('<answer>{"target_speed": "fast"}</answer>', "target_speed"),
        ('<answer>{"allow_lane_change": 1}</answer>', "allow_lane_change"),
        ('<answer>{"time_gap": null}</answer>', "time_gap"),
    ],
)
def test_malformed_answers_are_failures_not_crashes(text, needle):
    parsed = parse_answer(text)
    assert parsed.params is None and needle in parsed.error


def test_parser_never_raises_on_garbage():
    rng = random.Random(0)
    alphabet = '<>/answer{}[]":,0123456789.-truefalsenul '
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(60)))
        parse_answer(text)
        parse_answer(f"<answer>{text}</answer>")


# --- constraints -------------------------------------------------------------------------------------


def trajectory(n=50, speed=20.0, lane=1, headway=2.0, lane_changes=0, overtakes=0, accel=None):
    speeds = np.full(n, speed, dtype=float) if np.isscalar(speed) else np.asarray(speed, dtype=float)
    return Trajectory(
        dt=0.2,
        speed=speeds,
        lane=np.full(n, lane) if np.isscalar(lane) else np.asarray(lane),
        accel=np.zeros(n) if accel is None else np.asarray(accel, dtype=float),
        headway=np.full(n, headway),
        lane_changes=lane_changes,
        overtakes=overtakes,
        crashed=False,
        lanes=3,
    )


rng = np.random.default_rng(0)
# (constraint, a trajectory that meets it, a trajectory that violates it)
CASES = {
    "speed": ({"type": "speed", "target": 20.0}, trajectory(speed=20.0), trajectory(speed=26.0)),
    "speed_max": ({"type": "speed_max", "limit": 18.0}, trajectory(speed=17.0), trajectory(speed=22.0)),
    "speed_min": ({"type": "speed_min", "limit": 25.0}, trajectory(speed=26.0), trajectory(speed=21.0)),
    "lane": ({"type": "lane", "lane": 2}, trajectory(lane=2), trajectory(lane=1)),
    "avoid_lane": ({"type": "avoid_lane", "lane": 0}, trajectory(lane=1), trajectory(lane=0)),
    "headway": ({"type": "headway", "min_s": 2.0}, trajectory(headway=2.5), trajectory(headway=0.8)),
    "no_lane_change": ({"type": "no_lane_change"}, trajectory(), trajectory(lane_changes=2)),
    "overtake": ({"type": "overtake", "count": 2}, trajectory(overtakes=3), trajectory(overtakes=0)),
    "smooth": (
        {"type": "smooth", "max_rms_acc": 0.6},
        trajectory(accel=rng.normal(0, 0.2, 50)),
        trajectory(accel=rng.normal(0, 2.0, 50)),
    ),
}


def test_every_constraint_type_has_a_case():
    assert set(CASES) == set(CONSTRAINTS.names())


@pytest.mark.parametrize("kind", sorted(CASES))
def test_each_constraint_catches_its_violation(kind):
    c, good, bad = CASES[kind]
    assert constraint_satisfied(good, c) and constraint_error(good, c) < 0.1
    assert not constraint_satisfied(bad, c) and constraint_error(bad, c) > 0.3


def test_violations_caught_in_closed_loop():
    """Parameters that contradict an instruction make the simulated car violate it, and it is caught."""
    scenario = Scenario(seed=5, **SHORT)
    slow = run_episode(ControllerParams(target_speed=15.0, allow_lane_change=False), scenario)
    right = run_episode(ControllerParams(target_speed=22.0, preferred_lane=2), Scenario(seed=5, duration=10.0))
    assert not constraint_satisfied(slow, {"type": "speed_min", "limit": 25.0})
    assert constraint_satisfied(slow, {"type": "speed_max", "limit": 20.0})
    assert not constraint_satisfied(right, {"type": "lane", "lane": 0})
    assert constraint_error(right, {"type": "lane", "lane": 2}) < constraint_error(right, {"type": "lane", "lane": 0})


def test_avoid_lane_parameter_leaves_and_never_enters_the_lane():
    """Told to avoid the lane it starts in, the car leaves it and never comes back; the default may stay."""
    errors = []
    for seed in (5, 6, 7):
        scenario = Scenario(seed=seed, duration=10.0)
        default = run_episode(DEFAULT_PARAMS, scenario)
        start = int(default.lane[0])
        avoid = run_episode(ControllerParams(avoid_lane=start), scenario)
        left = int(np.argmax(avoid.lane != start))
        assert left > 0 and start not in avoid.lane[left:]
        c = {"type": "avoid_lane", "lane": start}
        errors.append((constraint_error(default, c), constraint_error(avoid, c)))
    assert all(a <= d + 0.05 for d, a in errors) and any(a < d - 0.3 for d, a in errors)


# --- scoring ---------------------------------------------------------------------------------------


def test_scoring_is_deterministic_and_memoised():
    items = generate_split("val", 3)
    answers = [format_answer(teacher_params(x.constraints)) for x in items] + ["garbage"]
    items = [*items, items[0]]
    scenarios = [dataclasses.replace(x.make_scenario(), duration=SHORT["duration"]) for x in items]
    with ClosedLoopScorer(workers=2) as a, ClosedLoopScorer(workers=1) as b:
        first = [s.to_dict() for s in a.score(items, answers, scenarios)]
        assert [s.to_dict() for s in a.score(items, answers, scenarios)] == first
        assert [s.to_dict() for s in b.score(items, answers, scenarios)] == first
        assert len(b._cache) == len({s.key() for s in scenarios}) + 3  # defaults + three parseable answers
    assert first[-1]["parse_failure"] and first[-1]["error_model"] == E_FAIL


def test_full_length_scoring_ignores_order_and_worker_count():
    """Full 15 s episodes in the traffic of a built-in split: the in-process scorer and a pool of
    fresh worker processes, in opposite orders, give identical scores."""
    items = generate_split("test", 12)
    answers = [format_answer(teacher_params(x.constraints, random.Random(i))) for i, x in enumerate(items)]
    scenarios = [x.make_scenario() for x in items]
    with ClosedLoopScorer(workers=2) as pool, ClosedLoopScorer(workers=1) as here:
        forward = [s.to_dict() for s in pool.score(items, answers, scenarios)]
        backward = [s.to_dict() for s in here.score(items[::-1], answers[::-1], scenarios[::-1])][::-1]
    assert forward == backward
    assert len({round(s["error_default"], 6) for s in forward}) > 6  # the traffic differs between instructions


def test_simulator_exception_is_a_recorded_failure(monkeypatch):
    original = InstructedVehicle.act

    def act(self, action=None):
        if self.target_speed == 13.0:
            raise RuntimeError("wheel fell off")
        return original(self, action)

    monkeypatch.setattr(InstructedVehicle, "act", act)
    items = generate_split("val", 2)
    answers = ['<answer>{"target_speed": 13.0}</answer>', '<answer>{"target_speed": 20.0}</answer>']
    scenarios = [Scenario(seed=i, **SHORT) for i in range(2)]
    with ClosedLoopScorer(workers=1) as scorer:
        broken, fine = scorer.score(items, answers, scenarios)
    assert "wheel fell off" in broken.failure and broken.error_model == E_FAIL and not broken.satisfied
    assert fine.failure is None and fine.error_model < E_FAIL


# --- instruction files and splits ------------------------------------------------------------------


def test_splits_hold_out_paraphrases_and_combinations():
    for kind, (heads, tails) in PARTS.items():
        train, test = PHRASES[kind]
        assert test and not set(train) & set(test)
        assert all(any(p.startswith(h + " ") for p in train) for h in heads)  # every part is seen in training
        assert all(any(p.endswith(" " + t) for p in train) for t in tails)
    train, test = generate_split("train", 600), generate_split("test", 300)
    assert not any(j in x.text for x in train for j in JOINERS[1])
    assert any(j in x.text for x in test for j in JOINERS[1])

    def combos(xs):
        return {frozenset((a["type"], b["type"])) for x in xs for a in x.constraints for b in x.constraints if a != b}

    assert not combos(train) & HELD_OUT_COMBOS
    assert combos(test) & HELD_OUT_COMBOS
    assert not any(map(has_held_out_combo, train))
    assert [has_held_out_combo(x) for x in test] == [bool(combos([x]) & HELD_OUT_COMBOS) for x in test]
    assert sum(map(has_held_out_combo, test)) >= len(test) // 3  # every third test instruction, at least
    assert generate_split("test", 20) == test[:20]


def test_splits_do_not_depend_on_the_hash_seed():
    """Each process has its own string-hash seed; a split must not (sets of names iterate by hash)."""
    import subprocess
    import sys

    code = (
        "import json; from embodied_prune.envs.driving.instructions import generate_split; "
        "print(json.dumps([[x.to_json() for x in generate_split(s, 90)] for s in ('train', 'val', 'test')]))"
    )
    runs = [
        subprocess.run(
            [sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": seed}, capture_output=True, check=True
        ).stdout
        for seed in ("1", "2", "3")
    ]
    assert runs[0] == runs[1] == runs[2]
    assert json.loads(runs[0])[2] == [x.to_json() for x in generate_split("test", 90)]


def test_instruction_file_round_trip(tmp_path):
    items = generate_split("val", 5)
    write_instructions(items, tmp_path / "x.jsonl")
    assert load_instructions(tmp_path / "x.jsonl") == items


@pytest.mark.parametrize(
    "line,needle",
    [
        ("{not json", "not valid JSON"),
        ('["a list"]', "must be a JSON object"),
        ('{"constraints": [{"type": "speed", "target": 20}]}', "'text'"),
        ('{"text": "go", "constraints": []}', "'constraints'"),
        ('{"text": "go", "constraints": [{"type": "fly"}]}', "unknown type 'fly'"),
        ('{"text": "go", "constraints": [{"type": "speed"}]}', "'target'"),
        ('{"text": "go", "constraints": [{"type": "lane", "lane": 1.5}]}', "integer"),
        ('{"text": "go", "constraints": [{"type": "lane", "lane": 7}]}', "lanes 0..2"),
        ('{"text": "go", "constraints": [{"type": "smooth", "max_rms_acc": 0.5}], "scenario": {"sed": 3}}', "sed"),
    ],
)
def test_malformed_instruction_file_names_the_line(tmp_path, line, needle):
    good = json.dumps({"text": "drive at 20 m/s", "constraints": [{"type": "speed", "target": 20}]})
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{good}\n\n{line}\n")
    with pytest.raises(EmbodiedPruneError, match="line 3") as e:
        load_instructions(path)
    assert needle in str(e.value)


def test_instruction_scenario_fields():
    x = Instruction("go", [{"type": "speed", "target": 20.0}], "a", {"seed": 4, "vehicles": 3})
    assert x.make_scenario() == Scenario(seed=4, vehicles=3)
    assert x.make_scenario(9).seed == 9


# --- training smoke, CLI ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_controllers(tmp_path_factory):
    """Two SFT steps of the smallest controller, then two GRPO steps from it (real TRL trainers)."""
    from embodied_prune.training.driving import GRPOSettings, SFTSettings, train_grpo, train_sft

    root = tmp_path_factory.mktemp("driving")
    sft = train_sft(root / "sft", SFTSettings(size="s", n_train=64, max_steps=2, batch_size=8), progress=False)
    grpo = train_grpo(
        sft,
        root / "grpo",
        GRPOSettings(steps=2, prompts_per_step=2, num_generations=2, workers=1, n_train=8),
        progress=False,
    )
    return sft, grpo


def test_sft_then_grpo_smoke(smoke_controllers):
    from embodied_prune.models import load_model, load_tokenizer

    sft, grpo = smoke_controllers
    history = json.loads((grpo / "embodied_prune.json").read_text())["history"]
    assert [h["stage"] for h in history] == ["grpo"] and history[0]["init"] == str(sft)
    assert history[0]["steps_done"] == 2
    assert json.loads((sft / "embodied_prune.json").read_text())["history"][0]["steps_done"] == 2
    assert load_tokenizer(grpo) is not None and load_model(grpo).config.model_type == "qwen2"


def test_report_averages_episodes_per_instruction():
    """Several episodes of one instruction are averaged before the CI resamples instructions."""
    from embodied_prune.envs.driving.scoring import InstructionScore
    from embodied_prune.evaluation.driving import DrivingReport

    def score(i: str, reduction: float | None, satisfied: bool) -> InstructionScore:
        return InstructionScore(i, "t", "c", None, 1.0, 1.0, reduction, satisfied, False, False, None)

    scores = [score("a", 1.0, True), score("a", 0.0, False), score("a", 0.5, True), score("b", -1.0, False)]
    scores += [score("b", None, False), score("b", -2.0, False)]
    d = DrivingReport("m", scores, None, 3, 0.0).to_dict()
    assert d["instructions"] == 2 and d["episodes"] == 6 and len(d["per_instruction"]) == 6
    assert d["reductions"] == [0.5, -1.5] and d["adaptability"] == -0.5  # not the episode mean, −0.3
    assert d["satisfied"] == 2 / 6 and d["ci95"][0] == -1.5 and d["ci95"][1] == 0.5  # two units, resampled
    one = DrivingReport("m", [score("a", 0.25, True), score("b", None, False)], None, 1, 0.0).to_dict()
    assert one["reductions"] == [0.25, None] and one["adaptability"] == 0.25


def test_anchor_batches_train_on_the_answer_only():
    from embodied_prune.training.anchor import AnchorBatches
    from embodied_prune.training.controller import train_tokenizer
    from embodied_prune.training.driving import sft_dataset

    tok = train_tokenizer(n_texts=200)
    rows = sft_dataset(generate_split("train", 6), seed=0)
    batches = AnchorBatches(rows, tok, batch_size=4, seed=3)
    b = batches.sample()
    assert b["input_ids"].shape[0] == 4 and b["input_ids"].shape == b["labels"].shape == b["attention_mask"].shape
    texts = {r["prompt"] + r["completion"] for r in rows}
    for ids, mask, labels in zip(b["input_ids"], b["attention_mask"], b["labels"], strict=True):
        n = int(mask.sum())
        assert mask[:n].all() and not mask[n:].any() and (ids[n:] == tok.pad_token_id).all()  # right-padded
        assert tok.decode(ids[: n - 1]) in texts and ids[n - 1] == tok.eos_token_id
        answer = labels[labels != -100]
        assert tok.decode(answer[:-1]).startswith("<answer>") and tok.decode(answer[:-1]).endswith("</answer>")
        assert (labels[n:] == -100).all()
    again = AnchorBatches(rows, tok, batch_size=4, seed=3).sample()
    assert all(torch.equal(again[k], b[k]) for k in b)  # seeded


def test_anchored_grpo_keeps_the_teacher_loss_down(smoke_controllers, tmp_path):
    """Same GRPO steps with and without the teacher anchor: the anchored run ends with the lower SFT loss on
    teacher labels (what it is there to protect) and logs its anchor term."""
    from embodied_prune.models import load_model, load_tokenizer
    from embodied_prune.training.anchor import AnchorBatches
    from embodied_prune.training.driving import GRPOSettings, sft_dataset, train_grpo

    sft, _ = smoke_controllers
    common = dict(steps=3, prompts_per_step=2, num_generations=2, workers=1, n_train=8, learning_rate=3e-3)
    full = GRPOSettings.full_weights
    plain = train_grpo(sft, tmp_path / "plain", full(**common), progress=False)
    anchored = train_grpo(sft, tmp_path / "anchored", full(**common, anchor_coef=5.0), progress=False)
    rows = sft_dataset(generate_split("train", 64), seed=0)
    batch = AnchorBatches(rows, load_tokenizer(sft), batch_size=64).sample()
    with torch.no_grad():
        loss = {p: load_model(p)(**batch).loss.item() for p in (sft, plain, anchored)}
    assert loss[anchored] < loss[sft] and loss[anchored] < loss[plain]
    record = json.loads((anchored / "embodied_prune.json").read_text())["history"][-1]
    assert record["anchor_coef"] == 5.0 and record["steps_done"] == 3
    with pytest.raises(EmbodiedPruneError, match="anchor_coef"):
        train_grpo(sft, tmp_path / "bad", GRPOSettings(**common, anchor_coef=-1.0), progress=False)
    assert not (tmp_path / "bad").exists()


def test_lora_grpo_saves_a_plain_checkpoint_with_the_update_merged(smoke_controllers, tmp_path):
    """GRPO through a PEFT LoRA adapter: the saved controller is an ordinary Qwen2 checkpoint (no adapter
    weights) whose linear weights moved from the SFT controller's by a low-rank step, embeddings untouched.
    (The teacher anchor gives the two-step controller a gradient even where every sampled answer scores alike.)"""
    from safetensors.torch import load_file

    from embodied_prune.models import load_model
    from embodied_prune.training.driving import GRPOSettings, train_grpo

    sft, _ = smoke_controllers
    settings = GRPOSettings(
        steps=3,
        prompts_per_step=2,
        num_generations=2,
        workers=1,
        n_train=8,
        learning_rate=5e-2,
        lora_rank=2,
        anchor_coef=1.0,
    )
    out = train_grpo(sft, tmp_path / "lora", settings, progress=False)
    keys = load_file(out / "model.safetensors").keys()
    assert not any("lora" in k for k in keys)
    before, after = load_model(sft).state_dict(), load_model(out).state_dict()
    assert before.keys() == after.keys()
    assert torch.equal(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"])
    delta = after["model.layers.0.mlp.up_proj.weight"] - before["model.layers.0.mlp.up_proj.weight"]
    assert delta.abs().max() > 0 and torch.linalg.matrix_rank(delta.float(), rtol=1e-2) <= 2
    record = json.loads((out / "embodied_prune.json").read_text())["history"][-1]
    assert record["lora_rank"] == 2 and record["steps_done"] == 3


def test_grpo_rewards_prefer_the_answer_that_drives_better():
    from embodied_prune.training.driving import DrivingRewards

    x = Instruction("stay in the left lane", [{"type": "lane", "lane": 0}], "t", {"seed": 3, **SHORT})
    rewards = DrivingRewards(workers=1, scenarios=2)
    closed_loop, answer_format, parses, valid_names, decision_correct = rewards.functions()
    answers = ['<answer>{"preferred_lane": 0}</answer>', '<answer>{"preferred_lane": 2}</answer>', "lane 0 please"]
    column = [json.dumps(x.to_json())] * 3
    task = ["parameters"] * 3
    r = closed_loop(None, answers, instruction=column, task=task)
    assert r[0] > r[1] and r[0] > r[2]
    assert answer_format(None, answers, task=task) == [1.0, 1.0, 0.0] and parses(None, answers, task=task) == [
        1.0
    ] * 2 + [0.0]
    one = ["parameters"]
    assert valid_names(None, ['<answer>{"preferred_lane": 0, "wings": 2}</answer>'], task=one) == [0.5]
    assert len(rewards.scorer._cache) == 2 * 3  # two scenarios × (default + two parseable answers)
    assert decision_correct(None, answers, task=task, adheres=[""] * 3) == [None] * 3
    rewards.scorer.close()


def test_mixed_grpo_batches_reward_each_task_only_by_its_own_functions():
    """A batch holding both tasks: the closed-loop and format rewards skip decision prompts (None, which TRL
    leaves out), the correctness reward skips parameter prompts and scores verdicts, a garbled one as wrong."""
    from embodied_prune.training.driving import DrivingRewards

    x = Instruction("stay in the left lane", [{"type": "lane", "lane": 0}], "t", {"seed": 3, **SHORT})
    rewards = DrivingRewards(workers=1, scenarios=1)
    closed_loop, answer_format, parses, valid_names, decision_correct = rewards.functions()
    answers = [
        '<answer>{"preferred_lane": 0}</answer>',
        "Explanation: in the left lane 95% of the time: met.\nAdhering to Human: True",
        "Explanation: ok.\nAdhering to Human: True",
        "I think so",
    ]
    task = ["parameters", "decision", "decision", "decision"]
    instruction = [json.dumps(x.to_json()), "", "", ""]
    adheres = ["", "True", "False", "True"]
    r = closed_loop(None, answers, instruction=instruction, task=task)
    assert r[0] is not None and r[1:] == [None] * 3
    for f in (answer_format, parses, valid_names):
        assert f(None, answers, task=task)[1:] == [None] * 3
    assert decision_correct(None, answers, task=task, adheres=adheres) == [None, 1.0, 0.0, 0.0]
    rewards.scorer.close()


def test_eval_cli_on_user_file_and_pruned_controller(smoke_controllers, tmp_path, capsys):
    from test_cli import cli

    sft, _ = smoke_controllers
    items = generate_split("val", 3)
    write_instructions(items, tmp_path / "mine.jsonl")
    out = tmp_path / "eval.json"
    code, text, err = cli(
        capsys, f"eval driving --model {sft} --instructions {tmp_path / 'mine.jsonl'} --json {out} -q"
    )
    assert code == 0, err
    d = json.loads(out.read_text())
    assert d["instructions"] == 3 and len(d["per_instruction"]) == 3
    for key in ("adaptability", "ci95", "satisfied", "collisions", "parse_failures"):
        assert key in d
    assert "adaptability" in text
    # a structurally pruned controller evaluates the same way
    code, _, err = cli(capsys, f"prune --model {sft} --method structured --sparsity 0.3 --out {tmp_path / 'p30'} -q")
    assert code == 0, err
    code, _, err = cli(
        capsys, f"eval driving --model {tmp_path / 'p30'} --split val --limit 2 --json {tmp_path / 'p.json'} -q"
    )
    assert code == 0, err
    assert json.loads((tmp_path / "p.json").read_text())["instructions"] == 2


def test_eval_cli_rejects_a_malformed_file(smoke_controllers, tmp_path, capsys):
    from test_cli import cli

    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "go", "constraints": [{"type": "speed", "target": 20}]}\n{"text": 3}\n')
    code, _, err = cli(
        capsys, f"eval driving --model {smoke_controllers[0]} --instructions {path} --json {tmp_path / 'o.json'}"
    )
    assert code == 2 and "line 2" in err and not (tmp_path / "o.json").exists()


@pytest.mark.parametrize(
    "line,needle",
    [
        ("train driving --stage grpo --out {out}", "--init"),
        ("train driving --stage sft --init x --out {out}", "--init is for --stage grpo"),
        ("train driving --stage sft --anchor 1 --out {out}", "--anchor are for --stage grpo"),
        ("train driving --stage sft --lora 4 --out {out}", "--lora in SFT fine-tunes a pretrained --base"),
        ("train driving --stage sft --decision -1 --out {out}", "number of decision examples"),
        ("train driving --stage sft --decision-file d.jsonl --out {out}", "needs --decision N"),
        ("train driving --stage grpo --init builtin:driving-s-sft --base x --out {out}", "--base is for --stage sft"),
        ("train driving --stage sft --base builtin:llama-tiny --out {out}", "no tokenizer with a chat template"),
        ("eval decision --model builtin:driving-s-sft --decisions missing.jsonl", "does not exist"),
        ("eval decision --model builtin:driving-s-sft --instructions x.jsonl", "for eval driving"),
        ("eval driving --model builtin:driving-s-sft --decisions x.jsonl", "for eval decision"),
        ("train driving --stage grpo --init builtin:driving-s-sft --lora -1 --out {out}", "LoRA rank"),
        ("train driving --stage grpo --init builtin:driving-s-sft --lora 4 --prune-to 0.5 --out {out}", "LoRA"),
        ("train driving --stage grpo --init builtin:driving-s-sft --anchor -1 --out {out}", "anchor_coef ≥ 0"),
        ("train manipulation --demos x --beta 0.1 --out {out}", "--lora are for train driving"),
        ("train manipulation --demos x --lora 4 --out {out}", "--lora are for train driving"),
        ("train driving --stage sft --size xl --out {out}", "invalid choice"),
        ("train driving --stage sft --cuts 3 --out {out}", "need --prune-to"),
        ("train driving --stage sft --prune-to 0.5 --cuts 3 --cut-every 40 --max-steps 100 --out {out}", "step 120"),
        ("train driving --stage sft --prune-to 1.5 --out {out}", "outside [0, 1)"),
        ("train driving --stage sft --prune-to 0.5 --schedule cosine --out {out}", "invalid choice"),
        ("train driving --stage sft --prune-to 0.5 --taylor-data rollouts --out {out}", "invalid choice"),
        ("train manipulation --demos x --prune-to 0.5 --out {out}", "is for train driving"),
        ("eval driving --model builtin:tinylm --episodes 0", "--episodes"),
        ("eval driving --model builtin:tinylm --limit 0", "--limit"),
        ("eval driving --model builtin:tinylm --split test --instructions x.jsonl", "not both"),
        ("eval driving --model builtin:qwen2-tiny --instructions {missing}", "does not exist"),
    ],
)
def test_driving_cli_usage_errors(tmp_path, capsys, line, needle):
    from test_cli import cli

    try:
        code, _, err = cli(capsys, line.format(out=tmp_path / "o", missing=tmp_path / "none.jsonl"))
    except SystemExit as e:  # argparse's own usage errors exit from the parser
        code, err = e.code, capsys.readouterr().err
    assert code == 2 and needle in err
    assert not (tmp_path / "o").exists()


def test_ship_starts_grpo_from_the_sft_it_just_wrote(monkeypatch, tmp_path):
    """Shipping into the assets folder names the SFT start as a builtin (the same folder); elsewhere by path."""
    from embodied_prune.models.builtin import ASSETS
    from embodied_prune.models.checkpoint import resolve_model_path
    from embodied_prune.training import ship

    calls = []
    monkeypatch.setattr(ship, "train_grpo", lambda init, out, *a, **k: calls.append((init, out)))
    ship.ship(["s"], ASSETS, stages=("grpo",), progress=False)
    ship.ship(["m"], tmp_path, stages=("grpo",), progress=False)
    (named, named_out), (path, path_out) = calls
    assert named == "builtin:driving-s-sft"
    assert Path(resolve_model_path(named)).resolve() == (ASSETS / "driving-s-sft").resolve()
    assert named_out == ASSETS / "driving-s-grpo"
    assert path == str(tmp_path / "driving-m-sft") and path_out == tmp_path / "driving-m-grpo"
