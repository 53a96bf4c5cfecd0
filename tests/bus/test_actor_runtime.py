"""The actor runtime, with a real uart actor process and a real bus.

The test plays the supervisor (control socket) and a vCPU (requests).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import zmq

from bhive import config as config_mod
from bhive.bus import schema
from bhive.bus.schema import Hello, PioRequest, PioResponse
from bhive.bus.shm import ConsoleRing
from bhive.rundir import RunDir
from bhive.vcpu_worker import ActorClient

from support import REPO

THR, LSR, SCR = 0x3F8, 0x3FD, 0x3FF


class Harness:
    def __init__(self, name: str):
        self.rd = RunDir(name)
        self.rd.create()
        cfg = config_mod.from_dict({"boot": {"image": str(REPO / "README.md")},
                                    "devices": {"uart": {"port": 0x3F8}}}, REPO, name)
        self.rd.write_json("supervisor.json", {"pid": os.getpid(), "config": config_mod.to_json(cfg)})
        ConsoleRing(self.rd.shm / "uart.console", create=True).region.close()
        self.ctx = zmq.Context.instance()
        self.ctl = self.ctx.socket(zmq.ROUTER)
        self.ctl.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.ctl.setsockopt(zmq.LINGER, 0)
        self.ctl.bind(self.rd.endpoint("supervisor"))
        self.proc = None

    def start(self) -> Hello:
        self.proc = subprocess.Popen([sys.executable, "-m", "bhive.devices_worker", str(self.rd.path), "uart"],
                                     cwd=REPO)
        while True:
            assert self.ctl.poll(20000), "actor did not say hello"
            ident, raw = self.ctl.recv_multipart()
            msg = schema.decode(raw)
            if isinstance(msg, Hello):
                return msg

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def console(self) -> bytes:
        ring = ConsoleRing(self.rd.shm / "uart.console")
        return ring.read(0, ring.published)

    def close(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.ctl.close()


@pytest.fixture
def harness(request):
    h = Harness(f"rt-{request.node.name[:20]}")
    yield h
    h.close()


def test_requests_are_answered_and_state_survives_sigkill(harness):
    assert harness.start().restored is False
    vcpu = ActorClient(harness.ctx, harness.rd.endpoint("uart"), "uart", "vcpu0")
    vcpu.pio(SCR, 1, True, 0xA5)
    for ch in b"hi":
        assert vcpu.pio(LSR, 1, False, 0) & 0x20  # THRE
        vcpu.pio(THR, 1, True, ch)
    assert harness.console() == b"hi"
    harness.kill()
    assert harness.start().restored is True
    assert vcpu.pio(SCR, 1, False, 0) == 0xA5, "scratch register lost across the restart"
    vcpu.pio(THR, 1, True, ord("!"))
    assert harness.console() == b"hi!"


def test_a_retried_request_is_not_applied_twice(harness):
    harness.start()
    sock = harness.ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(harness.rd.endpoint("uart"))
    req = PioRequest("vcpu0", 1, THR, 1, True, ord("x"))
    sock.send(schema.encode(req))
    assert sock.poll(10000)
    assert schema.decode(sock.recv()) == PioResponse(1, 0)
    # The actor dies after committing; the vCPU, not having seen the answer
    # (as far as it knows), retries with the same id after the restart.
    harness.kill()
    harness.start()
    sock.send(schema.encode(req))
    assert sock.poll(10000)
    assert schema.decode(sock.recv()) == PioResponse(1, 0)
    assert harness.console() == b"x", "the retried write was applied twice"
    sock.send(schema.encode(PioRequest("vcpu0", 2, THR, 1, True, ord("y"))))
    assert sock.poll(10000)
    sock.recv()
    assert harness.console() == b"xy"
    sock.close()


def test_garbage_messages_are_logged_not_fatal(harness):
    harness.start()
    sock = harness.ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(harness.rd.endpoint("uart"))
    sock.send(b"\xc1 not msgpack")
    sock.send_multipart([b"two", b"frames"])
    vcpu = ActorClient(harness.ctx, harness.rd.endpoint("uart"), "uart", "vcpu0")
    vcpu.pio(SCR, 1, True, 0x11)
    assert vcpu.pio(SCR, 1, False, 0) == 0x11
    assert harness.proc.poll() is None
    log = harness.rd.log_path("uart").read_text()
    assert "bad-message" in log
    sock.close()
