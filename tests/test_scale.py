"""Devices, dtypes and memory-bounded pruning: what lets every verb run at real sizes and on a GPU.

No test needs a GPU: the CUDA request is checked for its one-sentence refusal here, the per-layer movement is the
same code path as the float32 upcast of a bf16 model (which runs here), and the 7 B shapes are checked on the meta
device."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from embodied_prune.cli import main
from embodied_prune.models import build_tiny, load_model, save_model
from embodied_prune.models.adapters import ROLES, adapter_for
from embodied_prune.models.checkpoint import CheckpointWeights, checkpoint_nbytes
from embodied_prune.models.devices import move, on_device, resolve_dtype
from embodied_prune.models.scale import PUBLISHED_PARAMETERS, meta_model
from embodied_prune.pruning import calibration_ids, prune_structured, prune_unstructured
from embodied_prune.pruning.calibration import accumulate_gradients, taylor_pass
from embodied_prune.pruning.importance import TaylorAccumulator, TaylorImportance
from embodied_prune.pruning.structured import score_layer
from embodied_prune.recovery.gluestick import compute_factors

NO_CUDA = not torch.cuda.is_available()


def _tiny(seed=0, **kw):
    return build_tiny("llama", num_attention_heads=4, num_key_value_heads=2, intermediate_size=96, seed=seed, **kw)


@pytest.mark.parametrize("variant", ["vectorize", "param_first", "param_second", "param_mix"])
@pytest.mark.parametrize("batch", [8, 3])  # one batch (param_first streams) and several (it keeps the summed grad)
def test_taylor_pass_scores_equal_the_full_gradient_scores(variant, batch):
    torch.manual_seed(0)
    model = _tiny()
    ids = torch.randint(0, model.config.vocab_size, (8, 12), generator=torch.Generator().manual_seed(1))
    adapter = adapter_for(model)
    names = [f"model.layers.{i}.{getattr(adapter, r)}.weight" for i in range(2) for r in ROLES]
    grads, grad_sq = accumulate_gradients(model, ids, batch, progress=False)
    acc = taylor_pass(model, ids, names, variant, batch, progress=False)
    criterion = TaylorImportance(variant)
    for i, layer in enumerate(adapter.get_layers(model)):
        shape = adapter.layer_shape(model, i)
        full = score_layer(adapter, layer, shape, criterion, f"model.layers.{i}.", grads, grad_sq)
        kept = score_layer(adapter, layer, shape, criterion, f"model.layers.{i}.", taylor=acc)
        for a, b in ((full.query, kept.query), (full.kv, kept.kv), (full.mlp, kept.mlp)):
            torch.testing.assert_close(b, a, rtol=2e-4, atol=1e-9)
    # the pass leaves no gradients behind and restores which parameters train
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())


def test_taylor_accumulator_keeps_channels_not_gradients_where_it_can():
    model = _tiny()
    ids = torch.randint(0, model.config.vocab_size, (4, 12), generator=torch.Generator().manual_seed(1))
    adapter = adapter_for(model)
    names = [f"model.layers.{i}.{getattr(adapter, r)}.weight" for i in range(2) for r in ROLES]
    weights = dict(model.named_parameters())
    weight_bytes = sum(weights[n].numel() * 4 for n in names)
    channel_bytes = sum((weights[n].shape[0] + weights[n].shape[1]) * 4 for n in names)
    for variant, batch in (("param_first", 4), ("param_second", 2), ("vectorize", 2)):
        assert taylor_pass(model, ids, names, variant, batch, progress=False).nbytes() == channel_bytes
    assert channel_bytes < weight_bytes / 10
    summed = taylor_pass(model, ids, names, "param_first", 2, progress=False)  # two batches: the summed gradient
    assert summed.nbytes() == weight_bytes
    half = taylor_pass(model, ids, names, "param_first", 2, grad_dtype=torch.bfloat16, progress=False)
    assert half.nbytes() == weight_bytes // 2


def test_bf16_summed_gradient_agrees_with_float32():
    model = _tiny(seed=5)
    ids = torch.randint(0, model.config.vocab_size, (8, 16), generator=torch.Generator().manual_seed(2))
    adapter = adapter_for(model)
    names = [f"model.layers.{i}.{getattr(adapter, r)}.weight" for i in range(2) for r in ROLES]
    f32 = taylor_pass(model, ids, names, "param_first", 2, progress=False)
    b16 = taylor_pass(model, ids, names, "param_first", 2, grad_dtype=torch.bfloat16, progress=False)
    w = dict(model.named_parameters())
    for n in names:
        a, b = f32.scores(n, w[n], 0), b16.scores(n, w[n], 0)
        assert float((a - b).abs().max() / a.abs().max()) < 0.02


def test_unknown_taylor_variant_is_one_sentence():
    from embodied_prune.errors import EmbodiedPruneError

    with pytest.raises(EmbodiedPruneError, match="unknown taylor variant"):
        TaylorAccumulator("param_third", 1)


def test_bf16_model_is_pruned_in_float32_one_layer_at_a_time_and_stays_bf16():
    dense = _tiny(seed=2)
    ids = calibration_ids("random", 8, 24, dense.config.vocab_size, seed=0)
    bf16 = _tiny(seed=2).to(torch.bfloat16)
    seen = []
    for layer in adapter_for(bf16).get_layers(bf16):  # the dtype each layer computes in during its turn
        layer.mlp.down_proj.register_forward_hook(lambda m, i, o: seen.append(i[0].dtype))
    reference = _tiny(seed=2).to(torch.bfloat16).float()  # the same bf16 weights, held in float32
    prune_unstructured(bf16, "wanda", 0.5, calibration=ids, progress=False)
    prune_unstructured(reference, "wanda", 0.5, calibration=ids, progress=False)
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())
    assert seen and set(seen) == {torch.float32}
    for (name, a), (_, b) in zip(bf16.named_parameters(), reference.named_parameters(), strict=True):
        if a.dim() == 2 and "layers" in name:
            same = float(((a == 0) == (b == 0)).float().mean())
            assert same > 0.99, name  # the same masks, up to near-ties the bf16 first inputs move


def test_on_device_and_move_put_things_back():
    layer = torch.nn.Linear(4, 3).to(torch.bfloat16)
    with on_device(layer, torch.device("cpu"), torch.float32) as inside:
        assert inside.weight.dtype == torch.float32
        inside.weight.data.fill_(0.5)
    assert layer.weight.dtype == torch.bfloat16 and bool((layer.weight == 0.5).all())
    moved = move(
        {"a": (torch.ones(2, dtype=torch.bfloat16), torch.ones(2, dtype=torch.long)), "b": 3}, None, torch.float32
    )
    assert moved["a"][0].dtype == torch.float32 and moved["a"][1].dtype == torch.long and moved["b"] == 3


def test_gluestick_from_the_dense_checkpoint_equals_the_dense_model(tmp_path):
    dense = _tiny(seed=3)
    save_model(dense, tmp_path / "dense")
    pruned = _tiny(seed=3)
    prune_unstructured(pruned, "magnitude", 0.5, pattern=(2, 4), progress=False)
    in_memory = compute_factors(dense, pruned, rank=4)
    from_file = compute_factors(CheckpointWeights(tmp_path / "dense"), pruned, rank=4, method="exact")
    assert [f.name for f in from_file.layers] == [f.name for f in in_memory.layers]
    for a, b in zip(in_memory.layers, from_file.layers, strict=True):
        torch.testing.assert_close(a.v @ a.u, b.v @ b.u)
    assert from_file.energy == pytest.approx(in_memory.energy)


def test_gluestick_compares_a_bf16_pruned_copy_in_its_own_dtype():
    dense = _tiny(seed=3)  # float32
    pruned = _tiny(seed=3).to(torch.bfloat16)
    prune_unstructured(pruned, "magnitude", 0.5, pattern=(2, 4), progress=False, roles=("down_proj",))
    report = compute_factors(dense, pruned, rank=2)
    # only the pruned projections are corrected, not every layer that bf16 rounding moved
    assert {f.name.rsplit(".", 1)[-1] for f in report.layers} == {"down_proj"}


@pytest.mark.parametrize("name", list(PUBLISHED_PARAMETERS))
def test_reference_shapes_have_the_published_sizes_and_prune_on_the_meta_device(name):
    model = meta_model(name)
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED_PARAMETERS[name]
    result = prune_structured(model, 0.3, importance="random", round_to=64, progress=False)
    after = result.shapes_after[0]
    before = result.shapes_before[0]
    assert after.intermediate_size % 64 == 0 and after.intermediate_size < before.intermediate_size
    assert after.num_heads < before.num_heads and after.num_heads % after.num_kv_heads == 0
    layer = adapter_for(model).get_layers(model)[0]
    assert layer.mlp.down_proj.weight.shape == (model.config.hidden_size, after.intermediate_size)
    assert layer.mlp.down_proj.weight.is_meta  # nothing was materialised


def test_auto_dtype_rules():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_dtype("auto", torch.bfloat16, cpu, whole_model=False) == torch.bfloat16
    assert resolve_dtype("auto", torch.bfloat16, cpu, whole_model=True) == torch.float32
    assert resolve_dtype("auto", torch.bfloat16, cuda, whole_model=True) == torch.bfloat16
    assert resolve_dtype("float16", torch.bfloat16, cpu, whole_model=True) == torch.float16
    assert resolve_dtype("auto", None, cpu, whole_model=False) == torch.float32


@pytest.fixture(scope="module")
def bf16_folder(tmp_path_factory):
    """A tiny Llama saved in bf16, with the byte tokenizer."""
    from embodied_prune.models.tokenizer import byte_tokenizer

    folder = tmp_path_factory.mktemp("bf16") / "m"
    model = build_tiny("llama", seed=1).to(torch.bfloat16)
    save_model(model, folder, byte_tokenizer())
    return folder


def _stored(folder):
    with safe_open(folder / "model.safetensors", "pt") as f:
        return {f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118


@pytest.mark.parametrize("dtype", ["auto", "float32"])
def test_prune_cli_bf16_in_bf16_out_computing_where_it_says(bf16_folder, tmp_path, capsys, dtype):
    out = tmp_path / "w"
    args = ["--device", "cpu", "--dtype", dtype, "--calibration-samples", "4", "--calibration-seq-len", "16"]
    rc = main(["prune", "--model", str(bf16_folder), "--method", "wanda", "--pattern", "2:4", *args, "--out", str(out)])
    assert rc == 0
    held = "bfloat16" if dtype == "auto" else "float32"
    assert f"on cpu ({held} weights)" in capsys.readouterr().out
    record = json.loads((out / "embodied_prune.json").read_text())["history"][-1]
    assert record["dtype"] == held and record["device"] == "cpu"
    assert _stored(out) == {"BF16"}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert load_model(out, dtype=None).dtype == torch.bfloat16


def test_recover_and_structured_taylor_keep_bf16(bf16_folder, tmp_path):
    assert (
        main(
            [
                "prune",
                "--model",
                str(bf16_folder),
                "--method",
                "magnitude",
                "--pattern",
                "2:4",
                "--out",
                str(tmp_path / "p"),
                "-q",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "recover",
                "--dense",
                str(bf16_folder),
                "--pruned",
                str(tmp_path / "p"),
                "--rank",
                "2",
                "--svd",
                "randomized",
                "--out",
                str(tmp_path / "r"),
                "-q",
            ]
        )
        == 0
    )
    assert _stored(tmp_path / "r") == {"BF16"}
    assert (
        main(
            [
                "prune",
                "--model",
                str(bf16_folder),
                "--method",
                "structured",
                "--importance",
                "taylor",
                "--sparsity",
                "0.5",
                "--calibration-samples",
                "4",
                "--calibration-seq-len",
                "16",
                "--out",
                str(tmp_path / "t"),
                "-q",
            ]
        )
        == 0
    )
    assert _stored(tmp_path / "t") == {"BF16"}
    assert checkpoint_nbytes(tmp_path / "t") < checkpoint_nbytes(bf16_folder)


VERBS_WITH_DEVICE = {
    "prune": ["prune", "--model", "builtin:llama-tiny", "--method", "magnitude", "--sparsity", "0.5", "--out", "{out}"],
    "recover": [
        "recover",
        "--dense",
        "builtin:llama-tiny",
        "--pruned",
        "builtin:llama-tiny",
        "--rank",
        "2",
        "--out",
        "{out}",
    ],
    "export": ["export", "--model", "builtin:llama-tiny", "--out", "{out}.gguf"],
    "bench": ["bench", "--model", "builtin:llama-tiny", "--no-memory"],
    "eval": ["eval", "driving", "--model", "builtin:driving-s-sft", "--limit", "1"],
    "eval manipulation": ["eval", "manipulation", "--model", "builtin:vla-metaworld", "--episodes", "1"],
    "train": ["train", "driving", "--stage", "sft", "--size", "s", "--max-steps", "1", "--out", "{out}"],
    "experiment": ["experiment", "bpf", "--config", "configs/bpf_quick.yaml", "--out", "{out}"],
}


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
@pytest.mark.parametrize("verb", list(VERBS_WITH_DEVICE))
def test_a_cuda_request_without_cuda_is_one_sentence_and_writes_nothing(verb, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [a.replace("{out}", str(out)) for a in VERBS_WITH_DEVICE[verb]] + ["--device", "cuda", "-q"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA device" in err[0] and "--device cpu" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_bench_and_eval_hold_the_model_in_the_dtype_asked(bf16_folder, tmp_path):
    rows = {}
    for dtype in ("auto", "bfloat16"):
        out = tmp_path / f"{dtype}.json"
        argv = ["bench", "--model", str(bf16_folder), "--dtype", dtype, "--device", "cpu", "--no-memory"]
        assert main([*argv, "--repeats", "1", "--new-tokens", "2", "--prompt-len", "4", "--json", str(out), "-q"]) == 0
        rows[dtype] = json.loads(out.read_text())[0]
    assert rows["auto"]["weight_bytes"] == 2 * rows["bfloat16"]["weight_bytes"]  # auto on a CPU: float32
    argv = ["eval", "driving", "--model", "builtin:driving-s-grpo", "--limit", "2", "--workers", "1", "--dtype"]
    assert main([*argv, "bfloat16", "--json", str(tmp_path / "e.json"), "-q"]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["instructions"] == 2
