"""Pictures: accuracy over rounds (trigger marked) and defense comparisons."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _mark_trigger(ax, rounds: list[dict]) -> None:
    for r in rounds:
        if r.get("phase") == "trigger":
            ax.axvline(r["round"], color="crimson", ls="--", lw=1, label="trigger")


def plot_accuracy(rounds: list[dict], path: Path, title: str | None = None) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["round"] for r in rounds], [r["accuracy"] for r in rounds], marker=".", lw=1.5)
    _mark_trigger(ax, rounds)
    ax.set(xlabel="round", ylabel="test accuracy", ylim=(0, 1), title=title or "global model")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_comparison(runs: dict[str, list[dict]], path: Path) -> None:
    """Accuracy curves of several runs on one axis (one line per run label)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, rounds in runs.items():
        ax.plot([r["round"] for r in rounds], [r["accuracy"] for r in rounds], lw=1.5, label=label)
    ax.set(xlabel="round", ylabel="test accuracy", ylim=(0, 1), title="comparison")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
