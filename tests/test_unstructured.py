from pathlib import Path

import pytest
import torch

from embodied_prune.errors import EmbodiedPruneError
from embodied_prune.models import adapter_for, build_tiny
from embodied_prune.pruning import LayerwiseRunner, calibration_ids, prune_unstructured
from embodied_prune.pruning.masks import prune_count


@pytest.fixture
def calib():
    return calibration_ids("random", 8, 32, vocab_size=384, seed=1)


def test_layerwise_runner_feeds_each_layer_its_true_inputs(calib):
    model = build_tiny("qwen2", num_hidden_layers=3)
    with torch.no_grad():
        hidden = model(input_ids=calib, output_hidden_states=True).hidden_states
    seen = {}

    def visit(index, layer, forward):
        captured = []
        handle = layer.register_forward_pre_hook(
            lambda _m, args, kw: captured.append(args[0] if args else kw["hidden_states"]), with_kwargs=True
        )
        forward()
        handle.remove()
        seen[index] = torch.cat(captured)

    LayerwiseRunner(model, adapter_for(model), calib, batch_size=3).run(visit, progress=False)
    for i in range(3):
        torch.testing.assert_close(seen[i], hidden[i], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_every_decoder_linear_reaches_the_sparsity_and_nothing_else_changes(method, family, calib, ids):
    model = build_tiny(family, num_hidden_layers=2)
    untouched = {n: p.clone() for n, p in model.named_parameters() if "layers" not in n or "norm" in n}
    result = prune_unstructured(model, method, 0.37, calibration=calib, progress=False)
    modules = dict(model.named_modules())
    assert len(result.layer_sparsity) == 14
    for name in result.layer_sparsity:
        w = modules[name].weight
        assert int((w == 0).sum()) == prune_count(w.numel(), 0.37)
    for n, p in model.named_parameters():
        if n in untouched:
            assert torch.equal(p, untouched[n]), n
    assert torch.isfinite(model(ids).logits).all()


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_two_four_pattern_on_a_model(method, calib):
    model = build_tiny("mistral")
    prune_unstructured(model, method, 0.0, pattern=(2, 4), calibration=calib, layers=(1, 2), progress=False)
    layers = adapter_for(model).get_layers(model)
    q0 = layers[0].self_attn.q_proj.weight
    assert int((q0 == 0).sum()) == 0  # outside the layer range
    for w in (layers[1].self_attn.q_proj.weight, layers[1].mlp.down_proj.weight):
        groups = (w != 0).reshape(w.shape[0], -1, 4).sum(-1)
        assert (groups == 2).all()


def test_calibrated_methods_need_data():
    with pytest.raises(EmbodiedPruneError, match="needs calibration"):
        prune_unstructured(build_tiny("llama"), "wanda", 0.5, progress=False)
    with pytest.raises(EmbodiedPruneError, match="unknown unstructured pruning method"):
        prune_unstructured(build_tiny("llama"), "obc", 0.5, progress=False)


def test_calibration_from_text_and_jsonl(tmp_path):
    from embodied_prune.models.tokenizer import byte_tokenizer

    tok = byte_tokenizer()
    (tmp_path / "c.txt").write_text("drive in the left lane. " * 40)
    ids = calibration_ids(tmp_path / "c.txt", 4, 16, tokenizer=tok)
    assert ids.shape == (4, 16) and ids.max() < len(tok)
    (tmp_path / "c.jsonl").write_text('{"text": "stay in lane"}\n{"text": "overtake the truck now please"}\n')
    assert calibration_ids(tmp_path / "c.jsonl", 2, 8, tokenizer=tok).shape == (2, 8)
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"txt": "no"}\n')
    with pytest.raises(EmbodiedPruneError, match="line 2"):
        calibration_ids(tmp_path / "bad.jsonl", 2, 8, tokenizer=tok)
    with pytest.raises(EmbodiedPruneError, match="fewer than"):
        calibration_ids(tmp_path / "c.jsonl", 2, 500, tokenizer=tok)
    with pytest.raises(EmbodiedPruneError, match="needs a tokenizer"):
        calibration_ids(tmp_path / "c.txt", 2, 8)


def test_a_bf16_checkpoint_with_tied_embeddings_is_saved_as_it_was_stored(tmp_path):
    import embodied_prune as ep
    from embodied_prune.models.checkpoint import resolve_model_path, stored_dtype

    src = "builtin:driving-s-grpo"  # bfloat16, lm_head tied to the input embeddings
    out = ep.prune(src, "magnitude", pattern="2:4", out=tmp_path / "m24", progress=False).path
    assert stored_dtype(out) == stored_dtype(src) == torch.bfloat16
    size = (Path(resolve_model_path(src)) / "model.safetensors").stat().st_size
    assert (out / "model.safetensors").stat().st_size == pytest.approx(size, rel=0.01)  # lm_head not written twice
    model = ep.load_model(out)
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


# --- 2:4 weights for PyTorch's semi-structured sparse kernels -------------------------------------------


def test_two_four_detection_and_what_a_2_4_pruned_model_offers_the_sparse_kernels(calib):
    from embodied_prune.pruning.semi_structured import is_two_four, two_four_layers

    w = torch.tensor([[1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 3.0]])
    assert is_two_four(w)
    assert not is_two_four(torch.tensor([[1.0, 1.0, 2.0, 0.0, 0.0, 0.0, 0.0, 3.0]]))  # three in one group
    assert not is_two_four(torch.zeros(2, 6))  # inputs not a multiple of four
    model = build_tiny("llama")
    assert two_four_layers(model) == {}
    prune_unstructured(model, "wanda", 0.0, pattern=(2, 4), calibration=calib, layers=(1, 2), progress=False)
    found = two_four_layers(model)
    layer1 = [n for n, m in model.named_modules() if ".layers.1." in n and isinstance(m, torch.nn.Linear)]
    assert found and set(found) == set(layer1)  # exactly the pruned layer's linears


def test_sparse_kernels_are_refused_with_a_reason_where_they_cannot_run(calib):
    from embodied_prune.pruning.semi_structured import (
        semi_structured_unsupported,
        shape_dtype_problem,
        to_semi_structured,
    )

    assert "CUDA GPU" in semi_structured_unsupported("cpu")
    model = build_tiny("llama")
    prune_unstructured(model, "magnitude", 0.0, pattern=(2, 4), calibration=calib, progress=False)
    with pytest.raises(EmbodiedPruneError, match="need a CUDA GPU"):
        to_semi_structured(model)
    assert "dtype" in shape_dtype_problem(torch.zeros(64, 64, dtype=torch.float64))
    assert "multiples of" in shape_dtype_problem(torch.zeros(40, 64, dtype=torch.float16))
    assert shape_dtype_problem(torch.zeros(64, 128, dtype=torch.float16)) is None
