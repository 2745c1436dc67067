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


class Recorder:
    def __init__(self, run_dir: str | Path, cfg: DictConfig, malicious: set[int] | None = None):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.malicious = set(malicious or ())
        self.rounds: list[dict[str, Any]] = []
        self.started = time.perf_counter()
        (self.dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
        self._rounds_fh = open(self.dir / "rounds.jsonl", "a", encoding="utf-8")
        self._clients_fh = open(self.dir / "clients.jsonl", "a", encoding="utf-8")

    def record_round(self, row: dict[str, Any], clients: list[dict[str, Any]]) -> None:
        for client in clients:
            client.setdefault("malicious", client["partition_id"] in self.malicious)
            client.setdefault("rejected", None)
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
            before = by_round.get(trigger - 1, self.rounds[0].get("initial_accuracy"))
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
            "detection": None,
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

    def finish(self) -> dict[str, Any]:
        self._rounds_fh.close()
        self._clients_fh.close()
        summary = self.summary()
        (self.dir / "summary.json").write_text(json.dumps(summary, indent=2))
        from fedguard.plots import plot_accuracy

        plot_accuracy(self.rounds, self.dir / "accuracy.png")
        return summary
