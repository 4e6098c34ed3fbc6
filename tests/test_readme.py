"""The README's commands must stay true: every command of its quickstart and "longer work" blocks parses against
the CLI (a renamed or removed option fails here), names built-in models that exist and files the repository
has, and every documentation link points at a file."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from embodied_prune.cli import build_parser
from embodied_prune.models.builtin import BUILTINS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def bash_blocks(text: str) -> list[str]:
    """The bodies of the ```bash blocks of a Markdown text, in order."""
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def commands(block: str) -> list[list[str]]:
    """The ``embodied-prune`` commands of a bash block as argument lists: continuation lines joined, comments
    dropped."""
    joined = block.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words and words[0] == "embodied-prune":
            out.append(words[1:])
    return out


README_COMMANDS = [c for block in bash_blocks(README) for c in commands(block)]


def test_readme_has_a_tested_quickstart() -> None:
    marker = README.index("<!-- quickstart")
    first = bash_blocks(README[marker:])[0]
    assert len(commands(first)) >= 5, "the quickstart should show five to ten commands"
    assert len(README.splitlines()) <= 250, "the README is the front page: keep it under 250 lines"


@pytest.mark.parametrize("argv", README_COMMANDS, ids=lambda a: " ".join(a[:3]))
def test_readme_command_parses(argv: list[str]) -> None:
    parser = build_parser()
    try:
        parser.parse_args(argv)
    except SystemExit as exc:  # argparse's way of refusing
        pytest.fail(f"README command `embodied-prune {' '.join(argv)}` does not parse (exit {exc.code})")
    for word in argv:
        if word.startswith("builtin:") and "{" not in word:
            assert word.removeprefix("builtin:") in BUILTINS.names(), f"README names unknown model {word}"
        if re.match(r"^(examples|configs)/", word):
            assert (ROOT / word).exists(), f"README names {word}, which the repository does not have"


def test_readme_links_resolve() -> None:
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
