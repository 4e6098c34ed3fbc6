"""The driving controller LLM: its tokenizer, prompt format and size ladder (Qwen2 architecture).

The tokenizer is a byte-level BPE trained with ``tokenizers`` on the built-in instruction corpus and
teacher answers (digits split one by one, so numbers are copied digit by digit). The size ladder's
smaller members are the "smaller dense model" baselines of the BPF study; sizes are kept small so
that the shipped checkpoints stay a few MB and training fits a 2-core CPU budget.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

from ..envs.driving.instructions import generate_split, teacher_params
from ..envs.driving.params import format_answer
from ..errors import EmbodiedPruneError

# The prompt ends on a newline, a token boundary, so prompt + answer tokenises as prompt, then answer.
PROMPT = "Instruction: {text}\nParameters:\n"
SPECIAL = ("<pad>", "<bos>", "<eos>")

# name → Qwen2 config fields (head_dim 32 everywhere; tied embeddings)
SIZES: dict[str, dict] = {
    "s": dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1, intermediate_size=256),
    "m": dict(
        hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, intermediate_size=512
    ),
    "l": dict(
        hidden_size=192, num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=2, intermediate_size=768
    ),
}

SIZE_NOTES = {
    name: f"Qwen2, hidden {f['hidden_size']}, {f['num_hidden_layers']} layers, {f['num_attention_heads']} heads / "
    f"{f['num_key_value_heads']} KV heads, MLP {f['intermediate_size']}"
    for name, f in SIZES.items()
}


def prompt_text(instruction: str) -> str:
    return PROMPT.format(text=instruction)


def train_tokenizer(vocab_size: int = 512, n_texts: int = 4000) -> PreTrainedTokenizerFast:
    """Train the controller tokenizer on train-split instructions and teacher answers (deterministic)."""
    texts = []
    for ins in generate_split("train", n_texts):
        texts.append(prompt_text(ins.text) + format_answer(teacher_params(ins.constraints)))
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
        max_position_embeddings=256,
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
