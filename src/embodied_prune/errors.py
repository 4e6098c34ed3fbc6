"""User-facing errors.

Every error a user can cause by bad input is an :class:`EmbodiedPruneError` whose message is one
sentence naming the problem and the fix. The CLI prints it without a traceback and exits non-zero.
"""

from __future__ import annotations


class EmbodiedPruneError(ValueError):
    """Bad input or an unusable artefact; the message says what is wrong and how to fix it."""
