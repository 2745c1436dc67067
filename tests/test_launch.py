"""The shared launcher of `fedguard run` (fedguard/launch.py): command line, summary, timeout,
and stopping exactly the process group and session it started. Stand-in children (small
Python scripts) replace the simulation, so these tests take about a second."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from fedguard import launch

# a child that starts a grandchild (as a run starts Ray's processes), prints its pid, then waits
PARENT_OF_SLEEPER = """
import subprocess, sys, time
kid = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(kid.pid, flush=True)
time.sleep(60)
"""

# a stand-in `fedguard run`: writes summary.json into hydra.run.dir, echoes its arguments
FAKE_RUN = """
import json, pathlib, sys
args = sys.argv[1:]
print(" ".join(args))
out = [a.split("=", 1)[1] for a in args if a.startswith("hydra.run.dir=")]
if out:
    pathlib.Path(out[0]).mkdir(parents=True, exist_ok=True)
    (pathlib.Path(out[0]) / "summary.json").write_text(json.dumps({"final_accuracy": 0.5, "args": args}))
print("done", file=sys.stderr)
"""


def fake_cli(script: str):
    return lambda *args: [sys.executable, "-c", script, *args]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for_line(job: launch.Launch) -> str:
    deadline = time.monotonic() + 30
    while not job.output()[0].strip():
        assert time.monotonic() < deadline and job.running(), job.output()
        time.sleep(0.02)
    return job.output()[0].split()[0]


def test_cli_command_is_this_interpreter_running_the_module():
    assert launch.cli_command("run", "rounds=2") == [sys.executable, "-m", "fedguard.cli", "run", "rounds=2"]


def test_read_summary(tmp_path):
    assert launch.read_summary(None) is None and launch.read_summary(tmp_path) is None
    (tmp_path / "summary.json").write_text('{"final_accuracy": 0.25}')
    assert launch.read_summary(tmp_path) == {"final_accuracy": 0.25}


def test_run_appends_the_run_dir_and_returns_the_summary(tmp_path, monkeypatch):
    monkeypatch.setattr(launch, "cli_command", fake_cli(FAKE_RUN))
    run = tmp_path / "run"
    proc, summary = launch.run(["rounds=2", "seed=1"], run, timeout=60)
    assert proc.returncode == 0 and proc.stderr.strip() == "done"
    assert proc.stdout.split() == ["run", "rounds=2", "seed=1", f"hydra.run.dir={run}"]
    assert summary == {"final_accuracy": 0.5, "args": ["run", "rounds=2", "seed=1", f"hydra.run.dir={run}"]}
    proc, summary = launch.run(["-m", "seed=0,1"], timeout=60)  # no run dir: nothing appended, no summary
    assert proc.stdout.split() == ["run", "-m", "seed=0,1"] and summary is None


def test_env_is_added_to_the_callers(monkeypatch):
    script = "import os; print(os.environ['FG_TEST_A'], os.environ.get('PATH') is not None)"
    monkeypatch.setattr(launch, "cli_command", fake_cli(script))
    proc, _ = launch.run([], env={"FG_TEST_A": "x"}, timeout=60)
    assert proc.stdout.split() == ["x", "True"]


def test_the_real_cli_reports_an_unknown_command():
    proc, summary = launch.run([], command="no-such-command", timeout=60)
    assert proc.returncode == 2 and "unknown command" in proc.stderr and summary is None


def test_timeout_stops_the_child_and_what_it_started(monkeypatch):
    monkeypatch.setattr(launch, "cli_command", fake_cli(PARENT_OF_SLEEPER))
    job = launch.Launch([])
    kid = int(wait_for_line(job))
    assert alive(kid) and {job.pid, kid} <= set(launch.session_pids(job.pid))
    with pytest.raises(subprocess.TimeoutExpired) as err:
        job.wait(timeout=0.5)
    assert str(kid) in err.value.output
    assert job.proc.returncode == -signal.SIGTERM
    assert not alive(kid) and launch.session_pids(job.pid) == []


def test_poll_runs_while_the_child_runs_and_its_error_stops_the_child(monkeypatch):
    monkeypatch.setattr(launch, "cli_command", fake_cli(PARENT_OF_SLEEPER))
    seen = []

    def poll(job: launch.Launch) -> None:
        seen.append(job.running())
        if len(seen) == 3:
            raise RuntimeError("enough")

    job = launch.Launch([])
    with pytest.raises(RuntimeError, match="enough"):
        job.wait(timeout=60, poll=poll, poll_s=0.01)
    assert seen == [True, True, True] and not job.running() and launch.session_pids(job.pid) == []


def test_stop_escalates_to_sigkill_and_leaves_other_processes_alone(monkeypatch):
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(60)"
    monkeypatch.setattr(launch, "cli_command", fake_cli(stubborn))
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # not in the session
    try:
        with launch.Launch([]) as job:
            wait_for_line(job)
            job.stop(grace=0.5)
            assert job.proc.returncode == -signal.SIGKILL
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_context_exit_stops_a_running_child(monkeypatch):
    monkeypatch.setattr(launch, "cli_command", fake_cli(PARENT_OF_SLEEPER))
    with pytest.raises(KeyError):
        with launch.Launch([]) as job:
            kid = int(wait_for_line(job))
            raise KeyError("caller failed mid-run")
    assert not job.running() and not alive(kid)


def test_summary_of_a_finished_run_is_read_after_it_ends(tmp_path, monkeypatch):
    monkeypatch.setattr(launch, "cli_command", fake_cli(FAKE_RUN))
    with launch.Launch(["x=1"], tmp_path / "r") as job:
        proc, summary = job.wait(timeout=60)
    assert proc.returncode == 0 and json.loads((tmp_path / "r" / "summary.json").read_text()) == summary
