"""A GGUF file run through llama.cpp (``llama_cpp.Llama``): greedy completions, the way a robot runs its controller."""

from __future__ import annotations

import atexit
import os
from pathlib import Path

from ..errors import EmbodiedPruneError
from .source import DEPLOY_INSTALL


class LlamaCppModel:
    """A GGUF model loaded in llama.cpp; ``complete`` gives greedy completions of already formatted prompts.

    Prompts are tokenised by llama.cpp itself (special tokens parsed, no BOS added: the same as the Hugging Face
    tokenizer with ``add_special_tokens=False``, which is how :func:`~embodied_prune.evaluation.driving.
    generate_completions` feeds transformers), so the deployed file's own vocabulary is what gets scored.
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None, n_ctx: int = 1024) -> None:
        try:
            import llama_cpp
        except ImportError:
            raise EmbodiedPruneError(f"llama.cpp is not installed; run {DEPLOY_INSTALL}.") from None
        path = Path(path)
        if not path.is_file():
            what = "is a folder, not a GGUF file" if path.is_dir() else "does not exist"
            raise EmbodiedPruneError(
                f"GGUF file {path} {what}; export one with `embodied-prune export` (or drop --backend llama.cpp)."
            )
        from .export import inspect_gguf

        self.architecture = inspect_gguf(path)[0]  # refuses a file that is not GGUF, with a sentence
        try:
            self.llm = llama_cpp.Llama(
                model_path=str(path), n_ctx=n_ctx, n_threads=threads or os.cpu_count(), verbose=False
            )
        except (ValueError, RuntimeError) as e:
            raise EmbodiedPruneError(f"llama.cpp could not load {path} ({e}); re-export it.") from None
        self.path = path
        self.chat_template = self.llm.metadata.get("tokenizer.chat_template")
        # Free the model before interpreter shutdown tears down the binding (else its finaliser raises then).
        atexit.register(self.close)

    def close(self) -> None:
        """Free llama.cpp's model and context (idempotent)."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            llm.close()

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode(), add_bos=False, special=True)

    def complete(self, prompts: list[str], max_new_tokens: int = 64) -> list[str]:
        """Greedy completions (stop at end of sequence or after ``max_new_tokens``)."""
        eos = self.llm.token_eos()
        out = []
        for prompt in prompts:
            tokens = self.tokenize(prompt)
            if len(tokens) + max_new_tokens > self.llm.n_ctx():
                raise EmbodiedPruneError(
                    f"a prompt of {len(tokens)} tokens plus {max_new_tokens} new ones exceeds llama.cpp's context of "
                    f"{self.llm.n_ctx()}; shorten the prompt."
                )
            new: list[int] = []
            for tok in self.llm.generate(tokens, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
                if tok == eos or len(new) >= max_new_tokens:
                    break
                new.append(tok)
            out.append(self.llm.detokenize(new, special=False).decode("utf-8", errors="replace"))
        return out


class ChatTemplate:
    """The few tokenizer methods the driving prompts use, from a GGUF file's own chat template, rendered by
    transformers' renderer (the same code the Hugging Face tokenizer runs), so prompts match the PyTorch ones."""

    def __init__(self, template: str | None) -> None:
        self.chat_template = template

    def apply_chat_template(self, messages: list[dict], tokenize: bool = False, add_generation_prompt: bool = True):
        from transformers.utils.chat_template_utils import render_jinja_template

        rendered, _ = render_jinja_template(
            conversations=[messages], chat_template=self.chat_template, add_generation_prompt=add_generation_prompt
        )
        return rendered[0]
