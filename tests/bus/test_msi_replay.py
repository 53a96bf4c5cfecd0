"""An MSI replayed by a restarted controller is one interrupt, not two: the
controller numbers its MSIs and commits the number with its state, so a
successor that replays an uncommitted delivery sends the same number, and
the vCPU process drops what it already took (bhive.vcpu_worker)."""

from __future__ import annotations

from bhive.actors.interrupts import MsiOut
from bhive.bus import schema
from bhive.bus.schema import Msi
from bhive.vcpu_worker import MsiReplayFilter


class Runtime:
    """What MsiOut needs of an actor runtime, with the sockets' sends kept."""

    role = "ioapic"

    def __init__(self):
        self.sent: list[Msi] = []

    def log(self, *a, **kw):
        pass


class Socket:
    def __init__(self, runtime):
        self.runtime = runtime

    def send(self, raw, flags=0):
        self.runtime.sent.append(schema.decode(raw))


def msi_out(runtime, seq=0) -> MsiOut:
    out = MsiOut.__new__(MsiOut)
    out.runtime, out.ncpus, out.chip = runtime, 2, "ioapic"
    out.socks = [Socket(runtime), Socket(runtime)]
    out.dropped, out.deliveries, out.seq, out.stats_written = 0, {}, seq, 0.0
    return out


def test_a_replayed_msi_carries_the_number_it_had_and_is_dropped_once():
    rt = Runtime()
    first = msi_out(rt)
    first.send_msi(0xFEE01000, 0x41, pin=14)             # committed: seq 1
    committed = first.seq
    first.send_msi(0xFEE01000, 0x42, pin=14)             # sent, then the actor dies
    successor = msi_out(rt, seq=committed)              # restored from the commit
    successor.send_msi(0xFEE01000, 0x42, pin=14)         # the replay
    successor.send_msi(0xFEE01000, 0x43, pin=14)         # the next real one
    assert [(m.seq, m.data) for m in rt.sent] == [(1, 0x41), (2, 0x42), (2, 0x42), (3, 0x43)]
    vcpu = MsiReplayFilter()
    taken = [m.data for m in rt.sent if vcpu.accept(m)]
    assert taken == [0x41, 0x42, 0x43] and vcpu.dropped == 1


def test_a_replay_that_went_another_way_is_taken():
    """The successor's MSI under a reused number differs (another message
    reached it first): it is a real interrupt, and it is delivered."""
    vcpu = MsiReplayFilter()
    assert vcpu.accept(Msi(0xFEE00000, 0x41, "ioapic", 5))
    assert vcpu.accept(Msi(0xFEE00000, 0x51, "ioapic", 5))
    assert not vcpu.accept(Msi(0xFEE00000, 0x51, "ioapic", 5))
    assert vcpu.accept(Msi(0xFEE00000, 0x51, "pic", 5))              # per sender
    assert vcpu.accept(Msi(0xFEE00000, 0x51, "uart", 0)) and vcpu.accept(Msi(0xFEE00000, 0x51, "uart", 0))
