"""PNG plots (matplotlib, Agg backend): training loss curves and strength sweeps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over up to `window` values (same length as the input)."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def plot_loss_curves(
    curves: Mapping[str, Sequence[float]], path: Path, *, window: int = 10, title: str = "training loss"
) -> Path:
    """One line per run (per-step loss, trailing mean over `window` steps) with the 0.1 and ln 2 guides."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, losses in curves.items():
        steps = range(1, len(losses) + 1)
        (line,) = ax.plot(steps, moving_average(list(losses), window), label=label)
        ax.plot(steps, losses, color=line.get_color(), alpha=0.2, linewidth=0.8)
    ax.axhline(0.693, color="grey", linestyle=":", linewidth=0.8)
    ax.axhline(0.1, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_strength_sweep(
    series: Mapping[str, Mapping[float, float]],
    path: Path,
    *,
    ylabel: str = "accuracy",
    title: str = "strength sweep",
    baseline: float | None = None,
) -> Path:
    """Metric vs strength, one line per series (e.g. per vector or method)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, points in series.items():
        xs = sorted(points)
        ax.plot(xs, [points[x] for x in xs], marker="o", label=label)
    if baseline is not None:
        ax.axhline(baseline, color="grey", linestyle=":", linewidth=0.8, label="unsteered")
    ax.set_xlabel("strength")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_strength_panels(panels: Mapping[str, Mapping[str, Mapping[float, float]]], path: Path) -> Path:
    """Side-by-side strength sweeps: one panel per metric, one line per series."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.0), squeeze=False)
    for ax, (title, series) in zip(axes[0], panels.items(), strict=True):
        for label, points in series.items():
            xs = sorted(points)
            ax.plot(xs, [points[x] for x in xs], marker="o", markersize=3, label=label)
        ax.set_xlabel("strength")
        ax.set_title(title)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


__all__ = ["moving_average", "plot_loss_curves", "plot_strength_panels", "plot_strength_sweep"]
