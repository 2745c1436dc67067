"""The buffered-window protocol of the offline sanitisers (fedguard/sanitizers/window.py)."""

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict

from fedguard.sanitizers import DROPPED, FLAGGED, FLAGGED_POISONED, POISONED, train_sanitized
from fedguard.sanitizers.window import WindowSanitizer, update_window

CPU = torch.device("cpu")


def test_update_window_keeps_the_last_distinct_ids_with_redrawn_ids_moved_to_the_end():
    assert update_window([1, 2, 3], np.array([4, 2]), 10) == [1, 3, 4, 2]
    assert update_window([1, 2, 3], np.array([4, 5]), 3) == [3, 4, 5]
    assert update_window([], np.array([7, 7, 8]), 5) == [7, 8]


class Verdicts(WindowSanitizer):
    """Flags the window ids in `self.bad` (set between rounds by the test)."""

    name = state_key = "verdicts"

    def __init__(self, bad, permanent=False, **kw):
        super().__init__(**kw)
        self.bad, self.permanent, self.windows = set(bad), permanent, []

    def select(self, model, x, y, ids):
        self.windows.append(ids.tolist())
        assert torch.equal(x[:, 0], torch.as_tensor(ids, dtype=torch.float32))  # fetch gave these ids' samples
        return torch.tensor([int(i) in self.bad for i in ids])


def fetch(ids):
    ids = np.asarray(ids)
    return torch.tensor(ids, dtype=torch.float32)[:, None].repeat(1, 4), torch.zeros(len(ids), dtype=torch.long)


def one_round(san, context, ids_per_batch, rnd=1):
    model = torch.nn.Linear(4, 2)
    batches = [fetch(ids) for ids in ids_per_batch]
    truth = [torch.tensor([i % 2 == 1 for i in ids]) for ids in ids_per_batch]  # odd ids are "poisoned"
    _, _, metrics = train_sanitized(san, model, batches, truth, context, rnd, 0.1, 0.0, CPU,
                                    ids=[np.asarray(i) for i in ids_per_batch], fetch=fetch)
    return metrics


@pytest.mark.parametrize("permanent", [False, True])
def test_flags_drops_and_counts_against_ground_truth(permanent):
    context = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={})
    san = Verdicts({1, 3, 4}, permanent=permanent, window=6)
    m = one_round(san, context, [[0, 1, 2], [3, 4, 5]])
    assert san.windows == [[0, 1, 2, 3, 4, 5]]
    assert (m[FLAGGED], m[FLAGGED_POISONED], m[POISONED], m[DROPPED]) == (3, 2, 3, 3)

    # next round the verdict on 4 changes: refreshed methods re-admit it, permanent ones do not
    san2 = Verdicts({1, 3}, permanent=permanent, window=6)
    m = one_round(san2, context, [[4, 6]], rnd=2)
    assert san2.windows == [[1, 2, 3, 5, 4, 6]]  # the window: last 6 distinct ids, 4 moved to the end
    assert m[FLAGGED] == (1 if permanent else 0)
    removed = context.state.config_records["verdicts"]["removed"]
    assert removed == ([1, 3, 4] if permanent else [1, 3])


def test_every_skips_reexamination_but_still_drops_removed_ids():
    context = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={})
    one_round(Verdicts({1}, every=2, window=8), context, [[0, 1]])
    later = Verdicts({0}, every=2, window=8)  # participation 2: not re-examined
    m = one_round(later, context, [[1, 2]], rnd=2)
    assert later.windows == [] and m[FLAGGED] == 1  # id 1 still removed, id 0 not judged
    assert context.state.config_records["verdicts"]["participations"] == 2


def test_missing_plumbing_and_bad_sizes_are_errors():
    with pytest.raises(ValueError, match="window"):
        Verdicts(set(), window=0)
    context = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={})
    with pytest.raises(RuntimeError, match="batch_ids"):
        Verdicts(set()).sanitize(torch.nn.Linear(4, 2), [fetch([0])], context, 1)
