"""The names the command line offers, kept in a module that imports nothing heavy.

``embodied-prune --help`` (and every ``VERB --help``) builds the whole argument parser; if the choices came from
the modules that implement them, printing help would import torch, transformers and PEFT (5–11 s on 2 cores).
Plain tuples live here and the implementing modules import them; registries (criteria, schedules, token pruners,
controller sizes) keep their own entries, and ``tests/test_cli.py`` checks that their names equal these.
"""

from __future__ import annotations

IMPORTANCE_CRITERIA = ("l1", "l2", "taylor", "random")  # pruning.importance.CRITERIA
TAYLOR_VARIANTS = ("vectorize", "param_first", "param_second", "param_mix")
ATTENTION_MODES = ("auto", "kv_group", "query_head", "none")
SVD_METHODS = ("exact", "randomized")
DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")  # models.devices.DTYPES, after "auto"
FACTOR_DTYPES = ("float32", "bfloat16", "float16", "int8")  # models.lowrank.FACTOR_DTYPES
SCHEDULES = ("linear", "constant", "cubic")  # schedules.sparsity.SCHEDULES
CONTROLLER_SIZES = ("s", "m", "l")  # models.ladder.SIZES
# GGUF types of `embodied-prune export` (deploy.export): the converter writes the first four itself, llama.cpp's
# quantiser makes the rest.
GGUF_CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0")
GGUF_QUANTISER_TYPES = (
    "q4_0",
    "q4_1",
    "q5_0",
    "q5_1",
    "q2_k",
    "q3_k_m",
    "q4_k_s",
    "q4_k_m",
    "q5_k_s",
    "q5_k_m",
    "q6_k",
)
GGUF_TYPES = GGUF_CONVERTER_TYPES + GGUF_QUANTISER_TYPES
TOKEN_PRUNERS = ("none", "fastv", "random", "specprune")  # tokens.TOKEN_PRUNERS
# rows whose attention can rank the visual tokens (tokens.forward.QueryState.scores): the instruction
# (SpecPrune-VLA's rows), the action queries (the tokens an OFT-style policy decodes its actions from) or both
# (FastV's rows)
SCORE_ROWS = ("instruction", "action", "after_visual")

# The shipped expert frames a VLA policy calibrates on without a demonstrations folder (envs.manipulation.demos)
BUILTIN_FRAMES = "builtin:metaworld-frames"

CALIBRATION_HELP = (
    "calibration data: 'random' (uniform random token ids), a .txt file (its text, cut into samples), "
    "a .jsonl file with a 'text' field per line, or builtin:python-docstrings (real English text from this "
    "Python's standard library; builtin:python-topics is the held-out text benchmarks evaluate on)"
)
