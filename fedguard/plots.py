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
    """Test accuracy per round, the accumulation shaded and the trigger marked."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    rounds_x, acc = _evaluated(rounds)
    ax.plot(rounds_x, acc, marker=".", lw=1.5)
    shade_accumulation(ax, rounds)
    _mark_trigger(ax, rounds)
    ax.set(xlabel="round", ylabel="test accuracy", ylim=(0, 1), title=title or "global model")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def shade_accumulation(ax, rounds: list[dict]) -> None:
    """Shade the accumulate phase (an accumulative attack's poisoned rounds)."""
    acc = [r["round"] for r in rounds if r.get("phase") == "accumulate"]
    if acc:
        ax.axvspan(min(acc) - 0.5, max(acc) + 0.5, color="orange", alpha=0.12, lw=0, label="accumulation")


def plot_comparison(runs: dict[str, list[dict]], bars: dict[str, list], path: Path) -> None:
    """Paper-size comparison: accuracy over rounds of every run (the trigger marked, the
    accumulation shaded), then one bar panel per headline metric in `bars` (metric -> one
    value per run, in the order of `runs`; None is drawn as no bar). Runs are numbered; the
    legend maps numbers to labels inside the figure, below the panels."""
    labels = list(runs)
    fig, axes = plt.subplots(1, 1 + len(bars), figsize=(3.2 * (1 + len(bars)), 3.2 + 0.22 * len(labels)),
                             gridspec_kw={"width_ratios": [2] + [1] * len(bars)})
    ax = axes[0]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, rounds) in enumerate(runs.items()):
        ax.plot(*_evaluated(rounds), lw=1.5, color=colors[i % len(colors)], label=f"{i + 1}: {label}")
    first = next(iter(runs.values()), [])
    shade_accumulation(ax, first)
    trigger = next((r["round"] for r in first if r.get("phase") == "trigger"), None)
    if trigger is not None:
        ax.axvline(trigger, color="crimson", ls="--", lw=1)
    ax.set(xlabel="round", ylabel="test accuracy", ylim=(0, 1), title="accuracy")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    for bar_ax, (metric, values) in zip(axes[1:], bars.items()):
        x = list(range(1, len(labels) + 1))
        bar_ax.bar(x, [v if v is not None else 0.0 for v in values],
                   color=[colors[i % len(colors)] for i in range(len(labels))])
        for xi, v in zip(x, values):
            if v is None:
                bar_ax.text(xi, 0, "n/a", ha="center", va="bottom", fontsize=7)
        bar_ax.set(title=metric, xticks=x)
        bar_ax.grid(alpha=0.3, axis="y")
    handles, names = ax.get_legend_handles_labels()
    fig.legend(handles, names, loc="lower left", fontsize=8, frameon=False, ncol=1)
    fig.tight_layout(rect=(0, 0.06 * len(labels) / (1 + 0.07 * len(labels)) + 0.02, 1, 1))
    fig.savefig(path, dpi=150)
    plt.close(fig)


def plot_md(clients: list[dict], rounds: list[dict], path: Path, title: str | None = None) -> None:
    """MD score per client over rounds: malicious red, honest grey; the threshold, the trigger,
    and the updates the defense dropped (x) or corrected (open circle) marked."""
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
    for action, style in (("drop", dict(marker="x", color="black")),
                          ("scale", dict(marker="o", facecolors="none", edgecolors="black")),
                          ("pgd", dict(marker="o", facecolors="none", edgecolors="black"))):
        hit = [r for r in clients if r.get("correction") == action and r.get("md") is not None]
        if hit:
            ax.scatter([r["round"] for r in hit], [r["md"] for r in hit], s=40, zorder=4, **style,
                       label="dropped" if action == "drop" else f"corrected ({action})")
    _mark_trigger(ax, rounds)
    ax.plot([], [], color="crimson", marker="o", label="malicious")
    ax.plot([], [], color="grey", label="honest")
    ax.set(xlabel="round", ylabel="memorization discrepancy (mean KL)", yscale="log",
           title=title or "MD per client against the historical global model")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
