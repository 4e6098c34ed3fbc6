"""Training entry points: the driving controller (tokenizer, sizes, SFT, GRPO)."""
