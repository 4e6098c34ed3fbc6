"""Our Wanda and SparseGPT against llm-compressor's on the pretrained SmolLM2-135M-Instruct, on real text.

The comparison of ``llmcompressor_compare.py`` run on ``builtin:smollm2-135m-instruct`` with calibration
windows of ``builtin:python-docstrings`` and held-out windows of ``builtin:python-topics`` (needs ``make
llmc-venv``).
"""

from __future__ import annotations

import sys

from llmcompressor_compare import main

if __name__ == "__main__":
    main(
        [
            "--models",
            "builtin:smollm2-135m-instruct",
            "--text",
            "real",
            "--name",
            "llmcompressor_smollm2",
            *sys.argv[1:],
        ]
    )
