"""Ctrl-C for a run: the first SIGINT stops it cleanly between rounds.

Flower's simulation runs the ServerApp in a thread while its engine holds the main thread,
and a terminal's Ctrl-C also reaches the Ray workers (same process group). Left alone, the
KeyboardInterrupt lands in the engine, the client actors die, and the ServerApp thread goes
on, waiting out `backend.round_timeout` every remaining round and checkpointing rounds in
which nobody answered.

Instead, `stop_on_sigint()` (installed by the in-process launcher around the simulation)
turns SIGINT into `STOP`, an event the serve loop checks: before a round starts, while it
waits for replies, and before it records anything. A round is either recorded and
checkpointed whole or not at all, so the run directory holds the rounds completed before
the signal and the checkpoint of the last of them, and `resume=RUN_DIR` continues exactly.
The server thread then raises `RunInterrupted`, which the launcher re-raises and the CLI
turns into a one-line message and exit code 130.
"""

from __future__ import annotations

import contextlib
import signal
import threading

STOP = threading.Event()
EXIT_CODE = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C


class RunInterrupted(Exception):
    """The run stopped on SIGINT; `completed` is its last recorded round (0: none)."""

    def __init__(self, completed: int):
        super().__init__(f"interrupted after round {completed}")
        self.completed = completed


def check(completed: int) -> None:
    """Raise `RunInterrupted(completed)` once SIGINT has been received."""
    if STOP.is_set():
        raise RunInterrupted(completed)


@contextlib.contextmanager
def stop_on_sigint():
    """Within the block, SIGINT sets `STOP` instead of raising KeyboardInterrupt (main thread
    only; elsewhere the block changes nothing). The previous handler is restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    STOP.clear()
    previous = signal.signal(signal.SIGINT, lambda signum, frame: STOP.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
