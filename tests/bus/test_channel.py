"""Exit channels: requests through shared memory, exactly once, in order,
across a SIGKILL of the consuming process."""

from __future__ import annotations

import os
import signal
import select

import msgpack
import pytest

from bhive.bus import channel
from bhive.bus.schema import MmioRequest, PioRequest
from bhive.bus.shm import StateStore


def serve(path, doorbell, wake, store_path, kill_after=None):
    """A minimal actor: a scratch register per port and a log of writes,
    committed with `consumed` after each batch (like the actor runtime)."""
    server = channel.ChannelServer(path, wake)
    store = StateStore(store_path)
    blob = store.load()
    state = msgpack.unpackb(blob, strict_map_key=False) if blob else {"consumed": 0, "regs": {}, "log": []}
    server.publish(state["consumed"], None, 0)
    applied = 0
    while True:
        select.select([doorbell], [], [], 0.05)
        channel.drain_doorbell(doorbell)
        records = server.pending(state["consumed"])
        if not records:
            continue
        answer_id, answer = None, 0
        for _stamp, _index, msg in records:
            if msg.is_write:
                state["regs"][msg.port] = msg.data
                state["log"].append(msg.data)
            else:
                answer_id, answer = msg.req_id, state["regs"].get(msg.port, 0xFF)
            state["consumed"] += 1
            applied += 1
            if kill_after is not None and applied == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)   # dies before committing
        store.commit(msgpack.packb(state))
        server.publish(state["consumed"], answer_id, answer)


@pytest.fixture
def chan(tmp_path):
    path = tmp_path / "chan"
    channel.create(path, capacity=16)
    doorbell, wake = channel.eventfd(), channel.eventfd()
    pids = []

    def start(kill_after=None):
        pid = os.fork()
        if pid == 0:
            try:
                serve(path, doorbell, wake, tmp_path / "state", kill_after)
            finally:
                os._exit(0)
        pids.append(pid)
        return pid

    client = channel.ChannelClient(path, doorbell, wake, give_up_after=20)
    yield client, start
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def test_posted_writes_then_a_read_sees_them(chan):
    client, start = chan
    start()
    for i in range(100):          # more than the ring holds: the client waits for room
        client.post(PioRequest("vcpu0", 0, 0x3FF, 1, True, i))
    assert client.call(PioRequest("vcpu0", 0, 0x3FF, 1, False, 0)) == 99


def test_actor_killed_mid_batch_applies_each_write_once(chan, tmp_path):
    client, start = chan
    victim = start(kill_after=7)
    for i in range(10):
        client.post(PioRequest("vcpu0", 0, 0x80, 1, True, i))
    os.waitpid(victim, 0)          # died after applying 7, committing none of them
    start()                        # the restarted actor resumes from its commit
    assert client.call(PioRequest("vcpu0", 0, 0x80, 1, False, 0)) == 9
    state = msgpack.unpackb(StateStore(tmp_path / "state").load(), strict_map_key=False)
    assert state["log"] == list(range(10))


def test_request_ids_follow_ring_positions(chan):
    client, start = chan
    start()
    ids = [client.post(MmioRequest("vcpu0", 0, 0xFEC00000, 4, True, i)) for i in range(3)]
    assert ids == [1, 2, 3]


def test_oversized_message_is_refused(chan):
    client, _ = chan
    with pytest.raises(channel.ChannelError, match="does not fit"):
        client.post(PioRequest("vcpu0" * 20, 0, 0x80, 1, True, 0))


def test_records_of_several_channels_come_out_in_the_guests_order(tmp_path):
    """Two vCPUs taking turns on a device (as a lock would make them): the
    actor applies their posted records in that order, not channel by
    channel."""
    servers, clients = {}, {}
    for name in ("vcpu0", "vcpu1"):
        path = tmp_path / name
        channel.create(path, capacity=64)
        clients[name] = channel.ChannelClient(path, channel.eventfd(), channel.eventfd())
        servers[name] = channel.ChannelServer(path, channel.eventfd())
    expected = []
    for k in range(40):
        name = "vcpu0" if k % 3 else "vcpu1"
        clients[name].post(PioRequest(name, 0, 0x3F8, 1, True, k))
        expected.append((name, k))
    got = channel.gather_in_order(servers, {"vcpu0": 0, "vcpu1": 0})
    assert [(name, msg.data) for name, msg in got] == expected
