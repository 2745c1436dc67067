"""The `partitioner` group: how the client pool is split among clients
(`fedguard.data.partition.PARTITIONERS`)."""

from __future__ import annotations

from dataclasses import dataclass

from fedguard.config.errors import check_name, fail
from fedguard.data.partition import PARTITIONERS


@dataclass
class PartitionerConfig:
    name: str = "iid"
    alpha: float = 0.5  # dirichlet concentration
    min_partition_size: int = 10  # dirichlet
    shards_per_client: int = 2  # pathological split


def validate_partitioner(p) -> None:
    check_name("partitioner", p.name, PARTITIONERS)
    if not 0.0 < p.alpha:
        fail("partitioner.alpha", p.alpha, "a positive concentration")
    if p.shards_per_client < 1:
        fail("partitioner.shards_per_client", p.shards_per_client, "an integer >= 1")
