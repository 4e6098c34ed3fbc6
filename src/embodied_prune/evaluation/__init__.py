"""Evaluation: open-loop fidelity, closed-loop driving, and confidence intervals.

The closed-loop module is imported on use (``embodied_prune.evaluation.driving``): it needs the
``driving`` extra (highway-env).
"""

from .fidelity import Fidelity, layer_output_error, logit_fidelity
from .stats import bootstrap_mean_ci, paired_diff_ci, wilson_ci

__all__ = ["Fidelity", "bootstrap_mean_ci", "layer_output_error", "logit_fidelity", "paired_diff_ci", "wilson_ci"]
