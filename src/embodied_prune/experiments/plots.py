"""One style for every figure the experiments and benchmarks write: a headless figure, readable labels, 95 % CIs as
error bars, a title saying what is shown and on what, and an atomic PNG write."""

from __future__ import annotations

from pathlib import Path

# BPF study strategy ids → the names the report and the papers use
STRATEGY_LABELS = {
    "dense": "dense",
    "smaller": "smaller dense model",
    "ptp": "PTP (one-shot, no recovery)",
    "ptp_rl": "PTP + RL",
    "sft_stage": "SFT-stage pruning",
    "bpf_rl": "BPF-RL",
    "bpf_sftrl": "BPF-SFT/RL",
}


def figure(size: tuple[float, float] = (6, 4)):
    """A headless matplotlib figure and axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=size)


def finish(ax, title: str, xlabel: str, ylabel: str | None = None, legend: dict | None = None) -> None:
    """The shared look: title (what, on what), axis labels, light grid, a small legend (``legend``: its
    keyword arguments; None for none)."""
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    if ylabel is not None:
        ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if legend is not None:
        ax.legend(**{"fontsize": 8, **legend})


def ci_errors(values: list[float], cis: list[tuple[float, float]]) -> list[list[float]]:
    """Matplotlib's ``yerr`` (below, above) from point values and their (low, high) intervals."""
    return [
        [v - lo for v, (lo, _) in zip(values, cis, strict=True)],
        [hi - v for v, (_, hi) in zip(values, cis, strict=True)],
    ]


def save_figure(fig, path: Path) -> None:
    """Write ``fig`` as PNG to ``path`` atomically and close it."""
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.name}")
    fig.tight_layout()
    fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    tmp.replace(path)
