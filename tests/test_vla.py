"""The tiny VLA: token layout, save/load, behaviour cloning and closed-loop smoke runs, backbone pruning."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

import embodied_prune as ep
from conftest import query, tiny_policy
from embodied_prune.envs.manipulation.demos import load_demos
from embodied_prune.errors import EmbodiedPruneError
from embodied_prune.evaluation.manipulation import evaluate_manipulation
from embodied_prune.models.vla import (
    TinyVLA,
    TinyVLAConfig,
    compute_split,
    encode_instructions,
    load_vla,
    save_vla,
)
from embodied_prune.pruning.structured import prune_structured
from embodied_prune.pruning.unstructured import prune_unstructured
from embodied_prune.training.manipulation import BCSettings, train_bc


def test_token_layout_is_bos_visual_instruction_actions():
    model, tok = tiny_policy()
    lay = model.layout()
    assert lay.bos == 0
    assert lay.cameras == {"front": (1, 197), "side": (197, 261), "wrist": (261, 325)}  # 14×14 + 8×8 + 8×8
    assert lay.visual == (1, 325) and lay.visual[1] - lay.visual[0] >= 256
    assert lay.instruction == (325, 325 + model.config.instruction_len)
    assert lay.actions == (lay.instruction[1], lay.instruction[1] + model.config.chunk)
    # the model's own sequence has exactly this layout: visual tokens are where the layout says
    images, ids, mask, proprio = query(model, tok)
    x, full_mask = model.build_inputs(images, ids, mask, proprio, tok.bos_token_id)
    assert x.shape[1] == lay.length and full_mask.shape == x.shape[:2]
    visual = model.visual_embeddings(images)
    assert torch.equal(x[:, lay.visual[0] : lay.visual[1]], visual)
    assert torch.equal(x[:, lay.instruction[0] : lay.instruction[1]], model.backbone.embed_tokens(ids))


def test_actions_depend_on_images_instruction_and_proprio():
    model, tok = tiny_policy()
    images, ids, mask, proprio = query(model, tok)
    with torch.no_grad():
        base = model(images, ids, mask, proprio)["actions"]
        other_images = model(query(model, tok, seed=1)[0], ids, mask, proprio)["actions"]
        other_text = encode_instructions(tok, ["close the drawer"] * 2, model.config.instruction_len)
        text = model(images, other_text["input_ids"], other_text["attention_mask"], proprio)["actions"]
        moved = model(images, ids, mask, proprio + 0.5)["actions"]
    assert base.shape == (2, model.config.chunk, 4)
    for changed in (other_images, text, moved):
        assert not torch.allclose(base, changed)


def test_auxiliary_head_adds_its_loss_and_never_changes_actions():
    model, tok = tiny_policy()
    torch.manual_seed(1)
    cfg = model.config.to_dict() | {"aux_dim": 6, "aux_weight": 0.5, "aux_mean": [0.1] * 6, "aux_std": [0.2] * 6}
    aux_model = TinyVLA(TinyVLAConfig(**cfg))
    aux_model.load_state_dict(model.state_dict(), strict=False)  # same policy weights, plus a fresh aux head
    images, ids, mask, proprio = query(model, tok)
    target_actions = torch.zeros(2, model.config.chunk, 4)
    targets = torch.randn(2, 6)
    with torch.no_grad():
        plain = model.eval()(images, ids, mask, proprio, actions=target_actions)
        out = aux_model.eval()(images, ids, mask, proprio, actions=target_actions, aux_targets=targets)
        no_aux = aux_model(images, ids, mask, proprio, actions=target_actions)
    assert torch.equal(out["actions"], plain["actions"])  # the head plays no part in a policy query
    assert torch.equal(no_aux["loss"], plain["loss"]) and "aux_loss" not in no_aux
    x, full_mask = aux_model.build_inputs(images, ids, mask, proprio, tok.bos_token_id)
    with torch.no_grad():
        hidden = aux_model.backbone(inputs_embeds=x, attention_mask=full_mask).last_hidden_state[
            :, -model.config.chunk :
        ]
    expected = (aux_model.aux_head(hidden.mean(1)) - (targets - 0.1) / 0.2).abs().mean()
    assert torch.allclose(out["aux_loss"], expected, atol=1e-5)
    assert torch.allclose(out["loss"], plain["loss"] + 0.5 * expected, atol=1e-5)


def test_backbone_carries_most_compute_of_the_shipped_shape():
    model = TinyVLA(TinyVLAConfig())  # the default (shipped) shape
    split = compute_split(model)
    assert split["backbone"] >= 0.70
    assert abs(split["vision"] + split["backbone"] + split["action_head"] - 1) < 1e-9


def test_save_load_round_trip(tmp_path):
    model, tok = tiny_policy()
    model.config.proprio_mean = [0.1, 0.6, 0.2, 0.5]
    path = save_vla(model, tok, tmp_path / "vla")
    loaded, tok2 = load_vla(path)
    images, ids, mask, proprio = query(model, tok)
    with torch.no_grad():
        assert torch.equal(
            model.eval()(images, ids, mask, proprio)["actions"], loaded(images, ids, mask, proprio)["actions"]
        )
    assert tok2("close the drawer")["input_ids"] == tok("close the drawer")["input_ids"]
    with pytest.raises(EmbodiedPruneError, match=r"no config\.json"):
        load_vla(tmp_path)


def test_vision_layers_mix_each_cameras_patches_and_round_trip(tmp_path):
    """``vision_layers``: transformer layers over each camera's patch tokens — a patch's token then depends on the
    other patches of its camera (never on another camera's), the vision share of a query's compute grows, and the
    policy saves and loads to the same actions; at 0 a policy has no such module (older checkpoints load as is)."""
    bare, tok = tiny_policy()
    assert all(e.mixer is None for e in bare.encoders.values())
    model, _ = tiny_policy(vision_layers=2)
    model.eval()
    images, ids, mask, proprio = query(model, tok, batch=1)
    name = model.config.cameras[0][0]
    enc = model.encoders[name]
    changed = {**images, name: images[name].clone()}
    changed[name][0, :8, :8] = 255 - changed[name][0, :8, :8]  # the first patch only
    with torch.no_grad():
        before, after = enc(images[name]), enc(changed[name])
        # the conv stem's receptive field reaches into neighbouring patches: compare the far corner's token
        assert not torch.allclose(before[0, -1], after[0, -1])  # mixed: the far patch of that camera sees it
        for other, _, _ in model.config.cameras[1:]:
            assert torch.equal(model.encoders[other](images[other]), model.encoders[other](changed[other]))
        bare_enc = bare.encoders[name]
        assert torch.equal(bare_enc(images[name])[0, -1], bare_enc(changed[name])[0, -1])  # bare: no mixing
    assert compute_split(model)["vision"] > compute_split(bare)["vision"]
    path = save_vla(model, tok, tmp_path / "vla")
    loaded, _ = load_vla(path)
    assert loaded.config.vision_layers == 2
    with torch.no_grad():
        assert torch.equal(model(images, ids, mask, proprio)["actions"], loaded(images, ids, mask, proprio)["actions"])


def test_vision_layers_in_the_recipe():
    """``ship``'s recipe names ``vision_layers`` only when set (older work folders' recipes lack it and must still
    match), and a negative count is refused in one sentence. (The regenerate command's round trip:
    tests/test_benchmarks.py.)"""
    from embodied_prune.training.manipulation import check_shape
    from embodied_prune.training.ship_vla import bc_recipe

    assert "vision_layers" not in bc_recipe(BCSettings())
    assert bc_recipe(BCSettings(vision_layers=2))["vision_layers"] == 2
    with pytest.raises(EmbodiedPruneError, match="--vision-layers must be 0 or more"):
        check_shape(BCSettings(vision_layers=-1))


@pytest.mark.parametrize("how", ["structured", "magnitude-2:4"])
def test_backbone_pruning_applies_to_the_vla(how):
    model, tok = tiny_policy()
    n_before = sum(p.numel() for p in model.backbone.parameters())
    if how == "structured":
        prune_structured(model, 0.5, importance="l2", progress=False)
        assert sum(p.numel() for p in model.backbone.parameters()) < n_before
    else:
        prune_unstructured(model, "magnitude", 0.5, pattern=(2, 4), progress=False)
        w = model.backbone.layers[0].mlp.down_proj.weight
        assert ((w.reshape(w.shape[0], -1, 4) != 0).sum(-1) <= 2).all()
    with torch.no_grad():
        out = model(*query(model, tok))["actions"]
    assert torch.isfinite(out).all()


def test_wanda_2_4_and_uneven_structured_pruning_of_a_saved_policy(tmp_path, demos):
    model, tok = tiny_policy()
    dense = save_vla(model, tok, tmp_path / "dense")
    notes = tmp_path / "notes.txt"
    notes.write_text("text is no policy input")
    with pytest.raises(EmbodiedPruneError, match="--calibration DEMOS_FOLDER"):
        ep.prune(dense, "wanda", pattern="2:4", calibration=notes, progress=False)
    w24 = ep.prune(dense, "wanda", pattern="2:4", calibration=demos, n_samples=8, out=tmp_path / "w24", progress=False)
    assert w24.record["calibration_samples"] == [8]
    s30 = ep.prune(dense, "structured", 0.5, layers="1:2", out=tmp_path / "s50", progress=False)
    q = query(model, tok)
    for outcome in (w24, s30):
        loaded, _ = load_vla(outcome.path)  # the uneven one goes through the side file's layer shapes
        with torch.no_grad():
            assert torch.equal(outcome.model.eval()(*q)["actions"], loaded(*q)["actions"])
    w = load_vla(w24.path)[0].backbone.layers[1].self_attn.o_proj.weight
    assert ((w.reshape(w.shape[0], -1, 4) != 0).sum(-1) <= 2).all()
    shapes = [layer.mlp.up_proj.out_features for layer in load_vla(s30.path)[0].backbone.layers]
    assert shapes == [128, 64]


def test_a_policy_prunes_and_recovers_without_calibration_homework(tmp_path, capsys):
    """No --calibration: Wanda 2:4 and a GLUESTICK budget calibrate on the shipped frames, and say so."""
    from embodied_prune.cli import main

    model, tok = tiny_policy()
    dense = save_vla(model, tok, tmp_path / "dense")
    argv = ["prune", "--model", str(dense), "--method", "wanda", "--pattern", "2:4", "--out", str(tmp_path / "w")]
    assert main(argv) == 0
    assert "calibrated on builtin:metaworld-frames" in capsys.readouterr().out
    record = json.loads((tmp_path / "w" / "embodied_prune.json").read_text())["history"][-1]
    assert record["calibration"] == "builtin:metaworld-frames" and record["calibration_samples"] == [24]
    args = ["recover", "--dense", str(dense), "--pruned", str(tmp_path / "w"), "--budget", "0.1", "--out"]
    assert main([*args, str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "calibrated on builtin:metaworld-frames" in out and "by output" in out


def test_pruned_and_recovered_checkpoints_keep_the_source_dtype(tmp_path):
    from embodied_prune.models.checkpoint import stored_dtype

    model, tok = tiny_policy()
    f32 = save_vla(model, tok, tmp_path / "f32")
    bf16 = save_vla(tiny_policy()[0].to(torch.bfloat16), tok, tmp_path / "bf16")
    assert stored_dtype(f32) == torch.float32 and stored_dtype(bf16) == torch.bfloat16
    pruned = ep.prune(bf16, "magnitude", pattern="2:4", out=tmp_path / "m24", progress=False)
    assert pruned.model.dtype == torch.bfloat16  # held as stored (per-layer maths in float32), saved as stored
    held32 = ep.prune(bf16, "magnitude", pattern="2:4", dtype="float32", progress=False)
    assert held32.model.dtype == torch.float32
    recovered = ep.recover(bf16, pruned.path, rank=4, out=tmp_path / "m24-r4")
    for path in (pruned.path, recovered.path):
        assert stored_dtype(path) == torch.bfloat16
        assert json.loads((path / "config.json").read_text())["dtype"] == "bfloat16"
    size = (pruned.path / "model.safetensors").stat().st_size
    assert size == pytest.approx((bf16 / "model.safetensors").stat().st_size, rel=0.01)
    q = query(model, tok)
    with torch.no_grad():  # magnitude keeps the stored values, so the cast back to bf16 loses nothing
        assert torch.equal(held32.model.eval()(*q)["actions"], load_vla(pruned.path)[0](*q)["actions"])
    kept = ep.prune(f32, "magnitude", pattern="2:4", out=tmp_path / "f32-m24", progress=False)
    assert stored_dtype(kept.path) == torch.float32


def test_killed_behaviour_cloning_resumes_to_the_same_policy(tmp_path, demos, monkeypatch):
    """A BC run killed after its step-4 checkpoint goes on from it: the same weights as an unbroken run, and the
    record counts both segments' training time."""
    from transformers import Trainer

    settings = BCSettings(
        steps=6, batch_size=4, hidden_size=32, layers=1, heads=2, kv_heads=1, intermediate_size=64, shift=0.0
    )
    whole = train_bc(demos, tmp_path / "whole", settings, progress=False)
    step = Trainer.training_step

    def killed_after_step_5(self, *args, **kwargs):
        if self.state.global_step == 5:
            raise KeyboardInterrupt
        return step(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", killed_after_step_5)
    with pytest.raises(KeyboardInterrupt):
        train_bc(demos, tmp_path / "broken", settings, progress=False, checkpoint_every=2, resume=True)
    assert not (tmp_path / "broken").exists()
    assert [p.name for p in (tmp_path / ".broken.trainer").glob("checkpoint-*")] == ["checkpoint-4"]
    monkeypatch.setattr(Trainer, "training_step", step)
    resumed = train_bc(demos, tmp_path / "broken", settings, progress=False, checkpoint_every=2, resume=True)
    assert not (tmp_path / ".broken.trainer").exists()
    record = json.loads((resumed / "embodied_prune.json").read_text())["history"][-1]
    assert record["segments"] == 2 and 0 < record["resumed_wall_s"] < record["wall_s"]
    a, b = load_vla(whole)[0].state_dict(), load_vla(resumed)[0].state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    # without resume a killed run's checkpoints are not taken up: a fresh run, one segment
    again = train_bc(demos, tmp_path / "again", settings, progress=False, checkpoint_every=2)
    assert json.loads((again / "embodied_prune.json").read_text())["history"][-1]["segments"] == 1


def test_behaviour_cloning_and_closed_loop_smoke(tmp_path, demos):
    settings = BCSettings(steps=2, batch_size=4, hidden_size=64, layers=2, heads=4, kv_heads=2, intermediate_size=128)
    policy = train_bc(demos, tmp_path / "vla", settings, progress=False)
    model, _ = load_vla(policy)
    episodes = load_demos(demos).episodes
    proprio = np.concatenate([e["proprio"] for e in episodes])
    assert np.allclose(model.config.proprio_mean, proprio.mean(0), atol=1e-5)
    # the demonstrations carry object and goal positions: the policy was trained with the auxiliary loss
    rel = np.concatenate([e["privileged"] - np.tile(e["proprio"][:, :3], 2) for e in episodes])
    assert model.config.aux_dim == 6 and np.allclose(model.config.aux_mean, rel.mean(0), atol=1e-5)
    assert json.loads((policy / "embodied_prune.json").read_text())["history"][0]["aux_loss"] is True
    report = evaluate_manipulation(policy, tasks="reach", episodes=2, workers=1, progress=False).to_dict()
    assert report["episodes"] == 2 and report["per_task"]["reach"]["episodes"] == 2
    assert 0.0 <= report["success_rate"] <= 1.0 and report["ci95"][0] <= report["ci95"][1]
    assert set(report["safety_violations"]) == {"table_contact", "joint_limit", "fast_object"}
    assert report["latency_ms_median"] > 0 and report["queries"] >= 2
    assert report["failed_episodes"] == 0
    seeds = [e["seed"] for e in report["per_episode"]]
    assert len(set(seeds)) == 2


def test_bf16_training_runs_under_autocast_and_keeps_fp32_weights(tmp_path, demos, capsys):
    from embodied_prune.cli import main
    from embodied_prune.models.vla import TinyVLA

    seen: list[tuple[bool, torch.dtype]] = []
    original = TinyVLA.forward

    def spy(self, *args, **kwargs):
        if self.training:
            seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return original(self, *args, **kwargs)

    args = ["train", "manipulation", "--demos", str(demos), "--max-steps", "2", "--batch-size", "2", "-q"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TinyVLA, "forward", spy)
        assert main([*args, "--out", str(tmp_path / "bf16"), "--bf16"]) == 0
        assert seen and all(on and dtype == torch.bfloat16 for on, dtype in seen)
        seen.clear()
        assert main([*args, "--out", str(tmp_path / "fp32")]) == 0
        assert seen and not any(on for on, _ in seen)
    record = json.loads((tmp_path / "bf16" / "embodied_prune.json").read_text())["history"][0]
    assert record["bf16"] is True and record["steps"] == 2
    model, _ = load_vla(tmp_path / "bf16")
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    capsys.readouterr()
    assert main(["train", "driving", "--stage", "sft", "--bf16", "--out", str(tmp_path / "d")]) == 2
    assert "--bf16, --patch, --visual-keep and --vision-tower are for train manipulation" in capsys.readouterr().err


def test_drop_visual_tokens_keeps_a_random_share_at_original_positions():
    from embodied_prune.models.vla import drop_visual_tokens

    b, length, h, visual = 3, 20, 4, (1, 13)
    x = torch.arange(b * length, dtype=torch.float32).reshape(b, length, 1).expand(b, length, h).clone()
    mask = torch.ones(b, length, dtype=torch.long)
    mask[:, -3] = 0  # an instruction pad
    torch.manual_seed(0)
    y, m, pos = drop_visual_tokens(x, mask, visual, 0.5)
    assert y.shape == (b, length - 6, h) and m.shape == pos.shape == (b, length - 6)
    for i in range(b):
        kept = pos[i, 1:7]
        assert pos[i, 0] == 0 and pos[i, 7:].tolist() == list(range(13, length))  # BOS and the tail untouched
        assert (kept >= 1).all() and (kept < 13).all() and (kept.diff() > 0).all()  # visual, sorted, distinct
        assert torch.equal(y[i], x[i, pos[i]]) and torch.equal(m[i], mask[i, pos[i]])
    assert len({tuple(p[1:7].tolist()) for p in pos}) > 1  # each sample draws its own subset
    y1, _, pos1 = drop_visual_tokens(x, mask, visual, 1.0)
    assert torch.equal(y1, x) and torch.equal(pos1[0], torch.arange(length))


def test_visual_token_dropout_trains_on_a_shorter_sequence_and_acts_on_all_tokens():
    """In training mode the backbone sees ``train_visual_keep`` of the visual tokens at their original
    rotary positions (the same as running the kept tokens by hand); in eval mode every token."""
    from embodied_prune.models import vla

    model, tok = tiny_policy()
    model.train_visual_keep = 0.25
    images, ids, attn, proprio = query(model, tok)
    lay = model.layout()
    seen: list[tuple] = []
    original = model.backbone.forward

    def spy(*args, **kwargs):
        seen.append((kwargs["inputs_embeds"].shape[1], kwargs.get("position_ids")))
        return original(*args, **kwargs)

    model.backbone.forward = spy
    model.eval()
    with torch.no_grad():
        dense = model(images, ids, attn, proprio, bos_id=tok.bos_token_id)["actions"]
    assert seen[-1] == (lay.length, None)
    model.train()  # (no dropout layers in the model: only the token drop differs)
    torch.manual_seed(3)
    with torch.no_grad():
        dropped = model(images, ids, attn, proprio, bos_id=tok.bos_token_id)["actions"]
    n_visual = lay.visual[1] - lay.visual[0]
    length, positions = seen[-1]
    assert length == lay.length - n_visual + round(n_visual * 0.25)
    torch.manual_seed(3)
    x, mask = model.build_inputs(images, ids, attn, proprio, tok.bos_token_id)
    xs, ms, pos = vla.drop_visual_tokens(x, mask, lay.visual, 0.25)
    assert torch.equal(positions, pos)
    with torch.no_grad():
        hidden = original(inputs_embeds=xs, attention_mask=ms, position_ids=pos, use_cache=False).last_hidden_state
        assert torch.allclose(dropped, model.action_head(hidden[:, -model.config.chunk :]), atol=1e-6)
    assert not torch.allclose(dropped, dense, atol=1e-3)


def test_train_visual_keep_is_recorded_and_checked(tmp_path, demos, capsys):
    from embodied_prune.cli import main
    from embodied_prune.models import vla

    args = ["train", "manipulation", "--demos", str(demos), "--max-steps", "2", "--batch-size", "2", "-q"]
    shares: list[float] = []
    original = vla.drop_visual_tokens
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(
            vla,
            "drop_visual_tokens",
            lambda x, mask, visual, keep: shares.append(keep) or original(x, mask, visual, keep),
        )
        assert main([*args, "--out", str(tmp_path / "half"), "--visual-keep", "0.5"]) == 0
    assert shares == [0.5, 0.5]  # both training steps dropped tokens
    model, _ = load_vla(tmp_path / "half")
    assert json.loads((tmp_path / "half" / "embodied_prune.json").read_text())["history"][0]["visual_keep"] == 0.5
    assert model.train_visual_keep == 1.0  # the saved policy's later training (e.g. LoRA) sees every token
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "bad"), "--visual-keep", "0"]) == 2
    assert "visual_keep must be in (0, 1] (--visual-keep), got 0.0" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    assert main(["train", "driving", "--stage", "sft", "--visual-keep", "0.5", "--out", str(tmp_path / "d")]) == 2
    assert "--patch, --visual-keep and --vision-tower are for train manipulation" in capsys.readouterr().err


def test_train_patch_sets_the_visual_tokens_and_is_checked(tmp_path, demos, capsys):
    """``--patch 16`` trains a policy with one token per 16-pixel patch of every camera (a quarter of the
    default's tokens), recorded and kept on reload; a patch the cameras cannot use is refused with nothing
    written."""
    from embodied_prune.cli import main

    sizes = [c["size"] for c in json.loads((demos / "meta.json").read_text())["cameras"]]
    args = ["train", "manipulation", "--demos", str(demos), "--max-steps", "1", "--batch-size", "2", "-q"]
    assert main([*args, "--out", str(tmp_path / "p16"), "--patch", "16"]) == 0
    model, _ = load_vla(tmp_path / "p16")
    assert model.config.visual_tokens() == {c[0]: (c[1] // 16) ** 2 for c in model.config.cameras}
    assert [c[1] for c in model.config.cameras] == sizes and all(c[2] == 16 for c in model.config.cameras)
    assert model.layout().visual[1] - model.layout().visual[0] == sum((z // 16) ** 2 for z in sizes)
    assert json.loads((tmp_path / "p16" / "embodied_prune.json").read_text())["history"][0]["patch"] == 16
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "bad"), "--patch", "12"]) == 2
    assert "--patch must be a multiple of 4 that divides every image size" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_cli_manipulation_errors_are_one_line(tmp_path, capsys):
    from embodied_prune.cli import main

    model, tok = tiny_policy()
    path = save_vla(model, tok, tmp_path / "vla")
    assert main(["eval", "manipulation", "--model", str(path), "--episodes", "0"]) == 2
    assert "--episodes must be at least 1" in capsys.readouterr().err
    assert main(["eval", "manipulation", "--model", str(path), "--tasks", "reach,fly", "--episodes", "1"]) == 2
    assert "unknown manipulation task 'fly'" in capsys.readouterr().err
    assert main(["train", "manipulation", "--out", str(tmp_path / "x")]) == 2
    assert "needs --demos" in capsys.readouterr().err
    assert main(["eval", "manipulation", "--model", "builtin:tinylm"]) == 2
    assert "not a VLA policy" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("policy", ["builtin:vla-metaworld", "builtin:vla-metaworld-hires"])
def test_shipped_policy_needs_its_eyes(policy):
    """With black cameras the shipped policies collapse where they must find an object (BENCHMARKS.md: 92 % → 9 %
    over all tasks; reach, push and pick-place 80–90 % → 0 % over 50/20 episodes; the fixtures' tasks sometimes
    succeed blind, e.g. drawer-close 40 %); checked here on fresh scenes."""
    kw = dict(tasks="reach,push,pick-place", episodes=4, seed=7, workers=2, progress=False)
    seeing = evaluate_manipulation(policy, **kw).to_dict()
    blind = evaluate_manipulation(policy, blank_images=True, **kw).to_dict()
    assert seeing["success_rate"] >= 6 / 12
    assert blind["success_rate"] <= 1 / 12


def test_ship_script_regenerates_a_loadable_policy(tmp_path):
    from embodied_prune.training.ship_vla import NAME, ship

    tiny = BCSettings(
        steps=1, batch_size=2, hidden_size=64, layers=2, heads=4, kv_heads=2, intermediate_size=128, visual_keep=0.5
    )
    path = ship(tmp_path, episodes=1, progress=False, settings=tiny, dagger_rounds=1, dagger_episodes=1, dagger_steps=2)
    model, _ = load_vla(path)
    assert path.name == NAME and next(model.parameters()).dtype == torch.float32  # bf16 on disk, fp32 loaded
    record = json.loads((path / "embodied_prune.json").read_text())["history"][0]
    assert record["demo_episodes_per_task"] == 1 and record["demos_wall_s"] > 0
    # the saved policy is the DAgger round's: fine-tuned from the BC policy on demos + one rollout per task
    assert record["steps"] == 2 and record["init"] and len(record["demos"]) == 2 and record["learning_rate"] == 1e-4
    assert record["bc"]["steps"] == 1 and record["bc"]["wall_s"] > 0
    assert record["visual_keep"] == 0.5 and model.train_visual_keep == 1.0  # the rounds keep the BC setting
    [round_] = record["dagger"]
    assert (
        round_["episodes_per_task"] == 1
        and round_["collect_s"] > 0
        and round_["train_s"] > 0
        and 0.0 <= round_["policy_success"] <= 1.0
    )
    assert record["recipe_wall_s"] >= record["demos_wall_s"] + record["bc"]["wall_s"] + round_["train_s"]
    assert sorted(tmp_path.iterdir()) == [path]  # nothing else left behind
    with pytest.raises(EmbodiedPruneError, match="dagger_rounds must be 0 or more"):
        ship(tmp_path / "neg", episodes=1, progress=False, settings=tiny, dagger_rounds=-1)
    assert not (tmp_path / "neg").exists()


def test_ship_script_resumes_from_its_work_folder(tmp_path):
    """With a work folder every stage stays there, and a rerun of the same recipe with one more round
    reuses the finished stages (their folders untouched, their measured times in the record) and makes
    only the new ones; a different recipe is refused before anything is written."""
    from embodied_prune.training.ship_vla import STAGES_FILE, ship

    tiny = BCSettings(steps=1, batch_size=2, hidden_size=64, layers=2, heads=4, kv_heads=2, intermediate_size=128)
    work = tmp_path / "work"
    kw = dict(episodes=1, progress=False, settings=tiny, dagger_episodes=1, dagger_steps=2, work=work)
    first = ship(tmp_path / "a", dagger_rounds=0, **kw)
    assert sorted(p.name for p in work.iterdir()) == ["bc", "demos", STAGES_FILE]
    assert "reused_stages" not in json.loads((first / "embodied_prune.json").read_text())["history"][0]
    written = {"demos": work / "demos" / "meta.json", "bc": work / "bc" / "model.safetensors"}  # each stage's last file
    stamps = {d: f.stat().st_mtime_ns for d, f in written.items()}
    stages = json.loads((work / STAGES_FILE).read_text())["stages"]

    path = ship(tmp_path / "b", dagger_rounds=1, **kw)
    assert sorted(p.name for p in work.iterdir()) == ["bc", "corrections0", "demos", "round0", STAGES_FILE]
    assert {d: f.stat().st_mtime_ns for d, f in written.items()} == stamps
    record = json.loads((path / "embodied_prune.json").read_text())["history"][0]
    assert record["reused_stages"] == {"work": str(work), "stages": ["demos", "bc"]}
    assert record["demos_wall_s"] == stages["demos"]["wall_s"] and record["bc"]["wall_s"] == stages["bc"]["wall_s"]
    assert record["init"] == str(work / "bc") and record["steps"] == 2 and len(record["dagger"]) == 1
    assert record["recipe_wall_s"] == pytest.approx(
        record["demos_wall_s"]
        + record["bc"]["wall_s"]
        + record["dagger"][0]["collect_s"]
        + record["dagger"][0]["train_s"]
    )
    load_vla(path)

    shutil.rmtree(work / "bc")  # a deleted stage is made again, and every stage made from it
    path = ship(tmp_path / "b2", dagger_rounds=1, **kw)
    assert json.loads((path / "embodied_prune.json").read_text())["history"][0]["reused_stages"]["stages"] == ["demos"]
    assert (work / "round0" / "model.safetensors").stat().st_mtime_ns > (
        work / "bc" / "model.safetensors"
    ).stat().st_mtime_ns

    with pytest.raises(EmbodiedPruneError, match=r"another recipe \(it differs in bc\)"):
        ship(tmp_path / "c", dagger_rounds=0, **{**kw, "settings": replace(tiny, steps=2)})
    assert not (tmp_path / "c").exists()


def test_ship_script_trains_on_another_runs_data(tmp_path):
    """``data_from``: a policy of another patch size and depth is trained on the demonstrations and rollouts that
    another run kept in its work folder; nothing is recorded again, and the record names the borrowed stages."""
    from embodied_prune.training.ship_vla import STAGES_FILE, ship

    tiny = BCSettings(
        steps=1, batch_size=2, hidden_size=64, layers=2, heads=4, kv_heads=2, intermediate_size=128, patch=16
    )
    work = tmp_path / "work"
    kw = dict(episodes=1, progress=False, dagger_episodes=1, dagger_steps=2)
    ship(tmp_path / "a", settings=tiny, dagger_rounds=1, work=work, **kw)
    data = [work / "demos", work / "corrections0"]
    stamps = [(d / "meta.json").stat().st_mtime_ns for d in data]
    own = tmp_path / "own"
    path = ship(
        tmp_path / "b", settings=replace(tiny, patch=8, layers=3), dagger_rounds=0, data_from=work, work=own, **kw
    )
    assert sorted(p.name for p in own.iterdir()) == ["bc", STAGES_FILE]  # no demonstrations of its own
    assert [(d / "meta.json").stat().st_mtime_ns for d in data] == stamps
    record = json.loads((path / "embodied_prune.json").read_text())["history"][0]
    assert record["data_from"]["work"] == str(work) and record["data_from"]["stages"] == ["demos", "corrections0"]
    assert record["data_from"]["recipe"]["bc"]["patch"] == 16 and record["data_from"]["wall_s"] > 0
    assert record["demos"] == [str(d) for d in data] and "demos_wall_s" not in record
    assert record["recipe_wall_s"] == record["bc"]["wall_s"]
    model, _ = load_vla(path)
    visual = model.layout().visual
    assert model.config.backbone_config.num_hidden_layers == 3 and visual[1] - visual[0] == 196 + 64 + 64

    with pytest.raises(EmbodiedPruneError, match=r"holds no stages\.json: point it at the --work folder"):
        ship(tmp_path / "c", settings=tiny, dagger_rounds=0, data_from=tmp_path / "nothing", **kw)
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / STAGES_FILE).write_text(json.dumps({"recipe": {}, "stages": {}}))
    with pytest.raises(EmbodiedPruneError, match="has no finished demonstrations stage"):
        ship(tmp_path / "c", settings=tiny, dagger_rounds=0, data_from=tmp_path / "bare", **kw)
    assert not (tmp_path / "c").exists()


def test_ship_script_refuses_empty_dagger_rounds(tmp_path, capsys):
    from embodied_prune.training.ship_vla import main as ship_main

    for flag in ("--dagger-episodes", "--dagger-steps"):
        with pytest.raises(SystemExit) as e:
            ship_main(["--out", str(tmp_path / "x"), "--dagger-rounds", "1", flag, "0"])
        assert e.value.code == 2 and "must be 1 or more" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # a patch the cameras cannot use, refused before any demonstration
        ship_main(["--out", str(tmp_path / "x"), "--work", str(tmp_path / "w"), "--patch", "12"])
    assert e.value.code == 2 and "--patch must be a multiple of 4" in capsys.readouterr().err
    for shape, message in (
        (["--hidden-size", "100", "--heads", "6"], "--hidden-size 100 must be a multiple of --heads 6"),
        (["--heads", "6", "--kv-heads", "4"], "a multiple of --kv-heads 4"),
        (["--layers", "0"], "must be at least 1"),
    ):
        with pytest.raises(SystemExit) as e:  # a backbone that cannot be built, refused before any demonstration
            ship_main(["--out", str(tmp_path / "x"), "--work", str(tmp_path / "w"), *shape])
        assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "w").exists()


def test_lora_adapters_become_factors_that_reproduce_them(tmp_path):
    from peft import LoraConfig, get_peft_model

    from embodied_prune.models.lowrank import attach_factors
    from embodied_prune.training.lora_recovery import adapter_factors, rank_for_budget, target_layers

    model, tok = tiny_policy()
    ep.prune(model, "magnitude", pattern="2:4", progress=False)
    names = list(target_layers(model))
    assert len(names) == 2 * 7 and all(n.startswith("backbone.layers.") for n in names)
    per_rank = sum(m.in_features + m.out_features for m in target_layers(model).values())
    base = sum(m.weight.numel() for m in target_layers(model).values())
    assert rank_for_budget(model, 0.1) == int(0.1 * base) // per_rank
    with pytest.raises(EmbodiedPruneError, match="raise the budget"):
        rank_for_budget(model, 1e-6)
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=names))
    torch.manual_seed(3)
    for n in names:  # B starts at zero; give the adapters something to carry
        torch.nn.init.normal_(peft_model.base_model.model.get_submodule(n).lora_B["default"].weight)
    q = query(model, tok)
    with torch.no_grad():
        want = peft_model(*q)["actions"]
        factors = adapter_factors(peft_model, names)
        plain = peft_model.unload()
        assert not torch.allclose(plain(*q)["actions"], want)
        got = attach_factors(plain, factors)(*q)["actions"]
    assert torch.allclose(got, want, atol=1e-5)
    assert sum(f.extra_parameters for f in factors) == 2 * per_rank


def test_lora_recovery_trains_and_saves_beside_the_sparse_weights(tmp_path, demos):
    from embodied_prune.models.lowrank import gluestick_layers, read_factors
    from embodied_prune.training.lora_recovery import LoRASettings, lora_recover

    model, tok = tiny_policy()
    pruned = ep.prune(save_vla(model, tok, tmp_path / "dense"), "magnitude", pattern="2:4", out=tmp_path / "p")
    settings = LoRASettings(rank=2, steps=3, batch_size=4)
    out = lora_recover(pruned.path, demos, tmp_path / "lora", settings, progress=False)
    loaded, _ = load_vla(out)
    layers = gluestick_layers(loaded)
    assert len(layers) == 14
    for layer in layers.values():  # the frozen weights keep their 2:4 pattern; the adapters sit beside them
        w = layer.base.weight
        assert ((w.reshape(w.shape[0], -1, 4) != 0).sum(-1) <= 2).all()
    factors = read_factors(out)
    assert any(f.u.abs().sum() > 0 for f in factors)  # trained: B moved away from its zero start
    record = json.loads((out / "embodied_prune.json").read_text())["history"]
    assert [r["op"] for r in record] == ["prune", "recover"] and record[-1]["method"] == "lora"
    assert record[-1]["extra_parameters"] == sum(f.extra_parameters for f in factors)
    with pytest.raises(EmbodiedPruneError, match="already carries GLUESTICK factors"):
        lora_recover(out, demos, tmp_path / "again", settings, progress=False)
    assert not (tmp_path / "again").exists()


def test_demonstrations_must_match_the_policy_cameras(tmp_path, demos):
    from embodied_prune.training.manipulation import policy_calibration

    model, tok = tiny_policy()
    model.config.cameras = [["front", 128, 8], ["wrist", 64, 8]]
    with pytest.raises(EmbodiedPruneError, match="recorded through cameras"):
        policy_calibration(model, tok, demos)


def test_dagger_rollouts_are_labelled_by_the_expert_and_fine_tune_the_policy(tmp_path, demos):
    import shutil

    from embodied_prune.envs.manipulation.demos import CORRECTION_STREAM, load_demo_folders, scene_seed
    from embodied_prune.envs.manipulation.env import ManipulationEnv
    from embodied_prune.evaluation.manipulation import VLAPolicy, record_corrections

    model, tok = tiny_policy()
    path = save_vla(model, tok, tmp_path / "vla")
    corr = record_corrections(path, tmp_path / "corr", tasks="reach", episodes=1, workers=1, progress=False)
    with pytest.raises(EmbodiedPruneError, match="take none"):
        record_corrections(path, tmp_path / "noisy", tasks="reach", episodes=1, noise=0.1, progress=False)
    assert not (tmp_path / "noisy").exists()
    meta = json.loads((corr / "meta.json").read_text())
    assert meta["generator"]["policy"] == str(path)
    [entry] = meta["episodes"]
    assert entry["seed"] == scene_seed(0, "reach", 0, CORRECTION_STREAM) and isinstance(entry["success"], bool)
    ep = load_demos(corr).episodes[0]
    # replaying the policy visits the recorded states, and each label is the expert's answer there
    policy, env = VLAPolicy(*load_vla(path)), ManipulationEnv("reach")
    obs, _ = env.reset(seed=entry["seed"])
    policy.reset(entry["seed"])
    for t in range(12):
        assert np.array_equal(obs["front"], ep["front"][t]) and np.allclose(env.expert_action(), ep["action"][t])
        obs, *_ = env.step(policy.act(obs, env.instruction))
    env.close()
    # fine-tuning on demonstrations + corrections starts from the policy and keeps its shape
    settings = BCSettings(steps=2, batch_size=4, learning_rate=1e-3)
    tuned = train_bc([demos, corr], tmp_path / "tuned", settings, progress=False, init=path)
    after, _ = load_vla(tuned)
    shape = ("hidden_size", "num_hidden_layers", "intermediate_size", "num_key_value_heads")
    assert all(getattr(after.config.backbone_config, k) == getattr(model.config.backbone_config, k) for k in shape)
    assert after.config.cameras == model.config.cameras and after.config.proprio_mean == model.config.proprio_mean
    assert not torch.equal(after.action_queries, model.action_queries)
    record = json.loads((tuned / "embodied_prune.json").read_text())["history"][-1]
    assert record["init"] == str(path) and record["demos"] == [str(demos), str(corr)] and record["samples"] > 150
    # folders seen through other cameras are refused, naming the folder
    other = tmp_path / "other"
    shutil.copytree(corr, other)
    m = json.loads((other / "meta.json").read_text())
    m["cameras"] = m["cameras"][:1]
    (other / "meta.json").write_text(json.dumps(m))
    with pytest.raises(EmbodiedPruneError, match=f"{other} was recorded through cameras"):
        load_demo_folders(f"{corr},{other}")
