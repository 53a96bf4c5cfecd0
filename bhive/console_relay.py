"""The serial console between the guest and the user, run by the supervisor.

Out: each console UART writes what the guest transmits into a ring in
shared memory (`bhive.bus.shm.ConsoleRing`); the relay copies it to the
terminal (a foreground `bhive run`) and to logs/console.log, and watches
it for a guest kernel panic, which no CPU-level event reveals.

In: what is typed on the terminal goes to the first console UART as
`ConsoleInput` requests (acknowledged with the bytes it took; the rest is
sent again).  Ctrl-A x ends the VM, as with QEMU's -nographic; Ctrl-A then
any other byte passes that byte on.
"""

from __future__ import annotations

import os
import select
import time

import zmq

from .bus import schema
from .bus.schema import ConsoleInput
from .bus.shm import ConsoleRing
from .exit_status import STATUS_STOPPED
from .rundir import RunDir

# A guest kernel that panics prints this and then spins or halts with
# interrupts on.
PANIC_MARKER = b"Kernel panic - not syncing"
PANIC_GRACE = 1.0         # let the panic's backtrace reach the console first
ESCAPE = 0x01             # Ctrl-A, then 'x' quits
INPUT_CHUNK = 256         # bytes per ConsoleInput request
INPUT_ACK_MS = 200        # how long one request waits for the UART's answer


class ConsoleRelay:
    """The console rings of one VM, its log, and the terminal (if any).

    `finish(status, reason)` ends the VM (Ctrl-A x); the supervisor asks
    `panic_reason` whether a guest panic must end it."""

    def __init__(self, rundir: RunDir, log, finish, out=None, in_fd: int | None = None):
        self.rundir = rundir
        self.log = log
        self.finish = finish
        self.out = out                          # binary stream or None
        self.in_fd = in_fd
        self.rings: list[tuple[str, ConsoleRing, list[int]]] = []   # (uart role, ring, [read position])
        self.sock = None
        self.escape_pending = False
        self.req = 0
        self.pending_input = b""
        self.tail = b""                         # the last bytes, for markers split across reads
        self.panic_at: float | None = None
        self.panic_line = ""
        self.console_log = None

    def create(self, uart_roles: list[str]) -> None:
        """The rings of the console UARTs (before the actors start) and the log."""
        for role in uart_roles:
            self.rings.append((role, ConsoleRing(self.rundir.shm / f"{role}.console", create=True), [0]))
        self.console_log = open(self.rundir.logs / "console.log", "ab", buffering=0)

    def connect(self, ctx: zmq.Context) -> None:
        """Typed input goes to the first console UART (once it is up)."""
        if self.rings:
            self.sock = ctx.socket(zmq.DEALER)
            self.sock.setsockopt(zmq.LINGER, 0)
            self.sock.connect(self.rundir.endpoint(self.rings[0][0]))

    # -- out ----------------------------------------------------------------
    def pump_output(self) -> None:
        for _, ring, pos in self.rings:
            end = ring.published
            if end == pos[0]:
                continue
            data = ring.read(pos[0], end)
            pos[0] = end
            ring.consume(end)
            self.console_log.write(data)
            if self.out is not None:
                self.out.write(data)
                self.out.flush()
            self._watch(data)

    def _watch(self, data: bytes) -> None:
        """Notice a guest kernel panic on the console."""
        text = self.tail + data
        self.tail = text[-512:]
        if self.panic_at is None:
            k = text.find(PANIC_MARKER)
            if k >= 0:
                self.panic_at = time.monotonic()
                self.panic_line = text[k:].split(b"\n")[0].decode(errors="replace").strip()
                self.log("guest-panic", line=self.panic_line)

    def panic_reason(self, now: float) -> str | None:
        """Why the VM must end, once a panic's backtrace has had time to be printed."""
        if self.panic_at is not None and now - self.panic_at > PANIC_GRACE:
            return f"guest kernel panic: {self.panic_line}"
        return None

    # -- in -----------------------------------------------------------------
    def pump_input(self) -> None:
        """Read what was typed (Ctrl-A x quits), then hand it to the UART."""
        self._read_terminal()
        self._flush_input()

    def _read_terminal(self) -> None:
        if self.in_fd is None:
            return
        r, _, _ = select.select([self.in_fd], [], [], 0)
        if not r:
            return
        data = os.read(self.in_fd, 1024)
        if not data:
            self.in_fd = None
            return
        out = bytearray()
        for b in data:
            if self.escape_pending:
                self.escape_pending = False
                if b in (ord("x"), ord("X")):
                    self.finish(STATUS_STOPPED, "quit from the console (Ctrl-A x)")
                    return
                out.append(b)
            elif b == ESCAPE:
                self.escape_pending = True
            else:
                out.append(b)
        self.pending_input += bytes(out)

    def _flush_input(self) -> None:
        """Hands typed bytes to the console UART, keeping what it cannot take."""
        if not self.pending_input or self.sock is None:
            return
        self.req += 1
        self.sock.send(schema.encode(ConsoleInput("supervisor", self.req, self.pending_input[:INPUT_CHUNK])))
        if self.sock.poll(INPUT_ACK_MS):
            reply = schema.decode(self.sock.recv())
            if reply.req_id == self.req:
                self.pending_input = self.pending_input[reply.accepted:]
