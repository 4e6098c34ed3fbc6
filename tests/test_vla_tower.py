"""A VLA policy that sees through the pretrained DINOv2 ViT-S/14 (``builtin:dinov2-small``): token layout with the
tower's token count, the tower's features against transformers' own preprocessing, cached features against the
live tower, and a saved policy that carries no tower weights.

These tests use the real DINOv2 weights on purpose (converted once into the session cache).
"""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from conftest import query, tiny_policy
from embodied_prune.models.builtin import builtin_path
from embodied_prune.models.vla import (
    TOWER_CAMERAS,
    TinyVLA,
    TinyVLAConfig,
    VisionTower,
    build_tokenizer,
    compute_split,
    load_vla,
    save_vla,
)

TOWER = "builtin:dinov2-small"


def tower_policy(cameras=TOWER_CAMERAS, seed: int = 0) -> tuple[TinyVLA, object]:
    model, tok = tiny_policy(seed, cameras=[list(c) for c in cameras], vision_dim=384, vision_tower=TOWER)
    return model.eval(), tok


@pytest.fixture(scope="module")
def policy():
    return tower_policy()


def test_layout_counts_the_towers_patches(policy):
    model, tok = policy
    # 224 px front: 16 x 16 patches of 14 px; 112 px side and wrist: 8 x 8 each
    assert model.config.visual_tokens() == {"front": 256, "side": 64, "wrist": 64}
    lay = model.layout()
    assert lay.visual == (1, 1 + 384)
    assert lay.cameras["front"] == (1, 257) and lay.cameras["wrist"] == (321, 385)
    images, ids, mask, proprio = query(model, tok)
    x, full_mask = model.build_inputs(images, ids, mask, proprio, tok.bos_token_id)
    assert x.shape[1] == lay.length == full_mask.shape[1]
    assert model(images, ids, mask, proprio, tok.bos_token_id)["actions"].shape == (2, model.config.chunk, 4)


def test_tower_features_equal_transformers_preprocessing(policy):
    """The tower scales and normalises the camera image exactly as DINOv2's own image processor does (no resize
    or crop: the camera renders at the tower's size) and drops only the class token."""
    from transformers import AutoImageProcessor, Dinov2Model

    model, tok = policy
    images, *_ = query(model, tok)
    features = model.tower_features(images)
    path = builtin_path("dinov2-small")
    processor = AutoImageProcessor.from_pretrained(path, do_resize=False, do_center_crop=False)
    reference = Dinov2Model.from_pretrained(path).eval()
    for name, size, _ in model.config.cameras:
        pixels = processor(list(images[name].numpy()), return_tensors="pt")["pixel_values"]
        assert pixels.shape == (2, 3, size, size)
        with torch.no_grad():
            expected = reference(pixel_values=pixels).last_hidden_state[:, 1:]
        assert features[name].shape == (2, (size // 14) ** 2, 384)
        torch.testing.assert_close(features[name], expected, atol=1e-4, rtol=1e-4)


def test_cached_features_give_the_live_policys_actions(policy):
    model, tok = policy
    images, ids, mask, proprio = query(model, tok, seed=1)
    with torch.no_grad():
        live = model(images, ids, mask, proprio, tok.bos_token_id)["actions"]
        cached = model.tower_features(images)
        from_cache = model(None, ids, mask, proprio, tok.bos_token_id, features=cached)["actions"]
        other = model(None, ids, mask, proprio, tok.bos_token_id, features={k: v.flip(0) for k, v in cached.items()})
    torch.testing.assert_close(from_cache, live, rtol=0, atol=0)
    assert not torch.allclose(other["actions"], live)  # the features are what the policy acts on


def test_saved_policy_carries_no_tower_weights(tmp_path, policy):
    model, tok = policy
    folder = save_vla(model, tok, tmp_path / "p")
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert not any("embeddings.patch_embeddings" in k or "encoder.layer" in k for k in keys)
    assert sum(p.numel() for p in model.parameters()) < 1_000_000  # the 22 M tower is not a parameter
    loaded, _ = load_vla(folder)
    assert loaded.config.vision_tower == TOWER
    images, ids, mask, proprio = query(model, tok, seed=2)
    with torch.no_grad():
        a = model(images, ids, mask, proprio, tok.bos_token_id)["actions"]
        b = loaded.eval()(images, ids, mask, proprio, tok.bos_token_id)["actions"]
    torch.testing.assert_close(a, b)


def test_compute_split_names_the_tower(policy):
    model, _ = policy
    split = compute_split(model)
    assert {"tower", "vision", "backbone", "action_head"} <= set(split)
    assert split["tower"] > split["backbone"]  # a 22 M tower against a 2-layer, 64-wide backbone
    assert sum(split[k] for k in ("tower", "vision", "backbone", "action_head")) == pytest.approx(1.0)


def test_token_pruners_run_on_the_towers_tokens(policy):
    """The token study's query runs on a tower policy: keeping every token is the model's own forward, and
    SpecPrune-VLA, FastV and random drop keep their budgets of the tower's 384 visual tokens."""
    from embodied_prune.tokens import FastV, RandomDrop, SpecPrune, TokenPruner, pruned_query
    from embodied_prune.tokens.pruners import SpecPruneSettings

    model, tok = policy
    q = query(model, tok, batch=1, seed=3)
    spec = SpecPruneSettings(prune_layer=1, global_layers=(1,), layer_dynamic=(), cameras=model.config.cameras)
    with torch.no_grad():
        ref = model(*q, bos_id=tok.bos_token_id)["actions"]
        assert torch.equal(pruned_query(model, TokenPruner(), *q, bos_id=tok.bos_token_id), ref)
        for pruner in (FastV(keep=96), RandomDrop(keep=96, seed=1), SpecPrune(keep=96, settings=spec)):
            out = pruned_query(model, pruner, *q, bos_id=tok.bos_token_id)
            assert out.shape == ref.shape and not torch.equal(out, ref)
            kept = pruner.queries[-1].visual_per_layer
            assert len(kept) == 2 and kept[0] in (96, 384)
            # SpecPrune keeps the union of its global, dynamic and local sets: at least its budget, not all
            assert kept[1] == 96 if not isinstance(pruner, SpecPrune) else 96 <= kept[1] < 384


def test_cameras_the_tower_cannot_cut_are_refused():
    with pytest.raises(ValueError, match="multiple of 14"):
        tower_policy(cameras=(("front", 224, 14), ("side", 64, 8)))


def test_a_wrong_vision_dim_is_named():
    tok = build_tokenizer(["a b"])
    config = TinyVLAConfig(cameras=[["front", 56, 14]], vision_dim=128, vision_tower=TOWER)
    config.backbone_config.vocab_size = len(tok)
    model = TinyVLA(config).eval()
    images = {"front": torch.zeros(1, 56, 56, 3, dtype=torch.uint8)}
    with pytest.raises(ValueError, match="vision_dim"):
        model.visual_embeddings(images)


def test_the_tower_is_loaded_once_and_frozen():
    tower = VisionTower(TOWER)
    a, b = tower.model(), VisionTower(TOWER).model()
    assert a is b
    assert not any(p.requires_grad for p in a.parameters())
    assert len(tower.fingerprint()) == 64


@pytest.fixture(scope="module")
def tower_demos(tmp_path_factory):
    """One expert episode of reach through the cameras at the tower's sizes."""
    from embodied_prune.envs.manipulation.demos import generate_demos
    from embodied_prune.envs.manipulation.render import cameras_for

    out = tmp_path_factory.mktemp("tower-demos") / "d"
    cameras = cameras_for(TOWER_CAMERAS)
    return generate_demos(out, tasks="reach", episodes=1, progress=False, workers=1, cameras=cameras)


def test_cached_features_equal_the_live_tower(tower_demos, policy):
    """The cache holds the tower's features of every frame (to float16's rounding), resumes episode by episode,
    and what the policy acts on from it equals what it acts on from the frames."""
    import json
    import os

    import numpy as np

    from embodied_prune.envs.manipulation.demos import load_demos
    from embodied_prune.training.tower_features import build_cache, cache_folder, load_cache

    model, _ = policy
    folder = build_cache(tower_demos, TOWER, model.config.cameras, progress=False)
    assert folder == cache_folder(tower_demos, VisionTower(TOWER))
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["sha256"] == VisionTower(TOWER).fingerprint()
    (episode,) = load_demos(tower_demos).episodes
    assert meta["wall_s"] > 0 and meta["timed_frames"] == len(episode["action"])  # the encoding time is kept
    (cached,) = load_cache(tower_demos, TOWER, model.config.cameras)
    steps = [0, len(episode["action"]) // 2, len(episode["action"]) - 1]
    images = {name: torch.from_numpy(episode[name][steps]) for name, _, _ in model.config.cameras}
    live = model.tower_features(images)
    for name in live:
        assert cached[name].dtype == np.float16 and cached[name].shape[0] == len(episode["action"])
        got = torch.from_numpy(cached[name][steps]).float()
        torch.testing.assert_close(got, live[name], rtol=2**-10, atol=1e-3)
    # resuming: an unfinished cache recomputes only what is missing
    (file,) = list((folder / "episodes").iterdir())
    stamp = file.stat().st_mtime_ns
    os.remove(folder / "meta.json")
    build_cache(tower_demos, TOWER, model.config.cameras, progress=False)
    assert file.stat().st_mtime_ns == stamp and (folder / "meta.json").is_file()
    assert json.loads((folder / "meta.json").read_text())["wall_s"] == meta["wall_s"]  # summed over both runs


def test_load_cache_refuses_a_missing_cache(tmp_path, demos):
    from embodied_prune.errors import EmbodiedPruneError
    from embodied_prune.training.tower_features import build_cache, load_cache

    with pytest.raises(EmbodiedPruneError, match="no finished cache"):
        load_cache(demos, TOWER, [["front", 224, 14]])
    # the shared fixture was recorded at 112 px: the tower's 224 px camera is named as missing
    with pytest.raises(EmbodiedPruneError, match="recorded through cameras"):
        build_cache(demos, TOWER, [["front", 224, 14]], progress=False)


def test_behaviour_cloning_through_the_tower(tmp_path, tower_demos, demos):
    """train_bc builds a tower policy on cached features (no tower weights saved), and the policy runs live in
    closed loop; demonstrations at sizes the tower cannot cut are refused in a sentence."""
    from embodied_prune.errors import EmbodiedPruneError
    from embodied_prune.evaluation.manipulation import evaluate_manipulation
    from embodied_prune.training.manipulation import BCSettings, train_bc

    settings = BCSettings(
        steps=2, batch_size=4, hidden_size=64, layers=2, heads=4, kv_heads=2, intermediate_size=128, vision_tower=TOWER
    )
    path = train_bc(tower_demos, tmp_path / "p", settings, progress=False)
    model, _ = load_vla(path)
    assert model.config.vision_tower == TOWER and model.config.vision_dim == 384
    assert model.config.visual_tokens() == {"front": 256, "side": 64, "wrist": 64}
    report = evaluate_manipulation(str(path), tasks="reach", episodes=1, workers=1, progress=False).to_dict()
    assert report["episodes"] == 1 and report["queries"] >= 1
    with pytest.raises(EmbodiedPruneError, match="multiples of 14"):
        train_bc(demos, tmp_path / "q", settings, progress=False)
    assert not (tmp_path / "q").exists()


def test_cli_trains_a_tower_policy(tmp_path, tower_demos, capsys):
    from embodied_prune.cli import main

    out = tmp_path / "cli"
    args = ["train", "manipulation", "--demos", str(tower_demos), "--vision-tower", TOWER, "--max-steps", "1"]
    assert main([*args, "--batch-size", "2", "-q", "--out", str(out)]) == 0
    model, _ = load_vla(out)
    assert model.config.vision_tower == TOWER and model.layout().visual == (1, 385)
    # the tower flags belong to their own verbs, said in a sentence
    assert main(["train", "driving", "--stage", "sft", "--vision-tower", TOWER, "--out", str(tmp_path / "d")]) == 2
    assert "--vision-tower are for train manipulation" in capsys.readouterr().err
    refused = ["demos", "manipulation", "--tower-cameras", "--policy", str(out), "--out", str(tmp_path / "c")]
    assert main(refused) == 2
    assert "--tower-cameras is for expert demonstrations" in capsys.readouterr().err
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()
