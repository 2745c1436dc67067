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


def _evaluated(rounds: list[dict]) -> tuple[list[int], list[float]]:
    """(rounds, accuracies) of the rounds that evaluated the model (see `evaluate_every`)."""
    pairs = [(r["round"], r["accuracy"]) for r in rounds if r.get("accuracy") is not None]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def plot_accuracy(rounds: list[dict], path: Path, title: str | None = None) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    rounds_x, acc = _evaluated(rounds)
    ax.plot(rounds_x, acc, marker=".", lw=1.5)
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
        ax.plot(*_evaluated(rounds), lw=1.5, label=label)
    ax.set(xlabel="round", ylabel="test accuracy", ylim=(0, 1), title="comparison")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_md(clients: list[dict], rounds: list[dict], path: Path) -> None:
    """MD score per client over rounds: malicious red, honest grey; threshold and trigger marked."""
    fig, ax = plt.subplots(figsize=(7, 4))
    by_client: dict[int, list[dict]] = {}
    for row in clients:
        if row.get("md") is not None:
            by_client.setdefault(row["partition_id"], []).append(row)
    for rows in by_client.values():
        bad = rows[0]["malicious"]
        ax.plot([r["round"] for r in rows], [r["md"] for r in rows], marker="o" if bad else ".",
                ms=4 if bad else 2, lw=1.2 if bad else 0.6, color="crimson" if bad else "grey",
                alpha=0.9 if bad else 0.5)
    thresholds = sorted({(r["round"], r["threshold"]) for r in clients if r.get("threshold") is not None})
    if thresholds:
        ax.scatter([t[0] for t in thresholds], [t[1] for t in thresholds], marker="_", s=250,
                   color="black", lw=2, label="threshold", zorder=3)
    _mark_trigger(ax, rounds)
    ax.plot([], [], color="crimson", marker="o", label="malicious")
    ax.plot([], [], color="grey", label="honest")
    ax.set(xlabel="round", ylabel="memorization discrepancy (mean KL)", yscale="log",
           title="MD per client against the historical global model")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
