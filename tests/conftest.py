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
