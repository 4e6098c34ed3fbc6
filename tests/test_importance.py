import pytest
import torch

from embodied_prune.errors import EmbodiedPruneError
from embodied_prune.pruning.importance import l1_scores, l2_scores, make_importance, taylor_scores

W = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
G = torch.tensor([[0.5, 1.0], [-1.0, 2.0]])
GS = torch.tensor([[1.0, 2.0], [0.5, 4.0]])


def test_magnitude_scores_by_row_and_column():
    assert l1_scores(W, 0).tolist() == [3.0, 3.5]
    assert l1_scores(W, 1).tolist() == [4.0, 2.5]
    assert l2_scores(W, 0).tolist() == [5.0, 9.25]


def test_taylor_variants_match_llm_pruner_definitions():
    # w*g = [[0.5, -2], [-3, 1]]
    assert taylor_scores(W, 0, G, variant="vectorize").tolist() == [1.5, 2.0]  # |Σ w g|
    assert taylor_scores(W, 0, G, variant="param_first").tolist() == [2.5, 4.0]  # Σ |w g|
    # w² G = [[1, 8], [4.5, 1]]
    assert taylor_scores(W, 0, G, GS, variant="param_second").tolist() == [9.0, 5.5]
    # |w g − ½ w² G| = [[0, 6], [5.25, 0.5]]
    assert taylor_scores(W, 0, G, GS, variant="param_mix").tolist() == [6.0, 5.75]
    assert taylor_scores(W, 1, G, variant="param_first").tolist() == [3.5, 3.0]


def test_criteria_registry():
    assert make_importance("taylor").needs_gradients
    assert not make_importance("l1").needs_gradients
    with pytest.raises(EmbodiedPruneError, match="unknown importance criterion 'fisher'"):
        make_importance("fisher")
    with pytest.raises(EmbodiedPruneError, match="unknown taylor variant"):
        make_importance("taylor", taylor="third")
    with pytest.raises(EmbodiedPruneError, match="needs gradients"):
        make_importance("taylor")(W, 0)
