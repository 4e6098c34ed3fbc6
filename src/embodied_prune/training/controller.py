"""The from-scratch driving controller LLM: its tokenizer and its construction at a size of the ladder.

The tokenizer is a byte-level BPE trained with ``tokenizers`` on the built-in instruction corpus and
teacher answers (digits split one by one, so numbers are copied digit by digit). The size ladder's
smaller members are the "smaller dense model" baselines of the BPF study; sizes are kept small so
that the shipped checkpoints stay a few MB and training fits a 2-core CPU budget.

The size ladder itself (Qwen2 config fields) is :mod:`embodied_prune.models.ladder`; the prompt formats are
:mod:`embodied_prune.envs.driving.prompts`.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

from ..envs.driving.instructions import generate_split, teacher_params
from ..envs.driving.params import format_answer
from ..envs.driving.prompts import prompt_text
from ..errors import EmbodiedPruneError
from ..models.ladder import SIZES

SPECIAL = ("<pad>", "<bos>", "<eos>")


def train_tokenizer(
    vocab_size: int = 512, n_texts: int = 4000, extra_texts: list[str] | None = None
) -> PreTrainedTokenizerFast:
    """Train the controller tokenizer on train-split instructions and teacher answers, plus ``extra_texts``
    (e.g. decision prompts and answers for a controller that also reads state readouts); deterministic."""
    texts = []
    for ins in generate_split("train", n_texts):
        texts.append(prompt_text(ins.text) + format_answer(teacher_params(ins.constraints)))
    texts += extra_texts or []
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", padding_side="left"
    )


def build_controller(size: str, tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> PreTrainedModel:
    """A randomly initialised Qwen2 controller of ladder size ``size``."""
    if size not in SIZES:
        raise EmbodiedPruneError(f"unknown controller size {size!r}; choose one of: {', '.join(SIZES)}.")
    fields = SIZES[size]
    config = AutoConfig.for_model(
        "qwen2",
        vocab_size=len(tokenizer),
        head_dim=fields["hidden_size"] // fields["num_attention_heads"],
        max_position_embeddings=512,  # a decision prompt and answer run to ~320 tokens
        tie_word_embeddings=True,
        use_sliding_window=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **fields,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)
