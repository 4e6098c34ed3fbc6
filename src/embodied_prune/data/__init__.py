"""Built-in data: a synthetic robot-instruction corpus for the tiny language model."""

from .corpus import instruction_corpus

__all__ = ["instruction_corpus"]
