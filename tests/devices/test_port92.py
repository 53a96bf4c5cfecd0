"""System Control Port A (port 0x92): the fast reset fires on a 0 -> 1
edge of bit 0 only; A20 reads back enabled; the state round-trips."""

from __future__ import annotations

from bhive.actors.port92 import A20_GATE, FAST_RESET, SystemControlPortA
from bhive.bus.schema import VmEvent
from bhive.devices import DEVICE_TYPES


def make():
    resets, logged = [], []
    dev = SystemControlPortA(reset=lambda: resets.append(1), log=lambda e, **f: logged.append(e))
    return dev, resets, logged


def test_reads_a20_enabled_after_reset():
    dev, _, _ = make()
    assert dev.read(0, 1) == A20_GATE


def test_fast_reset_on_the_rising_edge_of_bit_0_only():
    dev, resets, _ = make()
    dev.write(0, 1, A20_GATE)                     # bit 0 stays 0: nothing
    assert resets == []
    dev.write(0, 1, A20_GATE | FAST_RESET)        # 0 -> 1: reset
    assert resets == [1]
    dev.write(0, 1, A20_GATE | FAST_RESET)        # 1 -> 1: no new edge
    assert resets == [1]
    dev.write(0, 1, A20_GATE)
    dev.write(0, 1, A20_GATE | FAST_RESET)        # a second edge
    assert resets == [1, 1]


def test_a20_off_is_remembered_and_logged_not_applied():
    dev, resets, logged = make()
    dev.write(0, 1, 0)
    assert dev.read(0, 1) == 0 and resets == []
    assert "port92_a20_off_not_applied" in logged


def test_state_round_trip_keeps_the_edge_detector():
    dev, _, _ = make()
    dev.write(0, 1, A20_GATE | FAST_RESET)
    resets = []
    again = SystemControlPortA.from_state(dev.state(), reset=lambda: resets.append(1))
    again.write(0, 1, A20_GATE | FAST_RESET)      # still high: no edge
    assert resets == [] and again.read(0, 1) == A20_GATE | FAST_RESET


def test_the_actor_asks_the_supervisor_for_a_reset(host_for):
    host = host_for(DEVICE_TYPES["port92"])
    host.pio(0x92, 1, True, A20_GATE | FAST_RESET)
    assert host.runtime.events == [VmEvent("port92", "reset", 0, "port 0x92 fast reset")]
