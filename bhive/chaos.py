"""Chaos runs: kill a running VM's actors at random instants and report
what it cost the guest (`bhive chaos VM`, or a `[chaos]` table in the
VM's config so that `bhive run` starts one with the VM).

A run is a schedule and a loop.  The schedule (`Plan`) says whom to hit
(`--kill uart,pit`, `random` or `all-devices`), how often (`--every`,
`--jitter`), for how long (`--for` or `--count`) and how (`--signal`:
KILL and TERM end the actor, which the supervisor restarts; STOP/CONT
freezes it for half an interval); with `--seed` the same targets and
intervals come out every time.  The loop (`ChaosRun`) works from the VM's
run directory alone, as `bhive kill` does: the process table
(procs.json) for the pids, signals for the kills, the supervisor's log for
the successor's Hello (restart latency: kill -> successor serving), the
actors' logs for what each successor took over (exits in flight, interrupt
lines re-sent), the vCPUs' heartbeats for exits they retried, and the
console log for every error line the guest printed meanwhile.

Targets are chosen in turn from the list (`all-devices`: every device
actor of the VM, in config order) or at random (`random`).  A kill waits
for its target to be serving (a target killed before: for its
successor); kills of different actors overlap.  A successor that does not come within
RESTART_TIMEOUT is a failure, and so are a guest that crashed or a VM
that ended on bhive's failure or watchdog status, and any guest error
line on the console.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from .config import ConfigError, parse_duration
from .exit_status import STATUS_GUEST_CRASH, STATUS_INTERNAL, STATUS_WATCHDOG
from .guestkit.bootrun import GUEST_ERROR_PATTERNS
from .rundir import RunDir, pid_alive

SIGNALS = ("KILL", "TERM", "STOP")      # STOP is always followed by CONT
TARGET_WORDS = ("random", "all-devices")
RESTART_TIMEOUT = 10.0                  # a successor not serving by then is a failure
TARGET_TIMEOUT = 10.0                   # a target that is not serving by then is skipped
POLL = 0.002

# What the guest could have seen of a chaos run, beyond what the boot
# tests already look for: I/O errors, timeouts, oopses.
CHAOS_ERROR_PATTERNS = GUEST_ERROR_PATTERNS + (
    r"I/O error",
    r"[Tt]ime(d)? ?out",
    r"Oops",
    r"WARNING:",
    r"hung_task|blocked for more than",
    r"CHAOS-FAIL",                  # what our own chaos workloads print on a failed check
)
_ERRORS = re.compile("|".join(f"(?:{p})" for p in CHAOS_ERROR_PATTERNS))

# Fields of a [chaos] table, as the CLI flags spell them (`for` is a TOML key).
CHAOS_KEYS = {"kill", "every", "jitter", "for", "count", "signal", "seed"}


@dataclass
class Plan:
    kill: list[str] | str = "random"     # actor names, or "random" / "all-devices"
    every: float = 0.2                   # seconds between kills
    jitter: float = 0.0                  # +- seconds, uniform
    duration: float | None = None        # seconds; with count None and duration None: until stopped
    count: int | None = None
    signal: str = "KILL"
    seed: int | None = None

    def to_json(self) -> dict:
        return asdict(self)


def parse_plan(table: dict, where: str = "[chaos]") -> Plan:
    """A Plan from a [chaos] table or the CLI's flags (same keys); every
    mistake is one ConfigError."""
    unknown = set(table) - CHAOS_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r} (allowed: {', '.join(sorted(CHAOS_KEYS))})")
    kill = table.get("kill", "random")
    if isinstance(kill, str):
        kill = kill.strip()
        if kill not in TARGET_WORDS:
            kill = [k.strip() for k in kill.split(",") if k.strip()]
    elif isinstance(kill, list) and all(isinstance(k, str) for k in kill):
        kill = list(kill)
    else:
        raise ConfigError(f"{where} kill: {kill!r} must be actor names, 'random' or 'all-devices'")
    if isinstance(kill, list) and not kill:
        raise ConfigError(f"{where} kill: no actor named")
    every = parse_duration(table.get("every", "200ms"), f"{where} every")
    jitter = parse_duration(table.get("jitter", 0), f"{where} jitter")
    if every <= 0:
        raise ConfigError(f"{where} every: must be more than 0")
    if jitter > every:
        raise ConfigError(f"{where} jitter: {jitter:g} s is more than the interval ({every:g} s)")
    duration = table.get("for")
    duration = None if duration is None else parse_duration(duration, f"{where} for")
    count = table.get("count")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ConfigError(f"{where} count: {count!r} must be a positive integer")
    sig = str(table.get("signal", "KILL")).upper().removeprefix("SIG")
    if sig in ("STOP/CONT", "STOPCONT", "CONT"):
        sig = "STOP"
    if sig not in SIGNALS:
        raise ConfigError(f"{where} signal: {table.get('signal')!r} is not one of KILL, STOP/CONT, TERM")
    seed = table.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ConfigError(f"{where} seed: {seed!r} must be an integer")
    return Plan(kill, every, jitter, duration, count, sig, seed)


def check_targets(plan: Plan, devices: list[str], cpus: int, where: str = "[chaos]") -> None:
    """Every named target is an actor of the VM (a device, or vcpuN)."""
    if not isinstance(plan.kill, list):
        if not devices:
            raise ConfigError(f"{where} kill: the VM has no device actor to kill")
        return
    known = set(devices) | {f"vcpu{i}" for i in range(cpus)}
    for name in plan.kill:
        if name not in known:
            raise ConfigError(f"{where} kill: the VM has no actor {name!r} (have: {', '.join(devices)})")


class Schedule:
    """The reproducible part of a run: which target next, and when."""

    def __init__(self, plan: Plan, devices: list[str]):
        self.plan = plan
        self.rng = random.Random(plan.seed)
        self.targets = devices if not isinstance(plan.kill, list) else plan.kill
        self.turn = 0

    def next_target(self) -> str:
        if self.plan.kill == "random":
            return self.rng.choice(self.targets)
        target = self.targets[self.turn % len(self.targets)]
        self.turn += 1
        return target

    def next_interval(self) -> float:
        j = self.plan.jitter
        return max(0.0, self.plan.every + (self.rng.uniform(-j, j) if j else 0.0))


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


@dataclass
class Report:
    vm: str
    plan: dict
    seconds: float = 0.0
    kills: dict = field(default_factory=dict)           # actor -> kills (or stops)
    latencies_ms: dict = field(default_factory=dict)    # actor -> [kill -> successor serving]
    exits_in_flight: int = 0        # exits posted to a killed actor and applied by its successor
    exits_retried: int = 0          # ZeroMQ requests a vCPU sent again (its actor was down)
    interrupts_resent: int = 0      # line changes made again (a successor's replay, a retry), applied once
    guest_errors: list = field(default_factory=list)    # console lines
    failures: list = field(default_factory=list)        # what makes the run fail
    vm_state: str = "running"       # "running", or "stopped" with its status and reason
    vm_status: int | None = None
    vm_reason: str = ""
    stopped_by: str = ""            # "count", "for", "vm-ended", "interrupted"

    @property
    def ok(self) -> bool:
        return not self.failures and not self.guest_errors

    def latency_summary(self) -> dict:
        out = {}
        for actor, values in sorted(self.latencies_ms.items()):
            out[actor] = {"n": len(values), "p50": round(percentile(values, 50), 1),
                          "p99": round(percentile(values, 99), 1), "max": round(max(values, default=0.0), 1)}
        every = [v for values in self.latencies_ms.values() for v in values]
        if every:
            out["all"] = {"n": len(every), "p50": round(percentile(every, 50), 1),
                          "p99": round(percentile(every, 99), 1), "max": round(max(every), 1)}
        return out

    def to_json(self) -> dict:
        return {"vm": self.vm, "plan": self.plan, "seconds": round(self.seconds, 3), "ok": self.ok,
                "kills": self.kills, "total_kills": sum(self.kills.values()),
                "restart_latency_ms": self.latency_summary(), "exits_in_flight": self.exits_in_flight,
                "exits_retried": self.exits_retried, "interrupts_resent": self.interrupts_resent,
                "guest_errors": self.guest_errors, "failures": self.failures,
                "vm_state": self.vm_state, "vm_status": self.vm_status,
                "vm_reason": self.vm_reason, "stopped_by": self.stopped_by}

    def format(self) -> str:
        lines = [f"chaos on {self.vm}: {sum(self.kills.values())} {self.plan['signal']} in "
                 f"{self.seconds:.1f} s (ended by {self.stopped_by or '-'}); "
                 f"VM {self.vm_state}" + (f", status {self.vm_status}: {self.vm_reason}"
                                          if self.vm_state == "stopped" else "")]
        lines.append(f"{'ACTOR':<12} {'KILLS':>6} {'P50 ms':>8} {'P99 ms':>8} {'MAX ms':>8}")
        summary = self.latency_summary()
        for actor in sorted(self.kills):
            s = summary.get(actor, {"p50": 0, "p99": 0, "max": 0})
            lines.append(f"{actor:<12} {self.kills[actor]:>6} {s['p50']:>8} {s['p99']:>8} {s['max']:>8}")
        if "all" in summary:
            s = summary["all"]
            lines.append(f"{'all':<12} {s['n']:>6} {s['p50']:>8} {s['p99']:>8} {s['max']:>8}")
        lines.append(f"exits in flight taken over: {self.exits_in_flight}; exits retried: {self.exits_retried}; "
                     f"interrupt line changes re-sent (applied once): {self.interrupts_resent}")
        lines.append(f"guest errors seen: {len(self.guest_errors)}")
        lines += [f"  {line}" for line in self.guest_errors[:20]]
        for failure in self.failures:
            lines.append(f"FAILED: {failure}")
        lines.append("chaos: ok" if self.ok else "chaos: FAILED")
        return "\n".join(lines)


def _log_time(line: str) -> float | None:
    """The wall time of a bhive.log line (its leading timestamp)."""
    stamp = line.split(" ", 1)[0]
    try:
        return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None


def _fields(line: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in line.split()[3:] if "=" in part)


class _Tail:
    """Reads what a file gained since the last read (whole lines)."""

    def __init__(self, path, from_end: bool = True):
        self.path = path
        self.offset = path.stat().st_size if from_end and path.exists() else 0
        self.rest = b""

    def lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        data = self.rest + data
        *whole, self.rest = data.split(b"\n")
        return [w.decode(errors="replace") for w in whole]


class ChaosRun:
    """One chaos run against the VM in `rundir` (running, attached or
    detached).  `run()` returns the Report; `stop()` (from another thread,
    or a KeyboardInterrupt in this one) ends it early, still reporting."""

    def __init__(self, rundir: RunDir, plan: Plan, log=None, from_start: bool = False):
        self.rd = rundir
        self.plan = plan
        self.log = log or (lambda *a, **k: None)
        self.stopping = threading.Event()
        self.from_start = from_start   # scan logs from their start (a run that began with the VM)

    def stop(self) -> None:
        self.stopping.set()

    # -- the VM, through its run directory ----------------------------------
    def _table(self) -> dict[str, dict]:
        return {row["role"]: row for row in self.rd.read_json("procs.json") or []}

    def _vm_info(self) -> dict:
        return self.rd.read_json("supervisor.json") or {}

    def _vm_ended(self) -> bool:
        info = self._vm_info()
        return info.get("state") == "stopped" or not pid_alive(info.get("pid") or 0)

    def _devices(self) -> list[str]:
        return [r["role"] for r in self._table().values() if r["kind"] == "actor"]

    def _wait(self, predicate, timeout: float):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            if self._vm_ended() or self.stopping.is_set():
                return None
            time.sleep(POLL)
        return None

    def _serving(self, role: str, not_pid: int | None = None):
        row = self._table().get(role)
        if row and row["state"] == "running" and row["pid"] and row["pid"] != not_pid and pid_alive(row["pid"]):
            return row
        return None

    # -- the loop ------------------------------------------------------------
    def run(self) -> Report:
        info = self._vm_info()
        report = Report(self.rd.name, self.plan.to_json())
        if not info:
            report.failures.append(f"no VM named {self.rd.name!r}")
            return report
        devices = self._devices()
        schedule = Schedule(self.plan, devices)
        console = _Tail(self.rd.logs / "console.log", from_end=not self.from_start)
        self.sup_log = _Tail(self.rd.log_path("supervisor"), from_end=not self.from_start)
        actor_logs = {role: _Tail(self.rd.log_path(role), from_end=not self.from_start) for role in devices}
        self.retries_before = self._vcpu_retries()
        self.tails = (console, actor_logs)
        self.hellos: dict[tuple[str, int], float] = {}   # (role, pid) -> wall time of its Hello
        pending: dict[str, tuple[int, float, float]] = {}  # killed actor -> (pid, wall, monotonic time of the kill)
        t0 = time.monotonic()
        next_at = t0
        try:
            while True:
                self._reap(report, pending)
                if self.stopping.is_set():
                    report.stopped_by = "interrupted"
                    break
                if self.plan.count is not None and sum(report.kills.values()) >= self.plan.count:
                    report.stopped_by = "count"
                    break
                if self.plan.duration is not None and time.monotonic() - t0 >= self.plan.duration:
                    report.stopped_by = "for"
                    break
                if self._vm_ended():
                    report.stopped_by = "vm-ended"
                    break
                if time.monotonic() < next_at:
                    self.stopping.wait(min(POLL * 5, next_at - time.monotonic()))
                    continue
                next_at = time.monotonic() + schedule.next_interval()
                self._hit(schedule.next_target(), report, pending)
            # the last successors (or the VM's end)
            deadline = time.monotonic() + RESTART_TIMEOUT
            while pending and time.monotonic() < deadline and not self._vm_ended() \
                    and report.stopped_by != "interrupted":
                time.sleep(POLL)
                self._reap(report, pending)
        except KeyboardInterrupt:
            report.stopped_by = "interrupted"
        report.seconds = time.monotonic() - t0
        self.collect(report)
        return report

    def _hit(self, target: str, report: Report, pending: dict) -> None:
        """Hit `target` once it is serving (a killed one: once its successor is)."""
        def serving():
            self._reap(report, pending)
            return target not in pending and self._serving(target)
        row = self._wait(serving, TARGET_TIMEOUT)
        if row is None:
            if not self._vm_ended() and not self.stopping.is_set():
                report.failures.append(f"{target} was not serving within {TARGET_TIMEOUT:g} s")
                self.stopping.set()
            return
        pid = row["pid"]
        if self.plan.signal == "STOP":
            hold = self.plan.every / 2
            os.kill(pid, signal.SIGSTOP)
            report.kills[target] = report.kills.get(target, 0) + 1
            self.log("chaos-stop", role=target, pid=pid, hold_ms=round(hold * 1000, 1))
            self.stopping.wait(hold)
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            return
        sig = signal.SIGKILL if self.plan.signal == "KILL" else signal.SIGTERM
        killed = (pid, time.time(), time.monotonic())
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return                      # it died on its own meanwhile: not our kill
        report.kills[target] = report.kills.get(target, 0) + 1
        self.log("chaos-kill", role=target, pid=pid, signal=self.plan.signal)
        if not target.startswith("vcpu"):      # a vCPU is not restarted (see [vm] on_vcpu_loss)
            pending[target] = killed

    def _reap(self, report: Report, pending: dict) -> None:
        """Killed actors whose successor serves now: their restart latency
        (kill -> the successor's Hello, from the supervisor's log)."""
        if not pending:
            return
        for line in self.sup_log.lines():
            parts = line.split()
            if len(parts) > 2 and parts[2] == "hello":
                f = _fields(line)
                self.hellos[(f.get("role"), int(f.get("pid", 0)))] = _log_time(line)
        table = self._table()
        for role, (pid, wall, mono) in list(pending.items()):
            row = table.get(role)
            if row and row["state"] == "running" and row["pid"] and row["pid"] != pid:
                hello_at = self.hellos.pop((role, row["pid"]), None) or time.time()
                report.latencies_ms.setdefault(role, []).append(round(max(0.0, hello_at - wall) * 1000, 2))
                del pending[role]
            elif time.monotonic() - mono > RESTART_TIMEOUT and not self._vm_ended():
                report.failures.append(f"{role} was not restarted within {RESTART_TIMEOUT:g} s of a kill")
                del pending[role]
                self.stopping.set()

    def _vcpu_retries(self) -> int:
        return sum(int(r.get("counters", {}).get("retries", 0)) for r in self._table().values()
                   if r["kind"] == "vcpu")

    def collect(self, report: Report) -> None:
        """Add what the logs gained since the last collect, and the VM's
        state now (called again once a VM stopped by its own supervisor
        has flushed its console)."""
        console, actor_logs = self.tails
        for role, tail in actor_logs.items():
            for line in tail.lines():
                parts = line.split()
                if len(parts) > 2 and parts[2] == "restored":
                    report.exits_in_flight += int(_fields(line).get("exits_in_flight", 0))
                elif len(parts) > 2 and parts[2] == "line-replayed":
                    report.interrupts_resent += 1
        report.exits_retried = max(report.exits_retried, self._vcpu_retries() - self.retries_before)
        report.guest_errors += [l.rstrip("\r") for l in console.lines() if _ERRORS.search(l)]
        info = self._vm_info()
        if info.get("state") == "stopped" or not pid_alive(info.get("pid") or 0):
            report.vm_state = "stopped"
            report.vm_status = info.get("status")
            report.vm_reason = info.get("reason", "")
            died = f"the VM ended with status {report.vm_status}: {report.vm_reason}"
            if report.vm_status in (STATUS_GUEST_CRASH, STATUS_INTERNAL, STATUS_WATCHDOG) \
                    and died not in report.failures:
                report.failures.append(died)


def run_in_thread(rundir: RunDir, plan: Plan, log=None) -> tuple[ChaosRun, threading.Thread, list]:
    """Start a run beside a VM being supervised in this process (`bhive
    run` with a [chaos] table); the report lands in the returned list."""
    chaos = ChaosRun(rundir, plan, log=log, from_start=True)
    out: list[Report] = []
    thread = threading.Thread(target=lambda: out.append(chaos.run()), name="chaos", daemon=True)
    thread.start()
    return chaos, thread, out


def write_report(rundir: RunDir, report: Report) -> None:
    rundir.write_json("chaos.json", report.to_json())


def dumps(report: Report) -> str:
    return json.dumps(report.to_json(), indent=1)
