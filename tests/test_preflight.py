"""`fedguard run`'s checks before Hydra and Ray start: unknown and removed keys, knobs the selected
entry does not read, `resume=` refusals, dataset files read through, the hub offline. Every
refusal is one line on stderr, exit code 2, and nothing on disk. No simulation runs here."""

import gzip
import os
import struct
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
from omegaconf import OmegaConf

from fedguard import cli
from fedguard.config import ConfigError, compose, validate
from fedguard.config.keys import inactive_knob_warnings
from fedguard.data import sources
from fedguard.preflight import check_run
from tests.conftest import REPO


def _run(capsys, monkeypatch, tmp_path, *overrides):
    """`fedguard run OVERRIDES` in-process from `tmp_path`: (exit code, stderr)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run", *overrides])
    return exit_.value.code, capsys.readouterr().err


@pytest.mark.parametrize("overrides, text", [
    (["+num_client=5"], "unknown key 'num_client' (added with +?)"),
    (["num_client=5"], "unknown key 'num_client'"),
    (["+defense.foo=1"], "unknown key 'defense.foo'"),
    (["~rounds"], "'rounds' was removed"),
    (["rounds=many"], "rounds=many"),
    (["defense=bogus"], "defense/bogus"),
    (["rounds=0"], "rounds=0"),
    (["dataset=mnist"], "dataset.root"),
    (["-m", "defense=fedavg,bogus"], "defense/bogus"),
    (["resume=/no/such/dir"], "resume='/no/such/dir'"),
])
def test_config_errors_are_one_line_exit_2_and_leave_nothing(capsys, monkeypatch, tmp_path, overrides, text):
    code, err = _run(capsys, monkeypatch, tmp_path, *overrides)
    assert code == 2 and text in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []  # no outputs/ or multirun/ folder
    assert not os.path.exists("/no/such/dir")


def test_the_unknown_key_names_the_likely_one():
    with pytest.raises(ConfigError, match="did you mean num_clients"):
        validate(compose(["+num_client=5"]))


@pytest.mark.parametrize("overrides, key", [
    (["defense.inner=median"], "defense.inner"),  # fedavg wraps nothing
    (["attack.norm_bound=3"], "attack.norm_bound"),  # attack=none
    (["attack.burn_in=2"], "attack.burn_in"),  # the schedule: every attack but none
    (["attack=scaling", "num_malicious=1", "attack.norm_bound=3"], "attack.norm_bound"),
    (["sanitizer=epic", "sanitizer.dsc.eps=0.1"], "sanitizer.dsc.eps"),
    (["defense=krum", "defense.history.size=3"], "defense.history.size"),
    (["partitioner.alpha=0.1"], "partitioner.alpha"),  # iid
    (["dataset.num_samples=10"], "dataset.num_samples"),  # digits
])
def test_a_knob_its_entry_does_not_read_is_warned_about(overrides, key):
    warnings = inactive_knob_warnings(compose(overrides), overrides)
    assert len(warnings) == 1 and key in warnings[0] and warnings[0].startswith("warning: ")


@pytest.mark.parametrize("overrides", [
    ["defense=clipping", "defense.inner=median"],
    ["defense=mddsc", "defense.history.size=3"],
    ["defense=mddsc", "defense.inner=krum", "defense.assumed_malicious=2"],  # read by the wrapper's inner
    ["attack=accumulative", "num_malicious=1", "attack.norm_bound=3", "attack.burn_in=2"],
    ["sanitizer=epic", "sanitizer.window=64", "sanitizer.epic.fraction=0.2"],
    ["dataset.val_size=100", "rounds=3", "hydra.job.name=x"],  # shared by every dataset; not a group's
])
def test_a_knob_its_entry_reads_is_not_warned_about(overrides):
    assert inactive_knob_warnings(compose([o for o in overrides if "hydra" not in o]), overrides) == []


def test_the_warning_uses_the_command_line_not_the_value(capsys):
    """`defense.inner=null` equals the schema default, yet the user set it: warned."""
    check_run(["defense.inner=null"])
    err = capsys.readouterr().err
    assert "warning: defense.inner=null has no effect: defense=fedavg does not read defense.inner" in err


def test_a_multirun_warns_for_the_jobs_that_do_not_read_the_knob(capsys):
    check_run(["defense=fedavg,clipping", "defense.inner=median"], multirun=True)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "defense=fedavg does not read defense.inner" in err[0]


# ------------------------------------------------------------------------------- resume

@pytest.fixture
def finished_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    OmegaConf.save(compose(["rounds=4", "num_clients=4"]), run / "config.yaml")
    (run / "rounds.jsonl").write_text('{"round": 1}\n')
    return run


@pytest.mark.parametrize("override, key", [("rounds=99", "rounds"), ("seed=5", "seed"),
                                           ("defense=median", "defense.name"), ("num_clients=10", "num_clients")])
def test_resume_with_a_changed_value_is_refused(capsys, monkeypatch, tmp_path, finished_run, override, key):
    before = {p.name: p.read_bytes() for p in finished_run.iterdir()}
    code, err = _run(capsys, monkeypatch, tmp_path, f"resume={finished_run}", override)
    assert code == 2 and err.count("\n") == 1 and f"resume={finished_run}" in err and f"{key}=" in err, err
    assert {p.name: p.read_bytes() for p in finished_run.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    if key == "rounds":
        assert "rounds=4" in err and "not extended" in err


def test_resume_with_the_saved_values_or_progress_passes(finished_run):
    check_run([f"resume={finished_run}"])
    check_run([f"resume={finished_run}", "rounds=4", "num_clients=4", "progress=false", "defense=fedavg"])


# ------------------------------------------------------------------------------- data

def _idx(path, dims, data=None, gz=True):
    data = np.zeros(int(np.prod(dims)), np.uint8) if data is None else data
    raw = struct.pack(">HBB", 0, 8, len(dims)) + struct.pack(">" + "I" * len(dims), *dims) + data.tobytes()
    if gz:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as fh:
            fh.write(raw)
    else:
        path.write_bytes(raw)


def _fake_mnist(root, train=64, test=32):
    root.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for stem, dims in (("train-images-idx3-ubyte", (train, 28, 28)), ("train-labels-idx1-ubyte", (train,)),
                       ("t10k-images-idx3-ubyte", (test, 28, 28)), ("t10k-labels-idx1-ubyte", (test,))):
        _idx(root / stem, dims, rng.integers(0, 256 if len(dims) > 1 else 10, int(np.prod(dims))).astype(np.uint8))
    return root


def test_verify_mnist_reads_the_files_through(tmp_path):
    root = _fake_mnist(tmp_path / "mnist")
    assert sources.verify_mnist(root) is None
    images = root / "train-images-idx3-ubyte.gz"
    whole = images.read_bytes()
    images.write_bytes(whole[:len(whole) // 2])  # truncated: no end-of-stream marker
    problem = sources.verify_mnist(root)
    assert str(images) in problem and "truncated" in problem
    images.write_bytes(whole[:-8] + bytes(8))  # the trailer's CRC and size wrong
    assert str(images) in sources.verify_mnist(root)
    images.unlink()
    _idx(root / "train-images-idx3-ubyte", (64, 28, 28), np.zeros(100, np.uint8), gz=False)  # header says more
    problem = sources.verify_mnist(root)
    assert "train-images-idx3-ubyte" in problem and "header says 64x28x28" in problem
    (root / "train-images-idx3-ubyte").unlink()
    _idx(root / "train-images-idx3-ubyte", (63, 28, 28))
    assert "63 images" in sources.verify_mnist(root) and "64 labels" in sources.verify_mnist(root)


def test_verify_cifar10_npz_and_batches(tmp_path):
    npz = tmp_path / "c.npz"
    np.savez(npz, x_train=np.zeros((4, 32, 32, 3), np.uint8), y_train=np.zeros(4), x_test=np.zeros((2, 32, 32, 3)),
             y_test=np.zeros(2))
    assert sources.verify_cifar10(npz) is None
    npz.write_bytes(npz.read_bytes()[:300])
    assert str(npz) in sources.verify_cifar10(npz) and "not a readable .npz" in sources.verify_cifar10(npz)
    with zipfile.ZipFile(npz, "w") as zf:
        zf.writestr("x_train.npy", b"")
    assert "y_train" in sources.verify_cifar10(npz)
    batches = tmp_path / "batches"
    batches.mkdir()
    for name in sources.CIFAR_BATCHES:
        (batches / name).write_bytes(b"\x80\x04")  # a truncated pickle
    assert "data_batch_1" in sources.verify_cifar10(batches)


def test_verify_hub_offline(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    start = time.perf_counter()
    problem = sources.verify_hub("ylecun/mnist")
    assert "unreachable" in problem and "ylecun/mnist" in problem and time.perf_counter() - start < 10
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    assert "offline (HF_HUB_OFFLINE=1)" in sources.verify_hub("ylecun/mnist")
    (tmp_path / "hub" / "datasets--ylecun--mnist").mkdir(parents=True)
    assert sources.verify_hub("ylecun/mnist") is None  # cached: the loader can read it offline


def test_a_truncated_mnist_file_fails_fast_naming_it_and_leaves_nothing(tmp_path):
    """The real command, as a user types it: exit 2 in under 20 s, one line, no traceback."""
    root = _fake_mnist(tmp_path / "mnist", train=600)
    images = root / "train-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:5000])
    work = tmp_path / "work"
    work.mkdir()
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "fedguard.cli", "run", "dataset=mnist", f"dataset.root={root}",
                           "rounds=2"], cwd=work, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    elapsed = time.perf_counter() - start
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert elapsed < 20, elapsed
    assert str(images) in proc.stderr and "truncated" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stdout == ""
    assert list(work.iterdir()) == []  # no outputs/
