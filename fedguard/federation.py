"""The server's side of the federation: which SuperNode trains which client this round, and
the clients' `Context.state` the server carries.

Node ids are random per run, so `Federation.connect` first asks every SuperNode its
partition id (one query message per node, the handshake).

- One SuperNode per client (`backend.num_supernodes` null): a sampled client's train message
  goes to its own SuperNode, whose Ray actor keeps its `Context.state` between rounds.
- Virtual clients (`backend.num_supernodes` = S): the federation has S SuperNodes and
  `num_clients` logical clients. Each round the sampled clients (sorted) are assigned to
  SuperNodes 0, 1, ... in order; the train message names the client (`protocol.PARTITION`)
  and carries its last reported `Context.state` (JSON, `protocol.RESUME_STATE`), which the
  ClientApp loads in place of the node's. So the engine, the Ray actors and the handshake
  scale with S, and the server keeps only each client's small JSON state (the stream cursor,
  a sanitiser's window). Flower's simulation engine polls every SuperNode for messages
  (cost O(SuperNodes x messages) per poll), which is what makes one SuperNode per client
  impractical beyond ~1,000 clients.

Every reply echoes its node's `Context.state` (`protocol.STATE` in ConfigRecord
`protocol.INFO`); the federation keeps the last valid one per client (`client_states`), which
the checkpoint saves and a resumed run sends back with each client's next train message.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from omegaconf import DictConfig

from fedguard import interrupt
from fedguard.protocol import IDENTITY, INFO, PARTITION, RESUME_STATE, STATE
from fedguard.supernodes import SuperNodes, resolve_supernodes

STARTUP_TIMEOUT_S = 300.0  # the handshake's timeout floor (a short round_timeout must not fail start-up)
MAX_STATE_CHARS = 1 << 16  # a reported state longer than this is not kept


class SampledGrid:
    """A view of a grid that exposes only this round's sampled nodes (duck-typed Grid): what
    the inner Flower strategy's `configure_train` is shown, so it addresses exactly them."""

    def __init__(self, grid: Grid, node_ids: list[int]):
        self._grid = grid
        self._node_ids = list(node_ids)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._node_ids)

    def __getattr__(self, name):  # everything else goes to the real grid
        return getattr(self._grid, name)


def handshake(grid: Grid, timeout: float) -> dict[int, int]:
    """partition id -> node id, asked of every node once."""
    node_ids = sorted(grid.get_node_ids())
    messages = [Message(content=RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in node_ids]
    mapping: dict[int, int] = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_error():
            raise RuntimeError(f"handshake failed on node {reply.metadata.src_node_id}: {reply.error.reason}")
        mapping[int(reply.content[IDENTITY][PARTITION])] = reply.metadata.src_node_id
    return mapping


def round_assignment(sampled: list[int], node_of: dict[int, int], virtual: bool) -> dict[int, int]:
    """partition id -> node id of this round's sampled clients: each client's own SuperNode,
    or with virtual clients SuperNode i (the handshake's partition id i) for the i-th."""
    if virtual:
        return {p: node_of[i] for i, p in enumerate(sampled)}
    return {p: node_of[p] for p in sampled}


def with_client_states(messages: list[Message], partition_of: dict[int, int],
                       states: dict[int, str], virtual: bool = False) -> list[Message]:
    """Each train message also carries its client's saved `Context.state` (`RESUME_STATE`;
    the ClientApp applies it once, to a fresh node) and, with virtual clients, the client it
    trains as (`PARTITION`)."""
    for msg in messages:
        partition = partition_of.get(msg.metadata.dst_node_id)
        extra = {PARTITION: partition} if virtual else {}
        if states.get(partition):
            extra[RESUME_STATE] = states[partition]
        if not extra:
            continue
        content = RecordDict(dict(msg.content.items()))  # messages share one RecordDict
        keys = list(msg.content.config_records.keys()) or ["config"]
        for key in keys:
            base = dict(msg.content.config_records[key]) if key in msg.content.config_records else {}
            content[key] = ConfigRecord({**base, **extra})
        msg.content = content
    return messages


def reported_state(msg: Message) -> str | None:
    """The JSON `Context.state` a reply echoes in ConfigRecord `INFO` (None if absent or not
    a JSON object of records, or longer than `MAX_STATE_CHARS`)."""
    if msg.has_error() or not msg.has_content():
        return None
    info = msg.content.config_records.get(INFO)
    value = info.get(STATE) if info is not None else None
    if not isinstance(value, str) or len(value) > MAX_STATE_CHARS:
        return None
    try:
        parsed = json.loads(value)
    except ValueError:
        return None
    ok = isinstance(parsed, dict) and all(isinstance(v, dict) for v in parsed.values())
    return value if ok else None


def send_and_receive(grid: Grid, messages: list[Message], timeout: float, completed: int) -> list[Message]:
    """Flower's `Grid.send_and_receive` (push, then pull until every reply is in or `timeout`
    s have passed), which also stops on Ctrl-C (`interrupt.check`; `completed` is the last
    recorded round, for the message)."""
    pending = set(grid.push_messages(messages))
    end = time.time() + timeout
    replies: list[Message] = []
    while time.time() < end:
        interrupt.check(completed)
        pulled = list(grid.pull_messages(pending))
        replies.extend(pulled)
        pending.difference_update(m.metadata.reply_to_message_id for m in pulled)
        if not pending:
            break
        time.sleep(getattr(grid, "pull_interval", 0.1))
    return replies


@dataclass
class Exchange:
    """One round's exchange: who was sampled, where they trained, what came back."""
    sampled: list[int]  # partition ids, sorted
    node_of: dict[int, int]  # partition id -> node id this round
    partition_of: dict[int, int]  # node id -> partition id this round
    replies: list[Message]  # sorted by partition id (order-independent aggregation)

    def missing(self) -> list[int]:
        """Sampled partition ids without a reply."""
        replied = {self.partition_of.get(m.metadata.src_node_id) for m in self.replies}
        return [p for p in self.sampled if p not in replied]


class Federation:
    """The run's SuperNodes (`node_of`: partition id -> node id, from the handshake), whether
    clients are virtual, and each client's last reported `Context.state` (`client_states`)."""

    def __init__(self, node_of: dict[int, int], virtual: bool, carry_states: bool = False):
        self.node_of = node_of
        self.virtual = virtual
        self.carry_states = carry_states or virtual  # send each client its saved state
        self.client_states: dict[int, str] = {}  # partition id -> JSON of its Context.state
        self.supernodes: SuperNodes | None = None  # how the SuperNodes were chosen (summary.json)

    @classmethod
    def connect(cls, grid: Grid, cfg: DictConfig, resumed: bool) -> Federation:
        """The handshake (it waits for the Ray actors to start: never shorter than
        `STARTUP_TIMEOUT_S`), checked against the SuperNodes the config asks for."""
        nodes = resolve_supernodes(cfg)  # backend.num_supernodes null: automatic (fedguard/supernodes.py)
        node_of = handshake(grid, max(cfg.backend.round_timeout, STARTUP_TIMEOUT_S))
        virtual, supernodes = nodes.virtual, nodes.count
        if sorted(node_of) != list(range(supernodes)):
            raise RuntimeError(
                f"expected {supernodes} SuperNodes (num_clients={cfg.num_clients}, backend.num_supernodes="
                f"{cfg.backend.num_supernodes}: {nodes.mode}) but the federation has {len(node_of)} "
                f"(partition ids {sorted(node_of)[:5]}...); with `flwr run` pass "
                f"--federation-config 'num-supernodes={supernodes}'")
        federation = cls(node_of, virtual, carry_states=resumed)
        federation.supernodes = nodes
        return federation

    def exchange(self, grid: Grid, strategy, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                 sampled: list[int], timeout: float) -> Exchange:
        """Send this round's train messages (built by `strategy.configure_train` for the
        `sampled` clients' nodes only) and wait up to `timeout` s for the replies; keeps the
        states the replies report."""
        node_of = round_assignment(sampled, self.node_of, self.virtual)
        partition_of = {n: p for p, n in node_of.items()}
        view = SampledGrid(grid, list(node_of.values()))
        messages = list(strategy.configure_train(server_round, arrays, config, view))
        if self.carry_states:
            messages = with_client_states(messages, partition_of, self.client_states, self.virtual)
        replies = send_and_receive(grid, messages, timeout, completed=server_round - 1)
        replies.sort(key=lambda m: partition_of.get(m.metadata.src_node_id, -1))
        for msg in replies:
            state = reported_state(msg)
            if state is not None and msg.metadata.src_node_id in partition_of:
                self.client_states[partition_of[msg.metadata.src_node_id]] = state
        return Exchange(sampled, node_of, partition_of, replies)
