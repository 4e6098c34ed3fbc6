import copy
import itertools
import json

import pytest
import torch
from torch import nn

from embodied_prune import prune, recover
from embodied_prune.api import _feed
from embodied_prune.cli import main
from embodied_prune.errors import EmbodiedPruneError
from embodied_prune.evaluation.fidelity import layer_output_error
from embodied_prune.models import build_tiny, load_model
from embodied_prune.models.lowrank import FACTOR_DTYPES, LayerFactors
from embodied_prune.pruning.masks import magnitude_scores, select_mask, wanda_scores
from embodied_prune.recovery import (
    GluestickLinear,
    compute_factors,
    gap_factors,
    gluestick_layers,
    read_factors,
)
from embodied_prune.recovery.gluestick import allocate_ranks, output_gains


def pruned_layer(seed=0, d_out=48, d_in=80, pattern=(2, 4)):
    gen = torch.Generator().manual_seed(seed)
    dense = nn.Linear(d_in, d_out, bias=True)
    with torch.no_grad():
        dense.weight.copy_(torch.randn(d_out, d_in, generator=gen))
        dense.bias.copy_(torch.randn(d_out, generator=gen))
    x = torch.randn(512, d_in, generator=gen) * torch.exp(torch.randn(d_in, generator=gen))
    pruned = copy.deepcopy(dense)
    with torch.no_grad():
        pruned.weight.mul_(select_mask(wanda_scores(dense.weight, (x * x).mean(0)), 0.5, pattern, rowwise=True))
    return dense, pruned, x


def kl_to(dense, model, ids) -> float:
    """KL divergence of ``model``'s next-token distributions from ``dense``'s on ``ids``."""
    return torch.nn.functional.kl_div(
        model(ids).logits.log_softmax(-1), dense(ids).logits.log_softmax(-1), log_target=True, reduction="sum"
    )


def corrected_error(dense, pruned, x, rank, method="exact"):
    v, u = gap_factors(dense.weight, pruned.weight, rank, method)
    layer = GluestickLinear(pruned, v, u)
    with torch.no_grad():
        return float((layer(x) - dense(x)).pow(2).sum() / (dense(x) - dense.bias).pow(2).sum())


@pytest.mark.parametrize("seed", range(3))
def test_error_falls_strictly_with_rank_and_vanishes_at_full_rank(seed):
    # Output error of the residual Σ_{i>r} σ_i u_i v_iᵀ is Σ_{i>r} σ_i²‖X v_i‖² (orthogonal u_i), so it
    # must fall with every added rank on any inputs.
    dense, pruned, x = pruned_layer(seed, d_out=[48, 80, 33][seed], d_in=[80, 48, 64][seed])
    full = min(dense.weight.shape)
    ranks = sorted({1, 2, 4, 8, 16, full // 2, full - 1})
    errors = [layer_output_error(dense.weight, pruned.weight, x)] + [
        corrected_error(dense, pruned, x, r) for r in ranks
    ]
    assert all(a > b for a, b in itertools.pairwise(errors)), errors
    v, u = gap_factors(dense.weight, pruned.weight, full)
    layer = GluestickLinear(pruned, v, u)
    torch.testing.assert_close(layer(x), dense(x), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(pruned.weight + (v @ u).T, dense.weight, atol=1e-5, rtol=1e-5)


def test_factor_shapes_extra_parameters_and_rank_clipping():
    dense, pruned, _ = pruned_layer()
    v, u = gap_factors(dense.weight, pruned.weight, 8)
    assert v.shape == (80, 8) and u.shape == (8, 48)
    assert GluestickLinear(pruned, v, u).extra_parameters() == 8 * (80 + 48)
    v, u = gap_factors(dense.weight, pruned.weight, 1000)
    assert v.shape[1] == 48


def test_randomized_svd_is_close_to_exact():
    dense, pruned, x = pruned_layer(1)
    exact = corrected_error(dense, pruned, x, 8, "exact")
    randomized = corrected_error(dense, pruned, x, 8, "randomized")
    assert randomized < 1.15 * exact
    assert randomized < layer_output_error(dense.weight, pruned.weight, x)


def test_model_level_recovery_save_load_roundtrip(tmp_path, ids):
    dense = build_tiny("qwen2", num_hidden_layers=2)
    dense.save_pretrained(tmp_path / "dense")
    prune(tmp_path / "dense", "magnitude", pattern="2:4", out=tmp_path / "pruned", progress=False)
    out = recover(tmp_path / "dense", tmp_path / "pruned", rank=4, out=tmp_path / "rec")
    report = out.details
    assert len(report.layers) == 14  # every decoder linear, not lm_head
    assert all(not f.name.endswith("lm_head") for f in report.layers)
    assert report.extra_parameters == sum(4 * (f.d_in + f.d_out) for f in report.layers)
    again = load_model(tmp_path / "rec")
    assert len(gluestick_layers(again)) == 14
    torch.testing.assert_close(again(ids).logits, out.model(ids).logits, rtol=0, atol=0)
    pruned = load_model(tmp_path / "pruned")
    with torch.no_grad():
        assert kl_to(dense, again, ids) < kl_to(dense, pruned, ids)
    assert len(read_factors(tmp_path / "rec")) == 14
    with pytest.raises(EmbodiedPruneError, match="carries GLUESTICK corrections"):
        prune(again, "magnitude", 0.5, progress=False)


def test_include_and_exclude_patterns():
    dense = build_tiny("llama")
    pruned = copy.deepcopy(dense)
    with torch.no_grad():
        for _name, m in pruned.named_modules():
            if isinstance(m, nn.Linear):
                m.weight.mul_(select_mask(magnitude_scores(m.weight), 0.5, None, False))
    only_mlp = compute_factors(dense, pruned, 2, include=["down_proj", "*.up_proj"])
    assert {f.name.rsplit(".", 1)[1] for f in only_mlp.layers} == {"down_proj", "up_proj"}
    with_head = compute_factors(dense, pruned, 2, exclude=[])
    assert any(f.name == "lm_head" for f in with_head.layers)


def test_mismatched_models_are_refused():
    dense = build_tiny("llama")
    structured = copy.deepcopy(dense)
    prune(structured, "structured", 0.5, progress=False)
    with pytest.raises(EmbodiedPruneError, match=r"do not match at model\.layers\.0"):
        compute_factors(dense, structured, 4)
    other = build_tiny("llama", num_hidden_layers=3)
    with pytest.raises(EmbodiedPruneError, match="do not match layer for layer"):
        compute_factors(dense, other, 4)
    with pytest.raises(EmbodiedPruneError, match="no linear layer"):
        compute_factors(dense, copy.deepcopy(dense), 4)


# --- per-layer rank budgets and factor storage -----------------------------------------------------


def test_allocation_spends_the_budget_up_to_one_rank_step():
    gen = torch.Generator().manual_seed(0)
    spectra = [
        torch.sort(torch.rand(n, generator=gen) * s, descending=True).values for n, s in ((32, 5), (48, 1), (16, 9))
    ]
    costs = [80, 112, 40]
    for budget in (0, 39, 40, 500, 1234, 5000):
        ranks = allocate_ranks(spectra, costs, budget)
        spent = sum(r * c for r, c in zip(ranks, costs, strict=True))
        assert spent <= budget
        growable = [c for r, c, s in zip(ranks, costs, spectra, strict=True) if r < len(s)]
        assert not growable or budget - spent < min(growable)  # nothing affordable is left unspent
    full = sum(len(s) * c for s, c in zip(spectra, costs, strict=True))
    assert allocate_ranks(spectra, costs, full + 7) == [32, 48, 16]


def test_allocation_gives_rank_where_the_spectrum_needs_it():
    flat = torch.full((20,), 0.1)
    steep = torch.tensor([10.0, 5.0, 3.0] + [0.01] * 17)
    ranks = allocate_ranks([flat, steep], [50, 50], 5 * 50)
    assert ranks == [2, 3]  # the steep gap's three big directions first, then the flat one's


def test_budget_recovery_beats_global_rank_at_equal_extra_parameters():
    dense = build_tiny("llama", num_hidden_layers=2)
    pruned = copy.deepcopy(dense)
    with torch.no_grad():
        for name, m in pruned.named_modules():
            if isinstance(m, nn.Linear) and "layers" in name:
                m.weight.mul_(select_mask(magnitude_scores(m.weight), 0.5, (2, 4), rowwise=True))
    glob = compute_factors(dense, pruned, rank=4)
    per_layer = compute_factors(dense, pruned, budget=glob.extra_parameters / glob.base_parameters)
    assert per_layer.extra_parameters <= glob.extra_parameters
    assert per_layer.energy >= glob.energy - 1e-9
    assert len({f.rank for f in per_layer.layers}) > 1  # not one global rank in disguise
    full = compute_factors(dense, pruned, budget=10.0)  # more than every full rank costs
    assert full.energy == pytest.approx(1.0)
    with pytest.raises(EmbodiedPruneError, match="either a rank"):
        compute_factors(dense, pruned, rank=4, budget=0.1)
    with pytest.raises(EmbodiedPruneError, match="svd exact"):
        compute_factors(dense, pruned, budget=0.1, method="randomized")
    with pytest.raises(EmbodiedPruneError, match="raise the budget"):
        compute_factors(dense, pruned, budget=1e-6)


@pytest.mark.parametrize("seed, rank", [(1, 16), (2, 4), (3, 48)])
def test_int8_factors_stay_within_the_stated_error(seed, rank):
    dense, pruned, x = pruned_layer(seed=seed)
    v, u = gap_factors(dense.weight, pruned.weight, rank)
    f = LayerFactors("l", 80, 48, v, u)
    q = f.cast("int8")
    assert q.v.dtype == torch.int8 and q.u.dtype == torch.int8
    dv, du = q.dequantized()
    assert (dv - v).abs().max() <= q.v_scale / 2 + 1e-7 and (du - u).abs().max() <= q.u_scale / 2 + 1e-7
    exact, quant = GluestickLinear(pruned, v, u), GluestickLinear(pruned, q.v, q.u, q.v_scale, q.u_scale)
    with torch.no_grad():
        moved = (quant(x) - exact(x)).norm()
        of_output, of_correction = (moved / dense(x).norm()).item(), (moved / ((x @ v) @ u).norm()).item()
    # the bound stated in docs: < 2 % of the dense layer's output norm, < 10 % of the correction's
    assert of_output < 0.02 and of_correction < 0.1
    bf = f.cast("bfloat16")
    assert bf.v.dtype == torch.bfloat16 and torch.allclose(bf.dequantized()[0], v, rtol=1e-2, atol=1e-3)
    with pytest.raises(EmbodiedPruneError, match="unknown factor dtype"):
        f.cast("int4")


@pytest.mark.parametrize("dtype", ["int8", "bfloat16"])
def test_budget_and_quantised_factors_round_trip(tmp_path, ids, dtype):
    dense = build_tiny("llama", num_hidden_layers=2)
    dense.save_pretrained(tmp_path / "dense")
    prune(tmp_path / "dense", "magnitude", pattern="2:4", out=tmp_path / "pruned", progress=False)
    out = recover(tmp_path / "dense", tmp_path / "pruned", budget=0.1, dtype=dtype, out=tmp_path / "rec")
    assert out.details.extra_parameters <= 0.1 * out.details.base_parameters
    again = load_model(tmp_path / "rec")
    layers = gluestick_layers(again)
    assert {n: m.rank for n, m in layers.items()} == {f.name: f.rank for f in out.details.layers}
    assert next(iter(layers.values())).V.dtype == FACTOR_DTYPES[dtype]
    torch.testing.assert_close(again(ids).logits, out.model(ids).logits, rtol=0, atol=0)
    pruned = load_model(tmp_path / "pruned")
    with torch.no_grad():
        assert kl_to(dense, again, ids) < kl_to(dense, pruned, ids)


def test_output_gains_weigh_each_rank_by_the_inputs_along_it_and_ignore_scale():
    s = torch.tensor([3.0, 2.0, 1.0])
    gains = output_gains(s, torch.tensor([0.0, 4.0, 9.0]), output_energy=10.0)
    assert gains.tolist() == pytest.approx([0.0, 1.6, 0.9])  # no input along the top direction: it buys nothing
    # the layer's weights ×c (gap ×c, outputs ×c): the share of the output each rank restores is the same
    assert output_gains(5 * s, torch.tensor([0.0, 4.0, 9.0]), 25 * 10.0).tolist() == pytest.approx(gains.tolist())


def test_output_allocation_is_blind_to_a_rescaling_that_leaves_the_model_unchanged(ids):
    # v_proj ×0.1 and o_proj ×10 compute the same function (attention mixes values linearly); singular-value
    # energy then starves v_proj, the output shares see the same model both ways
    torch.manual_seed(0)
    dense = build_tiny("llama", num_hidden_layers=2)
    rescaled = copy.deepcopy(dense)
    with torch.no_grad():
        for layer in rescaled.model.layers:
            layer.self_attn.v_proj.weight.mul_(0.1)
            layer.self_attn.o_proj.weight.mul_(10.0)
        torch.testing.assert_close(rescaled(ids).logits, dense(ids).logits, rtol=1e-4, atol=1e-4)
    ranks = {}
    for name, model in (("plain", dense), ("rescaled", rescaled)):
        pruned = copy.deepcopy(model)
        prune(pruned, "magnitude", pattern="2:4", progress=False)  # per-row choice: the same zeros either way
        for allocation, feed in (("energy", None), ("output", _feed(ids))):
            rep = compute_factors(model, pruned, budget=0.1, feed=feed)
            assert rep.allocation == allocation and rep.extra_parameters <= 0.1 * rep.base_parameters
            ranks[name, allocation] = {f.name: f.rank for f in rep.layers}
    assert ranks["plain", "output"] == ranks["rescaled", "output"]
    assert ranks["plain", "energy"] != ranks["rescaled", "energy"]
    v_energy = sum(r for n, r in ranks["rescaled", "energy"].items() if "v_proj" in n)
    assert v_energy < sum(r for n, r in ranks["rescaled", "output"].items() if "v_proj" in n)
    with pytest.raises(EmbodiedPruneError, match="drop --calibration or give --budget"):
        compute_factors(dense, pruned, rank=4, feed=_feed(ids))


def test_recover_with_calibration_records_the_allocation(tmp_path, capsys):
    dense = build_tiny("llama", num_hidden_layers=2)
    dense.save_pretrained(tmp_path / "dense")
    prune(tmp_path / "dense", "magnitude", pattern="2:4", out=tmp_path / "pruned", progress=False)
    args = ["recover", "--dense", str(tmp_path / "dense"), "--pruned", str(tmp_path / "pruned"), "--budget", "0.1"]
    assert main([*args, "--calibration", "random", "--calibration-samples", "4", "--out", str(tmp_path / "o")]) == 0
    assert "budget 0.1 by output" in capsys.readouterr().out
    record = json.loads((tmp_path / "o" / "embodied_prune.json").read_text())["history"][-1]
    assert record["allocation"] == "output" and record["calibration"] == "random"
    assert main([*args, "--out", str(tmp_path / "e")]) == 0
    assert json.loads((tmp_path / "e" / "embodied_prune.json").read_text())["history"][-1]["allocation"] == "energy"
    rank_args = ["recover", "--dense", str(tmp_path / "dense"), "--pruned", str(tmp_path / "pruned"), "--rank", "4"]
    assert main([*rank_args, "--calibration", "random", "--out", str(tmp_path / "r")]) != 0
    assert "give --budget" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
