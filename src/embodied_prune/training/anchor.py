"""Teacher-anchored GRPO: TRL's ``GRPOTrainer`` plus ``coef`` × the SFT loss on teacher-labelled instructions.

This is InstructGPT's PPO-ptx term with the SFT data in place of pre-training text: RL with a closed-loop
reward improves the answers to the instructions it samples, but it may drift on everything it does not
sample (for the driving controller: the constraint combinations held out of training, where the SFT
controller's compositional reading is all there is). The anchor keeps the SFT objective alive on the
whole training distribution while the policy-gradient term moves it where the reward says.

TRL's ``GRPOTrainer`` has no such term (its ``beta`` KL only acts on the sampled completions), hence
this thin subclass; it only adds a loss in ``compute_loss``, so everything else (generation, rewards,
logging, checkpoints, callbacks) is TRL's own.
"""

from __future__ import annotations

import torch
from datasets import Dataset
from trl import GRPOTrainer


class AnchorBatches:
    """Right-padded (input_ids, attention_mask, labels) batches of prompt + completion + EOS, the prompt
    and padding masked out of the labels (-100), drawn at random with a seeded generator."""

    def __init__(self, rows: Dataset, tokenizer, batch_size: int = 32, seed: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"anchor batch size must be at least 1; got {batch_size}.")
        self.examples: list[tuple[list[int], int]] = []
        for r in rows:
            prompt = tokenizer(r["prompt"])["input_ids"]
            full = tokenizer(r["prompt"] + r["completion"])["input_ids"] + [tokenizer.eos_token_id]
            self.examples.append((full, len(prompt)))
        self.pad_id = tokenizer.pad_token_id
        self.batch_size = min(batch_size, len(self.examples))
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.examples)

    def sample(self, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """One random batch (without replacement inside the batch)."""
        pick = torch.randperm(len(self.examples), generator=self.generator)[: self.batch_size].tolist()
        width = max(len(self.examples[i][0]) for i in pick)
        ids = torch.full((len(pick), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(pick), width), dtype=torch.long)
        labels = torch.full((len(pick), width), -100, dtype=torch.long)
        for row, i in enumerate(pick):
            tokens, n_prompt = self.examples[i]
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
            labels[row, n_prompt : len(tokens)] = torch.tensor(tokens[n_prompt:])
        return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


class AnchoredGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` whose training loss adds ``anchor_coef`` × the causal-LM loss of one
    :class:`AnchorBatches` batch per optimisation step (logged as ``anchor_loss``)."""

    def __init__(self, *args, anchor: AnchorBatches, anchor_coef: float, **kwargs) -> None:
        if anchor_coef < 0:
            raise ValueError(f"anchor_coef must be ≥ 0; got {anchor_coef}.")
        super().__init__(*args, **kwargs)
        self.anchor = anchor
        self.anchor_coef = anchor_coef

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.anchor_coef == 0 or not model.training:
            return loss
        anchor_loss = model(**self.anchor.sample(loss.device)).loss
        self._metrics["train"]["anchor_loss"].append(anchor_loss.item())
        # TRL divides its loss by the accumulation steps of one optimiser step; the anchor is drawn per
        # micro-batch and scaled alike, so an optimiser step sees the mean anchor loss once.
        return loss + self.anchor_coef * anchor_loss / self.current_gradient_accumulation_steps


__all__ = ["AnchorBatches", "AnchoredGRPOTrainer"]
