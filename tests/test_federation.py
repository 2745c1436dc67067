"""The server's side of the federation: client-to-SuperNode assignment and carried states."""

import json

import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from fedguard.federation import Exchange, reported_state, round_assignment, with_client_states
from fedguard.protocol import INFO, PARTITION, RESUME_STATE, STATE


@pytest.fixture(autouse=True)
def _identity(flower_identity):
    yield


def reply(state) -> Message:
    content = RecordDict({"metrics": MetricRecord({"x": 1}), INFO: ConfigRecord({STATE: state})})
    return Message(content=content, dst_node_id=0, message_type="train")


def test_round_assignment_own_node_or_virtual_slots():
    node_of = {0: 100, 1: 101, 2: 102, 3: 103}
    assert round_assignment([1, 3], node_of, virtual=False) == {1: 101, 3: 103}
    # virtual: the i-th sampled client trains on SuperNode i
    assert round_assignment([2, 3], node_of, virtual=True) == {2: 100, 3: 101}


def test_reported_state_keeps_only_json_objects_of_records():
    good = json.dumps({"stream": {"cursor": 3}})
    assert reported_state(reply(good)) == good
    assert reported_state(reply("not json")) is None
    assert reported_state(reply(json.dumps({"stream": 3}))) is None  # a record must be an object
    assert reported_state(reply(json.dumps([1, 2]))) is None
    assert reported_state(reply("{" + " " * (1 << 16) + "}")) is None  # too long


def test_with_client_states_adds_partition_and_state_without_sharing_content():
    shared = RecordDict({"config": ConfigRecord({"lr": 0.1})})
    msgs = [Message(content=shared, dst_node_id=n, message_type="train") for n in (100, 101)]
    out = with_client_states(msgs, {100: 7, 101: 8}, {7: '{"stream": {}}'}, virtual=True)
    first, second = (dict(m.content.config_records["config"]) for m in out)
    assert first == {"lr": 0.1, PARTITION: 7, RESUME_STATE: '{"stream": {}}'}
    assert second == {"lr": 0.1, PARTITION: 8}  # no saved state for client 8
    assert dict(shared.config_records["config"]) == {"lr": 0.1}  # the shared record is untouched


def test_exchange_missing_lists_sampled_clients_without_reply():
    answered = Message(content=RecordDict(), dst_node_id=0, message_type="train")
    answered.metadata.__dict__["_src_node_id"] = 101  # as if sent by node 101
    exch = Exchange([1, 2], {1: 101, 2: 102}, {101: 1, 102: 2}, [answered])
    assert exch.missing() == [2]
