"""Evaluation: open-loop fidelity (closed-loop rollouts come with the environments)."""

from .fidelity import Fidelity, layer_output_error, logit_fidelity

__all__ = ["Fidelity", "layer_output_error", "logit_fidelity"]
