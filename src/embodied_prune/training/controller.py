"""The driving controller LLM: its tokenizer, prompt formats and size ladder (Qwen2 architecture).

The tokenizer is a byte-level BPE trained with ``tokenizers`` on the built-in instruction corpus and
teacher answers (digits split one by one, so numbers are copied digit by digit). The size ladder's
smaller members are the "smaller dense model" baselines of the BPF study; sizes are kept small so
that the shipped checkpoints stay a few MB and training fits a 2-core CPU budget.

Two prompt formats, chosen by the tokenizer (so a pruned copy of a controller keeps its format): a
tokenizer with a chat template (a pretrained instruct model, e.g. SmolLM2-135M-Instruct) gets that template
with a system prompt naming the parameters (as RobotxR1's prompt lists the MPC parameters) or the decision
task; a from-scratch controller's tokenizer gets the plain :data:`PROMPT` / :data:`DECISION_PROMPT`. Both
tasks' answers are the same text in either format.
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


DECISION_PROMPT = "Instruction: {text}\nState:\n{state}\nDecision:\n"

# The system prompts of chat-format controllers: short, since every token of them is prefilled for every
# rollout of GRPO and every evaluated instruction (on 2 cores a 187-token prompt made batch-32 decoding of
# SmolLM2-135M run at 48 tokens/s, most of it prefill; 2026-12-03).
SYSTEM_PARAMETERS = (
    "Set the car's controller for the instruction. Answer <answer>{JSON}</answer> with only the parameters to "
    "change: target_speed (m/s), time_gap (s), min_distance (m), comfort_acc (m/s²), politeness, lane_change_gain, "
    "allow_lane_change, preferred_lane, avoid_lane (lanes: 0 left, 1 middle, 2 right)."
)
SYSTEM_DECISION = (
    "Does the car's behaviour follow the human's instruction? Read the state, explain briefly, then end with "
    "'Adhering to Human: True' or 'Adhering to Human: False'."
)


def prompt_text(instruction: str) -> str:
    """The plain parameter prompt of a from-scratch controller."""
    return PROMPT.format(text=instruction)


def is_chat(tokenizer) -> bool:
    """Whether the controller with ``tokenizer`` uses the chat prompt format (its tokenizer has a chat template)."""
    return bool(getattr(tokenizer, "chat_template", None))


def _chat(tokenizer, system: str, user: str) -> str:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def parameter_prompt(tokenizer, instruction: str) -> str:
    """The prompt asking the controller with ``tokenizer`` for the parameters of ``instruction``."""
    return _chat(tokenizer, SYSTEM_PARAMETERS, instruction) if is_chat(tokenizer) else prompt_text(instruction)


def decision_prompt(tokenizer, instruction: str, state: str) -> str:
    """The prompt asking whether the behaviour in the readout ``state`` adheres to ``instruction``."""
    if is_chat(tokenizer):
        return _chat(tokenizer, SYSTEM_DECISION, f"Instruction: {instruction}\nState:\n{state}")
    return DECISION_PROMPT.format(text=instruction, state=state)


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
