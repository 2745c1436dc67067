"""The run directory: config.yaml, rounds.jsonl, clients.jsonl, summary.json and plots.

Rows are appended and flushed as each round ends, so a crashed run keeps what it did.
Ground truth (which clients are malicious) is handed to the recorder only.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from collections import Counter

import numpy as np
from omegaconf import DictConfig, OmegaConf


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


ATTACK_PHASES = ("accumulate", "trigger")


def detection_rates(counts: Counter) -> dict[str, float | None]:
    """TPR, FPR and precision of flags from (malicious, flagged) counts."""
    tp, fn = counts[(True, True)], counts[(True, False)]
    fp, tn = counts[(False, True)], counts[(False, False)]
    ratio = lambda a, b: a / b if b else None  # noqa: E731
    return {"tpr": ratio(tp, tp + fn), "fpr": ratio(fp, fp + tn), "precision": ratio(tp, tp + fp),
            "tp": tp, "fp": fp, "fn": fn, "tn": tn}


class Recorder:
    def __init__(self, run_dir: str | Path, cfg: DictConfig, malicious: set[int] | None = None):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.malicious = set(malicious or ())
        self.rounds: list[dict[str, Any]] = []
        # confusion counts of a defense's flags against ground truth: all scored rounds, and
        # the attack rounds only (accumulate/trigger), keyed (malicious, flagged)
        self.flags = {"all": Counter(), "attack": Counter()}
        self.started = time.perf_counter()
        (self.dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
        self._rounds_fh = open(self.dir / "rounds.jsonl", "a", encoding="utf-8")
        self._clients_fh = open(self.dir / "clients.jsonl", "a", encoding="utf-8")

    def record_round(self, row: dict[str, Any], clients: list[dict[str, Any]]) -> None:
        for client in clients:
            client.setdefault("malicious", client["partition_id"] in self.malicious)
            client.setdefault("rejected", None)
            if client.get("flagged") is not None:
                key = (client["malicious"], bool(client["flagged"]))
                self.flags["all"][key] += 1
                if row.get("phase") in ATTACK_PHASES:
                    self.flags["attack"][key] += 1
            self._clients_fh.write(json.dumps(_clean({"round": row["round"], **client})) + "\n")
        self._clients_fh.flush()
        row = _clean(row)
        self.rounds.append(row)
        self._rounds_fh.write(json.dumps(row) + "\n")
        self._rounds_fh.flush()

    def summary(self) -> dict[str, Any]:
        acc = [r["accuracy"] for r in self.rounds]
        trigger = next((r["round"] for r in self.rounds if r.get("phase") == "trigger"), None)
        before = after = drop = None
        if trigger is not None:
            by_round = {r["round"]: r["accuracy"] for r in self.rounds}
            # accuracy at the end of the round before the trigger (the initial model's for round 1)
            before = self.rounds[0].get("initial_accuracy") if trigger == 1 else by_round.get(trigger - 1)
            after = by_round.get(trigger)
            drop = None if before is None or after is None else before - after

        def mean(key: str) -> float | None:
            vals = [r[key] for r in self.rounds if r.get(key) is not None]
            return float(np.mean(vals)) if vals else None

        return _clean({
            "final_accuracy": acc[-1] if acc else None,
            "best_accuracy": max(acc) if acc else None,
            "accuracy_before_trigger": before,
            "accuracy_after_trigger": after,
            "trigger_drop": drop,
            "attack_success_rate": None,
            "detection": self.detection(),
            "honest_flag_rate": detection_rates(self.flags["all"])["fpr"],
            "timing": {
                "total_s": time.perf_counter() - self.started,
                "round_s_mean": mean("round_s"),
                "train_s": mean("train_s"),
                "defense_s": mean("defense_s"),
                "aggregate_s": mean("aggregate_s"),
                "evaluate_s": mean("evaluate_s"),
            },
            "rounds": len(self.rounds),
            "failed_replies": sum(r.get("failures", 0) for r in self.rounds),
        })

    def detection(self) -> dict[str, Any] | None:
        """Flags against ground truth (null without attack or without a scoring defense):
        over all scored rounds, and `attack_rounds` over the accumulate/trigger rounds."""
        if not self.malicious or not self.flags["all"]:
            return None
        return {**detection_rates(self.flags["all"]), "attack_rounds": detection_rates(self.flags["attack"])}

    def finish(self) -> dict[str, Any]:
        self._rounds_fh.close()
        self._clients_fh.close()
        summary = self.summary()
        (self.dir / "summary.json").write_text(json.dumps(summary, indent=2))
        from fedguard.plots import plot_accuracy

        plot_accuracy(self.rounds, self.dir / "accuracy.png")
        return summary
