"""Drive a guest's serial console: wait for `login:`, log in as root, run
shell commands and get their output and exit status back.  For tests and
benchmarks, against any VMM whose serial console is its terminal
(`python -m bhive run ...`, `qemu-system-x86_64 -nographic ...`).

    with GuestConsole(argv) as con:
        con.login()                          # Debian images: root, no password
        # con.wait_shell()                   # the busybox initramfs: its shell
        r = con.run("uname -r")              # r.status, r.output
        con.run_script(text, timeout=900)    # a multi-line script, copied to a file

The VMM runs on a pseudo-terminal (bhive's console relay and QEMU's stdio
both want one).  After logging in, the harness turns the guest tty's echo
off and kernel messages off the console (`dmesg -n 1`), so what comes back
is only what commands print.  Each command is bracketed by markers the
guest computes (`$((7*N))`), so neither an echo of the command line nor a
stray line can be mistaken for them.  Every timeout raises ConsoleError
with the console's last lines; the whole transcript is written to
`transcript` (a path) if one was given (as it arrives, then cleaned up at
the end), and is kept in `.transcript`.
"""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import termios
import time
from dataclasses import dataclass
from pathlib import Path

LOGIN = re.compile(rb"login: ")
PASSWORD = re.compile(rb"[Pp]assword: ")
CTRL_A_X = b"\x01x"               # bhive's and QEMU's -nographic "quit"


def _lines(data: bytes) -> str:
    return re.sub(rb"\r+\n", b"\n", bytes(data)).decode(errors="replace")


class ConsoleError(RuntimeError):
    pass


@dataclass
class CommandResult:
    status: int
    output: str            # what the command printed, "\r\n" made "\n"
    seconds: float


class GuestConsole:
    def __init__(self, argv: list[str], transcript: str | os.PathLike | None = None,
                 env: dict | None = None, cwd: str | os.PathLike | None = None):
        self.argv = [str(a) for a in argv]
        self.transcript_path = Path(transcript) if transcript else None
        self.env, self.cwd = env, cwd
        self.proc: subprocess.Popen | None = None
        self.fd = -1
        self.buf = bytearray()      # everything the console printed
        self.pos = 0                # where the next expect() starts looking
        self.t0 = 0.0
        self._n = 0
        self._live = None           # the transcript file while the VMM runs

    # -- process ------------------------------------------------------------
    def start(self) -> "GuestConsole":
        master, slave = pty.openpty()
        attrs = termios.tcgetattr(slave)
        attrs[3] &= ~termios.ECHO           # our own writes are not echoed by the host side
        attrs[1] &= ~termios.OPOST          # nor is the VMM's "\r\n" made "\r\r\n"
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        self.t0 = time.monotonic()
        try:
            self.proc = subprocess.Popen(self.argv, stdin=slave, stdout=slave, stderr=slave,
                                         start_new_session=True, env=self.env, cwd=self.cwd)
        except OSError as exc:
            os.close(master)
            raise ConsoleError(f"cannot start {self.argv[0]}: {exc}") from None
        finally:
            os.close(slave)
        self.fd = master
        if self.transcript_path:            # written as it comes, to watch a slow guest
            self.transcript_path.parent.mkdir(parents=True, exist_ok=True)
            self._live = open(self.transcript_path, "wb")
        return self

    def __enter__(self) -> "GuestConsole":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.close()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def close(self, timeout: float = 10) -> int | None:
        """Quit the VMM (Ctrl-A x, then SIGTERM, then SIGKILL); its exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.send(CTRL_A_X)
                self._drain_until_exit(timeout / 2)
            except (OSError, ConsoleError):
                pass
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(timeout=timeout / 2)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.save_transcript()
        return self.proc.returncode

    def wait_exit(self, timeout: float) -> int:
        """Wait for the VMM to end by itself (the guest powered off)."""
        self._drain_until_exit(timeout)
        if self.proc.poll() is None:
            self._fail(f"the VMM did not exit within {timeout:.0f} s")
        return self.proc.returncode

    def _drain_until_exit(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._read(min(0.2, max(0.0, deadline - time.monotonic())))
        self._read(0)

    # -- transcript -----------------------------------------------------------
    @property
    def transcript(self) -> str:
        return _lines(self.buf)

    def save_transcript(self) -> None:
        """Rewrite the transcript file with "\r\n" made "\n"."""
        if self._live:
            self._live.close()
            self._live = None
        if self.transcript_path:
            self.transcript_path.parent.mkdir(parents=True, exist_ok=True)
            self.transcript_path.write_text(self.transcript)

    def _fail(self, why: str):
        self.save_transcript()
        tail = "\n".join(self.transcript.splitlines()[-40:])
        where = f" (transcript: {self.transcript_path})" if self.transcript_path else ""
        state = "running" if self.alive() else f"exited {self.proc.returncode}"
        raise ConsoleError(f"{why} after {self.elapsed():.1f} s, VMM {state}{where}; console tail:\n{tail}")

    # -- reading and writing ---------------------------------------------------
    def _read(self, timeout: float) -> bool:
        """Read what is there (waiting up to `timeout`); False at EOF."""
        if self.fd < 0:
            return False
        r, _, _ = select.select([self.fd], [], [], timeout)
        if not r:
            return True
        try:
            chunk = os.read(self.fd, 65536)
        except OSError:              # EIO: the VMM closed its side
            return False
        if not chunk:
            return False
        self.buf += chunk
        if self._live:
            self._live.write(chunk)
            self._live.flush()
        return True

    def send(self, data: str | bytes) -> None:
        if isinstance(data, str):
            data = data.encode()
        while data:
            n = os.write(self.fd, data[:1024])
            data = data[n:]
            if data:
                time.sleep(0.01)     # let the guest's 16-byte FIFO and tty buffer keep up

    def expect(self, pattern: re.Pattern | bytes, timeout: float, what: str | None = None) -> re.Match:
        """Wait for `pattern` in what the console printed since the last
        match; return the match and move past it."""
        if isinstance(pattern, bytes):
            pattern = re.compile(re.escape(pattern))
        deadline = time.monotonic() + timeout
        while True:
            m = pattern.search(self.buf, self.pos)
            if m:
                self.pos = m.end()
                return m
            left = deadline - time.monotonic()
            if left <= 0:
                self._fail(f"no {what or pattern.pattern!r} on the console within {timeout:.0f} s")
            if not self._read(min(left, 1.0)):
                self._fail(f"the console closed while waiting for {what or pattern.pattern!r}")

    # -- the guest's shell -------------------------------------------------------
    def login(self, user: str = "root", timeout: float = 600) -> float:
        """Wait for `login:`, log in as `user` (answering an empty password if
        asked), set the shell up for run(); returns the seconds from launch to
        `login:`."""
        self.expect(LOGIN, timeout, "login:")
        at_login = self.elapsed()
        time.sleep(0.5)             # agetty flushes its input after printing the prompt
        self.send(user + "\n")
        # either a password prompt or the shell; the first marker settles it
        self._setup_shell(timeout=120, password_ok=True)
        return at_login

    def wait_shell(self, prompt: bytes = b"# ", timeout: float = 600) -> float:
        """The busybox initramfs: wait for its shell prompt, set it up."""
        self.expect(re.compile(re.escape(prompt)), timeout, f"shell prompt {prompt!r}")
        at = self.elapsed()
        self._setup_shell(timeout=120)
        return at

    def _setup_shell(self, timeout: float, password_ok: bool = False) -> None:
        """Echo off, kernel messages off the console, and a marker back.  Sent
        again every few seconds until it answers: input typed while login
        hands over to the shell may be flushed."""
        n = self._next()
        ready = re.compile(rb"@@BH-READY-%d@@" % (7 * n))
        setup = (f"stty -echo 2>/dev/null; dmesg -n 1 2>/dev/null; PS1=''; PS2=''; "
                 f"bind 'set enable-bracketed-paste off' 2>/dev/null; echo @@BH-READY-$((7*{n}))@@\n")
        deadline = time.monotonic() + timeout
        resend = 0.0
        while True:
            if ready.search(self.buf, self.pos):
                self.expect(ready, 1)
                return
            if password_ok:
                m = PASSWORD.search(self.buf, self.pos)
                if m:
                    self.pos = m.end()
                    self.send("\n")
                    resend = time.monotonic() + 2
                    continue
            now = time.monotonic()
            if now >= deadline:
                self._fail("the shell did not answer")
            if now >= resend:
                self.send(setup)
                resend = now + 10
            if not self._read(min(deadline - now, 1.0)):
                self._fail("the console closed before the shell answered")

    def _next(self) -> int:
        self._n += 1
        return self._n

    def run(self, command: str, timeout: float = 120, check: bool = False) -> CommandResult:
        """Run one shell command line in the guest; its output and exit status.
        It must not end in a comment (the end marker follows it on the line)."""
        if "\n" in command:
            raise ValueError("run() takes one line; use run_script() for more")
        n = self._next()
        begin = re.compile(rb"@@BH-B-%d@@\r*\n" % (7 * n))
        end = re.compile(rb"@@BH-E-%d:(\d+)@@" % (7 * n))
        t = time.monotonic()
        # one line, so no prompt comes between the command and the end marker
        self.send(f"echo @@BH-B-$((7*{n}))@@; {command} ; echo @@BH-E-$((7*{n})):$?@@\n")
        self.expect(begin, timeout, f"the start of {command!r}")
        start = self.pos
        m = self.expect(end, timeout, f"the end of {command!r}")
        output = _lines(self.buf[start:m.start()])
        r = CommandResult(int(m.group(1)), output, time.monotonic() - t)
        if check and r.status != 0:
            self._fail(f"{command!r} exited {r.status}; it printed:\n{output}")
        return r

    def run_script(self, text: str, args: str = "", timeout: float = 600, check: bool = False,
                   interpreter: str = "sh") -> CommandResult:
        """Copy a multi-line script into the guest and run it there.  It goes
        as base64 in lines of CHUNK characters, each one a command whose
        marker comes back before the next is sent: a serial line has no flow
        control, and a tty drops what overflows its 4 KiB buffer."""
        import base64
        n = self._next()
        path = f"/tmp/bhive-script-{n}.sh"
        data = base64.b64encode(text.encode()).decode()
        self.run(f": > {path}.b64", check=True)
        for i in range(0, len(data), self.CHUNK):
            self.run(f"printf %s '{data[i:i + self.CHUNK]}' >> {path}.b64", check=True)
        self.run(f"base64 -d {path}.b64 > {path}", check=True)
        return self.run(f"{interpreter} {path} {args}".rstrip(), timeout=timeout, check=check)

    CHUNK = 768

    def poweroff(self, command: str = "poweroff", timeout: float = 120) -> int:
        """Power the guest off and wait for the VMM to end."""
        self.send(command + "\n")
        return self.wait_exit(timeout)
