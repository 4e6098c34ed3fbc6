"""The OpenVLA adapter on a tiny stand-in with OpenVLA's module names, loaded through its own folder code."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaConfig

from embodied_prune.envs.manipulation.env import ManipulationEnv
from embodied_prune.envs.manipulation.render import cameras_for
from embodied_prune.envs.manipulation.tasks import TASKS
from embodied_prune.errors import EmbodiedPruneError
from embodied_prune.evaluation.manipulation import evaluate_manipulation, run_episode
from embodied_prune.evaluation.openvla import OpenVLAPolicy, openvla_calibration, to_metaworld
from embodied_prune.models.adapters import adapter_for
from embodied_prune.models.openvla import (
    OPENVLA_ADAPTER,
    PROMPT,
    is_openvla_folder,
    load_openvla,
    token_cameras,
    visual_token_count,
)
from embodied_prune.models.vla import build_tokenizer
from embodied_prune.pruning.structured import prune_structured
from embodied_prune.pruning.unstructured import prune_unstructured
from embodied_prune.tokens import TokenPruner, build_token_pruner
from embodied_prune.tokens.hooks import TokenPruningHooks

STANDIN = Path(__file__).parent / "standin_openvla" / "modeling_standin.py"
BINS = 32


def _standin():
    spec = importlib.util.spec_from_file_location("standin_openvla_for_tests", STANDIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A saved stand-in checkpoint: weights, tokenizer, and its code named by the config's auto_map."""
    mod = _standin()
    tok = build_tokenizer([PROMPT.format(instruction=TASKS.get(n).instruction) for n in TASKS.names()])
    text = LlamaConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=len(tok) + BINS,
        tie_word_embeddings=False,
    )
    ref = "modeling_standin."
    cfg = mod.StandInConfig(
        text_config=text,
        n_action_bins=BINS,
        norm_stats={"metaworld": {"action": {"q01": [-1.0] * 4, "q99": [1.0] * 4}}},
        auto_map={
            "AutoConfig": ref + "StandInConfig",
            "AutoModelForVision2Seq": ref + "StandInVLA",
            "AutoProcessor": ref + "StandInProcessor",
        },
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("openvla") / "standin"
    mod.StandInVLA(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    shutil.copy(STANDIN, folder / STANDIN.name)
    return folder


def test_folder_code_runs_only_when_trusted_and_the_adapter_finds_the_language_model(checkpoint):
    assert is_openvla_folder(checkpoint) and not is_openvla_folder(checkpoint.parent)
    with pytest.raises(EmbodiedPruneError, match="pass --trust-remote-code"):
        load_openvla(checkpoint)
    model, processor = load_openvla(checkpoint, trust_remote_code=True)
    assert type(model).__module__ != _standin().__name__  # built from the folder's copy of the code
    assert adapter_for(model) is OPENVLA_ADAPTER
    assert len(OPENVLA_ADAPTER.get_layers(model)) == 2
    assert OPENVLA_ADAPTER.get_config(model) is model.language_model.config
    assert visual_token_count(model) == (32 // 8) ** 2
    inputs = processor(PROMPT.format(instruction="close the drawer"), _image())
    action = model.predict_action(**inputs, unnorm_key="metaworld")
    assert action.shape == (4,) and np.all(np.abs(action) <= 1.0)
    # the patch tokens sit right after BOS, as in OpenVLA: changing the image changes the LM's output
    with torch.no_grad():
        a = model(**inputs).logits
        b = model(**{**inputs, "pixel_values": inputs["pixel_values"] + 0.5}).logits
    assert a.shape[1] == inputs["input_ids"].shape[1] + visual_token_count(model)
    assert not torch.allclose(a, b)


def _image(seed: int = 0):
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (48, 48, 3), dtype=np.uint8))


def test_backbone_pruning_of_an_openvla_model(checkpoint, demos):
    model, processor = load_openvla(checkpoint, trust_remote_code=True)
    calibration = openvla_calibration(processor, demos, n_samples=4)
    assert len(calibration) == 4 and calibration[0]["pixel_values"].shape == (1, 3, 32, 32)
    prune_unstructured(model, "wanda", 0.5, pattern=(2, 4), calibration=calibration, progress=False)
    w = model.language_model.model.layers[0].mlp.down_proj.weight
    assert ((w.reshape(w.shape[0], -1, 4) != 0).sum(-1) <= 2).all()
    assert model.projector.fc1.weight.count_nonzero() == model.projector.fc1.weight.numel()  # vision side untouched
    prune_structured(model, 0.5, "l2", progress=False)
    assert model.language_model.model.layers[1].mlp.up_proj.out_features == 64
    assert model.language_model.config.intermediate_size == 64
    inputs = processor(PROMPT.format(instruction="close the drawer"), _image(1))
    assert np.isfinite(model.predict_action(**inputs, unnorm_key="metaworld")).all()


def test_openvla_policy_runs_closed_loop_episodes(checkpoint):
    model, processor = load_openvla(checkpoint, trust_remote_code=True)
    policy = OpenVLAPolicy(model, processor, execute=1)
    assert policy.unnorm_key == "metaworld"  # the checkpoint's only statistics
    env = ManipulationEnv("reach", cameras=cameras_for([["front", 32]]), max_steps=5)
    try:
        result = run_episode(env, policy, "reach", 0, seed=3)
    finally:
        env.close()
    assert result.failure is None and result.steps == 5 and len(result.latencies_ms) == 5
    report = evaluate_manipulation(
        checkpoint, tasks="drawer-close", episodes=1, workers=1, progress=False, openvla={"trust_remote_code": True}
    ).to_dict()
    assert report["episodes"] == 1 and report["failed_episodes"] == 0 and report["queries"] > 0


def test_openvla_cli_errors_and_action_mapping(checkpoint, capsys):
    from embodied_prune.cli import main

    assert main(["eval", "manipulation", "--model", str(checkpoint), "--episodes", "1"]) == 2
    assert "pass --trust-remote-code" in capsys.readouterr().err
    args = ["eval", "manipulation", "--model", str(checkpoint), "--trust-remote-code", "--token-pruner", "fastv"]
    assert main([*args, "--keep", "99", "--episodes", "1"]) == 2  # more than the 16 patch tokens
    assert "--keep must be between 1 and the 16 visual tokens" in capsys.readouterr().err
    model, processor = load_openvla(checkpoint, trust_remote_code=True)
    model.norm_stats = {"bridge": {}, "metaworld": {}}
    with pytest.raises(EmbodiedPruneError, match="pick one with --unnorm-key"):
        OpenVLAPolicy(model, processor)
    assert OpenVLAPolicy(model, processor, unnorm_key="bridge").unnorm_key == "bridge"
    assert np.allclose(to_metaworld([0.001, -0.002, 0.0, 0.1, 0.2, 0.3, 1.0]), [0.1, -0.2, 0.0, -1.0])
    assert np.allclose(to_metaworld([0.5, 2.0, -3.0, 0.0]), [0.5, 1.0, -1.0, 0.0])
    with pytest.raises(EmbodiedPruneError, match="expected 4"):
        to_metaworld([0.0] * 5)


class _Fixed(TokenPruner):
    """Keeps the visual tokens ``keep`` from layer ``layer`` on."""

    def __init__(self, layer: int, keep: list[int]) -> None:
        super().__init__()
        self.layer, self.keep = layer, torch.tensor(keep)

    def select(self, state):
        return self.keep if state.layer == self.layer else None


def _sequence(model, processor):
    """The stand-in's input sequence for one prompt: embeddings, 2-D mask, and where patches and prompt lie."""
    inputs = processor(PROMPT.format(instruction="close the drawer"), _image())
    patches = model.projector(model.vision_backbone(inputs["pixel_values"]))
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    x = torch.cat([embeds[:, :1], patches, embeds[:, 1:]], dim=1)
    n = visual_token_count(model)
    return x, (1, 1 + n), (1 + n, x.shape[1])


def test_token_pruning_hooks_drop_tokens_inside_the_checkpoints_own_forward(checkpoint):
    """Hooks on the language model: keeping everything changes nothing (bit-identical); dropping tokens before
    layer 0 equals running the stack on the kept tokens at their original positions; the output comes back at
    full length (dropped rows zero); cached decoding after a pruned prefill matches recomputing without cache."""
    model, processor = load_openvla(checkpoint, trust_remote_code=True)
    stack = model.language_model.model
    x, visual, instruction = _sequence(model, processor)
    n = x.shape[1]
    with torch.no_grad():
        dense = stack(inputs_embeds=x).last_hidden_state
        hooks = TokenPruningHooks(stack, TokenPruner())
        hooks.set_spans(visual, instruction)
        assert torch.equal(stack(inputs_embeds=x).last_hidden_state, dense)
        hooks.remove()

        keep = [0, 3, 5, 9, 12]
        pruner = _Fixed(0, keep)
        hooks = TokenPruningHooks(stack, pruner)
        hooks.set_spans(visual, instruction)
        out = stack(inputs_embeds=x, output_hidden_states=True)
        rows = torch.tensor([0, *(1 + k for k in keep), *range(visual[1], n)])
        hooks.remove()
        ref = stack(inputs_embeds=x[:, rows], position_ids=rows[None]).last_hidden_state
        assert out.last_hidden_state.shape == dense.shape
        assert torch.allclose(out.last_hidden_state[:, rows], ref, atol=1e-5)
        dropped = sorted(set(range(n)) - set(rows.tolist()))
        assert torch.count_nonzero(out.last_hidden_state[:, dropped]) == 0
        assert all(h.shape[1] == n for h in out.hidden_states)
        assert not torch.allclose(out.last_hidden_state[:, -1], dense[:, -1], atol=1e-5)  # pruning did something
        assert pruner.queries[-1].visual_per_layer == [len(keep)] * 2

        # cached decoding: the prefill pruned once (before layer 0: every layer's cache short; before layer 1:
        # layer 0's whole), then one new token through each layer's cache
        # (with the new token's position ids given by the caller, as generate does, or not); a later sequence
        # without the patches is left alone
        lm = model.language_model
        for layer, given in ((0, False), (1, False), (0, True)):
            hooks = TokenPruningHooks(stack, _Fixed(layer, keep))
            hooks.set_spans(visual, instruction)
            pre = lm(inputs_embeds=x, use_cache=True)
            nxt = pre.logits[:, -1].argmax(-1, keepdim=True)
            where = {"position_ids": torch.tensor([[n]])} if given else {}
            step = lm(input_ids=nxt, cache=pre.cache, use_cache=True, **where).logits[:, -1]
            full = lm(inputs_embeds=torch.cat([x, lm.get_input_embeddings()(nxt)], dim=1)).logits[:, -1]
            text = lm(input_ids=nxt.repeat(1, 3)).logits
            hooks.remove()
            assert torch.allclose(step, full, atol=1e-5), (layer, given)
            assert torch.equal(text, lm(input_ids=nxt.repeat(1, 3)).logits)


def test_openvla_policy_prunes_visual_tokens_in_closed_loop(checkpoint, capsys):
    from embodied_prune.cli import main

    model, processor = load_openvla(checkpoint, trust_remote_code=True)
    assert token_cameras(model) == [["front", 32, 8]]
    pruner = build_token_pruner("specprune", alpha=0.5, cameras=token_cameras(model), options={"prune_layer": 1})
    policy = OpenVLAPolicy(model, processor, execute=1, token_pruner=pruner)
    env = ManipulationEnv("reach", cameras=cameras_for([["front", 32]]), max_steps=4)
    try:
        result = run_episode(env, policy, "reach", 0, seed=3)
    finally:
        env.close()
    # every forward that carries the image is a query: the stand-in decodes its 4 action values one forward each
    assert result.failure is None and len(result.kept_tokens) == 4 * 4
    assert all(k < 16 for k in result.kept_tokens) and all(f < 1.0 for f in result.backbone_flops)
    report = evaluate_manipulation(
        checkpoint,
        tasks="drawer-close",
        episodes=1,
        workers=1,
        progress=False,
        openvla={"trust_remote_code": True},
        token_pruner={"name": "fastv", "keep": 4},
    ).to_dict()
    assert report["failed_episodes"] == 0 and report["kept_tokens_mean"] < 16
    args = ["eval", "manipulation", "--model", str(checkpoint), "--trust-remote-code", "--tasks", "reach"]
    assert main([*args, "--episodes", "1", "--token-pruner", "random", "--keep", "4", "--workers", "1"]) == 0
    assert "Token pruner random" in capsys.readouterr().out
