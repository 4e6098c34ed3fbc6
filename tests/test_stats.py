import numpy as np
import pytest

from embodied_prune.evaluation.stats import (
    bootstrap_mean_ci,
    paired_diff_ci,
    recovered_share_ci,
    seeds_and_items_ci,
    wilson_ci,
)


def test_wilson_matches_the_closed_form():
    lo, hi = wilson_ci(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    assert wilson_ci(0, 20)[0] == 0.0 and wilson_ci(20, 20)[1] == 1.0


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    small, large = rng.normal(0.3, 1.0, 50), rng.normal(0.3, 1.0, 2000)
    lo_s, hi_s = bootstrap_mean_ci(small)
    lo_l, hi_l = bootstrap_mean_ci(large)
    assert lo_s < small.mean() < hi_s and lo_l < 0.3 < hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 3


def test_paired_difference_sees_a_shift_that_unpaired_intervals_hide():
    rng = np.random.default_rng(2)
    base = rng.normal(0.0, 2.0, 200)
    better = base + 0.2 + rng.normal(0, 0.05, 200)
    a, b = bootstrap_mean_ci(base), bootstrap_mean_ci(better)
    assert a[1] > b[0]  # unpaired intervals overlap
    mean, lo, hi = paired_diff_ci(base, better)
    assert 0.15 < lo < mean < hi < 0.25
    with pytest.raises(ValueError):
        paired_diff_ci([1, 2], [1])


def test_recovered_share_is_the_won_back_fraction_of_the_loss():
    rng = np.random.default_rng(3)
    dense = (rng.random(300) < 0.6).astype(float)
    pruned = dense * (rng.random(300) < 0.5)  # loses about half of the successes
    model = np.maximum(pruned, dense * (rng.random(300) < 0.5))  # wins back about half of those
    point, lo, hi = recovered_share_ci(dense, pruned, model)
    lost, won = dense.mean() - pruned.mean(), model.mean() - pruned.mean()
    assert point == pytest.approx(won / lost) and lo < point < hi and 0.3 < point < 0.7
    assert recovered_share_ci(dense, pruned, dense)[0] == pytest.approx(1.0)
    assert np.isnan(recovered_share_ci(dense, dense, model)[0])  # nothing lost, nothing to win back
    with pytest.raises(ValueError):
        recovered_share_ci(dense, pruned, model[:10])


def test_seed_spread_widens_the_interval_that_item_resampling_alone_hides():
    rng = np.random.default_rng(4)
    items = rng.normal(0.0, 1.0, 200)  # what every seed shares: how hard each item is
    calm = items + rng.normal(0, 0.05, (4, 200))
    lottery = items + rng.normal(0, 0.05, (4, 200)) + np.array([[-0.6], [0.5], [-0.4], [0.7]])  # per-seed offsets
    for x in (calm, lottery):
        point, lo, hi = seeds_and_items_ci(x)
        assert point == pytest.approx(x.mean()) and lo < point < hi
    _, lo, hi = seeds_and_items_ci(calm)
    calm_width = hi - lo
    _, lo, hi = seeds_and_items_ci(lottery)
    lottery_width = hi - lo
    lo, hi = bootstrap_mean_ci(lottery.mean(0))  # instructions resampled, seeds not
    assert lottery_width > 2 * (hi - lo) and lottery_width > 2 * calm_width


def test_seed_and_item_difference_is_paired_by_item_and_keeps_the_seed_spread():
    rng = np.random.default_rng(5)
    items = rng.normal(0.0, 2.0, 300)
    small = items + rng.normal(0, 0.05, (3, 300))
    large = items + 0.3 + rng.normal(0, 0.05, (5, 300))
    diff, lo, hi = seeds_and_items_ci(small, large)
    assert diff == pytest.approx(large.mean() - small.mean()) and 0.2 < lo < diff < hi < 0.4  # paired: tight
    shaky = large + np.array([[-1.0], [1.2], [-0.8], [0.9], [-0.5]])  # same mean shift, seed lottery on top
    assert seeds_and_items_ci(small, shaky)[1] < 0 < seeds_and_items_ci(small, shaky)[2]
    nan_item = large.copy()
    nan_item[:, 0] = np.nan  # an item no large seed could be scored on is left out of the means, not NaN
    paired = seeds_and_items_ci(small, nan_item)
    assert np.isfinite(paired).all() and paired[0] == pytest.approx((large - small.mean(0)).mean(0)[1:].mean())
    with pytest.raises(ValueError):
        seeds_and_items_ci(small, large[:, :10])
