"""The serial console between the guest and the user, run by the supervisor.

Out: each console UART writes what the guest transmits into a ring in
shared memory (`bhive.bus.shm.ConsoleRing`); the relay copies it to the
terminal (a foreground `bhive run`) and to logs/console.log, and watches
it for a guest kernel panic, which no CPU-level event reveals.

In: what is typed on the terminal goes to the first console UART as
`ConsoleInput` requests, acknowledged with the bytes it took; the rest is
sent again.  The UART's actor takes only what its backlog can hold and
moves bytes into the RX FIFO as the guest empties it, so a paste of any
size is flow-controlled end to end and never overruns the FIFO.  Ctrl-A x ends the VM, as with QEMU's -nographic; Ctrl-A then
any other byte passes that byte on.
"""

from __future__ import annotations

import os
import select
import socket
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
INPUT_CHUNK = 1024        # bytes per ConsoleInput request
INPUT_HELD_MAX = 64 * 1024  # typed bytes held here; beyond, the terminal waits (its own buffer fills)
CONSOLE_SOCKET = "console.sock"   # in the run directory's sock/: `bhive console` attaches there
CLIENT_BACKLOG_MAX = 1 << 20      # output queued for a client that does not read; beyond, it is dropped
# The first line a `bhive console` client gets: whether its typing reaches the guest.
HELLO_WRITER = b"bhive-console writer\n"
HELLO_READ_ONLY = b"bhive-console read-only\n"


class _DroppingWriter:
    """Output to a non-blocking fd (a pty's master) that drops what does not
    fit instead of stalling the VM while nobody reads (QEMU does the same)."""

    def __init__(self, fd: int):
        self.fd = fd

    def write(self, data: bytes) -> None:
        try:
            os.write(self.fd, data)
        except (BlockingIOError, OSError):
            pass

    def flush(self) -> None:
        pass


def console_socket_path(rundir: RunDir):
    return rundir.sock / CONSOLE_SOCKET


class ConsoleClient:
    """One attached `bhive console`: a stream socket, what is queued for it,
    and its Ctrl-A state (a writer's input goes through the same escape
    handling as the terminal's)."""

    def __init__(self, conn: socket.socket, writer: bool, serial: bool = False):
        self.conn = conn
        self.writer = writer
        self.serial = serial        # the -serial unix: socket's peer, not a `bhive console`
        self.outbuf = bytearray()
        self.escape_pending = False
INPUT_ACK_MS = 200        # how long one request waits for the UART's answer


class ConsoleRelay:
    """The console rings of one VM, its log, and the terminal (if any).

    `finish(status, reason)` ends the VM (Ctrl-A x); the supervisor asks
    `panic_reason` whether a guest panic must end it."""

    def __init__(self, rundir: RunDir, log, finish, out=None, in_fd: int | None = None, serial: str = "stdio"):
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
        self.listener: socket.socket | None = None
        self.clients: list[ConsoleClient] = []
        self.serial = serial                    # -serial: where COM1 goes besides the log
        self.serial_listener: socket.socket | None = None
        self.serial_name = ""                   # -serial pty: the pty's name

    def create(self, uart_roles: list[str]) -> None:
        """The rings of the console UARTs (before the actors start) and the
        log.  Called again on a reboot: new rings for the new UARTs; the
        log, the attached consoles and the typed input stay."""
        self.rings = [(role, ConsoleRing(self.rundir.shm / f"{role}.console", create=True), [0])
                      for role in uart_roles]
        self.panic_at, self.tail = None, b""
        if self.console_log is None:
            self.console_log = open(self.rundir.logs / "console.log", "ab", buffering=0)
            self._open_serial()
        if self.rings and self.listener is None:
            self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.listener.bind(str(console_socket_path(self.rundir)))
            self.listener.listen(8)
            self.listener.setblocking(False)

    def connect(self, ctx: zmq.Context) -> None:
        """Typed input goes to the first console UART (once it is up)."""
        if self.sock is not None:
            self.sock.close()                   # the UART of the previous boot
            self.sock = None
        if self.rings:
            self.sock = ctx.socket(zmq.DEALER)
            self.sock.setsockopt(zmq.LINGER, 0)
            self.sock.connect(self.rundir.endpoint(self.rings[0][0]))

    def _open_serial(self) -> None:
        """The -serial backend (bhive.config.check_serial validated it):
        stdio is the terminal given; null is only the log; file:PATH
        appends to PATH; pty makes a pseudo-terminal (its name in
        serial_name) that a program such as screen or minicom opens;
        unix:PATH,server,nowait listens at PATH for one peer at a time."""
        kind, _, rest = self.serial.partition(":")
        if kind == "stdio":
            return
        self.out, self.in_fd = None, None
        if kind == "file":
            self.out = open(rest, "ab", buffering=0)
        elif kind == "pty":
            import tty
            master, slave = os.openpty()
            tty.setraw(slave)                   # bytes as they are, no echo (like QEMU's cfmakeraw)
            self.serial_name = os.ttyname(slave)
            self.serial_slave = slave           # held open: the pty outlives a reader that closes it
            os.set_blocking(master, False)
            self.in_fd = master
            self.out = _DroppingWriter(master)
        elif kind == "unix":
            path = rest.split(",")[0]
            if os.path.exists(path):
                os.unlink(path)
            self.serial_listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.serial_listener.bind(path)
            self.serial_listener.listen(1)
            self.serial_listener.setblocking(False)
            self.serial_name = path

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
            for client in self.clients:
                client.outbuf += data
            self._watch(data)
        self._send_clients()

    def note(self, text: bytes) -> None:
        """A line from bhive itself on the console (a reboot), in its log too."""
        self.console_log.write(text)
        if self.out is not None:
            self.out.write(text)
            self.out.flush()
        for client in self.clients:
            client.outbuf += text
        self._send_clients()

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
        self._serve_clients()
        self._flush_input()

    def _read_terminal(self) -> None:
        if self.in_fd is None or len(self.pending_input) >= INPUT_HELD_MAX:
            return
        r, _, _ = select.select([self.in_fd], [], [], 0)
        if not r:
            return
        try:
            data = os.read(self.in_fd, 1024)
        except BlockingIOError:
            return
        except OSError:                         # a pty whose reader went away (EIO)
            return
        if not data:
            self.in_fd = None
            return
        if self.serial == "pty":
            self.pending_input += data          # a -serial pty is a wire: no Ctrl-A escapes, as in QEMU
            return
        self.escape_pending = self._typed(data, self.escape_pending)

    def _typed(self, data: bytes, escape_pending: bool) -> bool:
        """Queues typed bytes for the UART; Ctrl-A x ends the VM, Ctrl-A
        then another byte passes that byte.  Returns the new Ctrl-A state."""
        out = bytearray()
        for b in data:
            if escape_pending:
                escape_pending = False
                if b in (ord("x"), ord("X")):
                    self.finish(STATUS_STOPPED, "quit from the console (Ctrl-A x)")
                    break
                out.append(b)
            elif b == ESCAPE:
                escape_pending = True
            else:
                out.append(b)
        self.pending_input += bytes(out)
        return escape_pending

    # -- attached consoles (`bhive console`) ------------------------------
    def _has_writer(self) -> bool:
        return self.in_fd is not None or any(c.writer for c in self.clients)

    def _serve_clients(self) -> None:
        """Accepts `bhive console` clients (the first is the writer unless a
        terminal or another client types already; the rest are read-only)
        and takes the writer's input."""
        if self.serial_listener is not None:
            try:
                conn, _ = self.serial_listener.accept()
                if any(c.serial for c in self.clients):
                    conn.close()                # one peer at a time, as QEMU's chardev
                else:
                    conn.setblocking(False)
                    for c in self.clients:      # it types; attached consoles only watch
                        c.writer = False
                    self.clients.append(ConsoleClient(conn, writer=True, serial=True))
                    self.log("serial-connected", path=self.serial_name)
            except (BlockingIOError, InterruptedError):
                pass
        if self.listener is None:
            return
        while True:
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            conn.setblocking(False)
            client = ConsoleClient(conn, writer=not self._has_writer())
            client.outbuf += HELLO_WRITER if client.writer else HELLO_READ_ONLY
            self.clients.append(client)
            self.log("console-attached", writer=client.writer, clients=len(self.clients))
        for client in list(self.clients):
            if client.writer and len(self.pending_input) >= INPUT_HELD_MAX:
                continue
            try:
                data = client.conn.recv(4096)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                self._drop(client)
            elif client.serial:
                self.pending_input += data      # a -serial peer is a wire: no Ctrl-A escapes, as in QEMU
            elif client.writer:
                client.escape_pending = self._typed(data, client.escape_pending)
            # a read-only client's typing goes nowhere (it was told so)

    def _send_clients(self) -> None:
        for client in list(self.clients):
            if not client.outbuf:
                continue
            try:
                sent = client.conn.send(client.outbuf)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._drop(client)
                continue
            del client.outbuf[:sent]
            if len(client.outbuf) > CLIENT_BACKLOG_MAX:
                self._drop(client)

    def _drop(self, client: ConsoleClient) -> None:
        client.conn.close()
        self.clients.remove(client)
        self.log("console-detached", writer=client.writer, clients=len(self.clients))

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
