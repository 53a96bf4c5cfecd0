"""`bhive`: a thin command line over `bhive.supervisor` and `bhive.vm_control`.

`bhive run` starts the fork server (`bhive.zygote`) before anything else,
so that its imports overlap the CLI's own: this module imports the
supervisor (and the config loader) only when a command needs them.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import select
import subprocess
import sys
import tempfile
import termios
import time
import tty
from pathlib import Path

from . import zygote
from .rundir import RunDir, all_vms


def error(msg: str, status: int = 2) -> int:
    print(f"bhive: error: {msg}", file=sys.stderr)
    return status


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line and status 2, not the usage."""

    def error(self, message: str):
        print(f"bhive: error: {message}", file=sys.stderr)
        sys.exit(2)


class _Unsupported(argparse.Action):
    """A QEMU option bhive does not have: refused by name."""

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string}: a QEMU option bhive does not have")


class _AppendFlag(argparse.Action):
    """Collects (flag, value) in command-line order (-drive, -hda, ...)."""

    def __call__(self, parser, namespace, values, option_string=None):
        items = getattr(namespace, self.dest) or []
        setattr(namespace, self.dest, [*items, (option_string, values)])


# -- run ----------------------------------------------------------------------

# `bhive run` with no config: Debian's kernel and the busybox initramfs
# on the PC platform; also the base for `bhive run --kernel K`.
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.toml"


def _cli_path(value: str | None) -> str | None:
    """A file named on the command line is relative to the working
    directory (one in a config is relative to the config)."""
    from . import config as config_mod
    if value is None:
        return value
    out = []
    for part in value.split(","):
        words = part.strip().split(None, 1)   # a Multiboot module: "path args"
        if not words:
            continue
        if not words[0].startswith(config_mod.GUESTKIT_PREFIX):
            words[0] = str(Path(words[0]).expanduser().absolute())
        out.append(" ".join(words))
    return ",".join(out)


def _cli_serial(spec: str | None) -> str | None:
    """-serial file:PATH / unix:PATH,...: PATH relative to the working directory."""
    if spec is None:
        return None
    kind, sep, rest = spec.partition(":")
    if kind in ("file", "unix") and rest:
        path, comma, flags = rest.partition(",")
        return f"{kind}:{Path(path).expanduser().absolute()}{comma}{flags}"
    return spec


def load_config(args) -> config_mod.VmConfig:
    """The VmConfig `bhive run ARGS` runs: the config file (or the default
    one) with the command line's flags, in bhive's or QEMU's spelling, over
    it.  ConfigError on any mistake."""
    from . import config as config_mod
    from . import qemuopts
    accel = qemuopts.accelerator(args.accel) if args.accel is not None else None
    if args.enable_kvm:
        if accel not in (None, "kvm"):
            raise config_mod.ConfigError(f"-enable-kvm and -accel {accel} disagree")
        accel = "kvm"
    overrides = {"name": qemuopts.name(args.name) if args.name is not None else None,
                 "cpus": qemuopts.smp(args.smp) if args.smp is not None else None,
                 "memory": qemuopts.memory(args.memory) if args.memory is not None else None,
                 "watchdog": args.watchdog, "accel": accel, "no_reboot": args.no_reboot,
                 "cpu": args.cpu, "serial": _cli_serial(args.serial)}
    boot = {"kernel": _cli_path(args.kernel), "initrd": _cli_path(args.initrd), "append": args.append}
    if args.kernel:
        boot["kind"] = "kernel"
        if args.initrd is None:
            boot["initrd"] = ""            # the config's initrd belongs to the config's kernel
    drives = []
    for flag, value in args.drives or []:
        if flag in ("-drive", "--drive"):
            table = qemuopts.drive(value)
        else:                                       # -hda..-hdd: the path as it is, no QemuOpts
            table = {"file": value, "index": "abcd".index(flag[-1])}
        table["file"] = str(Path(table["file"]).expanduser().absolute())
        drives.append((f"{flag} {value}", table))
    devices = [qemuopts.device(value) for value in args.device or []]
    return config_mod.load(args.config or DEFAULT_CONFIG, overrides, boot, drives=drives,
                           snapshot=args.snapshot, device_overrides=devices)


def cmd_run(args) -> int:
    early = None
    if not args.detach and not os.environ.get(zygote.NO_ZYGOTE_ENV):
        try:
            early = zygote.Zygote()     # imports while this process does
        except OSError:
            pass
    from . import config as config_mod
    try:
        cfg = load_config(args)
        if RunDir(cfg.name).is_live():
            raise config_mod.ConfigError(f"a VM named {cfg.name!r} is already running "
                                         f"(bhive stop {cfg.name}, or pick --name)")
    except config_mod.ConfigError as exc:
        if early is not None:
            early.close(kill=True)
            early.reap()
        return error(str(exc))
    if args.detach:
        return run_detached(cfg)
    return run_foreground(cfg, early)


def run_foreground(cfg: config_mod.VmConfig, early: zygote.Zygote | None = None) -> int:
    from . import config as config_mod
    from . import supervisor as sup_mod
    stdin_fd = sys.stdin.fileno() if sys.stdin and not sys.stdin.closed else None
    interactive = stdin_fd is not None and os.isatty(stdin_fd) and cfg.serial == "stdio"
    sup = sup_mod.Supervisor(cfg, console_out=sys.stdout.buffer,
                             console_in_fd=stdin_fd if interactive else None, zygote=early)
    try:
        sup.prepare()
    except config_mod.ConfigError as exc:
        return error(str(exc))
    if sup.console.serial_name:
        print(f"bhive: serial: char device redirected to {sup.console.serial_name}", file=sys.stderr, flush=True)
    if interactive:
        saved = termios.tcgetattr(stdin_fd)
        tty.setraw(stdin_fd, termios.TCSANOW)  # TCSANOW: keep what was typed already
        print(f"bhive: VM {cfg.name!r}: {cfg.cpus} vCPU(s), {cfg.memory >> 20} MiB, {cfg.accel}; "
              f"Ctrl-A x quits\r", file=sys.stderr)
    try:
        status = sup.run()
    finally:
        if interactive:
            termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
    print(f"\nbhive: {cfg.name}: {sup.reason} (exit status {status})", file=sys.stderr)
    if getattr(sup, "chaos_report", None) is not None:
        print(sup.chaos_report.format(), file=sys.stderr)
    return status


def run_detached(cfg: config_mod.VmConfig) -> int:
    from . import config as config_mod
    from . import vm_control
    fd, path = tempfile.mkstemp(prefix="bhive-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(config_mod.to_json(cfg), f)
    log = open(os.devnull, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "bhive.supervisor", path], stdin=subprocess.DEVNULL,
                            stdout=log, stderr=subprocess.PIPE, start_new_session=True)
    rd = RunDir(cfg.name)
    info = vm_control.wait_running(rd, proc.pid)
    os.unlink(path)
    if info.get("pid") != proc.pid or info.get("state") not in ("running", "stopped"):
        proc.wait(5)
        err = proc.stderr.read().decode(errors="replace").strip().splitlines()
        return error(err[-1].removeprefix("bhive: error: ") if err else "the VM did not start", 
                     proc.returncode if proc.returncode else 4)
    if info.get("serial"):
        print(f"bhive: serial: char device redirected to {info['serial']}", file=sys.stderr)
    print(cfg.name)
    return 0


# -- ps -------------------------------------------------------------------------

def _uptime(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def cmd_ps(args) -> int:
    from . import vm_control
    vms = [RunDir(args.vm)] if args.vm else all_vms()
    rows = []
    gone = {}                   # ended VMs: supervisor.json (status, reason)
    for rd in vms:
        end = vm_control.ended(rd)
        if end is not None:
            if not args.all:
                continue
            gone[rd.name] = end
        for row in vm_control.process_table(rd):
            rows.append((rd.name, row))
    if args.json:
        print(json.dumps([{"vm": vm, **row, **({"vm_status": gone[vm]["status"], "vm_reason": gone[vm]["reason"]}
                                               if vm in gone else {})} for vm, row in rows], indent=1))
        return 0
    print(f"{'VM':<14} {'ROLE':<12} {'KIND':<10} {'PID':>8} {'STATE':<10} {'RESTARTS':>8} {'UPTIME':>9}")
    for vm, row in rows:
        if vm in gone:
            continue
        print(f"{vm:<14} {row['role']:<12} {row['kind']:<10} {row['pid'] or '-':>8} {row['state']:<10} "
              f"{row['restarts']:>8} {_uptime(row['uptime']):>9}")
    for vm, end in gone.items():      # one line each: how it ended
        print(f"{vm:<14} {'-':<12} {'vm':<10} {'-':>8} {'exited':<10} status {end['status']}: {end['reason']}")
    return 0


# -- stats ------------------------------------------------------------------------

def cmd_stats(args) -> int:
    from . import interrupt_stats
    from . import vm_control
    try:
        rd = vm_control.find_vm(args.vm)
    except LookupError as exc:
        return error(str(exc), 1)
    data = interrupt_stats.interrupt_stats(rd)
    if args.json:
        print(json.dumps(data, indent=1))
    else:
        print(interrupt_stats.format_table(data))
    return 0


# -- logs -------------------------------------------------------------------------

def _log_files(rd: RunDir, actor: str | None) -> list[Path]:
    if actor:
        path = rd.log_path(actor)
        if not path.exists():
            known = sorted(p.stem for p in rd.logs.glob("*.log"))
            raise LookupError(f"VM {rd.name!r} has no log for {actor!r} (have: {', '.join(known)})")
        return [path]
    return sorted(p for p in rd.logs.glob("*.log") if p.stem != "console")


def cmd_logs(args) -> int:
    from . import vm_control
    try:
        rd = vm_control.find_vm(args.vm)
        files = _log_files(rd, args.actor)
    except LookupError as exc:
        return error(str(exc), 1)
    raw = args.actor == "console"
    out = sys.stdout.buffer
    handles = [open(p, "rb") for p in files]
    # Interleave what is there by timestamp (each line starts with one).
    lines = heapq.merge(*[iter(h.readline, b"") for h in handles])
    for line in lines:
        out.write(line)
    out.flush()
    if not args.follow:
        return 0
    try:
        while True:
            live = rd.is_live()
            got = False
            for h in handles:
                chunk = h.read() if raw else h.readline()
                while chunk:
                    got = True
                    out.write(chunk)
                    chunk = b"" if raw else h.readline()
            out.flush()
            if not live and not got:
                # Pick up files of actors that started after we did.
                if not args.actor:
                    for p in _log_files(rd, None):
                        if p not in files:
                            files.append(p)
                            handles.append(open(p, "rb"))
                            got = True
                if not got:
                    return 0
            time.sleep(0.05)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        return 0


# -- console ------------------------------------------------------------------------

DETACH_KEY = ord("d")       # Ctrl-A d: leave the VM running


def cmd_console(args) -> int:
    """Attach this terminal to a running VM's serial console: the first
    attached console types, later ones only watch (they are told so)."""
    import socket
    from . import vm_control
    from .console_relay import ESCAPE, HELLO_WRITER, console_socket_path
    try:
        rd = vm_control.find_vm(args.vm)
        if not rd.is_live():
            raise LookupError(f"VM {args.vm!r} is not running")
    except LookupError as exc:
        return error(str(exc), 1)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(console_socket_path(rd)))
    except OSError as exc:
        return error(f"VM {args.vm!r} has no console to attach to ({exc.strerror})", 1)
    hello = b""
    while not hello.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            return error(f"VM {args.vm!r} ended", 1)
        hello += chunk
    writer = hello == HELLO_WRITER
    mode = "Ctrl-A x stops the VM" if writer else "read-only: another console types"
    print(f"bhive: attached to {args.vm} ({mode}; Ctrl-A d detaches)", file=sys.stderr, flush=True)
    in_fd = sys.stdin.fileno() if sys.stdin is not None and not sys.stdin.closed else None
    saved = None
    if in_fd is not None and os.isatty(in_fd):
        saved = termios.tcgetattr(in_fd)
        tty.setraw(in_fd, termios.TCSANOW)
    out = sys.stdout.buffer
    escape = False
    detached = False
    try:
        while not detached:
            fds = [sock] + ([in_fd] if in_fd is not None else [])
            r, _, _ = select.select(fds, [], [])
            if sock in r:
                data = sock.recv(65536)
                if not data:
                    break
                out.write(data)
                out.flush()
            if in_fd is not None and in_fd in r:
                data = os.read(in_fd, 4096)
                if not data:
                    in_fd = None
                    continue
                send = bytearray()
                for b in data:
                    if escape:
                        escape = False
                        if b == DETACH_KEY:
                            detached = True
                            break
                        send += bytes([ESCAPE, b])    # the VM's relay handles Ctrl-A x and the rest
                    elif b == ESCAPE:
                        escape = True
                    else:
                        send.append(b)
                if send and writer:
                    sock.sendall(send)
    finally:
        if saved is not None:
            termios.tcsetattr(in_fd, termios.TCSADRAIN, saved)
        sock.close()
    if detached:
        print(f"\r\nbhive: detached from {args.vm} (still running)", file=sys.stderr)
        return 0
    info = rd.read_json("supervisor.json") or {}
    print(f"\r\nbhive: {args.vm}: {info.get('reason', 'ended')} (exit status {info.get('status')})",
          file=sys.stderr)
    return 0


# -- pause / resume / wait / rm / prune -------------------------------------------

def cmd_pause(args) -> int:
    from . import vm_control
    try:
        vm_control.set_paused(args.vm, args.command == "pause")
    except LookupError as exc:
        return error(str(exc), 1)
    return 0


def cmd_wait(args) -> int:
    """Exits with the VM's own exit status, once it has ended."""
    from . import vm_control
    try:
        info = vm_control.wait_vm(args.vm)
    except LookupError as exc:
        return error(str(exc), 1)
    except KeyboardInterrupt:
        return 130
    print(f"{args.vm}: {info['reason']} (exit status {info['status']})", file=sys.stderr)
    return info["status"]


def cmd_rm(args) -> int:
    from . import vm_control
    status = 0
    for name in args.vm:
        try:
            vm_control.remove_vm(name)
        except LookupError as exc:
            status = error(str(exc), 1)
    return status


def cmd_prune(args) -> int:
    from . import vm_control
    for name in vm_control.prune():
        print(name)
    return 0


# -- kill / stop --------------------------------------------------------------------

def cmd_kill(args) -> int:
    from . import vm_control
    try:
        pid = vm_control.kill_actor(args.vm, args.actor)
    except LookupError as exc:
        return error(str(exc), 1)
    print(f"killed {args.actor} (pid {pid}) of {args.vm}")
    return 0


def cmd_stop(args) -> int:
    from . import vm_control
    try:
        vm_control.stop_vm(args.vm)
    except LookupError as exc:
        return error(str(exc), 1)
    return 0


# -- chaos --------------------------------------------------------------------------

def cmd_chaos(args) -> int:
    """Kill actors of a running VM on a schedule; print the report (0: the
    guest lost nothing, 1: a check failed, 2: bad flags)."""
    from . import chaos, vm_control
    from .config import ConfigError
    table = {k: v for k, v in {"kill": args.kill, "every": args.every, "jitter": args.jitter,
                               "for": args.duration, "count": args.count, "signal": args.signal,
                               "seed": args.seed}.items() if v is not None}
    try:
        plan = chaos.parse_plan(table, where="bhive chaos:")
        rd = vm_control.find_vm(args.vm)
        if not rd.is_live():
            raise LookupError(f"VM {args.vm!r} is not running")
        info = rd.read_json("supervisor.json") or {}
        devices = [r["role"] for r in rd.read_json("procs.json") or [] if r["kind"] == "actor"]
        chaos.check_targets(plan, devices, (info.get("config") or {}).get("cpus", 1), where="bhive chaos:")
    except (ConfigError, LookupError) as exc:
        return error(str(exc))
    run = chaos.ChaosRun(rd, plan)
    report = run.run()          # Ctrl-C ends it early, still reporting
    print(chaos.dumps(report) if args.json else report.format())
    return 0 if report.ok else 1


def _version() -> str:
    from importlib import metadata
    try:
        return metadata.version("bhive")
    except metadata.PackageNotFoundError:       # run from a checkout without `make deps`
        return "unknown"


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="bhive", description="A virtual-machine monitor built as a hive of processes.",
               allow_abbrev=False)
    p.add_argument("--version", action="version", version=f"bhive {_version()}")
    sub = p.add_subparsers(dest="command", required=True)
    # Each flag in bhive's spelling (--smp) and QEMU's (-smp); abbreviations
    # are off so that no QEMU option is taken for a prefix of another.
    r = sub.add_parser("run", help="run a VM (console on this terminal; Ctrl-A x quits)", allow_abbrev=False)
    r.add_argument("config", nargs="?",
                   help="VM config (TOML); default: configs/default.toml, Debian Linux to a shell")
    r.add_argument("--kernel", "-kernel",
                   help="kernel to boot: a Linux bzImage, a Multiboot v1 image (ELF32 or a.out kludge) "
                        "or a PVH ELF (e.g. vmlinux); the format comes from the image")
    r.add_argument("--initrd", "-initrd", help="Linux initramfs; for Multiboot/PVH, modules separated by commas, "
                        "each 'PATH [ARGS]'")
    r.add_argument("--append", "-append", help="kernel command line")
    r.add_argument("--name", "-name", help="VM name (default: from the config); QEMU's guest=NAME too")
    r.add_argument("--detach", "-d", action="store_true", help="run in the background")
    r.add_argument("--smp", "-smp", metavar="N", help="number of vCPUs: N, cpus=N, or N,sockets=S,cores=C,threads=T")
    r.add_argument("-m", "--memory", metavar="SIZE",
                   help="guest RAM: 512M, 1G, or a bare number of MiB as QEMU reads it (-m 512)")
    r.add_argument("--accel", "-accel", metavar="NAME", help="accelerator: softvmm (default), kvm, bhyve")
    r.add_argument("--enable-kvm", "-enable-kvm", action="store_true", help="the same as -accel kvm")
    r.add_argument("--drive", "-drive", dest="drives", action=_AppendFlag, metavar="SPEC",
                   help="attach a disk image: file=IMG,format=raw,if=ide[,index=N][,readonly=on][,snapshot=on]")
    for letter, index in zip("abcd", range(4)):
        r.add_argument(f"--hd{letter}", f"-hd{letter}", dest="drives", action=_AppendFlag, metavar="IMG",
                       help="attach a raw image as IDE drive 0 (-hdb, -hdc, -hdd: 1, 2, 3)" if letter == "a"
                       else argparse.SUPPRESS)
    r.add_argument("--snapshot", "-snapshot", action="store_true",
                   help="every drive writes to a throw-away overlay; the images are not touched")
    r.add_argument("--device", "-device", action="append", metavar="SPEC",
                   help="isa-debug-exit,iobase=PORT,iosize=N (the other devices are in the config)")
    r.add_argument("--no-reboot", "-no-reboot", action="store_const", const=True, default=None,
                   help="a guest reset ends the VM (status 0) instead of rebooting it, as with QEMU")
    r.add_argument("--nographic", "-nographic", action="store_true",
                   help="accepted for QEMU's sake: bhive has no display, the console is this terminal")
    r.add_argument("--serial", "-serial", metavar="BACKEND",
                   help="COM1's other end, as QEMU spells it: stdio (the default), null, file:PATH, "
                        "unix:PATH,server,nowait, pty (its name is printed); logs/console.log has it all anyway")
    r.add_argument("-cpu", "--cpu", metavar="MODEL[,vendor=V][,+F|-F...]",
                   help="CPU model as QEMU spells it: max (default) or qemu64, vendor=GenuineIntel|AuthenticAMD, "
                        "+feature/-feature (bhive.cpumodel)")
    r.add_argument("--watchdog", type=float, metavar="SECONDS",
                   help="end the VM with status 124 if the guest has not ended by then (for tests)")
    from . import qemuopts
    for flag, takes_value in qemuopts.UNSUPPORTED.items():
        r.add_argument(flag, action=_Unsupported, nargs=None if takes_value else 0, help=argparse.SUPPRESS)
    r.set_defaults(func=cmd_run)
    s = sub.add_parser("ps", help="list VMs and their processes")
    s.add_argument("vm", nargs="?")
    s.add_argument("-a", "--all", action="store_true", help="include VMs that have ended")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_ps)
    lg = sub.add_parser("logs", help="show an actor's log, or all interleaved by time")
    lg.add_argument("-f", "--follow", action="store_true")
    lg.add_argument("vm")
    lg.add_argument("actor", nargs="?", help="e.g. uart, vcpu0, supervisor, console")
    lg.set_defaults(func=cmd_logs)
    k = sub.add_parser("kill", help="SIGKILL one actor (the chaos primitive)")
    k.add_argument("vm")
    k.add_argument("actor")
    k.set_defaults(func=cmd_kill)
    sa = sub.add_parser("stats", help="interrupt counts per vector and CPU, like /proc/interrupts")
    sa.add_argument("vm")
    sa.add_argument("--json", action="store_true")
    sa.set_defaults(func=cmd_stats)
    co = sub.add_parser("console", help="attach this terminal to a running VM's serial console "
                        "(Ctrl-A d detaches, Ctrl-A x stops the VM; a second console is read-only)")
    co.add_argument("vm")
    co.set_defaults(func=cmd_console)
    for verb, what in (("pause", "stop running a VM's vCPUs (the guest's time goes on as wall time)"),
                       ("resume", "let a paused VM's vCPUs run again")):
        pa = sub.add_parser(verb, help=what)
        pa.add_argument("vm")
        pa.set_defaults(func=cmd_pause)
    wa = sub.add_parser("wait", help="wait until a VM ends; exit with its exit status")
    wa.add_argument("vm")
    wa.set_defaults(func=cmd_wait)
    rm = sub.add_parser("rm", help="remove ended VMs' run directories (logs included)")
    rm.add_argument("vm", nargs="+")
    rm.set_defaults(func=cmd_rm)
    pr = sub.add_parser("prune", help="remove every ended VM's run directory")
    pr.set_defaults(func=cmd_prune)
    c = sub.add_parser("chaos", help="kill a running VM's actors on a schedule and report what the guest saw")
    c.add_argument("vm")
    c.add_argument("--kill", help="ACTOR[,ACTOR...] (taken in turn), 'random' (default) or 'all-devices'")
    c.add_argument("--every", help="interval between kills, e.g. 200ms (default)")
    c.add_argument("--jitter", help="random +- added to each interval, e.g. 50ms")
    c.add_argument("--for", dest="duration", help="run this long, e.g. 60s (default: until Ctrl-C)")
    c.add_argument("--count", type=int, help="stop after N kills")
    c.add_argument("--signal", help="KILL (default), TERM, or STOP/CONT (freeze for half an interval)")
    c.add_argument("--seed", type=int, help="seed of the schedule (targets and intervals): reproducible runs")
    c.add_argument("--json", action="store_true", help="the report as JSON")
    c.set_defaults(func=cmd_chaos)
    st = sub.add_parser("stop", help="stop a VM")
    st.add_argument("vm")
    st.set_defaults(func=cmd_stop)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:
        # The reader went away (`bhive stats VM --json | head -1`): no
        # traceback, and none either when the interpreter flushes stdout.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
