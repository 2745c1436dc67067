"""`defense=fldetector`: FLDetector (Zhang, Cao, Jia, Gong, "FLDetector: Defending Federated
Learning Against Model Poisoning Attacks via Detecting Malicious Clients", KDD 2022), a
detector in front of `defense.inner`.

Notation: w_t is the global model after round t (the model round t + 1 trains on), u_i^t the
update client i sends in round t, trained on w_{t-1}. In gradient terms g = -u (an update is
minus the learning rate times the accumulated gradient; the sign keeps the curvature pairs
s.y > 0, which BFGS needs), and G_t = w_t - w_{t+1} is the aggregate "gradient" at w_t.

  1. Curvature pairs from the last N + 2 global models (`fedguard.defense.history`):
         s_k = w_k - w_{k-1},   y_k = G_k - G_{k-1}             (N pairs, oldest first)
  2. Hessian-vector products by L-BFGS in compact form (Byrd, Nocedal, Schnabel 1994), B_0 =
     sigma I with sigma = y.s / s.s of the newest pair:
         B v = sigma v - [sigma S, Y] M^{-1} [sigma S^T v; Y^T v],
         M = [[sigma S^T S, L], [L^T, -D]],  L = strict lower part of S^T Y,  D = its diagonal
  3. In round r, a client whose last update u_i^p came in round p (p = r - 1 with every client
     sampled) is predicted to send
         u_hat_i = u_i^p - B (w_{r-1} - w_{p-1})
     and its distance is d_i = ||u_hat_i - u_i^r||, normalised over the round's predicted
     clients: d_i / sum_j d_j.
  4. Suspicious score: the mean of a client's normalised distances over the last N rounds.
  5. Detection (from round `start` on): the gap statistic (Tibshirani, Walther, Hastie 2001;
     B = 20 uniform reference sets over the scores' range, k = 1..10) picks the number of
     clusters of the scores (one when they lie within 0.1% of each other); if more than one,
     the exact 1-D 2-means split of the scores flags the upper group.

The paper removes a detected client for good and restarts training; here a flagged reply is
left out of this round's aggregation only (the inner strategy aggregates the others) and the
client is examined again next round. The global models are held by the history module (a ring
buffer of N + 2 snapshots, one per round; a round that keeps the previous model stores it
again, and a round this strategy did not see stores the next round's starting model, so the
snapshots stay one round apart; the pairs next to such a zero step are left out).

What the server holds: N + 2 global models, each client's last update (one model-sized vector
per client, the memory cost of this method) and its last N normalised distances; all
checkpointed. Per-client notes: `fld_score` (step 4, null before a prediction), `flagged`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import Strategy
from torch import Tensor

from fedguard.protocol import PARTITION
from fedguard.defense.history import ModelHistory
from fedguard.models import flat_from_arrays
from strategies.base import RoundNotes, StrategyWrapper

GAP_REFS = 20  # reference data sets of the gap statistic
GAP_KMAX = 10  # largest number of clusters the gap statistic considers
# scores within this relative spread are one cluster: the gap statistic is scale-free and would
# otherwise split rounding noise (e.g. clients with identical prediction errors)
SAME_SCORES = 1e-3


# ---------------------------------------------------------------- curvature and prediction

def curvature_pairs(models: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(S, Y) from m consecutive global models [m, d], oldest first (step 1): the m - 2 pairs,
    less those next to a round that kept the previous model (a zero step is no aggregate)."""
    steps = np.diff(np.asarray(models, dtype=np.float64), axis=0)  # w_k - w_{k-1} = -G_{k-1}
    moved = np.linalg.norm(steps, axis=1) > 0
    usable = moved[:-1] & moved[1:]
    return steps[:-1][usable], (steps[:-1] - steps[1:])[usable]


def lbfgs_hvp(S: np.ndarray, Y: np.ndarray, v: np.ndarray) -> np.ndarray:
    """B v for the L-BFGS Hessian approximation of the pairs (rows of S, Y, oldest first)."""
    m = len(S)
    sigma = float(Y[-1] @ S[-1]) / float(S[-1] @ S[-1])
    sy = S @ Y.T  # [i, j] = s_i . y_j
    lower = np.tril(sy, -1)
    middle = np.block([[sigma * (S @ S.T), lower], [lower.T, -np.diag(np.diag(sy))]])
    p = np.linalg.pinv(middle) @ np.concatenate([sigma * (S @ v), Y @ v])
    return sigma * v - sigma * (p[:m] @ S) - p[m:] @ Y


# ---------------------------------------------------------------- clustering the scores

def kmeans_1d_costs(x: np.ndarray, kmax: int) -> np.ndarray:
    """The optimal k-means within-cluster sum of squares of the 1-D points `x`, k = 1..kmax
    (exact: an optimal 1-D clustering is a partition of the sorted points into runs)."""
    xs = np.sort(np.asarray(x, dtype=np.float64))
    n = len(xs)
    c1, c2 = np.concatenate([[0.0], np.cumsum(xs)]), np.concatenate([[0.0], np.cumsum(xs ** 2)])
    i, j = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    with np.errstate(divide="ignore", invalid="ignore"):  # run xs[i:j]; empty runs are inf
        run = np.where(j > i, (c2[j] - c2[i]) - (c1[j] - c1[i]) ** 2 / (j - i), np.inf)
    best = np.where(np.arange(n + 1) > 0, run[0], np.inf)  # k = 1: one run xs[0:j]
    costs = [best[n]]
    for _ in range(2, kmax + 1):
        best = np.min(best[:, None] + run, axis=0)
        costs.append(best[n])
    return np.maximum(np.array(costs), 0.0)


def upper_of_two_means(x: np.ndarray) -> np.ndarray:
    """Mask of the upper cluster of the optimal 1-D 2-means split of `x`."""
    order = np.argsort(x, kind="stable")
    xs = np.asarray(x, dtype=np.float64)[order]
    sse = [xs[:k].var() * k + xs[k:].var() * (len(xs) - k) for k in range(1, len(xs))]
    upper = np.zeros(len(xs), dtype=bool)
    upper[order[int(np.argmin(sse)) + 1:]] = True
    return upper


def gap_clusters(x: np.ndarray, rng: np.random.Generator, refs: int = GAP_REFS, kmax: int = GAP_KMAX) -> int:
    """The gap statistic's number of clusters of the 1-D points `x`: the smallest k with
    Gap(k) >= Gap(k+1) - s_{k+1} (uniform references over the range of `x`)."""
    x = np.asarray(x, dtype=np.float64)
    lo, hi = float(x.min()), float(x.max())
    kmax = min(kmax, len(x) - 1)
    if hi - lo <= SAME_SCORES * abs(hi) or kmax < 2:
        return 1
    floor = 1e-12 * (hi - lo) ** 2  # keeps log W finite when a k leaves no spread
    log_w = np.log(kmeans_1d_costs(x, kmax) + floor)
    ref = np.log(np.array([kmeans_1d_costs(rng.uniform(lo, hi, len(x)), kmax) for _ in range(refs)]) + floor)
    gap = ref.mean(axis=0) - log_w
    s = ref.std(axis=0) * np.sqrt(1.0 + 1.0 / refs)
    for k in range(kmax - 1):
        if gap[k] >= gap[k + 1] - s[k + 1]:
            return k + 1
    return kmax


def suspicious(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Step 5: the flagged mask of the suspicious scores (none when one cluster)."""
    if len(scores) < 3 or gap_clusters(scores, rng) < 2:
        return np.zeros(len(scores), dtype=bool)
    return upper_of_two_means(scores)


# ---------------------------------------------------------------- the strategy

def client_of(msg: Message) -> int:
    """The client a reply comes from: the partition id it reports (`protocol.PARTITION`, in
    every fedguard ClientApp reply), else its node id."""
    metrics = next(iter(msg.content.metric_records.values()), {})
    return int(metrics[PARTITION]) if PARTITION in metrics else int(msg.metadata.src_node_id)


class FLDetector(StrategyWrapper):
    def __init__(self, inner: Strategy, window: int = 10, start: int = 3, seed: int = 0,
                 notes: RoundNotes | None = None):
        super().__init__(inner, notes)
        if window < 1:
            raise ValueError(f"fldetector window must be >= 1, got {window}")
        self.window, self.start, self.seed = int(window), int(start), int(seed)
        self.history = ModelHistory(self.window + 2)
        # keyed by the client (its partition id: node ids change with every run, and a virtual
        # client's SuperNode with every round)
        self.last: dict[int, tuple[int, Tensor]] = {}  # client -> (round, its last update)
        self._scores: dict[int, float] = {}  # client -> this round's suspicious score
        self.distances: dict[int, deque[tuple[int, float]]] = {}  # client -> (round, normalised distance)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        valid = [m for m in replies if not m.has_error()]
        if not valid or self.global_arrays is None:
            return self.inner.aggregate_train(server_round, replies)
        base, updates = self.flat_updates(valid)
        if len(self.history) == 0 or self.history.rounds[-1] < server_round - 1:  # first or after a skipped round
            self.history.push(server_round - 1, base)
        clients = [client_of(m) for m in valid]
        with self.notes.timed("defense_s"):
            flagged = self._detect(server_round, clients, updates)
        for msg, client in zip(valid, clients):
            self.notes.clients[msg.metadata.src_node_id].update(fld_score=self._scores.get(client),
                                                                flagged=client in flagged)
        gone = {id(m) for m, client in zip(valid, clients) if client in flagged}
        arrays, metrics = self.inner.aggregate_train(server_round, [m for m in replies if id(m) not in gone])
        self.history.push(server_round, flat_from_arrays(arrays) if arrays is not None else base)
        return arrays, metrics

    def _detect(self, server_round: int, nodes: list[int], updates: list[Tensor]) -> set[int]:
        """Steps 1-5 for this round's replies (`nodes`: their clients); remembers their updates
        and scores (`_scores`); returns the flagged clients."""
        snaps = self.history.reference("all")
        models = np.stack([s.params.double().numpy() for s in snaps])
        at = {s.round: i for i, s in enumerate(snaps)}
        S, Y = curvature_pairs(models)
        dist: dict[int, float] = {}
        for node, update in zip(nodes, updates):
            prev = self.last.get(node)
            if len(S) == 0 or prev is None or prev[0] - 1 not in at:
                continue
            predicted = prev[1].double().numpy() - lbfgs_hvp(S, Y, models[-1] - models[at[prev[0] - 1]])
            dist[node] = float(np.linalg.norm(predicted - update.double().numpy()))
        total = sum(dist.values())
        for node, d in dist.items():
            self.distances.setdefault(node, deque(maxlen=self.window)).append(
                (server_round, d / total if total > 0 else 0.0))
        scores = {node: float(np.mean(recent)) for node in nodes
                  if (recent := [d for r, d in self.distances.get(node, ()) if r > server_round - self.window])}
        flagged: set[int] = set()
        if server_round >= self.start and scores:
            mask = suspicious(np.array(list(scores.values())), np.random.default_rng([self.seed, server_round]))
            flagged = {node for node, bad in zip(scores, mask) if bad}
        for node, update in zip(nodes, updates):
            self.last[node] = (server_round, update.clone())
        self._scores = scores
        return flagged

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict:
        return {**super().state_dict(), "history": self.history.state_dict(),
                "last": [[int(node), int(r), u.clone()] for node, (r, u) in self.last.items()],
                "distances": [[int(node), [[int(r), float(d)] for r, d in ds]] for node, ds in self.distances.items()]}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.history.load_state_dict(state["history"])
        self.last = {int(node): (int(r), u.float()) for node, r, u in state["last"]}
        self.distances = {int(node): deque([(int(r), float(d)) for r, d in ds], maxlen=self.window)
                          for node, ds in state["distances"]}
