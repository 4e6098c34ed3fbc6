import math

import pytest
import torch

from embodied_prune.errors import EmbodiedPruneError
from embodied_prune.evaluation.fidelity import layer_output_error
from embodied_prune.pruning.masks import (
    check_sparsity,
    magnitude_scores,
    nm_mask,
    parse_pattern,
    prune_count,
    rowwise_mask,
    select_mask,
    sparsegpt_prune,
    topk_mask,
    wanda_scores,
)


def llm_like_inputs(gen, n=2048, d=256, rank=64):
    """Inputs shaped like real LLM activations: strongly correlated (a low-rank core plus noise) and
    with very unequal channel scales (log-normal, a few channels tens of times larger than others)."""
    scales = torch.exp(torch.randn(d, generator=gen))
    core = torch.randn(n, rank, generator=gen) @ torch.randn(rank, d, generator=gen) / rank**0.5
    return (core + 0.3 * torch.randn(n, d, generator=gen)) * scales


@pytest.mark.parametrize("sparsity", [0.1, 0.3, 0.5, 0.37, 0.7])
@pytest.mark.parametrize("shape", [(7, 13), (64, 96), (33, 128)])
def test_masks_meet_the_sparsity_exactly_per_layer(sparsity, shape):
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(shape, generator=gen)
    x = torch.randn(64, shape[1], generator=gen)
    want = prune_count(w.numel(), sparsity)
    assert int((~topk_mask(magnitude_scores(w), sparsity)).sum()) == want
    assert int((~rowwise_mask(wanda_scores(w, (x * x).mean(0)), sparsity)).sum()) == want
    pruned = sparsegpt_prune(w, x.T @ x, sparsity, block_size=8)
    assert int((pruned == 0).sum()) == want


def test_rowwise_mask_spreads_the_remainder_and_keeps_row_order():
    scores = torch.tensor([[1.0, 2, 3, 4], [10, 20, 30, 40], [0.5, 9, 8, 7]])
    mask = rowwise_mask(scores, 0.5)  # 6 of 12: two per row
    assert mask.tolist() == [[False, False, True, True], [False, False, True, True], [False, True, True, False]]
    mask = rowwise_mask(scores, 7 / 12)  # 7: two per row, one more where the next candidate is lowest
    assert (~mask).sum() == 7
    assert (~mask).sum(1).tolist() == [3, 2, 2]


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8), (3, 4)])
def test_nm_pattern_holds_in_every_group(n, m):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(16, 64, generator=gen)
    x = torch.randn(128, 64, generator=gen)
    for pruned in (
        w * nm_mask(magnitude_scores(w), n, m),
        w * select_mask(wanda_scores(w, (x * x).mean(0)), 0.0, (n, m), rowwise=True),
        sparsegpt_prune(w, x.T @ x, pattern=(n, m), block_size=16),
    ):
        nonzero = (pruned != 0).reshape(16, 64 // m, m).sum(-1)
        assert (nonzero <= n).all() and (nonzero == n).all()


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("pattern", [None, (2, 4)])
def test_reconstruction_error_ranks_sparsegpt_below_wanda_below_magnitude(seed, pattern):
    gen = torch.Generator().manual_seed(seed)
    d_out, d_in = [(96, 256), (128, 192), (64, 320), (200, 128)][seed]
    w = torch.randn(d_out, d_in, generator=gen)
    x = llm_like_inputs(gen, d=d_in, rank=d_in // 4)
    mag = w * select_mask(magnitude_scores(w), 0.5, pattern, rowwise=False)
    wanda = w * select_mask(wanda_scores(w, (x * x).mean(0)), 0.5, pattern, rowwise=True)
    sgpt = sparsegpt_prune(w, x.T @ x / x.shape[0], 0.5, pattern)
    errors = [layer_output_error(w, p, x) for p in (sgpt, wanda, mag)]
    assert errors[0] < errors[1] < errors[2], errors


def test_sparsegpt_compensates_through_correlated_inputs():
    x = torch.randn(256, 1)
    w = torch.tensor([[1.0, 1.0]])
    pruned = sparsegpt_prune(w, torch.cat([x, x], 1).T @ torch.cat([x, x], 1), 0.5, damp=1e-6)
    assert (pruned == 0).sum() == 1
    assert pruned.sum().item() == pytest.approx(2.0, abs=1e-3)


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, math.nan, "half"])
def test_bad_sparsity_is_a_clear_error(bad):
    with pytest.raises(EmbodiedPruneError, match=r"outside \[0, 1\)"):
        check_sparsity(bad)


@pytest.mark.parametrize("bad", ["4:4", "5:4", "0:4", "2-4", "a:b"])
def test_bad_pattern_is_a_clear_error(bad):
    with pytest.raises(EmbodiedPruneError, match=r"N:M|pattern"):
        parse_pattern(bad)
    assert parse_pattern("2:4") == (2, 4)


def test_pattern_must_divide_the_inputs():
    with pytest.raises(EmbodiedPruneError, match="M dividing"):
        nm_mask(torch.randn(4, 10), 2, 4)
