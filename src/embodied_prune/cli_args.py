"""Arguments shared by several verbs of the command line (imported by ``cli``, ``cli_driving`` and
``cli_manipulation``, which sit above it: one direction, no cycle)."""

from __future__ import annotations

import argparse


def add_output_args(sp: argparse.ArgumentParser) -> None:
    """``--out`` and ``--overwrite``, shared by every verb that writes a checkpoint folder."""
    sp.add_argument("--out", required=True, help="output folder (must not exist or be empty, unless --overwrite)")
    sp.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
