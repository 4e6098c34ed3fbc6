"""How the driving tasks are posed to a language model: the parameter prompt and the decision prompt.

Two formats, chosen by the tokenizer (so a pruned copy of a controller keeps its format): a tokenizer with a chat
template (a pretrained instruct model, e.g. SmolLM2-135M-Instruct) gets that template with a system prompt naming
the parameters (as RobotxR1's prompt lists the MPC parameters) or the decision task; a from-scratch controller's
tokenizer gets the plain :data:`PROMPT` / :data:`DECISION_PROMPT`. Both tasks' answers are the same text in either
format. Training and evaluation both read these, so they live with the task rather than with either.
"""

from __future__ import annotations

# The prompt ends on a newline, a token boundary, so prompt + answer tokenises as prompt, then answer.
PROMPT = "Instruction: {text}\nParameters:\n"
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
