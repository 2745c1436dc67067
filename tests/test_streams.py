import numpy as np
from flwr.app import Context, RecordDict

from fedguard.streams import IndexStream, StreamCursor, load_cursor, save_cursor


def test_stream_reshuffles_each_epoch_and_covers_partition():
    idx = np.arange(100, 110)
    s = IndexStream(idx, seed=0, stream_id=3)
    first = np.concatenate([s.next_batch(5), s.next_batch(5)])
    second = np.concatenate([s.next_batch(5), s.next_batch(5)])
    assert sorted(first) == list(idx) and sorted(second) == list(idx)
    assert not np.array_equal(first, second)  # a new order each epoch
    assert s.cursor == StreamCursor(epoch=2, position=0)


def test_batch_straddles_epoch_boundary():
    s = IndexStream(np.arange(7), seed=0, stream_id=0)
    s.next_batch(5)
    b = s.next_batch(5)
    assert len(b) == 5 and s.cursor == StreamCursor(epoch=1, position=3)


def test_cursor_in_context_state_continues_the_stream():
    idx = np.arange(50)
    ctx = Context(run_id=0, node_id=1, node_config={}, state=RecordDict(), run_config={})
    uninterrupted = IndexStream(idx, 0, 4)
    expected = [uninterrupted.next_batch(8) for _ in range(6)]
    got = []
    for _ in range(3):  # three "rounds" of two batches, state only in the Context
        s = IndexStream(idx, 0, 4, load_cursor(ctx))
        got += [s.next_batch(8), s.next_batch(8)]
        save_cursor(ctx, s.cursor)
    assert all(np.array_equal(a, b) for a, b in zip(expected, got))
