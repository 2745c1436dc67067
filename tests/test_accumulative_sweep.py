"""benchmarks/accumulative_sweep.py: forks of the online learner are independent (model and
momentum), the momentum-only step is -lr * momentum * buffer, and a tiny digits sweep writes
its files and is read back from its cache."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import accumulative_sweep as sweep  # noqa: E402

from fedguard.models import build_model  # noqa: E402


def learner(momentum: float = 0.9, steps: int = 2) -> sweep.Online:
    torch.manual_seed(0)
    online = sweep.Online(build_model("mlp", (1, 8, 8), 10, hidden=16), lr=0.1, momentum=momentum)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        online.step(torch.rand(12, 1, 8, 8, generator=gen), torch.randint(0, 10, (12,), generator=gen))
    return online


def snapshot(online: sweep.Online) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    return ([p.detach().clone() for p in online.model.parameters()],
            [None if b is None else b.clone() for b in online.buffers])


def test_forks_share_neither_momentum_buffers_nor_weights():
    parent = learner()
    assert all(b is not None for b in parent.buffers)
    left, right = parent.fork(), parent.fork()
    assert not {b.data_ptr() for b in left.buffers} & {b.data_ptr() for b in right.buffers}
    assert not {b.data_ptr() for b in left.buffers} & {b.data_ptr() for b in parent.buffers}
    before_right, before_parent = snapshot(right), snapshot(parent)
    x, y = torch.rand(12, 1, 8, 8), torch.randint(0, 10, (12,))
    left.step(x, y)  # replaces left's buffers, through sgd_steps
    left.momentum_step()
    for b in left.buffers:
        b.mul_(3.0)  # and mutates them in place
    for online, before in ((right, before_right), (parent, before_parent)):
        params, buffers = snapshot(online)
        assert all(torch.equal(a, b) for a, b in zip(params, before[0]))
        assert all(torch.equal(a, b) for a, b in zip(buffers, before[1]))
    assert not all(torch.equal(a, b) for a, b in zip(snapshot(left)[1], before_right[1]))
    assert all(b is None for b in parent.fork(reset_momentum=True).buffers)


def test_momentum_only_step_moves_by_lr_times_momentum_times_buffer():
    online = learner(momentum=0.9)
    params, buffers = snapshot(online)
    online.momentum_step()
    for p, p0, b0, b in zip(online.model.parameters(), params, buffers, online.buffers):
        torch.testing.assert_close(p.detach(), p0 - 0.1 * 0.9 * b0, rtol=0, atol=1e-7)  # by hand
        torch.testing.assert_close(b, 0.9 * b0, rtol=0, atol=0)
    still = learner(momentum=0.0)  # no momentum: no buffer, no move
    params, _ = snapshot(still)
    assert all(b is None for b in still.buffers)
    still.momentum_step()
    assert all(torch.equal(p.detach(), p0) for p, p0 in zip(still.model.parameters(), params))


def test_grid_scopes_values_to_a_dataset():
    args = sweep.build_parser().parse_args(["--dataset", "digits", "mnist", "--burn-epochs", "1", "digits:20",
                                            "--momentum", "0", "0.9", "--budget", "4.0", "none"])
    cells = sweep.grid(args)
    assert len(cells) == 2 * 2 * 2
    assert {c["burn_epochs"] for c in cells if c["dataset"] == "digits"} == {20}
    assert {c["burn_epochs"] for c in cells if c["dataset"] == "mnist"} == {1}
    assert {c["budget"] for c in cells} == {"4", "none"}
    assert {c["val_size"] for c in cells if c["dataset"] == "mnist"} == {500}
    assert sweep.roots(["mnist=/m", "/all"]) == {"digits": None, "mnist": "/m", "cifar10": "/all"}


def test_tiny_digits_sweep_writes_its_files_and_reads_its_cache(tmp_path):
    argv = ["--dataset", "digits", "--model", "mlp", "--momentum", "0", "0.9", "--T", "2", "--budget", "none",
            "--burn-epochs", "1", "--batch", "20", "--val-size", "40", "--eval-size", "100", "--seeds", "0",
            "--out", str(tmp_path)]
    text = sweep.main(argv)
    for name in ("accumulative_sweep.md", "accumulative_sweep.csv", "accumulative_sweep.png", "cells.jsonl"):
        assert (tmp_path / name).stat().st_size > 0
    rows = [json.loads(line) for line in (tmp_path / "cells.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["k"] == 2 for r in rows)
    still = next(r for r in rows if r["cell"]["momentum"] == 0.0)
    assert still["a_momonly"] == still["c"] and still["a_nomom"] == still["a"]  # no momentum to carry
    assert "| mom=0.0 | 1 |" in text and "| mom=0.9 | 1 |" in text
    assert sweep.main(argv + ["--no-run"]) == text  # read back, not rerun
    assert len((tmp_path / "cells.jsonl").read_text().splitlines()) == 2
