"""The CLI's refusals that happen before Hydra or Ray start (no simulation here)."""

import pytest

from fedguard import cli
from fedguard.interrupt import STOP, RunInterrupted, check, stop_on_sigint


@pytest.mark.parametrize("record", cli.RUN_RECORDS)
def test_a_run_into_a_directory_holding_a_run_is_refused_untouched(tmp_path, capsys, record):
    (tmp_path / record).write_bytes(b"earlier run\n")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run", "rounds=2", f"hydra.run.dir={tmp_path}"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"resume={tmp_path}" in err and record in err and err.count("\n") == 1
    assert [p.name for p in tmp_path.iterdir()] == [record]  # nothing written, nothing removed
    assert (tmp_path / record).read_bytes() == b"earlier run\n"


def test_an_empty_or_resumed_directory_is_not_refused(tmp_path):
    cli.refuse_reused_run_dir([f"hydra.run.dir={tmp_path}"])  # empty: a fresh run may use it
    (tmp_path / "rounds.jsonl").write_text("")
    cli.refuse_reused_run_dir([f"resume={tmp_path}", f"hydra.run.dir={tmp_path}"])


def test_sigint_sets_stop_instead_of_raising():
    import os
    import signal

    before = signal.getsignal(signal.SIGINT)  # default_int_handler; SIG_IGN under a non-interactive `cmd &`
    with stop_on_sigint():
        check(0)  # not set yet: no raise
        os.kill(os.getpid(), signal.SIGINT)
        assert STOP.wait(5)
        with pytest.raises(RunInterrupted) as stop:
            check(3)
        assert stop.value.completed == 3
    assert signal.getsignal(signal.SIGINT) is before  # restored


@pytest.mark.parametrize("argv, code, stream, text", [(["--help"], 0, "out", "commands:"),
                                                     (["--version"], 0, "out", "fedguard 0."),
                                                     ([], 2, "err", "usage: fedguard"),
                                                     (["bogus"], 2, "err", "unknown command 'bogus'")])
def test_top_level_help_version_and_errors(capsys, argv, code, stream, text):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == code
    assert text in getattr(capsys.readouterr(), stream)
