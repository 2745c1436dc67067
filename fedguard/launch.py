"""Launch `fedguard run` as a child process: the one way tests and benchmarks start a run.

    proc, summary = launch.run(["num_clients=4", "rounds=3"], run_dir, timeout=300)

`run` executes `python -m fedguard.cli run OVERRIDES hydra.run.dir=RUN_DIR` (the interpreter
running the caller) and returns the completed process (return code, stdout, stderr as text)
and the run directory's parsed summary.json (None when there is none: a failed run, a
multirun, a run without `run_dir`). `Launch` is the same child held open, for callers that act
while it runs (kill it mid-run, remove a Ray node, run two at once).

Each child starts in its own session, so its process group id is its pid, and the Ray
processes it spawns stay in that session. A timeout, an exception in the caller or `stop()`
signals that group, by the child's pid, and then whatever is left of its session: never a
process this launch did not start. stdout and stderr go to temporary files, not pipes, so a
chatty run cannot block while the caller waits or polls.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path


def cli_command(*args: str) -> list[str]:
    """`python -m fedguard.cli ARGS` with the current interpreter."""
    return [sys.executable, "-m", "fedguard.cli", *args]


def read_summary(run_dir: str | os.PathLike | None) -> dict | None:
    """The parsed `run_dir/summary.json`, None when there is no such file."""
    path = Path(run_dir) / "summary.json" if run_dir is not None else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


def session_pids(sid: int) -> list[int]:
    """Live processes of session `sid` (a child started in its own session: its pid), read from
    /proc; empty where there is no /proc."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # after the command: state ppid pgrp session
            pids.append(int(stat.parent.name))
    return pids


def stop_session(proc: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
    """Stop a child started with `start_new_session=True` and what it spawned: `sig` to its
    process group (the group id is the child's pid), up to `grace` seconds for the child to
    exit, then SIGKILL to the group and, for up to `grace` seconds more (a dying process may
    still fork), to every process left in its session."""
    pid = proc.pid
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    deadline = time.monotonic() + grace
    while (left := session_pids(pid)) and time.monotonic() < deadline:
        for other in left:
            try:
                os.kill(other, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.2)


class Launch:
    """`fedguard ARGS` (default command `run`) started now, in its own session.

    `overrides` are Hydra overrides (or, with `command`, that command's arguments); `run_dir`,
    when given, is appended as `hydra.run.dir=RUN_DIR` and is where `wait` reads summary.json.
    `env` adds to (and overrides) the caller's environment. Use as a context manager to stop
    the run if the block is left while it still runs.
    """

    def __init__(self, overrides: Sequence[str], run_dir: str | os.PathLike | None = None, *,
                 env: dict[str, str] | None = None, command: str = "run") -> None:
        self.run_dir = Path(run_dir) if run_dir is not None else None
        args = [*overrides, *([f"hydra.run.dir={self.run_dir}"] if self.run_dir is not None else [])]
        self.args = cli_command(command, *args)
        self._out = tempfile.TemporaryFile("w+")
        self._err = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(self.args, stdout=self._out, stderr=self._err, text=True,
                                     env={**os.environ, **(env or {})}, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> tuple[str, str]:
        """stdout and stderr written so far."""
        texts = []
        for fh in (self._out, self._err):
            fh.flush()
            fh.seek(0)
            texts.append(fh.read())
        return texts[0], texts[1]

    def wait(self, timeout: float | None = None, poll: Callable[[Launch], None] | None = None,
             poll_s: float = 0.2) -> tuple[subprocess.CompletedProcess, dict | None]:
        """Wait for the run to end: (completed process, summary.json or None).

        `poll(self)` is called every `poll_s` seconds while it runs (e.g. to sample memory or
        act mid-run). Past `timeout` seconds the run's session is stopped and
        `subprocess.TimeoutExpired` raised, with the output so far; an exception from `poll`
        stops it too.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while self.running():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    self.stop()
                    out, err = self.output()
                    raise subprocess.TimeoutExpired(self.args, timeout, output=out, stderr=err)
                if poll is None:
                    try:
                        self.proc.wait(timeout=left)
                    except subprocess.TimeoutExpired:
                        pass
                else:
                    poll(self)
                    time.sleep(poll_s if left is None else min(poll_s, max(left, 0.0)))
        except BaseException:
            self.stop()
            self.close()
            raise
        out, err = self.output()
        self.close()
        done = subprocess.CompletedProcess(self.args, self.proc.returncode, out, err)
        return done, read_summary(self.run_dir)

    def stop(self, sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
        """Stop the run and everything it spawned (see `stop_session`); nothing if it ended."""
        if self.running():
            stop_session(self.proc, sig, grace)

    def close(self) -> None:
        for fh in (self._out, self._err):
            fh.close()

    def __enter__(self) -> Launch:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        self.close()


def run(overrides: Sequence[str], run_dir: str | os.PathLike | None = None, *, timeout: float | None = None,
        env: dict[str, str] | None = None, poll: Callable[[Launch], None] | None = None,
        command: str = "run") -> tuple[subprocess.CompletedProcess, dict | None]:
    """Run `fedguard run OVERRIDES [hydra.run.dir=RUN_DIR]` to its end (see `Launch.wait`):
    (completed process, summary.json or None)."""
    return Launch(overrides, run_dir, env=env, command=command).wait(timeout, poll)
