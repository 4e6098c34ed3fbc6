import json
import os
import shlex
import subprocess
import sys

import pytest
from transformers import GPT2Config, GPT2LMHeadModel

from embodied_prune.cli import main
from embodied_prune.models import build_tiny


def cli(capsys, line: str):
    """Run one command line in-process; returns (exit code, stdout, stderr)."""
    code = main(shlex.split(line))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_clean_failure(code, err, out_dir):
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert not out_dir.exists()
    assert not [p for p in out_dir.parent.iterdir() if p.name.startswith(f".{out_dir.name}.")]


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "dense"
    build_tiny("llama").save_pretrained(path)
    return path


@pytest.mark.parametrize(
    "extra,needle",
    [
        ("--method magnitude --sparsity 1.0", r"outside [0, 1)"),
        ("--method magnitude --sparsity -0.1", r"outside [0, 1)"),
        ("--method magnitude --sparsity nan", r"outside [0, 1)"),
        ("--method wanda --pattern 4:4", "1 <= N < M"),
        ("--method wanda --pattern 3:2", "1 <= N < M"),
        ("--method wanda --pattern 2:4 --sparsity 0.3", "pass only one"),
        ("--method obc --sparsity 0.5", "unknown pruning method 'obc'"),
        ("--method structured --sparsity 0.5 --importance fisher", "unknown importance criterion 'fisher'"),
        ("--method structured --pattern 2:4", "N:M patterns apply to unstructured"),
        ("--method structured --sparsity 0.5 --layers 3-5", "START:END"),
        ("--method magnitude", "pass a sparsity"),
    ],
)
def test_bad_prune_arguments(capsys, tmp_path, dense_dir, extra, needle):
    code, _, err = cli(capsys, f"prune --model {dense_dir} --out {tmp_path / 'o'} {extra}")
    assert_clean_failure(code, err, tmp_path / "o")
    assert needle in err


def test_unsupported_architecture(capsys, tmp_path):
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)).save_pretrained(tmp_path / "gpt2")
    code, _, err = cli(
        capsys, f"prune --model {tmp_path / 'gpt2'} --method magnitude --sparsity 0.5 --out {tmp_path / 'o'}"
    )
    assert_clean_failure(code, err, tmp_path / "o")
    assert "unsupported architecture 'gpt2'" in err


@pytest.mark.parametrize("damage", ["no_config", "no_weights", "missing_shard", "corrupt", "not_there"])
def test_broken_checkpoint_folders(capsys, tmp_path, damage):
    broken = tmp_path / "broken"
    model = build_tiny("llama")
    if damage == "missing_shard":
        model.save_pretrained(broken, max_shard_size="100KB")
        next(broken.glob("model-00002-*.safetensors")).unlink()
    elif damage != "not_there":
        model.save_pretrained(broken)
    if damage == "no_config":
        (broken / "config.json").unlink()
    elif damage == "no_weights":
        (broken / "model.safetensors").unlink()
    elif damage == "corrupt":
        (broken / "model.safetensors").write_bytes(b"\x00" * 100)
    code, _, err = cli(capsys, f"prune --model {broken} --method magnitude --sparsity 0.5 --out {tmp_path / 'o'}")
    assert_clean_failure(code, err, tmp_path / "o")
    expected = {
        "no_config": "no config.json",
        "no_weights": "has no weights",
        "missing_shard": "missing weight shards",
        "corrupt": "could not load",
        "not_there": "does not exist",
    }[damage]
    assert expected in err


def test_existing_output_is_not_overwritten(capsys, tmp_path, dense_dir):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep.txt").write_text("mine")
    code, _, err = cli(capsys, f"prune --model {dense_dir} --method magnitude --sparsity 0.5 --out {tmp_path / 'o'}")
    assert code == 2 and "--overwrite" in err
    assert (tmp_path / "o" / "keep.txt").read_text() == "mine"


def test_recover_refuses_a_mismatched_pair(capsys, tmp_path, dense_dir):
    assert (
        cli(capsys, f"prune --model {dense_dir} --method structured --sparsity 0.5 --out {tmp_path / 's'} -q")[0] == 0
    )
    code, _, err = cli(capsys, f"recover --dense {dense_dir} --pruned {tmp_path / 's'} --rank 4 --out {tmp_path / 'o'}")
    assert_clean_failure(code, err, tmp_path / "o")
    assert "do not match" in err
    code, _, err = cli(capsys, f"recover --dense {dense_dir} --pruned {dense_dir} --rank 0 --out {tmp_path / 'o'}")
    assert_clean_failure(code, err, tmp_path / "o")


def test_failure_while_writing_leaves_nothing(capsys, tmp_path, dense_dir, monkeypatch):
    assert cli(capsys, f"prune --model {dense_dir} --method magnitude --sparsity 0.5 --out {tmp_path / 'm'} -q")[0] == 0

    def explode(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr("embodied_prune.api.save_factors", explode)
    with pytest.raises(OSError):
        cli(capsys, f"recover --dense {dense_dir} --pruned {tmp_path / 'm'} --rank 2 --out {tmp_path / 'o'}")
    assert not (tmp_path / "o").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".o.")]


def test_prune_recover_bench_end_to_end(capsys, tmp_path, dense_dir):
    s, w, r = tmp_path / "s", tmp_path / "w", tmp_path / "r"
    common = "--calibration-samples 4 -q"
    assert (
        cli(
            capsys,
            f"prune --model {dense_dir} --method structured --sparsity 0.5 --importance taylor --out {s} {common}",
        )[0]
        == 0
    )
    assert cli(capsys, f"prune --model {dense_dir} --method sparsegpt --pattern 2:4 --out {w} {common}")[0] == 0
    mask = os.umask(0)
    os.umask(mask)
    # every written file is as readable as the umask allows (transformers writes weights owner-only)
    assert {f.name: f.stat().st_mode & 0o777 for f in w.iterdir()} == {f.name: 0o666 & ~mask for f in w.iterdir()}
    code, out, _ = cli(capsys, f"recover --dense {dense_dir} --pruned {w} --rank 4 --out {r} -q")
    assert code == 0 and "extra parameters" in out
    bench = tmp_path / "b.json"
    code, out, _ = cli(
        capsys,
        f"bench --model {dense_dir} --model {s} --model {r} --repeats 2 --new-tokens 4 --prompt-len 8 "
        f"--json {bench} -q",
    )
    assert code == 0
    rows = json.loads(bench.read_text())
    assert [row["model"] for row in rows] == ["dense", "s", "r"]
    for row in rows:
        for key in ("model", "params", "weight_bytes", "prefill_ms", "decode_tokens_per_s", "peak_memory_bytes"):
            assert key in row
        assert row["decode_tokens_per_s"] > 0 and row["peak_memory_bytes"] > 0
    assert rows[1]["params"] < rows[0]["params"] < rows[2]["params"]


def test_models_lists_builtins(capsys):
    code, out, _ = cli(capsys, "models")
    assert code == 0 and "builtin:tinylm" in out and "builtin:llama-130m" in out


VERBS = ["prune", "recover", "bench", "train", "eval", "data", "demos", "models", "experiment", "demo"]


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help(capsys, verb):
    with pytest.raises(SystemExit) as exit_info:
        main([verb, "--help"])
    assert exit_info.value.code == 0
    assert "usage: embodied-prune " + verb in capsys.readouterr().out


def test_console_script_exit_code(tmp_path):
    line = f"prune --model builtin:nope --method magnitude --sparsity 0.5 --out {tmp_path / 'never'}"
    proc = subprocess.run([sys.executable, "-m", "embodied_prune.cli", *line.split()], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown built-in model 'nope'" in proc.stderr


def test_help_imports_nothing_heavy():
    """--help of the tool and of every verb prints without importing torch or transformers (they cost 5-11 s
    on 2 cores); a fresh interpreter, so that what other tests imported does not hide an import."""
    script = (
        "import contextlib, io, sys\n"
        "from embodied_prune.cli import main\n"
        f"for argv in [['--help']] + [[v, '--help'] for v in {VERBS!r}]:\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        main(argv)\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'trl', 'gymnasium', 'metaworld') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"--help imported {proc.stdout.strip()}"


def test_cli_choices_match_the_registries():
    """The CLI's choices (embodied_prune.choices, light on purpose) name exactly what the registries hold."""
    from embodied_prune import choices
    from embodied_prune.models.ladder import SIZES
    from embodied_prune.models.lowrank import FACTOR_DTYPES
    from embodied_prune.pruning.importance import CRITERIA
    from embodied_prune.schedules.sparsity import SCHEDULES
    from embodied_prune.tokens import TOKEN_PRUNERS

    assert set(choices.IMPORTANCE_CRITERIA) == set(CRITERIA.names())
    assert set(choices.FACTOR_DTYPES) == set(FACTOR_DTYPES)
    assert set(choices.SCHEDULES) == set(SCHEDULES.names())
    assert set(choices.TOKEN_PRUNERS) == set(TOKEN_PRUNERS.names())
    assert set(choices.CONTROLLER_SIZES) == set(SIZES)
