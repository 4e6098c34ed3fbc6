import os
import tempfile

import pytest
import torch

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering, before anything imports mujoco
# code loaded from checkpoint folders (the OpenVLA stand-in) is copied here, not into the user's cache
os.environ.setdefault("HF_MODULES_CACHE", tempfile.mkdtemp(prefix="hf-modules-"))

FAMILIES = ["llama", "mistral", "qwen2", "qwen3"]


def tiny_policy(seed: int = 0, **config):
    """A seeded tiny VLA policy (2-layer, 64-wide backbone) and its tokenizer; ``config``: TinyVLAConfig fields
    over the test defaults (32-wide vision, 8 stem channels)."""
    from transformers import LlamaConfig

    from embodied_prune.envs.manipulation.tasks import TASKS
    from embodied_prune.models.vla import TinyVLA, TinyVLAConfig, build_tokenizer

    torch.manual_seed(seed)
    tok = build_tokenizer([TASKS.get(n).instruction for n in TASKS.names()])
    backbone = LlamaConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=len(tok),
        tie_word_embeddings=False,
    )
    return TinyVLA(TinyVLAConfig(backbone_config=backbone, **{"vision_dim": 32, "stem_channels": 8, **config})), tok


def query(model, tok, batch: int = 2, seed: int = 0):
    """Seeded random inputs of one policy query of ``batch`` samples: images, ids, mask, proprioception."""
    from embodied_prune.models.vla import encode_instructions

    g = torch.Generator().manual_seed(seed)
    images = {
        name: torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, generator=g)
        for name, size, _ in model.config.cameras
    }
    enc = encode_instructions(tok, ["push the puck to the green ball"] * batch, model.config.instruction_len)
    return images, enc["input_ids"], enc["attention_mask"], torch.rand(batch, 4, generator=g)


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Built-in models are built into a per-session cache, never the user's — except the pretrained
    conversions (hundreds of MB, ~30 s to convert) and the built-in texts, deterministic and written atomically,
    which the session cache takes from the user's cache folder so the suite builds them once per machine."""
    from pathlib import Path

    user = Path(os.environ.get("EMBODIED_PRUNE_CACHE", Path.home() / ".cache" / "embodied_prune"))
    session = tmp_path_factory.mktemp("cache")
    # llama.cpp: the converter taken from the llama-cpp-python source (make setup prepares it)
    for shared in ("pretrained", "texts", "llama.cpp"):  # the texts: the docstrings take ~7 s to collect
        (user / shared).mkdir(parents=True, exist_ok=True)
        (session / shared).symlink_to(user / shared, target_is_directory=True)
    os.environ["EMBODIED_PRUNE_CACHE"] = str(session)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    from transformers.utils import logging

    logging.disable_progress_bar()


@pytest.fixture
def ids():
    return torch.randint(0, 384, (4, 24), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="session")
def demos(tmp_path_factory):
    """One expert demonstration of reach (all cameras, proprioception, privileged targets)."""
    from embodied_prune.envs.manipulation.demos import generate_demos

    return generate_demos(tmp_path_factory.mktemp("demos") / "d", tasks="reach", episodes=1, progress=False)
