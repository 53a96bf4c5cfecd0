"""The guest's clocks across restarts of their actor (README, Chaos): a
real PIT or RTC actor process, killed 50 times at random instants while
the test (playing a vCPU over the real bus) reads its counter; every
reading must agree with the host clock it is derived from, so that the
clock neither jumped nor stalled across any restart.

* PIT: channel 0 in mode 2 with the largest count (65536 clocks, ~55 ms
  at 1.193182 MHz); a latched count read at host time t must be where the
  count was at the first read plus the PIT clocks elapsed since, modulo
  the period, within the time the read took (a successor that restarted
  the count, or froze it while it was down, is off by the restart time);
* RTC: set to 2001-02-03 04:05:06 by the guest; every later read of
  seconds/minutes/hours must be that time plus the host seconds elapsed
  (within a second), whatever restarts happened in between.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import zmq

from bhive import config as config_mod
from bhive.actors.pit import PIT_HZ
from bhive.bus import schema
from bhive.bus.schema import Hello
from bhive.rundir import RunDir
from bhive.vcpu_worker import ActorClient
from support import REPO

KILLS = 50
PERIOD = 65536            # a count of 0 is 65536 clocks


class ClockActor:
    """One real actor process of `device`, restarted by the test (which
    plays the supervisor) after each kill."""

    def __init__(self, name: str, device: str):
        self.device = device
        self.rd = RunDir(name)
        self.rd.create()
        cfg = config_mod.from_dict({"boot": {"image": str(REPO / "README.md")},
                                    "devices": {device: {}}}, REPO, name)
        self.rd.write_json("supervisor.json", {"pid": os.getpid(), "config": config_mod.to_json(cfg)})
        self.ctx = zmq.Context.instance()
        self.ctl = self.ctx.socket(zmq.ROUTER)
        self.ctl.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.ctl.setsockopt(zmq.LINGER, 0)
        self.ctl.bind(self.rd.endpoint("supervisor"))
        self.proc = None
        self.vcpu = None

    def start(self) -> Hello:
        self.proc = subprocess.Popen([sys.executable, "-m", "bhive.devices_worker", str(self.rd.path),
                                      self.device], cwd=REPO)
        while True:
            assert self.ctl.poll(20000), "the actor did not say hello"
            _, raw = self.ctl.recv_multipart()
            msg = schema.decode(raw)
            if isinstance(msg, Hello):
                if self.vcpu is None:
                    self.vcpu = ActorClient(self.ctx, self.rd.endpoint(self.device), self.device, "vcpu0")
                return msg

    def kill_and_restart(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        assert self.start().restored

    def close(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.ctl.close()


@pytest.fixture
def actor(request):
    made = []

    def make(device: str) -> ClockActor:
        a = ClockActor(f"clk-{device}", device)
        made.append(a)
        return a
    yield make
    for a in made:
        a.close()


def pit_read(vcpu) -> tuple[int, float]:
    """Latch channel 0 and read it: (count, host time of the latch)."""
    before = time.monotonic()
    vcpu.pio(0x43, 1, True, 0x00)              # counter latch, channel 0
    after = time.monotonic()
    lo = vcpu.pio(0x40, 1, False, 0)
    hi = vcpu.pio(0x40, 1, False, 0)
    return (lo | hi << 8) or PERIOD, (before + after) / 2, after - before


def test_the_pit_neither_jumps_nor_stalls_across_50_restarts(actor):
    pit = actor("pit")
    pit.start()
    v = pit.vcpu
    v.pio(0x43, 1, True, 0x34)                 # channel 0, lo/hi, mode 2 (rate generator), binary
    v.pio(0x40, 1, True, 0x00)
    v.pio(0x40, 1, True, 0x00)                 # count 0: 65536
    count0, t0, _ = pit_read(v)
    rng = random.Random(50)
    checked = 0
    for _ in range(KILLS):
        time.sleep(rng.uniform(0, 0.03))       # a random instant in the count's period
        pit.kill_and_restart()
        for _ in range(3):
            count, t, took = pit_read(v)
            elapsed = round((t - t0) * PIT_HZ)
            expected = (count0 - 1 - (elapsed % PERIOD)) % PERIOD + 1
            off = min((count - expected) % PERIOD, (expected - count) % PERIOD)
            # the latch happened somewhere in [before, after]: allow that, plus 1 ms of scheduling
            assert off <= (took / 2 + 0.001) * PIT_HZ, \
                f"PIT off by {off} clocks ({off / PIT_HZ * 1000:.2f} ms) after {checked} checks"
            checked += 1
    assert checked == 3 * KILLS


def bcd(n: int) -> int:
    return (n // 10) << 4 | n % 10


def unbcd(b: int) -> int:
    return (b >> 4) * 10 + (b & 0xF)


def rtc_reg(vcpu, index: int, value: int | None = None) -> int:
    vcpu.pio(0x70, 1, True, index)
    if value is None:
        return vcpu.pio(0x71, 1, False, 0)
    vcpu.pio(0x71, 1, True, value)
    return value


def test_the_rtc_neither_jumps_nor_stalls_across_50_restarts(actor):
    rtc = actor("rtc")
    rtc.start()
    v = rtc.vcpu
    set_to = dt.datetime(2001, 2, 3, 4, 5, 6, tzinfo=dt.timezone.utc)
    rtc_reg(v, 0x0A, 0x26)                     # 32.768 kHz time base, 1024 Hz rate: running
    rtc_reg(v, 0x0B, 0x82)                     # SET: stop updates; 24 h, BCD
    for index, value in ((0x00, 6), (0x02, 5), (0x04, 4), (0x07, 3), (0x08, 2), (0x09, 1)):
        rtc_reg(v, index, bcd(value))
    rtc_reg(v, 0x0B, 0x02)                     # run
    set_at = time.monotonic()
    rng = random.Random(51)
    for i in range(KILLS):
        time.sleep(rng.uniform(0, 0.05))
        rtc.kill_and_restart()
        while rtc_reg(v, 0x0A) & 0x80:          # UIP: an update is under way
            pass
        before = time.monotonic()
        h, m, s = (unbcd(rtc_reg(v, reg)) for reg in (0x04, 0x02, 0x00))
        after = time.monotonic()
        guest = set_to.replace(hour=h, minute=m, second=s)
        low = (set_to + dt.timedelta(seconds=before - set_at - 1)).replace(microsecond=0)
        high = set_to + dt.timedelta(seconds=after - set_at + 1)
        assert low <= guest <= high, f"restart {i}: RTC says {guest.time()}, host-derived {low.time()}..{high.time()}"
    assert time.monotonic() - set_at > 1.0, "the run must span an RTC update"
