"""GGUF export and the llama.cpp backend, mostly on tiny random Llamas that carry SmolLM2's real tokenizer (llama.cpp's
converter recognises a tokenizer by its pre-tokenizer), and on the byte-vocabulary built-ins."""

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from embodied_prune.api import prune
from embodied_prune.deploy.export import export_gguf, inspect_gguf
from embodied_prune.deploy.runtime import LlamaCppModel
from embodied_prune.envs.driving.instructions import generate_split, write_instructions
from embodied_prune.errors import EmbodiedPruneError
from embodied_prune.models import load_model, load_tokenizer
from embodied_prune.models.checkpoint import save_model
from embodied_prune.models.lowrank import GluestickLinear, merge_factors

pytest.importorskip("llama_cpp", reason="the deploy extra (make setup installs it)")

SMOLLM2 = "builtin:smollm2-135m-instruct"
PROMPT = "<|im_start|>user\nSet the target speed.<|im_end|>\n<|im_start|>assistant\n"


def _tiny(tmp_path, name: str, family: str = "llama"):
    """A 2-layer random model with large weights (peaked logits, so greedy decoding is not decided by rounding)."""
    tok = load_tokenizer(SMOLLM2)
    kw = dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        initializer_range=0.2,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**kw)) if family == "llama" else Qwen2ForCausalLM(Qwen2Config(**kw))
    return save_model(model, tmp_path / name, tok), tok


def _greedy_torch(folder, tok, n: int = 12) -> list[int]:
    model = load_model(folder)
    ids = tok(PROMPT, return_tensors="pt", add_special_tokens=False)["input_ids"]
    out = model.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, ids.shape[1] :].tolist()


def _greedy_llama_cpp(path, n: int = 12) -> list[int]:
    m = LlamaCppModel(path, threads=1)
    try:
        tokens = m.tokenize(PROMPT)
        gen = m.llm.generate(tokens, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0)
        return [next(gen) for _ in range(n)]
    finally:
        m.close()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return _tiny(tmp_path_factory.mktemp("tiny"), "llama")


def test_f16_export_round_trip_greedy_equals_transformers(tiny, tmp_path):
    folder, tok = tiny
    report = export_gguf(folder, tmp_path / "t.gguf", "f16")
    assert report.architecture == "llama" and report.tensor_types.get("F16", 0) > 0
    assert _greedy_llama_cpp(tmp_path / "t.gguf") == _greedy_torch(folder, tok)


def test_per_layer_shapes_run_as_deci_and_match(tiny, tmp_path):
    folder, tok = tiny
    pruned = tmp_path / "p"
    prune(folder, "structured", 0.5, layers=(1, 2), out=pruned, progress=False)
    report = export_gguf(pruned, tmp_path / "p.gguf", "f32")
    assert report.architecture == "deci"
    assert _greedy_llama_cpp(tmp_path / "p.gguf") == _greedy_torch(pruned, tok)


def test_per_layer_qwen2_is_refused_in_one_sentence(tmp_path):
    folder, _ = _tiny(tmp_path, "qwen", "qwen2")
    prune(folder, "structured", 0.5, layers=(1, 2), out=tmp_path / "qp", progress=False)
    with pytest.raises(EmbodiedPruneError, match="Llama-family"):
        export_gguf(tmp_path / "qp", tmp_path / "q.gguf")
    assert not (tmp_path / "q.gguf").exists()


def test_k_quant_fallbacks_are_reported_and_round_to_keeps_whole_blocks(tiny, tmp_path):
    folder, _ = tiny
    r = export_gguf(folder, tmp_path / "k.gguf", "q4_k_m")
    rows = {f["row"] for f in r.fallbacks}
    assert rows and all(row % 256 for row in rows)  # every fallback is a row of 64 values, not a k block
    assert any("fell back" in n for n in r.notes)
    pruned = prune(folder, "structured", 0.3, round_to=128, progress=False).model
    assert {layer.mlp.down_proj.in_features for layer in pruned.model.layers} == {128}
    with pytest.raises(EmbodiedPruneError, match="round_to"):
        prune(folder, "magnitude", 0.5, round_to=64, progress=False)


def test_gluestick_factors_merge_into_the_same_function():
    torch.manual_seed(0)
    base = torch.nn.Linear(8, 6, bias=False)
    net = torch.nn.Sequential(GluestickLinear(base, torch.randn(8, 2), torch.randn(2, 6)))
    x = torch.randn(3, 8)
    before = net(x)
    merge_factors(net)
    assert isinstance(net[0], torch.nn.Linear)
    torch.testing.assert_close(net(x), before, atol=1e-5, rtol=1e-5)


def test_bad_exports_are_refused_and_leave_nothing(tiny, tmp_path):
    folder, _ = tiny
    for out, quant, match in [
        (tmp_path / "x.bin", "f16", "must end in .gguf"),
        (tmp_path / "x.gguf", "q3_weird", "unknown GGUF type"),
    ]:
        with pytest.raises(EmbodiedPruneError, match=match):
            export_gguf(folder, out, quant)
    (tmp_path / "have.gguf").write_text("x")
    with pytest.raises(EmbodiedPruneError, match="--overwrite"):
        export_gguf(folder, tmp_path / "have.gguf")
    with pytest.raises(EmbodiedPruneError, match="families"):
        export_gguf("builtin:vla-metaworld", tmp_path / "v.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["have.gguf"]


def test_corrupt_gguf_is_refused_clearly(tiny, tmp_path, capsys):
    from test_cli import cli

    folder, _ = tiny
    export_gguf(folder, tmp_path / "good.gguf", "q8_0")
    data = (tmp_path / "good.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all" * 10)
    for bad in ("cut.gguf", "junk.gguf"):
        with pytest.raises(EmbodiedPruneError, match="re-export"):
            LlamaCppModel(tmp_path / bad)
    code, _, err = cli(capsys, f"eval driving --backend llama.cpp --model {tmp_path / 'junk.gguf'} --limit 1 -q")
    assert code == 2 and err.count("\n") == 1 and "re-export" in err
    assert inspect_gguf(tmp_path / "good.gguf")[1] == {"F32": 5, "Q8_0": 15}


def test_llama_cpp_backend_scores_a_two_instruction_file(tiny, tmp_path, capsys):
    from test_cli import cli

    folder, _ = tiny
    code, text, err = cli(capsys, f"export --model {folder} --quant f32 --out {tmp_path / 'c.gguf'}")
    assert code == 0, err
    assert "llama.cpp architecture llama" in text
    write_instructions(generate_split("val", 2), tmp_path / "two.jsonl")
    runs = {}
    for backend, model in (("llama.cpp", tmp_path / "c.gguf"), ("torch", folder)):
        out = tmp_path / f"{backend}.json"
        line = f"eval driving --backend {backend} --model {model} --instructions {tmp_path / 'two.jsonl'}"
        code, _, err = cli(capsys, f"{line} --json {out} -q")
        assert code == 0, err
        runs[backend] = json.loads(out.read_text())
    assert runs["llama.cpp"]["instructions"] == 2
    # the same answers from both runtimes, so the same closed-loop scores
    answers = {b: [r["completion"] for r in d["per_instruction"]] for b, d in runs.items()}
    assert answers["llama.cpp"] == answers["torch"]
    assert runs["llama.cpp"]["reductions"] == runs["torch"]["reductions"]


def test_a_tokenizer_llama_cpp_does_not_know_is_refused_in_one_sentence(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    # A BPE with merges learnt here: its pre-tokenizer's hash is none llama.cpp knows.
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(["keep right at thirty metres per second, then overtake"] * 50, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="Ġ")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    folder = save_model(LlamaForCausalLM(config), tmp_path / "m", tok)
    with pytest.raises(EmbodiedPruneError, match="does not know the tokenizer"):
        export_gguf(folder, tmp_path / "t.gguf")
    # transformers gives the from-scratch controllers' Qwen2 tokenizer one token past their embedding.
    with pytest.raises(EmbodiedPruneError, match="past the model's 512 embedding rows"):
        export_gguf("builtin:driving-s-sft", tmp_path / "t.gguf")
    assert not (tmp_path / "t.gguf").exists()


@pytest.mark.parametrize("name", ["builtin:llama-tiny", "builtin:tinylm"])
def test_byte_vocabularies_export_with_the_same_token_ids_and_greedy_tokens(name, tmp_path):
    report = export_gguf(name, tmp_path / "b.gguf", "f32")
    text = "Keep 30 m/s,  stay right<eos> — ünï\n\tcode 🚗?"
    tok, model = load_tokenizer(name), load_model(name)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    m = LlamaCppModel(report.path, threads=1)
    try:
        assert m.tokenize(text) == ids
        assert m.llm.detokenize(ids, special=True).decode() == tok.decode(ids)
        gen = m.llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0)
        got = [next(gen) for _ in range(12)]
    finally:
        m.close()
    out = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert got == out[0, len(ids) :].tolist()


def test_bench_llama_cpp_backend_rows(tiny, tmp_path, capsys):
    from test_cli import cli

    folder, _ = tiny
    export_gguf(folder, tmp_path / "a.gguf", "f16")
    export_gguf(folder, tmp_path / "b.gguf", "q8_0")
    out = tmp_path / "bench.json"
    line = f"bench --backend llama.cpp --model {tmp_path / 'a.gguf'} --model {tmp_path / 'b.gguf'}"
    code, text, err = cli(capsys, f"{line} --prompt-len 8 --new-tokens 8 --repeats 2 --threads 1 --json {out} -q")
    assert code == 0, err
    rows = json.loads(out.read_text())
    assert [r["model"] for r in rows] == ["a.gguf", "b.gguf"] and "token ms p99" in text
    for r in rows:
        assert r["decode_tokens_per_s"] > 0 and r["token_ms_p50"] <= r["token_ms_p99"] and r["peak_memory_bytes"] > 0
    assert rows[0]["file_bytes"] > rows[1]["file_bytes"] and rows[0]["params"] == rows[1]["params"]
