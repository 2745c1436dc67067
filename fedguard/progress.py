"""A live progress bar (rich) showing the round and the test accuracy."""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class RoundProgress:
    def __init__(self, rounds: int, enabled: bool = True):
        self.enabled = enabled
        self.progress = Progress(TextColumn("[bold]round"), MofNCompleteColumn(), BarColumn(),
                                 TextColumn("acc {task.fields[acc]}"), TimeElapsedColumn(),
                                 disable=not enabled)
        self.task = self.progress.add_task("rounds", total=rounds, acc="-")

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def advance(self, server_round: int, accuracy: float | None) -> None:
        shown = {} if accuracy is None else {"acc": f"{accuracy:.4f}"}  # None: not evaluated this round
        self.progress.update(self.task, completed=server_round, **shown)
