"""The keys the ServerApp and the ClientApp exchange, in one place.

A train message carries ArrayRecord `ARRAYS` (the global model) and a ConfigRecord whose
`SERVER_ROUND` Flower's `configure_train` sets; the server may add `PARTITION` (virtual
clients: the client to train as) and `RESUME_STATE` (a resumed run: the client's last
reported `Context.state`, JSON). A reply carries ArrayRecord `ARRAYS`, MetricRecord `METRICS`
(`NUM_EXAMPLES`, `TRAIN_LOSS`, the sanitiser counts below) and ConfigRecord `INFO`
(where it ran, `STATE` = JSON of the node's `Context.state`, the attack's stealth fields).

`Context.state` record names (one per owner, so none collide) are listed here too.
"""

from __future__ import annotations

# --- records of a message
ARRAYS, METRICS, INFO = "arrays", "metrics", "info"
IDENTITY = "identity"  # MetricRecord of a handshake (query) reply: `PARTITION`

# --- train ConfigRecord keys
SERVER_ROUND = "server-round"  # set by Flower's configure_train
PARTITION = "partition-id"  # virtual clients: the client to train as
RESUME_STATE = "resume-state"  # a resumed server: the node's saved Context.state (JSON)

# --- reply MetricRecord keys
NUM_EXAMPLES, TRAIN_LOSS = "num-examples", "train_loss"
TRAIN_S = "train_s"
# sanitiser counts every reply carries (0 when not applicable; Flower needs identical keys)
POISONED, FLAGGED, FLAGGED_POISONED = "stream-poisoned", "sanitizer-flagged", "sanitizer-flagged-poisoned"
CORRECTED, STEPS, DROPPED, MD, SECONDS = ("sanitizer-corrected", "sanitizer-steps", "sanitizer-dropped",
                                          "sanitizer-md", "sanitizer-s")
SANITIZER_METRICS = (POISONED, FLAGGED, FLAGGED_POISONED, CORRECTED, STEPS, DROPPED, MD, SECONDS)
GROUND_TRUTH_METRICS = (POISONED, FLAGGED_POISONED)  # simulation ground truth: the recorder only

# --- reply ConfigRecord INFO keys
STATE = "state"  # JSON of the node's Context.state
RAY_NODE, PID, DEVICE = "ray-node", "pid", "device"
ATTACK_STOPPED, ATTACK_VAL_ACC = "attack-stopped", "attack-val-acc"  # accumulative attack, stealth rule
ATTACK_STOPPED_ROUND = "attack-stopped-round"  # the round the stealth rule fired in (0: not yet)

# --- Context.state record names
STREAM_STATE = "stream"  # ConfigRecord: the stream cursor
ATTACK_STATE = "attack"  # ConfigRecord: the accumulative attack's stealth rule
MOMENTUM = "momentum"  # ArrayRecord: keep_momentum, the client's SGD momentum across rounds (not echoed)
ATTACK_TRIGGER = "attack-trigger"  # ArrayRecord: accumulate_against=fixed, the trigger crafted once (not echoed)
DSC_STATE = "dsc"  # ConfigRecord: DSC's online step count, rounds of the stored snapshots
DSC_HISTORY = "dsc-history"  # ArrayRecord: DSC's historical models (not echoed)
WINDOW_STATE = "window"  # ConfigRecord: a window sanitiser's ids, removed ids, counters
CONFUSION_BASE = "confusion-base"  # ArrayRecord: Confusion Training's warm-start base (not echoed)
