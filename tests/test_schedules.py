"""Sparsity schedules and the BPF pruning callback inside TRL's SFT and GRPO trainers."""

from __future__ import annotations

import itertools
import json
import shutil

import pytest
import torch
from torch import nn
from transformers import TrainerCallback

from embodied_prune.errors import EmbodiedPruneError
from embodied_prune.schedules import PruningCallback, cut_steps, remap_parameter, sparsity_steps

# --- schedules ------------------------------------------------------------------------------------------


def test_schedules_on_hand_computed_values():
    assert sparsity_steps("linear", 0.5, 4) == pytest.approx([0.125, 0.25, 0.375, 0.5])
    assert sparsity_steps("linear", 0.5, 2, start=0.3) == pytest.approx([0.4, 0.5])  # an already pruned model
    # the same fraction of what is left each time: 0.75 ** (1/2) kept after the first of two cuts
    assert sparsity_steps("constant", 0.4375, 2) == pytest.approx([0.25, 0.4375])
    # cubic: 0.5 · (1 − (1 − k/2)³) = 0.4375, 0.5
    assert sparsity_steps("cubic", 0.5, 2) == pytest.approx([0.4375, 0.5])
    for name in ("linear", "constant", "cubic"):
        steps = sparsity_steps(name, 0.3, 7)
        assert steps[-1] == 0.3 and all(a < b for a, b in itertools.pairwise(steps))
    assert cut_steps(5, 3, 3) == [5, 8, 11]


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda: sparsity_steps("quadratic", 0.5, 2), "unknown sparsity schedule"),
        (lambda: sparsity_steps("linear", 1.0, 2), "outside [0, 1)"),
        (lambda: sparsity_steps("linear", 0.5, 0), "at least one cut"),
        (lambda: cut_steps(0, 2, 2), "at least 1"),
        (lambda: sparsity_steps("linear", 0.2, 2, start=0.3), "past the target"),
        (lambda: PruningCallback(0.5, cuts=3, interval=5).check_steps(12), "after step 15"),
    ],
)
def test_schedule_errors_are_clear(call, needle):
    with pytest.raises(EmbodiedPruneError, match=needle.replace("[", r"\[").replace(")", r"\)")):
        call()


def test_calibration_taylor_cuts_what_one_shot_taylor_on_that_text_would(ids):
    """With calibration ids the callback scores by their LM-loss gradients at the cut (LLM-Pruner's way), so
    its cut equals one-shot structured pruning with the same text; the trainer's gradients are not read."""
    from embodied_prune.models.adapters import adapter_for
    from embodied_prune.models.tiny import build_tiny
    from embodied_prune.pruning.structured import prune_structured

    a, b = build_tiny("qwen2", seed=3), build_tiny("qwen2", seed=3)
    cb = PruningCallback(0.5, cuts=1, interval=1, calibration=ids)
    for p in a.parameters():  # stale trainer gradients must not leak into the scores
        p.grad = torch.randn_like(p)
    cb.on_pre_optimizer_step(None, type("S", (), {"global_step": 0})(), None, model=a)
    assert cb._grad == {}
    plans = cb.cut(a, None, step=1)
    one_shot = prune_structured(b, 0.5, importance="taylor", calibration=ids, progress=False)
    assert plans == one_shot.plans
    assert adapter_for(a).layer_shapes(a) == one_shot.shapes_after
    assert all(p.grad is None for p in a.parameters())  # calibration gradients are cleared after scoring
    with pytest.raises(EmbodiedPruneError, match="samples, length"):
        PruningCallback(0.5, calibration=torch.tensor([1, 2, 3]))


# --- optimizer state across a cut -------------------------------------------------------------------------


def test_remap_parameter_slices_adam_state_and_repoints_the_group():
    torch.manual_seed(0)
    lin = nn.Linear(4, 6)
    opt = torch.optim.AdamW(lin.parameters(), lr=0.1)
    lin(torch.randn(3, 4)).pow(2).sum().backward()
    opt.step()
    before = {k: v.clone() for k, v in opt.state[lin.weight].items()}
    rows, cols = torch.tensor([0, 2, 5]), torch.tensor([1, 3])
    new = nn.Parameter(lin.weight.data[rows][:, cols].clone())
    old = lin.weight
    remap_parameter(opt, old, new, rows, cols)
    assert any(p is new for p in opt.param_groups[0]["params"])
    assert not any(p is old for p in opt.param_groups[0]["params"]) and old not in opt.state
    after = opt.state[new]
    assert torch.equal(after["exp_avg"], before["exp_avg"][rows][:, cols])
    assert torch.equal(after["exp_avg_sq"], before["exp_avg_sq"][rows][:, cols])
    assert torch.equal(after["step"], before["step"])
    new.grad = torch.ones_like(new)
    opt.step()  # the optimizer now updates the new tensor, with its momentum carried over
    assert not torch.equal(new.data, lin.weight.data[rows][:, cols])


# --- inside the trainers ------------------------------------------------------------------------------------


class TracksLiveParameters(TrainerCallback):
    """Records, at every step end, whether the optimizer updates exactly the model's current parameters."""

    def __init__(self) -> None:
        self.ok: list[bool] = []

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        inner = getattr(optimizer, "optimizer", optimizer)
        tracked = {id(p) for g in inner.param_groups for p in g["params"]}
        live = [p for p in model.parameters() if p.requires_grad]
        states_match = all(inner.state[p]["exp_avg"].shape == p.shape for p in live if inner.state.get(p))
        self.ok.append(tracked == {id(p) for p in live} and states_match)


def _shapes(folder):
    from embodied_prune.models import load_model
    from embodied_prune.models.adapters import adapter_for

    model = load_model(folder)
    return adapter_for(model).layer_shapes(model), sum(p.numel() for p in model.parameters())


def test_callback_reaches_the_target_inside_sft_and_grpo(tmp_path):
    from embodied_prune.training.driving import GRPOSettings, SFTSettings, train_grpo, train_sft

    dense = train_sft(tmp_path / "dense", SFTSettings(size="s", n_train=64, max_steps=1, batch_size=8), progress=False)
    dense_shapes, dense_params = _shapes(dense)
    assert {(s.num_heads, s.num_kv_heads, s.intermediate_size) for s in dense_shapes} == {(2, 1, 256)}

    # BPF-SFT: two cuts to 25 % during SFT (Taylor from the SFT loss)
    cb, watch = PruningCallback(0.25, cuts=2, interval=2), TracksLiveParameters()
    sft = train_sft(
        tmp_path / "sft",
        SFTSettings(size="s", n_train=64, max_steps=5, batch_size=8),
        callbacks=[cb, watch],
        progress=False,
    )
    shapes, params = _shapes(sft)
    assert [h["step"] for h in cb.history] == [2, 4]
    assert all(s.intermediate_size == 192 for s in shapes)  # 256 × 0.75 exactly
    assert params < dense_params and watch.ok == [True] * 5

    # BPF-RL: on to 50 % during GRPO (Taylor from the GRPO loss); the KL reference is cut alongside
    cb = PruningCallback(0.5, cuts=2, interval=1, schedule="cubic")  # the reference comes from the SFT side file
    watch = TracksLiveParameters()
    grpo = train_grpo(
        sft,
        tmp_path / "grpo",
        GRPOSettings.full_weights(steps=3, prompts_per_step=2, num_generations=2, workers=1, n_train=8),
        callbacks=[cb, watch],
        progress=False,
    )
    shapes, _ = _shapes(grpo)
    assert all(s.intermediate_size == 128 and s.num_heads == 1 for s in shapes)  # exactly half of the dense
    assert [r.intermediate_size for r in cb.dense_shapes] == [256] * 4  # measured against the dense model
    assert len(cb.references) == 1  # GRPO's reference model (β > 0) was attached
    ref_layer = cb.references[0].model.layers[0]
    assert ref_layer.mlp.gate_proj.out_features == 128
    assert watch.ok == [True] * 3
    history = json.loads((grpo / "embodied_prune.json").read_text())["history"][-1]
    # cubic from the SFT stage's 0.25: 0.25 + 0.25 · (1 − 0.5³), then the target
    assert [c["sparsity"] for c in history["pruning"][0]["cuts"]] == pytest.approx([0.46875, 0.5])


class Killed(Exception):
    pass


class KillAfterSave(TrainerCallback):
    """Stops the run right after the trainer wrote the checkpoint of ``step`` (as a killed process would)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Killed


def test_killed_pruning_run_resumes_to_the_same_structure(tmp_path):
    from embodied_prune.models import load_model
    from embodied_prune.training.driving import SFTSettings, train_sft

    settings = SFTSettings(size="s", n_train=96, max_steps=6, batch_size=8)

    def callback() -> PruningCallback:
        return PruningCallback(0.5, cuts=2, interval=2, grad_window=2)  # cuts after steps 2 and 4

    whole = callback()
    train_sft(tmp_path / "whole", settings, callbacks=[whole], progress=False, checkpoint_every=3)
    assert not (tmp_path / ".whole.trainer").exists()  # the scratch checkpoints go once the run succeeds

    with pytest.raises(Killed):  # killed after step 3: one cut made, gradients for the next one gathered
        train_sft(
            tmp_path / "run", settings, callbacks=[callback(), KillAfterSave(3)], progress=False, checkpoint_every=3
        )
    assert (tmp_path / ".run.trainer" / "checkpoint-3" / "pruning_grads.pt").is_file()
    shutil.copy(tmp_path / ".run.trainer" / "checkpoint-3" / "wall_clock.json", tmp_path / "killed_wall.json")
    resumed = callback()
    train_sft(tmp_path / "run", settings, callbacks=[resumed], progress=False, checkpoint_every=3, resume=True)

    assert resumed.plans == whole.plans and len(resumed.plans) == 2
    assert [h["step"] for h in resumed.history] == [2, 4]
    killed_s = json.loads((tmp_path / "killed_wall.json").read_text())["wall_s"]
    record = json.loads((tmp_path / "run" / "embodied_prune.json").read_text())["history"][-1]
    assert record["segments"] == 2 and record["wall_s"] > killed_s  # the wall time counts both segments
    a, b = load_model(tmp_path / "whole"), load_model(tmp_path / "run")
    for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.allclose(p, q, atol=1e-5), name  # same data order, RNG and optimizer state after the resume


# --- several processes ------------------------------------------------------------------------------------


def test_two_processes_cut_alike_and_stay_in_sync(tmp_path):
    """SFT then GRPO with the callback under ``accelerate launch`` with 2 CPU processes (gloo): every rank
    makes the same cuts, and training after a cut still averages gradients across ranks (identical weights;
    without the DDP reducer rebuild the ranks' SFT weights drift apart)."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    from embodied_prune.models import load_model
    from embodied_prune.models.adapters import adapter_for

    script = Path(__file__).with_name("ddp_prune_run.py")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port"]
    with socket.socket() as s:  # a free port, so parallel test runs do not collide
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run([*launch, port, str(script), str(tmp_path)], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-4000:]
    for stage in ("sft", "grpo"):
        ranks = [json.loads((tmp_path / f"rank{i}-{stage}.json").read_text()) for i in range(2)]
        assert [r["world_size"] for r in ranks] == [2, 2]
        assert ranks[0]["plans"] == ranks[1]["plans"] and len(ranks[0]["plans"]) == 2
        assert ranks[0]["shapes"] == ranks[1]["shapes"]
        assert ranks[0]["checksum"] == pytest.approx(ranks[1]["checksum"], rel=1e-9)
    saved = load_model(tmp_path / "grpo", with_factors=False)
    shapes = adapter_for(saved).layer_shapes(saved)
    assert all(s.intermediate_size == 128 and s.num_heads == 1 for s in shapes)  # half of the dense s controller
    assert [s.intermediate_size for s in shapes] == [r["intermediate_size"] for r in ranks[0]["shapes"]]
