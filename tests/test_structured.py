import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import FAMILIES
from embodied_prune.errors import EmbodiedPruneError
from embodied_prune.models import adapter_for, build_tiny, load_model, save_model
from embodied_prune.pruning import calibration_ids, prune_structured
from embodied_prune.pruning.structured import choose_head_layout, head_rows, mlp_keep_count


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def plant_dead_groups(model, dead_q=(), dead_kv=(), dead_mlp=()):
    """Zero the weights through which the listed heads/channels reach the output (exact no-ops)."""
    adapter = adapter_for(model)
    with torch.no_grad():
        for i, layer in enumerate(adapter.get_layers(model)):
            shape = adapter.layer_shape(model, i)
            hd, g = shape.head_dim, shape.group_size
            q_heads = set(dead_q) | {kv * g + j for kv in dead_kv for j in range(g)}
            rows = head_rows(sorted(q_heads), hd)
            adapter.linear(layer, "q_proj").weight[rows] = 0
            adapter.linear(layer, "o_proj").weight[:, rows] = 0
            kv_rows = head_rows(sorted(dead_kv), hd)
            adapter.linear(layer, "k_proj").weight[kv_rows] = 0
            adapter.linear(layer, "v_proj").weight[kv_rows] = 0
            for role in ("gate_proj", "up_proj"):
                adapter.linear(layer, role).weight[list(dead_mlp)] = 0
            adapter.linear(layer, "down_proj").weight[:, list(dead_mlp)] = 0
            for role in ("q_proj", "k_proj", "v_proj"):  # qwen2 biases would keep a dead head alive
                b = adapter.linear(layer, role).bias
                if b is not None:
                    b.zero_()


@pytest.mark.parametrize("family", FAMILIES)
def test_query_heads_within_groups_removed_exactly_where_planted(family, ids):
    model = build_tiny(family, num_attention_heads=8, num_key_value_heads=2, intermediate_size=128, seed=3)
    plant_dead_groups(model, dead_q=(1, 2, 4, 7), dead_mlp=range(10, 74))
    before = model(ids).logits
    result = prune_structured(model, 0.5, importance="l2", attention="query_head", progress=False)
    for plan in result.plans:
        assert plan.q_keep == (0, 3, 5, 6)
        assert plan.kv_keep == (0, 1)
        assert plan.mlp_keep == tuple(i for i in range(128) if not 10 <= i < 74)
    shape = result.shapes_after[0]
    assert (shape.num_heads, shape.num_kv_heads, shape.intermediate_size) == (4, 2, 64)
    torch.testing.assert_close(model(ids).logits, before, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_whole_kv_groups_removed_where_planted(family, ids):
    model = build_tiny(family, num_attention_heads=8, num_key_value_heads=4, intermediate_size=128, seed=4)
    plant_dead_groups(model, dead_kv=(0, 2), dead_mlp=range(0, 128, 2))
    before = model(ids).logits
    result = prune_structured(model, 0.5, importance="l1", attention="kv_group", progress=False)
    assert all(p.kv_keep == (1, 3) and p.q_keep == (2, 3, 6, 7) for p in result.plans)
    assert model.config.num_key_value_heads == 2 and model.config.num_attention_heads == 4
    torch.testing.assert_close(model(ids).logits, before, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("importance", ["l1", "l2", "taylor", "random"])
def test_half_pruned_model_is_smaller_and_plain_transformers_loads_it(family, importance, tmp_path, ids):
    model = build_tiny(family, num_attention_heads=8, num_key_value_heads=2, num_hidden_layers=2)
    dense_params = n_params(model)
    calib = calibration_ids("random", 4, 16, vocab_size=model.config.vocab_size)
    prune_structured(model, 0.5, importance=importance, calibration=calib, progress=False)
    assert n_params(model) < 0.75 * dense_params
    save_model(model, tmp_path / "p")
    side = json.loads((tmp_path / "p" / "embodied_prune.json").read_text())
    assert side["layer_shapes"] is None
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "p")  # no code of ours
    torch.testing.assert_close(plain(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-5)
    assert plain.generate(ids[:1, :4], max_new_tokens=6, do_sample=False).shape == (1, 10)
    assert n_params(plain) == n_params(model)


def test_layer_range_keeps_outer_layers_dense_and_loads_through_side_file(tmp_path, ids):
    model = build_tiny("llama", num_hidden_layers=5, num_attention_heads=4, num_key_value_heads=4)
    result = prune_structured(model, 0.5, layers=(1, 4), progress=False)
    heads = [s.num_heads for s in result.shapes_after]
    assert heads == [4, 2, 2, 2, 4]
    save_model(model, tmp_path / "p")
    side = json.loads((tmp_path / "p" / "embodied_prune.json").read_text())
    assert [s["num_heads"] for s in side["layer_shapes"]] == heads
    with pytest.raises(Exception):  # noqa: B017 - transformers refuses mismatched shapes
        AutoModelForCausalLM.from_pretrained(tmp_path / "p")
    again = load_model(tmp_path / "p")
    torch.testing.assert_close(again(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-5)
    assert again.generate(ids[:1, :4], max_new_tokens=5, do_sample=False).shape == (1, 9)


def test_head_layout_choice():
    # Qwen2.5-1.5B: 12 query heads, 2 KV heads, hidden 1536
    assert choose_head_layout(2, 6, 0.5, 1536) == (1, 6)  # tie 6 = 1×6 = 2×3 → fewer KV heads
    assert choose_head_layout(2, 6, 0.25, 1536) == (2, 4)  # 9 is not reachable while dividing 1536; 8 is
    assert choose_head_layout(2, 6, 0.5, 1536, mode="query_head") == (2, 3)
    assert choose_head_layout(4, 4, 0.5, 2048, mode="kv_group") == (2, 4)
    assert choose_head_layout(8, 1, 0.0, 512) == (8, 1)
    # relative to a reference size: a second cut that lands the total on 50 % of 16 heads
    assert choose_head_layout(3, 4, 0.5, 1024, reference_heads=16) == (2, 4)


def test_mlp_keep_count():
    assert mlp_keep_count(128, 0.5) == 64
    assert mlp_keep_count(100, 0.25, round_to=8) == 72
    assert mlp_keep_count(96, 0.5, reference=128) == 64
    assert mlp_keep_count(10, 0.999) == 1


def test_taylor_needs_calibration_and_bad_inputs_are_clear():
    model = build_tiny("llama")
    with pytest.raises(EmbodiedPruneError, match="calibration"):
        prune_structured(model, 0.5, importance="taylor", progress=False)
    with pytest.raises(EmbodiedPruneError, match=r"outside \[0, 1\)"):
        prune_structured(model, 1.0, progress=False)
    with pytest.raises(EmbodiedPruneError, match="unknown attention mode"):
        prune_structured(model, 0.5, attention="heads", progress=False)
    with pytest.raises(EmbodiedPruneError, match="layer range"):
        prune_structured(model, 0.5, layers=(1, 9), progress=False)


def test_lora_recovery_on_text_lowers_the_pruned_models_loss():
    """LLM-Pruner's recovery: LoRA on every projection, trained on text, merged into the pruned (dense) weights."""
    from embodied_prune import load_model, prune
    from embodied_prune.data.corpus import instruction_corpus
    from embodied_prune.models import load_tokenizer
    from embodied_prune.pruning.calibration import text_ids
    from embodied_prune.training.lora_recovery import TextLoRASettings, lora_recover_text

    tok = load_tokenizer("builtin:tinylm")
    train = text_ids(instruction_corpus(400, seed=1), tok)
    held = text_ids(instruction_corpus(60, seed=2), tok)[: 4 * 64].reshape(4, 64)
    pruned = prune(load_model("builtin:tinylm"), "structured", 0.5, progress=False).model
    shapes = {n: p.shape for n, p in pruned.named_parameters()}

    def loss(model) -> float:
        with torch.inference_mode():
            return float(model(input_ids=held, labels=held).loss)

    before = loss(pruned)
    settings = TextLoRASettings(steps=40, batch_size=8, seq_len=64, learning_rate=3e-3)
    merged, (first, last) = lora_recover_text(pruned, train, settings, progress=False)
    assert {n: p.shape for n, p in merged.named_parameters()} == shapes  # merged: no adapters left
    assert not any("lora" in n for n, _ in merged.named_modules())
    assert last < first
    assert loss(merged) < before - 0.05
