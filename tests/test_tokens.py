"""Visual-token pruning: score maths, SpecPrune's kept set, positions, bit-identity, SDPA, evaluation."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaConfig

from embodied_prune.cli import main as cli_main
from embodied_prune.envs.manipulation.tasks import TASKS
from embodied_prune.errors import EmbodiedPruneError
from embodied_prune.models.vla import TinyVLA, TinyVLAConfig, build_tokenizer, encode_instructions, save_vla
from embodied_prune.tokens import FastV, RandomDrop, SpecPrune, SpecPruneSettings, TokenPruner, pruned_query
from embodied_prune.tokens.flops import relative_backbone_flops
from embodied_prune.tokens.scores import (
    changed_tokens,
    frame_gap,
    is_fine_motion,
    patch_similarity,
    rank_confidence,
    row_attention,
    top_k,
)


def policy(layers: int = 4, seed: int = 0, vision_layers: int = 0) -> tuple[TinyVLA, object]:
    torch.manual_seed(seed)
    tok = build_tokenizer([TASKS.get(n).instruction for n in TASKS.names()])
    backbone = LlamaConfig(
        hidden_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=len(tok),
        tie_word_embeddings=False,
    )
    cameras = [["front", 128, 8], ["wrist", 64, 8]]  # 320 visual tokens; evaluation renders these cameras
    config = TinyVLAConfig(
        backbone_config=backbone, cameras=cameras, vision_dim=32, stem_channels=8, vision_layers=vision_layers
    )
    return TinyVLA(config).eval(), tok


def one_query(model, tok, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = {
        name: torch.randint(0, 256, (1, size, size, 3), dtype=torch.uint8, generator=g)
        for name, size, _ in model.config.cameras
    }
    enc = encode_instructions(tok, ["push the puck to the green ball"], model.config.instruction_len)
    assert enc["attention_mask"].sum() < model.config.instruction_len  # padding present: masks matter
    return images, enc["input_ids"], enc["attention_mask"], torch.rand(1, 4, generator=g)


class Keep(TokenPruner):
    """Keeps a fixed set of visual tokens from layer ``layer`` on."""

    def __init__(self, keep: torch.Tensor, layer: int = 0) -> None:
        super().__init__()
        self.kept, self.layer = keep, layer

    def select(self, state):
        return self.kept if state.layer == self.layer else None


class FakeState:
    """Just what SpecPrune's static step reads: planted scores instead of a model."""

    def __init__(self, scores: torch.Tensor, layer: int = 0, num_layers: int = 4) -> None:
        self._s, self.layer, self.num_layers = scores, layer, num_layers
        self.visual_total = len(scores)
        self.visual = torch.arange(len(scores))

    def scores(self, rows: str = "instruction") -> torch.Tensor:
        return self._s


class LayeredState(FakeState):
    """Planted scores per layer; records which rows each layer was asked for."""

    def __init__(self, per_layer: dict[int, torch.Tensor], layer: int, asked: list) -> None:
        super().__init__(per_layer[layer], layer)
        self.asked = asked

    def scores(self, rows: str = "instruction") -> torch.Tensor:
        self.asked.append((self.layer, rows))
        return self._s


# --- pure maths --------------------------------------------------------------------------------------


def test_top_k_picks_the_largest_and_skips_excluded():
    s = torch.tensor([0.1, 0.9, 0.5, 0.7, 0.3])
    assert top_k(s, 2).tolist() == [1, 3]
    exclude = torch.tensor([False, True, False, False, False])
    assert top_k(s, 2, exclude=exclude).tolist() == [3, 2]
    assert len(top_k(s, 10, exclude=exclude)) == 4


def test_frame_difference_finds_the_planted_changed_patches():
    rng = np.random.default_rng(0)
    before = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    after = before.copy()
    after[8:16, 16:24] = 255 - after[8:16, 16:24]  # patch (1, 2) of a 4×4 grid of 8-px patches → index 6
    after[24:32, 0:8] = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)  # patch (3, 0) → index 12
    sim = patch_similarity(after, before, 8)
    assert sim.shape == (16,)
    assert np.allclose(np.delete(sim, [6, 12]), 1.0)
    assert sim[6] < -0.9 and sim[12] < 0.5
    assert changed_tokens(sim, 0.95, 5).tolist() == [6, 12]  # least similar first, only those below
    assert changed_tokens(sim, 0.95, 1).tolist() == [6]


def test_frame_gap_shrinks_with_speed_from_eleven_to_six():
    gaps = [frame_gap(v, 0.01) for v in np.linspace(0, 0.012, 13)]
    assert gaps[0] == 11 and gaps[-1] == 6
    assert all(a >= b for a, b in itertools.pairwise(gaps))


def test_rank_confidence_orders_by_score_and_weighs_flat_layers_more():
    peaked = torch.tensor([0.9, 0.05, 0.03, 0.02])
    flat = torch.tensor([0.3, 0.25, 0.24, 0.21])
    rp, rf = rank_confidence(peaked), rank_confidence(flat)
    assert torch.argsort(-rp).tolist() == [0, 1, 2, 3]
    assert rf[0] > rp[0]  # same rank, higher confidence (mean/std) for the flat layer


def test_controller_calls_slow_steady_motion_fine():
    assert is_fine_motion(0.001, 0.002, 0.003)
    assert not is_fine_motion(0.001, 0.0005, 0.003)  # speeding up
    assert not is_fine_motion(0.005, 0.006, 0.003)  # fast


def test_row_attention_matches_eager_attention_weights():
    model, tok = policy(layers=2)
    x, mask = model.build_inputs(*one_query(model, tok), bos_id=tok.bos_token_id)
    layer = model.backbone.layers[0]
    pos = torch.arange(x.shape[1])[None]
    pe = model.backbone.rotary_emb(x, pos)
    rows = torch.tensor([321, 322, 330, 340])
    with torch.no_grad():
        ours = row_attention(layer, x, pe, rows, mask[0].bool())
        from transformers.masking_utils import create_causal_mask

        model.backbone.config._attn_implementation = "eager"
        causal = create_causal_mask(model.backbone.config, x, mask, None, position_ids=pos)
        _, weights = layer.self_attn(layer.input_layernorm(x), pe, causal)
        model.backbone.config._attn_implementation = "sdpa"
    assert torch.allclose(ours, weights[0, :, rows], atol=1e-5)


def test_action_rows_are_the_queries_after_the_instruction():
    """``scores("action")`` averages the action queries' rows, ``scores("instruction")`` the unpadded instruction
    rows, and FastV's ``after_visual`` is their row-weighted mean."""
    model, tok = policy(layers=2)
    q = one_query(model, tok)
    got = {}

    class Probe(TokenPruner):
        def select(self, state):
            if state.layer == 1:
                got.update({rows: state.scores(rows) for rows in ("instruction", "action", "after_visual")})
                lay = model.layout(q[1].shape[1])
                actions = torch.arange(*lay.actions)
                probs = row_attention(
                    state.layer_module, state.hidden, state.position_embeddings, actions, state.key_valid
                )
                got["manual"] = probs[..., lay.visual[0] : lay.visual[1]].mean(dim=(0, 1))
            return None

    with torch.no_grad():
        pruned_query(model, Probe(), *q, bos_id=tok.bos_token_id)
    n_instr, n_act = int(q[2].sum()), model.config.chunk
    assert torch.allclose(got["action"], got["manual"], atol=1e-6)
    mixed = (n_instr * got["instruction"] + n_act * got["action"]) / (n_instr + n_act)
    assert torch.allclose(got["after_visual"], mixed, atol=1e-6)
    assert not torch.allclose(got["action"], got["instruction"], rtol=0, atol=1e-6)  # different rows, other scores


def test_specprune_scores_its_rows_at_its_local_layers_only():
    n = 20
    early, late = torch.linspace(1, 0, n), torch.linspace(0, 1, n)  # layers 0-1 favour tokens 0.., layer 2 ..19
    per_layer = {0: early, 1: early, 2: late}
    kept = {}
    for local in (None, (2,)):
        asked: list = []
        settings = SpecPruneSettings(
            cameras=[["front", 16, 4], ["wrist", 8, 4]],
            controller=False,
            prune_layer=2,
            local_layers=local,
            score_rows="action",
            global_layers=(),
        )
        pruner = SpecPrune(keep=5, settings=settings)
        for layer in range(3):
            out = pruner.select(LayeredState(per_layer, layer, asked))
        kept[local] = out.tolist()
        assert {rows for _, rows in asked} == {"action"}
        assert [layer for layer, _ in asked] == ([0, 1, 2] if local is None else [2])
    assert kept[(2,)] == [15, 16, 17, 18, 19]  # layer 2's ranking alone
    assert kept[None] == [0, 1, 2, 3, 4]  # the mean of three layers, two of them the early ranking


# --- the pruned forward ----------------------------------------------------------------------------


@pytest.mark.parametrize("vision_layers", [0, 2])
def test_no_pruning_is_bit_identical_to_the_model(vision_layers):
    """Keeping every token runs the model's own forward, vision layers (a ViT-like stem) included."""
    model, tok = policy(vision_layers=vision_layers)
    q = one_query(model, tok)
    with torch.no_grad():
        ref = model(*q, bos_id=tok.bos_token_id)["actions"]
        out = pruned_query(model, TokenPruner(), *q, bos_id=tok.bos_token_id)
    assert torch.equal(ref, out)


def test_kept_tokens_keep_their_original_positions():
    model, tok = policy()
    q = one_query(model, tok)
    kept = torch.tensor([3, 17, 40, 41, 200, 300])
    with torch.no_grad():
        out = pruned_query(model, Keep(kept), *q, bos_id=tok.bos_token_id)
        x, mask = model.build_inputs(*q, bos_id=tok.bos_token_id)
        lay = model.layout()
        seq = torch.cat([torch.tensor([0]), kept + lay.visual[0], torch.arange(lay.visual[1], lay.length)])
        h = model.backbone(
            inputs_embeds=x[:, seq], attention_mask=mask[:, seq], position_ids=seq[None]
        ).last_hidden_state
        ref = model.action_head(h[:, -model.config.chunk :])
        renumbered = model.backbone(inputs_embeds=x[:, seq], attention_mask=mask[:, seq]).last_hidden_state
    assert torch.allclose(out, ref, atol=1e-5)
    assert not torch.allclose(out, model.action_head(renumbered[:, -model.config.chunk :]), atol=1e-4)


def test_layers_run_sdpa_and_scores_never_use_eager_attention(monkeypatch):
    import transformers.integrations.sdpa_attention as sdpa_mod
    import transformers.models.llama.modeling_llama as llama_mod

    model, tok = policy()
    assert model.backbone.config._attn_implementation == "sdpa"
    calls = []
    real = sdpa_mod.torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(
        sdpa_mod.torch.nn.functional,
        "scaled_dot_product_attention",
        lambda *a, **k: calls.append(a[0].shape[2]) or real(*a, **k),
    )

    def no_eager(*a, **k):
        raise AssertionError("eager attention ran")

    monkeypatch.setattr(llama_mod, "eager_attention_forward", no_eager)
    pruner = SpecPrune(alpha=0.25, settings=SpecPruneSettings(controller=False, cameras=model.config.cameras))
    with torch.no_grad():
        pruned_query(model, pruner, *one_query(model, tok), bos_id=tok.bos_token_id)
    lay = model.layout()
    other = lay.length - (lay.visual[1] - lay.visual[0])
    assert calls == [n + other for n in pruner.queries[-1].visual_per_layer]  # one SDPA call per layer
    assert pruner.queries[-1].visual_per_layer == [80, 80, 72, 72]  # 25 % of 320, then 10 % fewer at layer 2


# --- SpecPrune's sets -------------------------------------------------------------------------------


def test_static_set_is_the_union_of_global_dynamic_and_local():
    n = 20  # 4×4 front + 2×2 wrist patches
    settings = SpecPruneSettings(cameras=[["front", 16, 4], ["wrist", 8, 4]], controller=False, layer_drop=0.0)
    pruner = SpecPrune(keep=10, settings=settings)  # budget 10: 3 global, 2 dynamic, 5 local
    frame = {"front": np.zeros((16, 16, 3), np.uint8), "wrist": np.zeros((8, 8, 3), np.uint8), "proprio": np.zeros(4)}
    pruner.observe(frame)
    changed = {**frame, "front": frame["front"].copy()}
    changed["front"][4:8, 8:12] = 255  # front patch (1, 2) → token 6
    changed["front"][12:16, 0:4] = 200  # front patch (3, 0) → token 12
    pruner.observe(changed)
    pruner._global = torch.zeros(n, dtype=torch.float64)
    pruner._global[[15, 16, 17, 18]] = torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=torch.float64)  # top 3: 15, 16, 17
    pruner._visual_total = n
    local = torch.linspace(0, 1, n).flip(0)  # token 0 the most attended, then 1, 2, ...
    local[6] = 0.0
    kept = pruner.select(FakeState(local)).tolist()
    assert kept == sorted({15, 16, 17} | {6, 12} | {0, 1, 2, 3, 4})
    assert len(kept) == 10


def test_camera_quota_splits_the_budget_between_cameras_by_token_count():
    cameras = [["front", 16, 4], ["wrist", 8, 4]]  # 16 + 4 tokens
    local = torch.linspace(1, 0, 20)  # every front token outscores every wrist token
    kept = {}
    for quota in (False, True):
        settings = SpecPruneSettings(cameras=cameras, controller=False, layer_drop=0.0, camera_quota=quota)
        kept[quota] = SpecPrune(keep=10, settings=settings).select(FakeState(local)).tolist()
    assert kept[False] == list(range(10))  # one ranking: the wrist camera is crowded out
    assert kept[True] == [*range(8), 16, 17]  # 10 × 16/20 front, 10 × 4/20 wrist, each by its own ranking
    # a camera list that does not describe the tokens falls back to one ranking instead of guessing
    odd = SpecPrune(keep=10, settings=SpecPruneSettings(cameras=[["front", 16, 4]], camera_quota=True))
    assert odd.camera_groups(20, 10) == [(0, 20, 10)]


def test_first_query_of_an_episode_falls_back_to_local_attention():
    settings = SpecPruneSettings(cameras=[["front", 16, 4], ["wrist", 8, 4]], controller=False)
    pruner = SpecPrune(keep=6, settings=settings)
    local = torch.arange(20, dtype=torch.float32)
    assert pruner.select(FakeState(local)).tolist() == list(range(14, 20))


def test_fine_motion_keeps_more_tokens_and_skips_layer_pruning():
    model, tok = policy()
    q = one_query(model, tok)

    def kept_per_layer(step: float) -> list[int]:
        pruner = SpecPrune(alpha=0.25, settings=SpecPruneSettings(cameras=model.config.cameras))
        pruner.reset()
        for t in range(5):
            img = {name: q[0][name][0].numpy() for name in q[0]}
            pruner.observe({**img, "proprio": np.array([step * t, 0.6, 0.2, 1.0], np.float32)})
        with torch.no_grad():
            pruned_query(model, pruner, *q, bos_id=tok.bos_token_id)
        return pruner.queries[-1].visual_per_layer, pruner.fine_queries[-1]

    slow, fine = kept_per_layer(0.001)
    fast, coarse = kept_per_layer(0.008)
    assert fine and not coarse
    assert slow == [100, 100, 100, 100]  # 80 × 1.25, no layer-level drop
    assert fast == [80, 80, 72, 72]


def test_global_set_comes_from_the_previous_query():
    model, tok = policy()
    q = one_query(model, tok)
    pruner = SpecPrune(alpha=0.25, settings=SpecPruneSettings(controller=False, cameras=model.config.cameras))
    with torch.no_grad():
        pruned_query(model, pruner, *q, bos_id=tok.bos_token_id)
    g = pruner._global
    assert g is not None and g.shape == (320,)
    assert int((g > 0).sum()) == 80  # scores of the tokens that reached layer 2; pruned ones 0
    pruner.reset()
    assert pruner._global is None and pruner.queries == []


def test_baselines_keep_their_budget():
    model, tok = policy()
    q = one_query(model, tok)
    with torch.no_grad():
        for pruner, kept in ((FastV(keep=50), [320, 50, 50, 50]), (RandomDrop(keep=50, seed=3), [50] * 4)):
            pruned_query(model, pruner, *q, bos_id=tok.bos_token_id)
            assert pruner.queries[-1].visual_per_layer == kept
        a, b = RandomDrop(keep=50, seed=3), RandomDrop(keep=50, seed=3)
        a.reset(7), b.reset(7)
        assert torch.equal(pruned_query(model, a, *q, bos_id=2), pruned_query(model, b, *q, bos_id=2))


def test_flops_estimate_is_one_for_dense_and_falls_with_tokens():
    model, _ = policy()
    assert relative_backbone_flops(model, [320] * 4) == pytest.approx(1.0)
    half = relative_backbone_flops(model, [160] * 4)
    assert 0.4 < half < 0.65
    assert relative_backbone_flops(model, [320, 160, 160, 160]) > half


# --- evaluation and CLI ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_policy(tmp_path_factory):
    model, tok = policy(layers=4)
    return save_vla(model, tok, tmp_path_factory.mktemp("vla") / "p")


def test_eval_with_a_token_pruner_reports_kept_tokens(saved_policy, tmp_path):
    out = tmp_path / "r.json"
    rc = cli_main(
        [
            *("eval", "manipulation", "--model", str(saved_policy), "--tasks", "reach", "--episodes", "1"),
            *("--workers", "1", "--token-pruner", "specprune", "--keep", "96", "--json", str(out), "-q"),
        ]
    )
    assert rc == 0
    d = json.loads(out.read_text())
    assert d["token_pruner"]["name"] == "specprune" and d["episodes"] == 1
    assert 0 < d["kept_tokens_mean"] <= 120  # 96, ×1.25 in fine motion at most
    assert d["backbone_flops_ratio"] < 0.6
    assert d["latency_ms_median"] > 0 and d["episode_s_median"] > 0
    assert 0.0 <= d["fine_query_fraction"] <= 1.0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--keep", "10"], "add --token-pruner"),
        (["--token-pruner", "fastv", "--keep", "999"], "between 1 and the 320"),
        (["--token-pruner", "random", "--alpha", "1.5"], "in (0, 1]"),
        (["--token-pruner", "random", "--alpha", "0.5", "--keep", "3"], "not both"),
    ],
)
def test_token_pruner_errors_are_one_line(saved_policy, capsys, args, message):
    rc = cli_main(["eval", "manipulation", "--model", str(saved_policy), "--episodes", "1", *args])
    err = capsys.readouterr().err
    assert rc != 0 and message in err and len(err.strip().splitlines()) == 1


def test_pruner_options_take_the_recorded_point_unless_a_knob_is_given():
    from embodied_prune.tokens import pruner_options

    point = {"prune_layer": 2, "local_layers": [2], "score_rows": "action", "layer_dynamic": [3]}
    assert pruner_options("specprune", {"specprune": point}) == (point, "recorded")
    assert pruner_options("specprune", None) == ({}, "defaults")
    assert pruner_options("fastv", {"specprune": point}) == ({}, "defaults")  # nothing recorded for fastv
    # any knob starts from the published defaults, not from a mix with the recorded point
    got = pruner_options("specprune", {"specprune": point}, prune_layer=1, score_layers=[0, 1], score_rows=None)
    assert got == ({"prune_layer": 1, "local_layers": [0, 1]}, "given")
    fastv = pruner_options("fastv", None, prune_layer=2, score_rows="action")
    assert fastv == ({"layer": 2, "rows": "action"}, "given")
    with pytest.raises(EmbodiedPruneError, match="fastv token pruner has no --drop-layers"):
        pruner_options("fastv", None, drop_layers=[3])
    with pytest.raises(EmbodiedPruneError, match="need a --token-pruner"):
        pruner_options("none", None, prune_layer=1)


def test_eval_runs_a_policys_recorded_working_point(saved_policy, tmp_path, capsys):
    policy_dir = tmp_path / "p"
    shutil.copytree(saved_policy, policy_dir)
    side = policy_dir / "embodied_prune.json"
    point = {"prune_layer": 2, "local_layers": [2], "score_rows": "action", "layer_dynamic": [3]}
    side.write_text(json.dumps(json.loads(side.read_text()) | {"token_pruning": {"pruners": {"specprune": point}}}))

    def run(*extra: str) -> dict:
        out = tmp_path / "r.json"
        args = ("--workers", "1", "--token-pruner", "specprune", "--keep", "96", "--json", str(out), "-q", *extra)
        base = ["eval", "manipulation", "--model", str(policy_dir), "--tasks", "reach", "--episodes", "1"]
        assert cli_main([*base, *args]) == 0
        return json.loads(out.read_text())

    assert run()["token_pruner"]["options"] == point
    assert "recorded working point" in capsys.readouterr().out
    assert run("--prune-layer", "1")["token_pruner"]["options"] == {"prune_layer": 1}
    assert "recorded working point" not in capsys.readouterr().out
    wrong = ["--token-pruner", "random", "--score-layers", "1"]
    rc = cli_main(["eval", "manipulation", "--model", str(policy_dir), *wrong])
    err = capsys.readouterr().err
    assert rc != 0 and "random token pruner has no --score-layers" in err and len(err.strip().splitlines()) == 1


def test_working_point_is_the_best_specprune_cell_at_the_configs_budget():
    from embodied_prune.experiments.tokens import working_point

    cell = {"success_rate": 0.5, "ci95": [0.4, 0.6], "date": "2026-12-01T00:00:00"}
    summary = {
        "config": {
            "episodes": 50,
            "seed": 0,
            "alpha": 0.3,
            "variants": [
                {"name": "dense", "pruner": "none"},
                {"name": "sp1", "pruner": "specprune", "options": {"prune_layer": 1}},
                {"name": "sp2", "pruner": "specprune", "options": {"prune_layer": 2}},
                {"name": "sp3", "pruner": "specprune", "keep": 10, "options": {"prune_layer": 3}},
                {"name": "fastv", "pruner": "fastv", "match": "sp1"},
            ],
        },
        "variants": {
            "dense": cell | {"success_rate": 0.9},
            "sp1": cell | {"success_rate": 0.6},
            "sp2": cell | {"success_rate": 0.7},
            "sp3": cell | {"success_rate": 0.95},  # another budget than the command line's: not a candidate
            "fastv": cell | {"success_rate": 0.99},
        },
        "side_by_side_latency_ms": {"dense": 20.0, "sp1": 10.0, "sp2": 16.0, "sp3": 5.0, "fastv": 9.0},
    }
    point = working_point(summary)
    assert point["options"] == {"prune_layer": 2}
    assert "'sp2'" in point["study"] and "70.0 %" in point["study"] and "1.25x" in point["study"]
    assert working_point(summary, "random") is None


def test_specprune_options_are_checked():
    from embodied_prune.tokens import build_token_pruner

    with pytest.raises(EmbodiedPruneError, match="unknown specprune option"):
        build_token_pruner("specprune", options={"bogus": 1})
    p = build_token_pruner("specprune", options={"layer_drop": 0.0, "controller": False, "layer_dynamic": [1]})
    assert p.s.layer_dynamic == (1,) and not p.s.controller
    with pytest.raises(EmbodiedPruneError, match="fastv rows must be one of"):
        build_token_pruner("fastv", options={"rows": "visual"})
    with pytest.raises(EmbodiedPruneError, match="score_rows must be one of"):
        build_token_pruner("specprune", options={"score_rows": "visual"})
    with pytest.raises(EmbodiedPruneError, match="name no layer from 0 to prune_layer 1"):
        build_token_pruner("specprune", options={"prune_layer": 1, "local_layers": [2]})
    p = build_token_pruner("specprune", options={"prune_layer": 2, "local_layers": [2], "score_rows": "action"})
    assert p.s.local_layers == (2,) and p.s.score_rows == "action"


def test_matched_keep_gives_equal_mean_tokens_per_layer():
    from embodied_prune.experiments.tokens import matched_keep

    assert matched_keep(152.0, 0, 4, 320) == 152
    k = matched_keep(152.0, 1, 4, 320)  # FastV after layer 0: (320 + 3k) / 4 = 152
    assert k == 96 and (320 + 3 * k) / 4 == 152


def test_tokens_experiment_runs_resumes_and_reports(saved_policy, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"model: {saved_policy}\nepisodes: 1\ntasks: [reach]\nworkers: 1\nalpha: 0.3\nlatency_queries: 4\n"
        "variants:\n  - {name: dense, pruner: none}\n  - {name: specprune, pruner: specprune}\n"
        "  - {name: fastv, pruner: fastv, match: specprune}\n"
    )
    out = tmp_path / "run"
    assert cli_main(["experiment", "tokens", "--config", str(cfg), "--out", str(out), "-q"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert list(s["variants"]) == ["dense", "specprune", "fastv"]
    spec, fastv = s["variants"]["specprune"], s["variants"]["fastv"]
    assert fastv["kept_tokens_mean"] == pytest.approx(spec["kept_tokens_mean"], abs=1.0)  # matched budget
    assert set(s["side_by_side_latency_ms"]) == {"dense", "specprune", "fastv"}
    assert "specprune" in (out / "report.md").read_text() and (out / "speedup_vs_success.png").stat().st_size > 0
    capsys.readouterr()
    assert cli_main(["experiment", "tokens", "--config", str(cfg), "--out", str(out), "-q"]) == 0
    assert capsys.readouterr().out.count("finished earlier") == 3


def test_tokens_experiment_config_errors(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("variants:\n  - {name: fastv, pruner: fastv, match: specprune}\n")
    assert cli_main(["experiment", "tokens", "--config", str(cfg)]) != 0
    assert "must come first" in capsys.readouterr().err
    assert cli_main(["experiment", "tokens", "--config", str(tmp_path / "none.yaml")]) != 0
    assert "does not exist" in capsys.readouterr().err


def test_matched_keep_refuses_an_impossible_match():
    from embodied_prune.experiments.tokens import matched_keep

    with pytest.raises(EmbodiedPruneError, match="cannot average"):
        matched_keep(100.0, 1, 2, 320)


# --- the GLUESTICK experiment runner (shares the saved tiny policy) ------------------------------------


def test_gluestick_experiment_builds_evaluates_and_resumes(saved_policy, tmp_path, capsys):
    cfg = tmp_path / "g.yaml"
    cfg.write_text(
        f"model: {saved_policy}\nepisodes: 1\ntasks: [drawer-close]\nworkers: 1\nlora_episodes: 1\nlora_steps: 2\n"
        "pruned:\n  - {name: mag 2:4, method: magnitude, pattern: '2:4'}\n"
        "recovery:\n  - {name: none}\n  - {name: r4, rank: 4}\n  - {name: b10 int8, budget: 0.1, dtype: int8}\n"
        "  - {name: lora b10, lora_budget: 0.1}\n"
        "latency_cells: [[mag 2:4, none], [mag 2:4, r4]]\nlatency_queries: 2\n"
    )
    out = tmp_path / "g"
    assert cli_main(["experiment", "gluestick", "--config", str(cfg), "--out", str(out), "-q"]) == 0
    s = json.loads((out / "summary.json").read_text())
    lat = s["side_by_side_latency_ms"]
    assert list(lat) == ["dense", "mag 2:4 | none", "mag 2:4 | r4"] and all(ms > 0 for ms in lat.values())
    assert "Query latency side by side" in (out / "report.md").read_text()
    cells = s["cells"]
    assert list(cells) == ["dense", "mag 2:4 | none", "mag 2:4 | r4", "mag 2:4 | b10 int8", "mag 2:4 | lora b10"]
    base = cells["dense"]["backbone_parameters"]
    assert cells["mag 2:4 | none"]["extra_parameters"] == 0
    assert cells["mag 2:4 | r4"]["extra_parameters"] > 0
    assert cells["mag 2:4 | b10 int8"]["extra_parameters"] <= 0.1 * base
    assert cells["mag 2:4 | b10 int8"]["weight_bytes"] < cells["mag 2:4 | r4"]["weight_bytes"] + 4 * 0.1 * base
    assert cells["mag 2:4 | b10 int8"]["recipe"]["recovery"]["allocation"] == "output"
    lora = cells["mag 2:4 | lora b10"]
    assert lora["recovery_method"] == "lora" and 0 < lora["extra_parameters"] <= 0.1 * base
    assert all(c["episodes"] == 1 for c in cells.values())
    for png in ("success_vs_extra.png", "violations_vs_extra.png"):
        assert (out / png).stat().st_size > 0
    capsys.readouterr()
    cfg.write_text(cfg.read_text().replace("rank: 4", "rank: 2"))  # a changed recipe is built and evaluated again,
    assert cli_main(["experiment", "gluestick", "--config", str(cfg), "--out", str(out), "-q"]) == 0
    printed = capsys.readouterr().out  # the rank-4 model under the same name is not reused
    assert printed.count("finished earlier") == 4 and "mag 2:4 | r4: evaluating" in printed
    again = json.loads((out / "summary.json").read_text())["cells"]["mag 2:4 | r4"]
    assert again["recipe"]["recovery"] == {"rank": 2}
    assert again["extra_parameters"] == cells["mag 2:4 | r4"]["extra_parameters"] // 2
    shutil.rmtree(out / "models")  # another session: cells kept by recipe, no model rebuilt
    cfg.write_text(cfg.read_text().replace("latency_cells: [[mag 2:4, none], [mag 2:4, r4]]", "latency_cells: []"))
    assert cli_main(["experiment", "gluestick", "--config", str(cfg), "--out", str(out), "-q"]) == 0
    assert capsys.readouterr().out.count("finished earlier") == 5
    assert [p.name for p in (out / "models").iterdir()] == ["dense_fingerprint.txt"]


def test_gluestick_latency_cells_are_checked(tmp_path):
    from embodied_prune.experiments.gluestick import load_config

    cfg = tmp_path / "g.yaml"
    cfg.write_text(
        "pruned:\n  - {name: w, method: wanda, pattern: '2:4'}\nrecovery:\n  - {name: none}\n"
        "latency_cells: [[w, r16]]\n"
    )
    with pytest.raises(EmbodiedPruneError, match=r"latency cell \['w', 'r16'\] must be"):
        load_config(cfg)
    head = "pruned:\n  - {name: w, method: wanda, pattern: '2:4'}\nrecovery:\n"
    cfg.write_text(head + "  - {name: r, rank: 4, allocation: output}\n")
    with pytest.raises(EmbodiedPruneError, match="allocation is how a budget is spread"):
        load_config(cfg)
    cfg.write_text(head + "  - {name: b, budget: 0.1}\n")
    assert load_config(cfg)["recovery"][0]["allocation"] == "output"  # named in every budget cell's recipe


def test_gluestick_report_gives_the_won_back_share_with_a_ci():
    from embodied_prune.experiments.gluestick import gluestick_report

    def cell(wins, extra=0):
        n = len(wins)
        return {
            "episode_success": wins,
            "success_rate": sum(wins) / n,
            "ci95": [0, 1],
            "episodes": n,
            "safety_violations": {"table_contact": 0, "joint_limit": 0, "fast_object": 0},
            "extra_parameters": extra,
            "backbone_parameters": 100,
            "weight_bytes": 1e6,
            "latency_ms_median": 1.0,
        }

    dense, pruned, half = [1] * 40 + [0] * 10, [1] * 20 + [0] * 30, [1] * 30 + [0] * 20
    summary = {"cells": {"dense": cell(dense), "p | none": cell(pruned), "p | r4": cell(half, 10)}}
    rows = [[c.strip() for c in r.split("|")[1:-1]] for r in gluestick_report(summary).splitlines()]
    head = rows[0]
    assert all(len(r) == len(head) for r in rows)  # names never break the table's columns
    table = {(r[0], r[1]): dict(zip(head, r, strict=True)) for r in rows[2:]}
    won = "lost success won back (95 % CI)"
    assert table[("p", "r4")][won].startswith("50 % [") and table[("p", "r4")][won] != "50 % [50, 50]"
    assert table[("p", "none")][won] == "" and table[("dense", "–")][won] == ""
    assert table[("p", "r4")]["extra parameters (% of backbone)"] == "10 (10.0 %)"


def test_token_probe_measures_how_far_pruning_moves_the_action(saved_policy, monkeypatch):
    """benchmarks/tokens_probe.py: keeping every token moves no action; keeping few moves some; one row per
    (layer, ranking), ordered by layer; score_layers adds the previous query's ranking below each such layer."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import tokens_probe

    full = tokens_probe.probe(str(saved_policy), 1.0, episodes=1, steps=3, seed=0, score_layers=(2,))
    # 4 layers x the rankings, and the previous query's layer 2 ranking the tokens dropped before layers 0 and 1
    assert len(full["rows"]) == 4 * len(tokens_probe.RANKINGS) + 2 and full["queries"] == 6 * 3
    assert [r["layer"] for r in full["rows"]] == sorted(r["layer"] for r in full["rows"])
    assert all(r["mean"] == 0.0 for r in full["rows"])
    few = tokens_probe.probe(str(saved_policy), 0.02, episodes=1, steps=3, seed=0, score_layers=(2,))
    assert max(r["mean"] for r in few["rows"]) > 0
    later = [r for r in few["rows"] if "previous query" in r["ranking"]]
    assert len(later) == 2 and all(r["mean"] > 0 for r in later)
    with pytest.raises(SystemExit, match="score-layers"):
        tokens_probe.probe(str(saved_policy), 0.3, episodes=1, steps=3, seed=0, score_layers=(4,))
    table = tokens_probe.report(few)
    assert table.count("\n| ") == 1 + len(few["rows"]) + 1  # header, a row per cell, the dense scale row
