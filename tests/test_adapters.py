import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from conftest import FAMILIES
from embodied_prune.errors import EmbodiedPruneError
from embodied_prune.models import adapter_for, build_tiny, load_model, save_model
from embodied_prune.models.adapters import ROLES


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_finds_every_projection(family):
    model = build_tiny(family, num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=2)
    adapter = adapter_for(model)
    layers = adapter.get_layers(model)
    assert len(layers) == 3
    modules = dict(model.named_modules())
    for name in adapter.linear_names(model):
        assert isinstance(modules[name], torch.nn.Linear)
    assert len(adapter.linear_names(model)) == 3 * len(ROLES)
    shape = adapter.layer_shape(model, 0)
    assert (shape.num_heads, shape.num_kv_heads, shape.head_dim, shape.intermediate_size) == (8, 2, 8, 128)
    assert shape.group_size == 4


def test_unsupported_architecture_is_a_clear_error():
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(EmbodiedPruneError, match="unsupported architecture 'gpt2'"):
        adapter_for(gpt2)


@pytest.mark.parametrize("family", FAMILIES)
def test_builtin_tiny_models_load_and_generate(family, ids):
    model = load_model(f"builtin:{family}-tiny")
    out = model.generate(ids[:1, :5], max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 9)


def test_save_model_roundtrip_is_exact(tmp_path, ids):
    model = build_tiny("qwen2")
    save_model(model, tmp_path / "m")
    again = load_model(tmp_path / "m")
    torch.testing.assert_close(again(ids).logits, model(ids).logits, rtol=0, atol=0)
