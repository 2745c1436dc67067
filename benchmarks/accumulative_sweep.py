"""Where does the accumulative attack (Pang et al. 2021) matter? A sweep of the reference's
online protocol, single learner, plain torch over fedguard's own pieces.

    python benchmarks/accumulative_sweep.py --dataset digits --model mlp cnn cnn_bn \\
        --momentum 0 0.9 --burn-epochs 20 --seeds 0 1 2
    python benchmarks/accumulative_sweep.py --dataset mnist --root ../shared/data/mnist \\
        --model cnn cnn_bn --momentum 0 0.9 --burn-epochs 1 --seeds 0 1 2

The grid options (`--dataset --model --burn-epochs --burn-lr --lr --momentum --batch --T
--budget --poison-base --augment --eps`) each take a list; the cells are their cartesian
product. A value written `DATASET:VALUE` (e.g. `--burn-epochs 1 digits:20`) applies to that
dataset only and replaces the plain values there. Every cell is run for every `--seeds`; each
(cell, seed) result is a line of OUT/cells.jsonl, read back instead of rerun, so an
interrupted sweep continues where it stopped (delete the lines, or the file, after changing
the code). Burned-in models are cached in OUT/burnin/. The table and chart cover the cells
of the grid given (`--no-run`: only those already in cells.jsonl).

`--root` says where the dataset files are: one directory for every file-based dataset of
the grid, or `NAME=DIR` per dataset (`--root mnist=../shared/data/mnist
cifar10=../shared/data/cifar10-subset`). digits (scikit-learn's bundled 8x8 digits) needs none.

The protocol, per cell and seed (the reference's `online_accu_train.py`, scaled down):
- data (`fedguard.data.sources.load_splits`): the training pool, the attacker's validation
  batch (`--val-size` images carved from the training set), and an evaluation set (the first
  `--eval-size` test images; digits has its test set carved out of its 1,797 images);
- burn-in: central SGD (`fedguard.training.sgd_steps`), constant `--burn-lr`, momentum 0.9,
  batches of 128, `--burn-epochs` epochs of a seeded shuffle; with `--augment 1` random
  shifts (pad 1 digits, 2 MNIST, 4 CIFAR, plus flips on CIFAR) as the reference's loader
  has. No weight decay (the reference uses 1e-4; fedguard's loop has none);
- the trigger: the pool's first `--batch` images (the reference's unshuffled loader),
  augmented once, then crafted ONCE at the burned-in model in eval mode
  (`perturb_trigger`, L-inf `--eps`, 2 signed steps of eps): it lowers the alignment A of
  the trigger's gradient with the validation batch's;
- the online phase: ONE SGD optimizer (`--lr`, `--momentum`, no weight decay) kept through
  the accumulation and the trigger (`sgd_steps` with its `buffers`). At each accumulation
  step the base batch (`--poison-base trigger`: the trigger's own images re-augmented, the
  reference's quirk; `stream`: the next batch of a seeded shuffle of the rest of the pool)
  is poisoned at the CURRENT model in eval mode against the fixed crafted trigger
  (`perturb_batch`, same eps, gamma 1) and trained on once in train mode. It runs `--T`
  steps, or stops earlier once the evaluation error exceeds the burned-in error by
  `--budget` points (the reference stops at a test error of 0.18: the attacker watches the
  test error, here the evaluation set); `--budget none`: always T steps;
- the trigger: ONE SGD step on the crafted trigger batch, train mode.

What is reported, each an error increase in points on the evaluation set over the
burned-in model's error (e0), every variant from a fork of the same state (the model copied,
the momentum buffers cloned):
- a: accumulation, then the trigger step (momentum carried): the attack;
- b: the trigger step alone at the burned-in model, fresh optimizer;
- c: after the accumulation, before the trigger: the accumulation's own cost (stealth);
- a_next: after the accumulation, a clean step on other pool images (momentum carried);
- a_momonly: after the accumulation, a zero-gradient step: the parameters move by
  -lr * momentum * buffer, the momentum the accumulation left (equal to c at momentum 0);
- a_nomom: after the accumulation, the trigger step with the momentum reset;
- a_ctrl: the same number of clean steps (the unpoisoned base batches), then the trigger
  step (momentum carried); c_ctrl: before that trigger step;
- b_next: a clean step on other pool images at the burned-in model (a single step's noise);
- k: accumulation steps run; A0, A_acc, A_ctrl: the alignment A (eval mode) at the
  burned-in model, after the accumulation, after the clean control.
If a is well above b but a_next or a_momonly are as high as a, the trigger is not what does
the damage: any step after the accumulation does it, through the momentum it left.

Writes OUT/accumulative_sweep.md (cell means +- the seeds' standard deviation),
OUT/accumulative_sweep.csv and OUT/accumulative_sweep.png (grouped bars per cell).
"""

from __future__ import annotations

import argparse
import copy
import csv
import itertools
import json
import textwrap
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from fedguard.attacks.objectives import alignment, model_params, perturb_batch, perturb_trigger  # noqa: E402
from fedguard.data.sources import load_splits  # noqa: E402
from fedguard.models import build_model  # noqa: E402
from fedguard.training import sgd_steps  # noqa: E402

VERSION = 1  # bump when a change of this file changes results: cached lines of other versions are rerun
CPU = torch.device("cpu")
DATASETS = ("digits", "mnist", "cifar10")
PAD = {"digits": 1, "mnist": 2, "cifar10": 4}
VAL_SIZE = {"digits": 200, "mnist": 500, "cifar10": 500}  # the attacker's validation batch (reference: 500)
BURN_MOMENTUM, BURN_BATCH, CRAFT_STEPS, GAMMA = 0.9, 128, 2, 1.0

# grid axis -> (option type, default values)
AXES: dict[str, tuple[type, list]] = {
    "dataset": (str, ["digits"]),
    "model": (str, ["cnn_bn"]),
    "burn_epochs": (int, [20]),
    "burn_lr": (float, [0.1]),
    "lr": (float, [0.1]),
    "momentum": (float, [0.9]),
    "batch": (int, [100]),
    "T": (int, [30]),
    "budget": (str, ["4"]),  # points over e0, or "none"
    "poison_base": (str, ["trigger"]),
    "augment": (int, [1]),
    "eps": (float, [0.2]),
}
METRICS = ["e0", "k", "a", "b", "c", "a_next", "a_momonly", "a_nomom", "a_ctrl", "c_ctrl", "b_next",
           "A0", "A_acc", "A_ctrl", "secs"]
BARS = [("c", "c: before the trigger"), ("a", "a: accumulation + trigger"), ("b", "b: trigger alone"),
        ("a_next", "a_next: clean step after accumulation"), ("a_momonly", "a_momonly: zero-gradient step")]


# ------------------------------------------------------------------------------ the learner

class Online:
    """A model and its SGD momentum buffers: one optimizer kept across `step` calls
    (`fedguard.training.sgd_steps` with `buffers`). `fork` gives an independent copy."""

    def __init__(self, model: nn.Module, lr: float, momentum: float, buffers: list | None = None):
        self.model, self.lr, self.momentum = model, lr, momentum
        self.buffers = buffers if buffers is not None else [None] * len(list(model.parameters()))

    def fork(self, reset_momentum: bool = False) -> Online:
        """A copy of the model and of the momentum buffers (cloned: `sgd_steps` replaces the
        list's entries in place, so a shared list or shared tensors would couple the forks)."""
        buffers = None if reset_momentum else [None if b is None else b.detach().clone() for b in self.buffers]
        return Online(copy.deepcopy(self.model), self.lr, self.momentum, buffers)

    def step(self, x: Tensor, y: Tensor) -> None:
        """One SGD step on (x, y) in train mode, momentum carried."""
        sgd_steps(self.model, [(x, y)], self.lr, self.momentum, CPU, buffers=self.buffers)

    def momentum_step(self) -> None:
        """A step with a zero gradient (torch's SGD): buffer <- momentum * buffer, then
        params -= lr * buffer, i.e. the parameters move by -lr * momentum * (old buffer)."""
        params = list(self.model.parameters())
        opt = torch.optim.SGD(params, lr=self.lr, momentum=self.momentum)
        for p, buf in zip(params, self.buffers, strict=True):
            p.grad = torch.zeros_like(p)
            if buf is not None:
                opt.state[p]["momentum_buffer"] = buf.clone()
        opt.step()
        self.buffers = [opt.state[p].get("momentum_buffer") if b is not None else None
                        for p, b in zip(params, self.buffers)]
        for p in params:
            p.grad = None


@torch.no_grad()
def error(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Error in points, eval mode (the model's mode is restored)."""
    was = model.training
    model.eval()
    wrong = sum(int((model(x[i:i + 500]).argmax(1) != y[i:i + 500]).sum()) for i in range(0, len(y), 500))
    model.train(was)
    return 100.0 * wrong / len(y)


def align(model: nn.Module, xt: Tensor, yt: Tensor, xv: Tensor, yv: Tensor) -> float:
    was = model.training
    model.eval()
    value = float(alignment(model, model_params(model), xt, yt, xv, yv).detach())
    model.train(was)
    return value


def augment(x: Tensor, dataset: str, gen: torch.Generator) -> Tensor:
    """Random shifts (zero padding of PAD[dataset], a random crop back) and, on CIFAR, flips."""
    pad = PAD[dataset]
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen).tolist()
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).tolist()
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    if dataset == "cifar10":
        flip = torch.rand(n, generator=gen) < 0.5
        out[flip] = out[flip].flip(3)
    return out


# ------------------------------------------------------------------------------------ data

@dataclass(frozen=True)
class Data:
    x: Tensor  # the training pool
    y: Tensor
    x_val: Tensor  # the attacker's validation batch
    y_val: Tensor
    x_eval: Tensor  # the evaluation set
    y_eval: Tensor
    num_classes: int


def load_data(dataset: str, root: str | None, seed: int, val_size: int, eval_size: int) -> Data:
    if dataset not in DATASETS:
        raise SystemExit(f"--dataset {dataset}: allowed {', '.join(DATASETS)}")
    if dataset != "digits" and root is None:
        raise SystemExit(f"--dataset {dataset} needs its files: --root DIR or --root {dataset}=DIR")
    splits = load_splits(dataset, root, val_size, 500, seed)  # test_size 500: digits' carved test set
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    n_eval = len(splits.test) if eval_size <= 0 else min(eval_size, len(splits.test))
    return Data(t(splits.pool.x), t(splits.pool.y), t(splits.val.x), t(splits.val.y),
                t(splits.test.x[:n_eval]), t(splits.test.y[:n_eval]), splits.num_classes)


# ---------------------------------------------------------------------------------- burn-in

def burn_in(cell: dict, seed: int, data: Data, cache: Path | None) -> nn.Module:
    """The burned-in model: central SGD at a constant lr (cached under `cache`)."""
    ds = cell["dataset"]
    torch.manual_seed(seed)
    model = build_model(cell["model"], tuple(data.x.shape[1:]), data.num_classes)
    key = (f"{ds}_{cell['model']}_e{cell['burn_epochs']}_lr{cell['burn_lr']:g}_aug{cell['augment']}"
           f"_val{cell['val_size']}_s{seed}_v{VERSION}")
    path = cache / f"{key}.pt" if cache is not None else None
    if path is not None and path.is_file():
        model.load_state_dict(torch.load(path))
        return model
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(cell["burn_epochs"]):
        order = torch.randperm(len(data.y), generator=gen)
        batches += [order[i:i + BURN_BATCH] for i in range(0, len(order), BURN_BATCH)]
    prepare = (lambda m, i, x, y: (augment(x, ds, gen), y)) if cell["augment"] else None
    sgd_steps(model, ((data.x[idx], data.y[idx]) for idx in batches), cell["burn_lr"], BURN_MOMENTUM, CPU,
              prepare=prepare)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return model


# ------------------------------------------------------------------------------- one seed

def run_seed(cell: dict, seed: int, data: Data, cache: Path | None = None) -> dict:
    """One (cell, seed): the burn-in, the trigger, the accumulation and every variant."""
    t0 = time.time()
    ds, n, eps = cell["dataset"], cell["batch"], cell["eps"]
    budget = None if cell["budget"] == "none" else float(cell["budget"])
    base = burn_in(cell, seed, data, cache)
    xe, ye, xv, yv = data.x_eval, data.y_eval, data.x_val, data.y_val
    e0 = error(base, xe, ye)
    out = {"e0": e0}
    diff = lambda model: error(model, xe, ye) - e0  # noqa: E731

    gen = torch.Generator().manual_seed(10_000 + seed)
    torch.manual_seed(10_000 + seed)
    view = (lambda x: augment(x, ds, gen)) if cell["augment"] else (lambda x: x)
    tri = torch.arange(n)  # the unshuffled loader's first batch
    rest = torch.arange(n, len(data.y))[torch.randperm(len(data.y) - n, generator=gen)]
    x_clean, y_trig = view(data.x[tri]), data.y[tri]
    base.eval()
    x_trig = perturb_trigger(base, model_params(base), x_clean, y_trig, xv, yv, eps=eps, steps=CRAFT_STEPS).detach()
    out["A0"] = align(base, x_trig, y_trig, xv, yv)

    def base_batch(t: int) -> tuple[Tensor, Tensor]:
        if cell["poison_base"] == "trigger":
            return view(data.x[tri]), y_trig
        idx = rest[(t * n) % (len(rest) - n):][:n]
        return view(data.x[idx]), data.y[idx]

    other = rest[torch.randperm(len(rest), generator=gen)[:n]]
    x_other, y_other = view(data.x[other]), data.y[other]

    fresh = Online(copy.deepcopy(base), cell["lr"], cell["momentum"])
    alone = fresh.fork()
    alone.step(x_trig, y_trig)
    out["b"] = diff(alone.model)
    noise = fresh.fork()
    noise.step(x_other, y_other)
    out["b_next"] = diff(noise.model)

    learner, clean, trajectory = fresh.fork(), [], []
    for t in range(cell["T"]):
        x, y = base_batch(t)
        clean.append((x, y))
        learner.model.eval()
        x_poison = perturb_batch(learner.model, model_params(learner.model), x, y, x_trig, y_trig, xv, yv, eps=eps,
                                 steps=CRAFT_STEPS, gamma=GAMMA).detach()
        learner.step(x_poison, y)
        trajectory.append(round(diff(learner.model), 2))
        if budget is not None and trajectory[-1] > budget:
            break
    out.update(k=len(clean), c=diff(learner.model), trajectory=trajectory,
               A_acc=align(learner.model, x_trig, y_trig, xv, yv))

    for name, fork, batch in (("a", learner.fork(), (x_trig, y_trig)),
                              ("a_nomom", learner.fork(reset_momentum=True), (x_trig, y_trig)),
                              ("a_next", learner.fork(), (x_other, y_other)),
                              ("a_momonly", learner.fork(), None)):
        fork.step(*batch) if batch is not None else fork.momentum_step()
        out[name] = diff(fork.model)

    control = fresh.fork()
    for x, y in clean:
        control.step(x, y)
    out.update(c_ctrl=diff(control.model), A_ctrl=align(control.model, x_trig, y_trig, xv, yv))
    control.step(x_trig, y_trig)
    out["a_ctrl"] = diff(control.model)
    out["secs"] = time.time() - t0
    return out


# ------------------------------------------------------------------------------------ cells

def scoped(values: list[str], dataset: str, kind: type) -> list:
    """The axis values for `dataset`: its `DATASET:VALUE` entries if any, else the plain ones."""
    mine = [v.split(":", 1)[1] for v in values if ":" in v and v.split(":", 1)[0] == dataset]
    plain = [v for v in values if ":" not in v]
    chosen = mine or plain
    if not chosen:
        raise SystemExit(f"no value for {dataset} among {values}")
    return [v.lower() if kind is str and v.lower() == "none" else kind(v) for v in chosen]


def grid(args) -> list[dict]:
    """The cartesian product of the grid options, one dict per cell (constants included)."""
    cells = []
    for ds in args.dataset:
        axes = {name: scoped([str(v) for v in getattr(args, name)], ds, kind)
                for name, (kind, _) in AXES.items() if name != "dataset"}
        axes["budget"] = [b if b == "none" else f"{float(b):g}" for b in axes["budget"]]  # points, or none
        for values in itertools.product(*axes.values()):
            cell = {"dataset": ds, **dict(zip(axes, values))}
            cell.update(val_size=args.val_size or VAL_SIZE[ds], eval_size=args.eval_size, version=VERSION)
            cells.append(cell)
    return cells


def roots(specs: list[str] | None) -> dict[str, str | None]:
    """--root values -> {dataset: dir}: `NAME=DIR` entries, a plain DIR for every dataset."""
    out: dict[str, str | None] = {}
    plain = None
    for spec in specs or []:
        name, sep, path = spec.partition("=")
        if sep and name in DATASETS:
            out[name] = path
        else:
            plain = spec
    return {ds: out.get(ds, plain) for ds in DATASETS} | {"digits": None}


def cache_key(cell: dict, seed: int) -> str:
    return json.dumps({**cell, "seed": seed}, sort_keys=True)


def read_cache(path: Path) -> dict[str, dict]:
    done = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                done[cache_key(row["cell"], row["seed"])] = row
    return done


def run_grid(cells: list[dict], seeds: list[int], out: Path, root: dict, run: bool = True,
             log=print) -> dict[str, dict]:
    """Each (cell, seed) from OUT/cells.jsonl, or run and appended to it."""
    path = out / "cells.jsonl"
    done = read_cache(path)
    for cell in cells:
        for seed in seeds:
            key = cache_key(cell, seed)
            if key in done or not run:
                continue
            data = load_data(cell["dataset"], root.get(cell["dataset"]), seed, cell["val_size"], cell["eval_size"])
            result = run_seed(cell, seed, data, out / "burnin")
            row = {"cell": cell, "seed": seed, **result}
            out.mkdir(parents=True, exist_ok=True)
            with open(path, "a") as fh:
                fh.write(json.dumps(row) + "\n")
            done[key] = row
            log(f"{label(cell, list(AXES))} seed {seed}: " + " ".join(
                f"{m}={result[m]:.1f}" for m in METRICS if m in result and m != "secs") + f" ({result['secs']:.0f}s)")
    return done


# ----------------------------------------------------------------------------------- report

def label(cell: dict, axes: list[str], sep: str = " ") -> str:
    short = {"burn_epochs": "burn", "burn_lr": "burn_lr", "momentum": "mom", "poison_base": "base",
             "augment": "aug", "budget": "budget"}
    return sep.join(str(cell[a]) if a in ("dataset", "model") else f"{short.get(a, a)}={cell[a]}" for a in axes)


def summarise(cells: list[dict], seeds: list[int], done: dict[str, dict]) -> list[dict]:
    rows = []
    for cell in cells:
        runs = [done[cache_key(cell, s)] for s in seeds if cache_key(cell, s) in done]
        row = {**{a: cell[a] for a in AXES}, "seeds": len(runs)}
        for m in METRICS:
            values = [r[m] for r in runs if m in r]
            row[m] = statistics.mean(values) if values else None
            row[f"{m}_sd"] = statistics.stdev(values) if len(values) > 1 else None
        rows.append(row)
    return rows


def varying(cells: list[dict]) -> list[str]:
    return [a for a in AXES if len({str(c[a]) for c in cells}) > 1] or ["dataset", "model"]


def pm(row: dict, m: str, digits: int = 1) -> str:
    if row[m] is None:
        return "-"
    return f"{row[m]:.{digits}f}" + (f" ± {row[m + '_sd']:.{digits}f}" if row[m + "_sd"] is not None else "")


def write_report(cells: list[dict], rows: list[dict], out: Path, command: str) -> str:
    out.mkdir(parents=True, exist_ok=True)
    keys = list(AXES) + ["seeds"] + [k for m in METRICS for k in (m, f"{m}_sd")]
    with open(out / "accumulative_sweep.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys, restval="")
        writer.writeheader()
        writer.writerows([{k: ("" if r[k] is None else r[k]) for k in keys} for r in rows])
    vary = varying(cells)
    fixed = [a for a in AXES if a not in vary]
    shown = ["e0", "k", "a", "b", "c", "a_next", "a_momonly", "a_nomom", "a_ctrl", "b_next", "A0", "A_acc"]
    lines = [f"`{command}`", "",
             "Error increase in points over the burned-in model's error e0 (mean ± sd over the seeds). "
             "a: accumulation + trigger step; b: the trigger step alone; c: after the accumulation, before the "
             "trigger; a_next: a clean step instead of the trigger; a_momonly: a zero-gradient step (momentum only); "
             "a_nomom: the trigger with the momentum reset; a_ctrl: as many clean steps, then the trigger; "
             "b_next: one clean step at the burned-in model; k: accumulation steps; A0, A_acc: the trigger/validation "
             "alignment before and after the accumulation.", "",
             "Fixed: " + (", ".join(f"{a}={cells[0][a]}" for a in fixed) if cells else "-"), "",
             "| cell | seeds | " + " | ".join(shown) + " |", "|---" * (len(shown) + 2) + "|"]
    for cell, row in zip(cells, rows):
        lines.append(f"| {label(cell, vary)} | {row['seeds']} | "
                     + " | ".join(pm(row, m, 2 if m in ("A0", "A_acc") else 1) for m in shown) + " |")
    text = "\n".join(lines) + "\n"
    (out / "accumulative_sweep.md").write_text(text)
    chart(cells, rows, vary, fixed, out / "accumulative_sweep.png")
    return text


def chart(cells: list[dict], rows: list[dict], vary: list[str], fixed: list[str], path: Path) -> None:
    """Grouped bars per cell: c, a, b, a_next, a_momonly (mean, the seeds' sd as error bars)."""
    width = 0.8 / len(BARS)
    fig, ax = plt.subplots(figsize=(max(8.0, 1.2 * len(rows) + 2.0), 5.0))
    for j, (m, name) in enumerate(BARS):
        xs = [i + (j - (len(BARS) - 1) / 2) * width for i in range(len(rows))]
        means = [np.nan if r[m] is None else r[m] for r in rows]
        sds = [0.0 if r[f"{m}_sd"] is None else r[f"{m}_sd"] for r in rows]
        ax.bar(xs, means, width=width, yerr=sds, capsize=2, label=name)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(rows)), [label(c, vary, "\n") for c in cells], fontsize=8)
    ax.set_ylabel("error increase over the burned-in model (points)")
    seeds = max((r["seeds"] for r in rows), default=0)
    title = "Accumulative attack, online protocol, one SGD step at the end"
    sub = ", ".join(f"{a}={cells[0][a]}" for a in fixed) if cells else ""
    ax.set_title(f"{title} ({seeds} seeds)\n" + "\n".join(textwrap.wrap(sub, 110)), fontsize=9)
    ax.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.1 - 0.045 * len(vary)))
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


# ------------------------------------------------------------------------------------- main

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, (kind, default) in AXES.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, nargs="+", default=default,
                            help=f"grid values (default {' '.join(map(str, default))}; DATASET:VALUE scopes one)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--root", nargs="+", help="dataset files: DIR, or NAME=DIR per dataset (digits needs none)")
    parser.add_argument("--val-size", type=int, default=0,
                        help="the attacker's validation batch (0: 200 on digits, 500 otherwise)")
    parser.add_argument("--eval-size", type=int, default=2000, help="evaluation images (first of the test set; 0: all)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--no-run", action="store_true", help="only tabulate the cells already in OUT/cells.jsonl")
    parser.add_argument("--out", default="benchmarks/results/accumulative_sweep")
    return parser


def main(argv: list[str] | None = None) -> str:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cells = grid(args)
    out = Path(args.out)
    done = run_grid(cells, args.seeds, out, roots(args.root), run=not args.no_run)
    given = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--no-run"]  # the command that ran them
    command = " ".join(["python benchmarks/accumulative_sweep.py", *given])
    text = write_report(cells, summarise(cells, args.seeds, done), out, command)
    print(text)
    return text


if __name__ == "__main__":
    main()
