"""RobotxR1 on a pretrained controller: SmolLM2-135M-Instruct, LoRA SFT on both tasks, then GRPO (smoke runs)."""

import json

import pytest

from embodied_prune.envs.driving.decision import DecisionExample, decide, readout_text, resample, write_decisions

SMOLLM2 = "builtin:smollm2-135m-instruct"


def _decision_file(path):
    from test_decision import PLANTED

    items = []
    for kind in ("lane", "speed"):
        c, good, bad = PLANTED[kind]
        for i, tr in enumerate((good, bad)):
            r = resample(tr)
            adheres, met, why = decide(r, [c])
            items.append(DecisionExample(f"obey {kind}", readout_text(r), adheres, f"{kind}-{i}", [c], why, met))
    write_decisions(items, path)
    return path


@pytest.fixture(scope="module")
def smol_controllers(tmp_path_factory):
    """Two LoRA SFT steps of SmolLM2 on parameter and decision examples, then two GRPO steps on both tasks."""
    from embodied_prune.training.driving import GRPOSettings, SFTSettings, train_grpo, train_sft

    root = tmp_path_factory.mktemp("smol")
    decisions = str(_decision_file(root / "decisions.jsonl"))
    sft = train_sft(
        root / "sft",
        SFTSettings.pretrained(n_train=4, decision=4, decision_file=decisions, max_steps=2, batch_size=4),
        progress=False,
    )
    grpo = train_grpo(
        sft,
        root / "grpo",
        GRPOSettings(
            steps=2,
            prompts_per_step=2,
            num_generations=2,
            workers=1,
            n_train=4,
            decision=4,
            decision_file=decisions,
            max_completion_length=16,
        ),
        progress=False,
    )
    return sft, grpo, decisions


def test_lora_sft_then_grpo_of_the_pretrained_controller(smol_controllers):
    from embodied_prune.envs.driving.prompts import SYSTEM_PARAMETERS, is_chat, parameter_prompt
    from embodied_prune.models import load_model, load_tokenizer

    sft, grpo, _ = smol_controllers
    record = json.loads((sft / "embodied_prune.json").read_text())["history"][0]
    assert record["base"] == SMOLLM2 and record["lora_rank"] == 8 and record["steps_done"] == 2
    g = json.loads((grpo / "embodied_prune.json").read_text())["history"][0]
    assert g["steps_done"] == 2 and g["decision"] == 4
    for path in (sft, grpo):
        # the merged checkpoint is a plain Llama of SmolLM2's shape, and the few-MB LoRA delta is kept beside it
        assert (path / "adapter" / "adapter_config.json").is_file()
        assert (path / "adapter" / "adapter_model.safetensors").stat().st_size < 20e6
        model, tok = load_model(path), load_tokenizer(path)
        assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
        assert is_chat(tok) and SYSTEM_PARAMETERS in parameter_prompt(tok, "Stay right.")


def test_sft_moves_the_weights_by_the_lora_delta(smol_controllers):
    """The merged checkpoint differs from the base exactly in the linear layers LoRA adapts."""
    import torch

    from embodied_prune.models import load_model

    sft, _, _ = smol_controllers
    base, tuned = load_model(SMOLLM2).state_dict(), load_model(sft).state_dict()
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    assert changed and all(k.endswith("proj.weight") for k in changed)
    assert not any("embed" in k or "norm" in k for k in changed)


def test_eval_cli_scores_both_tasks_of_the_pretrained_controller(smol_controllers, tmp_path, capsys):
    from test_cli import cli

    sft, _, decisions = smol_controllers
    out = tmp_path / "d.json"
    code, stdout, _ = cli(capsys, f"eval decision --model {sft} --decisions {decisions} --json {out} -q")
    assert code == 0 and "accuracy (95 % CI)" in stdout
    d = json.loads(out.read_text())
    assert d["examples"] == 4 and len(d["correct"]) == 4 and set(d["by_type"]) == {"lane", "speed"}
    assert 0 <= d["accuracy"] <= 1 and d["parse_failures"] + sum(d["correct"]) <= 4
    instructions = tmp_path / "i.jsonl"
    instructions.write_text(
        "".join(
            json.dumps({"text": t, "constraints": c, "scenario": {"seed": 1, "duration": 5.0, "vehicles": 5}}) + "\n"
            for t, c in [
                ("Stay in the right lane.", [{"type": "lane", "lane": 2}]),
                ("Never change lanes.", [{"type": "no_lane_change"}]),
            ]
        )
    )
    drive = tmp_path / "drive.json"
    code, _, _ = cli(capsys, f"eval driving --model {sft} --instructions {instructions} --workers 1 --json {drive} -q")
    assert code == 0 and json.loads(drive.read_text())["instructions"] == 2


def test_shipped_lora_delta_merges_into_its_base_and_drives():
    """``builtin:driving-smollm2-sft`` ships only its LoRA delta: merged into SmolLM2 on first use (W + α/r·BA,
    checked on one projection by hand), it answers test instructions in the parameter format it was taught."""
    import torch
    from safetensors.torch import load_file

    from embodied_prune.envs.driving.instructions import generate_split
    from embodied_prune.envs.driving.params import parse_answer
    from embodied_prune.evaluation.driving import generate_answers
    from embodied_prune.models import load_model, load_tokenizer
    from embodied_prune.models.builtin import ASSETS

    name = "builtin:driving-smollm2-sft"
    adapter = ASSETS / "driving-smollm2-sft" / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    delta = load_file(adapter / "adapter_model.safetensors")
    model, base = load_model(name), load_model(SMOLLM2)
    key = "base_model.model.model.layers.7.self_attn.q_proj.lora_{}.weight"
    a, b = delta[key.format("A")].float(), delta[key.format("B")].float()
    expected = base.model.layers[7].self_attn.q_proj.weight + config["lora_alpha"] / config["r"] * b @ a
    torch.testing.assert_close(model.model.layers[7].self_attn.q_proj.weight, expected, rtol=0, atol=1e-6)
    tests = generate_split("test", 4)
    answers = generate_answers(model, load_tokenizer(name), [x.text for x in tests])
    assert all(parse_answer(x).params is not None for x in answers), answers
