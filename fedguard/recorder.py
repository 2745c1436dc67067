"""The run directory: config.yaml, rounds.jsonl, clients.jsonl, summary.json and plots.

Rows are appended and flushed as each round ends, so a crashed run keeps what it did.
Ground truth (which clients are malicious, which had a fault injected) is the recorder's only.
A resumed run (`resume_round`) first truncates rounds.jsonl and clients.jsonl to the rows of
rounds <= the checkpointed round, then restores the rest from the checkpoint (`load_state_dict`).
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from fedguard.faults import fault_for
from fedguard.sanitizers import METRICS as SANITIZER_METRICS

SANITIZER_FIELDS = tuple(k.replace("-", "_") for k in SANITIZER_METRICS)  # clients.jsonl names
SANITIZER_SUMS = ("stream_poisoned", "sanitizer_flagged", "sanitizer_flagged_poisoned",
                  "sanitizer_corrected", "sanitizer_steps", "sanitizer_dropped")  # rounds.jsonl: sums


def _clean(value: Any) -> Any:
    """JSON-safe: numpy scalars to Python, non-finite floats to None."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


ATTACK_PHASES = ("accumulate", "trigger", "attack")  # rounds in which malicious clients attack


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The objects of a jsonl file (rounds.jsonl, clients.jsonl)."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line]


def detection_rates(counts: Counter) -> dict[str, float | None]:
    """TPR, FPR and precision of flags from (malicious, flagged) counts."""
    tp, fn = counts[(True, True)], counts[(True, False)]
    fp, tn = counts[(False, True)], counts[(False, False)]
    return {"tpr": _ratio(tp, tp + fn), "fpr": _ratio(fp, fp + tn), "precision": _ratio(tp, tp + fp),
            "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def reason_category(reason: str) -> str:
    """"array shape: 'w' is (1, 3)..." -> "array shape" (summary.json counts categories)."""
    return reason.split(":", 1)[0].strip()


def truncate_jsonl(path: Path, last_round: int) -> None:
    """Keep the rows of rounds <= `last_round` (and drop a torn last line), atomically."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("round"), int) and row["round"] <= last_round:
            kept.append(line + "\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept), encoding="utf-8")
    tmp.replace(path)


class Recorder:
    def __init__(self, run_dir: str | Path, cfg: DictConfig, malicious: set[int] | None = None,
                 resume_round: int | None = None):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cfg = cfg
        self.malicious = set(malicious or ())
        self.rounds: list[dict[str, Any]] = []
        # confusion counts of a defense's flags against ground truth: all scored rounds, and
        # the attack rounds only (accumulate/trigger), keyed (malicious, flagged)
        self.flags = {"all": Counter(), "attack": Counter()}
        self.rejected: Counter = Counter()  # rejected replies by reason category
        self.elapsed_before = 0.0  # seconds spent before a resume
        self.ray: dict[str, Any] | None = None  # runtime.ray_resources() at start (summary `ray`)
        self.supernodes: dict[str, Any] | None = None  # SuperNodes and whether clients were virtual
        self.start_s: float | None = None  # of total_s, the part before the first round
        self.started = time.perf_counter()
        if resume_round is None:
            (self.dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
        else:
            for name in ("rounds.jsonl", "clients.jsonl"):
                truncate_jsonl(self.dir / name, resume_round)
        self._rounds_fh = open(self.dir / "rounds.jsonl", "a", encoding="utf-8")
        self._clients_fh = open(self.dir / "clients.jsonl", "a", encoding="utf-8")

    @property
    def sanitizer_run(self) -> bool:
        """Whether the run has a stream poison or a client sanitiser (their records are kept)."""
        return (OmegaConf.select(self.cfg, "sanitizer.name", default="none") != "none"
                or OmegaConf.select(self.cfg, "stream_poison.name", default="none") != "none")

    def _sanitizer_round(self, row: dict[str, Any], clients: list[dict[str, Any]]) -> None:
        """Per-round sums of the clients' stream-poison/sanitiser counts (valid replies only;
        ground truth: read here, by no defense); or, in runs without either, drop the fields."""
        if not self.sanitizer_run:
            for client in clients:
                for key in SANITIZER_FIELDS:
                    client.pop(key, None)
            return
        valid = [c for c in clients if not c.get("rejected") and c.get("stream_poisoned") is not None]
        for key in SANITIZER_SUMS:
            row[key] = int(sum(c.get(key) or 0 for c in valid))
        for key in ("sanitizer_md", "sanitizer_s"):  # means per client
            vals = [c[key] for c in valid if c.get(key) is not None]
            row[key] = float(np.mean(vals)) if vals else None

    def record_round(self, row: dict[str, Any], clients: list[dict[str, Any]]) -> None:
        self._sanitizer_round(row, clients)
        for client in clients:
            client.setdefault("malicious", client["partition_id"] in self.malicious)
            client.setdefault("rejected", None)
            client.setdefault("fault", fault_for(self.cfg, row["round"], client["partition_id"]))
            if client["rejected"]:
                self.rejected[reason_category(str(client["rejected"]))] += 1
            if client.get("flagged") is not None:
                key = (client["malicious"], bool(client["flagged"]))
                self.flags["all"][key] += 1
                if row.get("phase") in ATTACK_PHASES:
                    self.flags["attack"][key] += 1
            self._clients_fh.write(json.dumps(_clean({"round": row["round"], **client})) + "\n")
        self._clients_fh.flush()
        if self.cfg.faults.kind != "none":  # ground truth: clients with an injected fault this round
            row = {**row, "faulty": sum(bool(c.get("fault")) for c in clients)}
        row = _clean(row)
        self.rounds.append(row)
        self._rounds_fh.write(json.dumps(row) + "\n")
        self._rounds_fh.flush()

    def summary(self) -> dict[str, Any]:
        acc = [r["accuracy"] for r in self.rounds if r.get("accuracy") is not None]  # evaluate_every: gaps
        trigger = next((r["round"] for r in self.rounds if r.get("phase") == "trigger"), None)
        before = after = drop = None
        if trigger is not None:
            by_round = {r["round"]: r["accuracy"] for r in self.rounds}
            # accuracy at the end of the round before the trigger (the initial model's for round 1)
            before = self.rounds[0].get("initial_accuracy") if trigger == 1 else by_round.get(trigger - 1)
            after = by_round.get(trigger)
            drop = None if before is None or after is None else before - after

        # steady-state timing: round 1 carries Ray actor start-up and is reported apart
        steady = self.rounds[1:] if len(self.rounds) > 1 else self.rounds

        def mean(key: str) -> float | None:
            vals = [r[key] for r in steady if r.get(key) is not None]
            return float(np.mean(vals)) if vals else None

        return _clean({
            "final_accuracy": acc[-1] if acc else None,
            "best_accuracy": max(acc) if acc else None,
            "accuracy_before_trigger": before,
            "accuracy_after_trigger": after,
            "trigger_drop": drop,
            "attack_success_rate": self.rounds[-1].get("asr") if self.rounds else None,  # backdoor: final round
            "detection": self.detection(),
            "honest_flag_rate": detection_rates(self.flags["all"])["fpr"],
            "timing": {
                "total_s": self.elapsed_before + time.perf_counter() - self.started,
                # of it, the start before round 1: client actors ready (handshake), initial evaluation
                "start_s": self.start_s,
                "round_s_mean": mean("round_s"),
                "first_round_s": self.rounds[0].get("round_s") if self.rounds else None,
                "train_s": mean("train_s"),
                "defense_s": mean("defense_s"),
                "aggregate_s": mean("aggregate_s"),
                "evaluate_s": mean("evaluate_s"),
                "sanitizer_s": mean("sanitizer_s"),  # per client per round (null without a sanitiser)
            },
            "rounds": len(self.rounds),
            "failed_replies": sum(r.get("failures", 0) for r in self.rounds),
            "missing_replies": sum(r.get("missing", 0) for r in self.rounds),
            "rejected": dict(sorted(self.rejected.items())),
            "kept_previous_rounds": [r["round"] for r in self.rounds if r.get("kept_previous_model")],
            "sanitizer": self.sanitizer_summary(),
            "ray": self.ray,
            "supernodes": self.supernodes,
        })

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to continue the records (rows so far, counters, time)."""
        return {"rounds": [dict(r) for r in self.rounds],
                "flags": {k: [[bool(m), bool(f), int(n)] for (m, f), n in c.items()] for k, c in self.flags.items()},
                "rejected": dict(self.rejected),
                "elapsed_s": self.elapsed_before + time.perf_counter() - self.started}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rounds = [dict(r) for r in state["rounds"]]
        self.flags = {k: Counter({(m, f): n for m, f, n in rows}) for k, rows in state["flags"].items()}
        self.rejected = Counter(state["rejected"])
        self.elapsed_before = float(state["elapsed_s"])
        self.started = time.perf_counter()

    def sanitizer_summary(self) -> dict[str, Any] | None:
        """Sample-level precision/recall of the honest clients' sanitiser against the stream
        poisons (null in runs with neither): precision = flagged poisoned / flagged, recall =
        flagged poisoned / poisoned samples drawn (null when the denominator is 0)."""
        if not self.sanitizer_run:
            return None
        tot = {k: int(sum(r.get(k) or 0 for r in self.rounds)) for k in SANITIZER_SUMS}
        return {"name": OmegaConf.select(self.cfg, "sanitizer.name", default="none"),
                "precision": _ratio(tot["sanitizer_flagged_poisoned"], tot["sanitizer_flagged"]),
                "recall": _ratio(tot["sanitizer_flagged_poisoned"], tot["stream_poisoned"]),
                "flagged": tot["sanitizer_flagged"], "poisoned": tot["stream_poisoned"],
                "flagged_poisoned": tot["sanitizer_flagged_poisoned"],
                "corrected_batches": tot["sanitizer_corrected"], "steps": tot["sanitizer_steps"],
                "dropped": tot["sanitizer_dropped"]}

    def detection(self) -> dict[str, Any] | None:
        """Flags against ground truth (null without attack or without a scoring defense):
        over all scored rounds, and `attack_rounds` over the accumulate/trigger rounds."""
        if not self.malicious or not self.flags["all"]:
            return None
        return {**detection_rates(self.flags["all"]), "attack_rounds": detection_rates(self.flags["attack"])}

    def title(self) -> str:
        """The run in a line, for plot titles: dataset/model, defense, attack, stream poison."""
        sel = lambda key: OmegaConf.select(self.cfg, key, default="none")  # noqa: E731
        parts = [f"{sel('dataset.name')}/{sel('model.name')}", f"defense={sel('defense.name')}"]
        if sel("attack.name") != "none":
            parts.append(f"attack={sel('attack.name')} ({self.cfg.get('num_malicious')} of {self.cfg.get('num_clients')})")
        for key in ("stream_poison", "sanitizer"):
            if sel(f"{key}.name") != "none":
                parts.append(f"{key}={sel(f'{key}.name')}")
        return "  ".join(parts)

    def finish(self) -> dict[str, Any]:
        self._rounds_fh.close()
        self._clients_fh.close()
        summary = self.summary()
        (self.dir / "summary.json").write_text(json.dumps(summary, indent=2))
        from fedguard.plots import plot_accuracy, plot_md

        plot_accuracy(self.rounds, self.dir / "accuracy.png", self.title())
        if self.flags["all"]:  # a defense scored updates: draw MD per client
            plot_md(read_jsonl(self.dir / "clients.jsonl"), self.rounds, self.dir / "md.png", f"MD per client: {self.title()}")
        return summary
