"""Entry point of every vCPU process: one OS process per virtual CPU.

    python -m bhive.vcpu_worker RUN_DIR VCPUID

The main thread runs the vCPU (`vm_run`) and completes each exit exactly
once: a port or MMIO access goes to the actor that owns the address and
the answer comes back through `vm_complete_inout`/`vm_complete_mmio`, so
the accelerator, which owns RIP and RAX, moves past the instruction.  No
lock is shared with any other vCPU: there is nothing to starve.

A control thread owns the supervisor socket (hello, heartbeats, stop) and
the MSI socket; it injects each incoming MSI with `vm_lapic_msi`, which
never blocks, whatever the destination vCPU is doing.

The process is spawned together with the device actors, while the
supervisor loads the guest image: it maps guest RAM, opens the
accelerator and its exit channels and says Hello, then waits for the
supervisor's VcpuGo (every actor is up, the image is loaded) before it
loads the boot state and runs the first guest instruction, so no exit
ever goes to an actor that is not there yet.
"""

from __future__ import annotations

import array
import collections
import os
import signal
import sys
import threading
import time
from pathlib import Path

import zmq

from . import accel as accel_mod
from . import config as config_mod
from . import worker_lifecycle
from .accel.base import ExitCode, GuestMemory, SuspendHow, VmExit, VmReg
from .bus import channel, schema
from .bus.schema import (Control, EoiRequest, Heartbeat, Hello, MmioRequest, Msi, PioRequest, VcpuGo,
                         VmEvent)
from .bus.shm import SharedRegion
from .actors import pci
from .devices import DEVICE_TYPES
from .exit_status import STATUS_GUEST_CRASH, STATUS_INTERNAL
from .loader import BootState, ram_slots
from .log import EventLog
from .rundir import RunDir

RETRY_INTERVAL_MS = 200        # an actor that does not answer by then is asked again
GIVE_UP_AFTER_S = 30.0         # ... and after this long the VM is failed
HEARTBEAT_INTERVAL = 1.0
STATS_INTERVAL = 0.25          # stats-vcpuN.json refresh
# BHIVE_PROFILE=N: sample the guest RIP every N instructions (softvmm) into
# <rundir>/profile-vcpuK.bin for `python -m bhive.guest_profile`.
PROFILE_ENV = "BHIVE_PROFILE"
# BHIVE_NO_PORT_LANES=1: every port access exits to Python (for comparison).
NO_LANES_ENV = "BHIVE_NO_PORT_LANES"


class ActorUnavailable(RuntimeError):
    pass


class ActorClient:
    """Requests from this vCPU to one device actor, with retries.

    Each request has an id; a retry reuses it, so an actor that was killed
    and restarted answers a request it already applied from its committed
    state instead of applying it twice.
    """

    def __init__(self, ctx: zmq.Context, endpoint: str, role: str, source: str):
        self.role = role
        self.source = source
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RECONNECT_IVL, 20)
        self.sock.connect(endpoint)
        self.next_id = 1
        self.retries = 0

    def call(self, msg):
        raw = schema.encode(msg)
        self.sock.send(raw)
        started = time.monotonic()
        while True:
            if self.sock.poll(RETRY_INTERVAL_MS):
                reply = schema.decode(self.sock.recv())
                if reply.req_id == msg.req_id:
                    return reply
                continue  # a late answer to an earlier attempt
            if time.monotonic() - started > GIVE_UP_AFTER_S:
                raise ActorUnavailable(f"actor {self.role} did not answer for {GIVE_UP_AFTER_S:.0f}s")
            self.retries += 1
            self.sock.send(raw)

    def pio(self, port: int, size: int, is_write: bool, data: int) -> int:
        req_id, self.next_id = self.next_id, self.next_id + 1
        return self.call(PioRequest(self.source, req_id, port, size, is_write, data)).data

    def mmio(self, gpa: int, size: int, is_write: bool, data: int) -> int:
        req_id, self.next_id = self.next_id, self.next_id + 1
        return self.call(MmioRequest(self.source, req_id, gpa, size, is_write, data)).data

    def eoi(self, vector: int) -> None:
        req_id, self.next_id = self.next_id, self.next_id + 1
        self.call(EoiRequest(self.source, req_id, vector))


class ChannelActorClient(ActorClient):
    """Port and MMIO exits through the shared-memory channel to the actor
    (`bhive.bus.channel`); other requests (EOI) still go over ZeroMQ.

    Reads wait for their answer; writes wait for completion unless the
    device declares them posted (`DeviceType.posted_writes`): a write whose
    effect another actor may depend on (an IOAPIC RTE, then a line raised
    through a different device) must be applied before the vCPU goes on.
    Either way the record is durable in shared memory: an actor that dies
    applies it after its restart, exactly once.
    """

    def __init__(self, ctx, endpoint, role, source, chan: channel.ChannelClient, posted_writes: bool):
        super().__init__(ctx, endpoint, role, source)
        self.chan = chan
        self.posted_writes = posted_writes

    def _send(self, msg) -> int:
        try:
            if not msg.is_write:
                return self.chan.call(msg)
            if self.posted_writes:
                self.chan.post(msg)
            else:
                self.chan.complete(msg)
            return 0
        except channel.ChannelError as exc:
            raise ActorUnavailable(f"actor {self.role}: {exc}") from None

    def pio(self, port: int, size: int, is_write: bool, data: int) -> int:
        return self._send(PioRequest(self.source, 0, port, size, is_write, data))

    def mmio(self, gpa: int, size: int, is_write: bool, data: int) -> int:
        return self._send(MmioRequest(self.source, 0, gpa, size, is_write, data))


class MsiReplayFilter:
    """Drops an MSI that a restarted controller replays: the same sender,
    number, address and data as the last one this process took from it
    (its predecessor sent it, then died before committing that it had).
    A different MSI under a number already seen is taken: a replay that
    went another way must not cost the guest an interrupt."""

    def __init__(self):
        self.last: dict[str, tuple[int, int, int]] = {}
        self.dropped = 0

    def accept(self, msg: Msi) -> bool:
        key = (msg.seq, msg.addr, msg.data)
        if msg.seq and self.last.get(msg.source) == key:
            self.dropped += 1
            return False
        self.last[msg.source] = key
        return True


class ControlThread(threading.Thread):
    """Supervisor link and MSI receiver of one vCPU process."""

    def __init__(self, worker: "VcpuWorker"):
        super().__init__(name="control", daemon=True)
        self.worker = worker
        ctx = worker.ctx
        self.ctl = ctx.socket(zmq.DEALER)
        self.ctl.setsockopt(zmq.LINGER, 500)
        self.ctl.setsockopt_string(zmq.IDENTITY, worker.role)
        self.ctl.connect(worker.rundir.endpoint("supervisor"))
        self.msi = ctx.socket(zmq.PULL)
        self.msi.setsockopt(zmq.LINGER, 0)
        self.msi.bind(worker.rundir.endpoint(worker.role))
        self.events = ctx.socket(zmq.PAIR)
        self.events.bind(f"inproc://events-{worker.role}")
        self.msis = 0
        self.vectors: dict[str, int] = {}     # "source;vector;mode" -> MSIs injected by this process
        self.replays = MsiReplayFilter()
        self.last_stats = 0.0

    def run(self) -> None:
        w = self.worker
        self.ctl.send(schema.encode(Hello(w.role, os.getpid(), False)))
        poller = zmq.Poller()
        for s in (self.ctl, self.msi, self.events):
            poller.register(s, zmq.POLLIN)
        next_beat = 0.0
        while True:
            now = time.monotonic()
            if now >= next_beat:
                self.ctl.send(schema.encode(Heartbeat(w.role, os.getpid(),
                                                      {**w.vcpu.stats(), "msis": self.msis,
                                                       "retries": sum(c.retries for c in list(w.clients.values())),
                                                       "last_exit": w.describe_last_exit()})))
                next_beat = now + HEARTBEAT_INTERVAL
            if now - self.last_stats >= STATS_INTERVAL:
                self.write_stats()
            for sock, _ in poller.poll(int((next_beat - now) * 1000) + 1):
                raw = sock.recv()
                if sock is self.events:
                    if raw == b"":
                        self.write_stats()
                        return
                    self.ctl.send(raw)
                    continue
                try:
                    msg = schema.decode(raw)
                except schema.SchemaError as exc:
                    w.log("bad-message", error=str(exc))
                    continue
                if isinstance(msg, Msi):
                    if not self.replays.accept(msg):
                        w.log("msi-replay-dropped", source=msg.source, seq=msg.seq, data=msg.data)
                        continue
                    self.msis += 1
                    w.vm.vm_lapic_msi(msg.addr, msg.data)
                    key = f"{msg.source};{msg.data & 0xFF};{self._kind(msg.addr, msg.data)}"
                    self.vectors[key] = self.vectors.get(key, 0) + 1
                elif isinstance(msg, VcpuGo):
                    w.go.set()
                elif isinstance(msg, Control) and msg.command == "stop":
                    w.request_stop()


    def _kind(self, addr: int, data: int) -> str:
        """'self' when the MSI names this vCPU physically, else how it is addressed."""
        if (data >> 8) & 7 == 7:
            return "extint"
        if addr & 4:
            return "logical"
        dest = (addr >> 12) & 0xFF
        return "self" if dest == self.worker.vcpuid else ("broadcast" if dest == 0xFF else f"apic{dest}")

    def write_stats(self) -> None:
        """Per-vector counts of the MSIs this process injected and of the
        vectors its CPU took, with its timer's vector (bhive stats)."""
        self.last_stats = time.monotonic()
        w = self.worker
        counts = getattr(w.vcpu, "lapic_counts", None)
        accepted, timer_vector = counts() if counts else ({}, 0)
        try:
            w.rundir.write_json(f"stats-{w.role}.json", {
                "role": w.role, "cpu": w.vcpuid, "msis": self.msis, "vectors": dict(self.vectors),
                "level_eois": dict(w.level_eois), "accepted": accepted, "timer_vector": timer_vector})
        except OSError:
            pass


class VcpuWorker:
    def __init__(self, rundir: RunDir, vcpuid: int):
        self.rundir = rundir
        self.vcpuid = vcpuid
        self.role = f"vcpu{vcpuid}"
        self.log = EventLog(rundir.log_path(self.role), self.role)
        info = rundir.read_json("supervisor.json")
        worker_lifecycle.die_with_supervisor(info.get("pid"))
        self.cfg = config_mod.from_json(info["config"])
        self.ctx = zmq.Context.instance()
        self.stopping = False
        self.go = threading.Event()      # set on VcpuGo (or on stop)

        accel = accel_mod.get(self.cfg.accel)
        self.ram = SharedRegion(rundir.shm / "ram")
        self.platform = SharedRegion(rundir.shm / "platform")
        memory = GuestMemory(self.ram.address, self.ram.size, ram_slots(self.cfg.memory))
        # whole_vm: this process is one vCPU of a bhive VM (kvm: its own KVM VM);
        # name: the VM under /dev/vmm (bhyve); cpu: the -cpu model
        self.vm = accel.vm_open(memory, self.cfg.cpus, self.platform.address,
                                {"whole_vm": True, "name": self.cfg.name, "cpu": self.cfg.cpu})
        self.vcpu = self.vm.vcpu_open(vcpuid)

        # Port map: one slot per I/O port, each the client of the owning actor.
        self.clients: dict[str, ActorClient] = {}
        self.port_owner: list[ActorClient | None] = [None] * 0x10000
        self.fds = channel.inherited_fds()
        for dev in self.cfg.devices.values():
            client = self._client(dev.name)
            for port in dev.ports:
                self.port_owner[port] = client
        # MMIO map: (base, end, client) for every device window (IOAPIC ...).
        self.mmio_windows: list[tuple[int, int, ActorClient]] = []
        for dev in self.cfg.devices.values():
            for base, size in dev.mmio:
                self.mmio_windows.append((base, base + size, self._client(dev.name)))
        self.eoi_client = next((self._client(d.name) for d in self.cfg.devices.values()
                                if d.type == "ioapic"), None)
        self._open_port_lanes()
        self.level_eois: dict[int, int] = {}
        self.exits_by_device: collections.Counter = collections.Counter()   # logged at stop
        self.unclaimed_seen: set[int] = set()
        # PCI BARs move at the guest's will: an address no device claims
        # statically is looked up in the pci actor's shared config table.
        self.has_pci = any(d.type == "pci" for d in self.cfg.devices.values())
        self.pci_table: pci.ConfigTable | None = None
        self.pci_routes: dict[tuple[str, int], ActorClient | None] = {}   # for pci_generation
        self.pci_generation = -1
        self.latency = self._latency_log()
        self.last_exit: tuple = ()      # (code, rip) of the last exit: what a lost vCPU was doing

    def describe_last_exit(self) -> str:
        if not self.last_exit:
            return ""
        code, rip = self.last_exit
        return f"{getattr(code, 'name', code)} at rip={rip:#x}"

    def _open_port_lanes(self) -> None:
        """Let the accelerator serve a posted-write device's ports without
        exits (softvmm's port lane, csrc/pio_lane.c): it writes the same
        PioRequest records into the same channel as ChannelActorClient and
        reads the mirrored register the actor publishes there.  An
        accelerator without lanes (kvm) takes every exit as before."""
        open_lane = getattr(self.vcpu, "pio_lane", None)
        self.lane_regions: list[SharedRegion] = []      # kept mapped while the lanes live
        if open_lane is None or os.environ.get(NO_LANES_ENV):
            return
        for dev in self.cfg.devices.values():
            dtype = DEVICE_TYPES[dev.type]
            client = self.clients.get(dev.name)
            if not dtype.posted_writes or not isinstance(client, ChannelActorClient) or not dev.ports:
                continue
            spans = dev.port_spans
            if len(spans) != 1:
                continue
            template = schema.encode(PioRequest(self.role, 0, 0, 1, True, 0))
            prefix = template[:-5]          # less req_id 0, port 0, size 1, True, data 0
            neutral = sum(1 << off for off in dtype.neutral_writes)
            # every vCPU's channel to this actor: a mirrored read waits for their writes too
            peers = [SharedRegion(self.rundir.shm / channel.channel_file(dev.name, f"vcpu{i}"))
                     for i in range(self.cfg.cpus)]
            self.lane_regions += peers
            open_lane(spans[0][0], spans[0][1] - spans[0][0], client.chan.region.address,
                      [r.address for r in peers], client.chan.capacity, client.chan.actor_doorbell, prefix,
                      dtype.mirror_offset, neutral)

    def _client(self, name: str) -> ActorClient:
        client = self.clients.get(name)
        if client is None:
            door = self.fds.get(channel.doorbell_name(name))
            if door is None:   # exit_transport = "zmq", or a device without ports/MMIO
                client = ActorClient(self.ctx, self.rundir.endpoint(name), name, self.role)
            else:
                dev = self.cfg.devices[name]
                client = ChannelActorClient(
                    self.ctx, self.rundir.endpoint(name), name, self.role,
                    channel.ChannelClient(self.rundir.shm / channel.channel_file(name, self.role), door,
                                          self.fds[channel.wake_name(self.role)], GIVE_UP_AFTER_S),
                    posted_writes=DEVICE_TYPES[dev.type].posted_writes)
            self.clients[name] = client
        return client

    def _latency_log(self):
        """Optional exit round-trip samples (ns), for `make bench`."""
        if not os.environ.get("BHIVE_EXIT_LATENCY"):
            return None
        return array.array("q")

    def request_stop(self) -> None:
        self.stopping = True
        self.go.set()
        kick = getattr(self.vm, "kick", None)
        if kick is not None:
            kick(self.vcpuid)

    def event(self, kind: str, status: int = 0, detail: str = "") -> None:
        self.control_events.send(schema.encode(VmEvent(self.role, kind, status, detail)))

    # -- exits --------------------------------------------------------------
    def bar_owner(self, space: str, addr: int) -> ActorClient | None:
        """The client of the actor whose enabled PCI BAR decodes `addr`
        ("io" port or "mem" gpa); the slow path of unclaimed addresses."""
        if not self.has_pci:
            return None
        table = self.pci_table
        if table is None:
            table = self.pci_table = pci.ConfigTable.open(self.rundir.shm / pci.TABLE_FILE)
            if table is None:
                return None
        if table.generation != self.pci_generation or len(self.pci_routes) > 4096:
            self.pci_generation = table.generation
            self.pci_routes.clear()
        key = (space, addr)
        if key not in self.pci_routes:
            name = table.port_owner(addr) if space == "io" else table.mmio_owner(addr)
            self.pci_routes[key] = self._client(name) if name in self.cfg.devices else None
        return self.pci_routes[key]

    def handle_inout(self, ex: VmExit) -> None:
        client = self.port_owner[ex.port] or self.bar_owner("io", ex.port)
        self.exits_by_device[client.role if client is not None else "unclaimed-port"] += 1
        if client is None:
            # Nothing decodes this port: reads float high, writes vanish,
            # exactly what an ISA bus does.
            if ex.port not in self.unclaimed_seen:
                self.unclaimed_seen.add(ex.port)
                self.log("unclaimed-port", port=ex.port, size=ex.size, write=not ex.is_in)
            value = (1 << (8 * ex.size)) - 1 if ex.is_in else 0
        else:
            value = client.pio(ex.port, ex.size, not ex.is_in, 0 if ex.is_in else ex.data)
        self.vcpu.vm_complete_inout(ex, value)

    def handle_mmio(self, ex: VmExit) -> None:
        for base, end, client in self.mmio_windows:
            if base <= ex.gpa < end:
                self.exits_by_device[client.role] += 1
                value = client.mmio(ex.gpa, ex.size, ex.is_write, ex.data if ex.is_write else 0)
                self.vcpu.vm_complete_mmio(ex, value)
                return
        client = self.bar_owner("mem", ex.gpa)
        if client is not None:
            self.exits_by_device[client.role] += 1
            value = client.mmio(ex.gpa, ex.size, ex.is_write, ex.data if ex.is_write else 0)
            self.vcpu.vm_complete_mmio(ex, value)
            return
        if ex.gpa not in self.unclaimed_seen:
            self.unclaimed_seen.add(ex.gpa)
            self.log("unclaimed-mmio", gpa=ex.gpa, size=ex.size, write=ex.is_write)
        value = 0 if ex.is_write else (1 << (8 * ex.size)) - 1
        self.vcpu.vm_complete_mmio(ex, value)

    def handle_eoi(self, ex: VmExit) -> None:
        """A level-triggered vector was EOId: the IOAPIC clears Remote IRR.

        Acknowledged rather than posted: the request is retried with the
        same id until the IOAPIC (possibly restarted) confirms it, so an
        EOI is never lost and never applied twice; a lost one would leave
        the pin blocked for good."""
        self.level_eois[ex.vector] = self.level_eois.get(ex.vector, 0) + 1
        if self.eoi_client is not None:
            self.eoi_client.eoi(ex.vector)

    def handle_msr(self, ex: VmExit) -> None:
        # Policy for MSRs the accelerator does not implement (seed bug #1:
        # a #GP on a benign MSR killed AP bring-up; here it is a choice).
        write = ex.code == ExitCode.WRMSR
        if self.cfg.unknown_msr == "ignore":
            self.log("unknown-msr", msr=ex.msr, write=write, value=ex.data, action="ignored")
            self.vcpu.vm_complete_msr(ex, 0, gp=False)
        else:
            self.log("unknown-msr", msr=ex.msr, write=write, value=ex.data, action="#GP")
            self.vcpu.vm_complete_msr(ex, 0, gp=True)

    def dump_registers(self) -> dict:
        regs = {}
        for reg in (VmReg.RAX, VmReg.RBX, VmReg.RCX, VmReg.RDX, VmReg.RSI, VmReg.RDI, VmReg.RBP,
                    VmReg.RSP, VmReg.RIP, VmReg.RFLAGS, VmReg.CR0, VmReg.CR3, VmReg.CR4, VmReg.EFER):
            try:
                regs[reg.name.lower()] = self.vcpu.vm_get_register(reg)
            except Exception:  # an accelerator may not expose every register
                pass
        return regs

    def reset_line(self, detail: str) -> int:
        """A shutdown cycle, as a PC's chipset turns it into a reset: the
        supervisor reboots the VM (or ends it, -no-reboot) and stops this
        process with the others; until then this CPU runs nothing."""
        self.log("triple-fault", detail=detail, action="reset", **self.dump_registers())
        self.event("reset", 0, detail)
        while not self.stopping:
            time.sleep(0.01)
        return 0

    def fatal(self, kind: str, detail: str) -> int:
        self.log(kind, detail=detail, **self.dump_registers())
        self.event(kind, STATUS_GUEST_CRASH, detail)
        return STATUS_GUEST_CRASH

    def run(self) -> int:
        signal.signal(signal.SIGTERM, lambda *_: self.request_stop())
        control = ControlThread(self)
        self.control_events = self.ctx.socket(zmq.PAIR)
        self.control_events.connect(f"inproc://events-{self.role}")
        if self.vcpuid != 0:
            self.vcpu.vm_activate_cpu()  # an AP waits for SIPI from now on, wherever its process is
        control.start()                 # says Hello
        self.log("ready", cpu=f"{time.process_time():.3f}")     # CPU seconds of the set-up
        while not self.go.wait(0.1):    # VcpuGo, or a stop
            pass
        profiling = False
        if not self.stopping:
            if self.vcpuid == 0:
                # Written by the supervisor once the image is in RAM, before VcpuGo.
                boot = BootState.from_json(self.rundir.read_json("supervisor.json")["boot"])
                for reg, desc in boot.descriptors.items():
                    self.vcpu.vm_set_desc(VmReg(reg), desc)
                for reg, value in boot.registers.items():
                    self.vcpu.vm_set_register(VmReg(reg), value)
                self.vcpu.vm_activate_cpu()
            profiling = PROFILE_ENV in os.environ and hasattr(self.vcpu, "profile_start")
            if profiling:
                self.vcpu.profile_start(period=int(os.environ[PROFILE_ENV] or 10000))
            self.log("started", accel=self.cfg.accel, bsp=self.vcpuid == 0)
        try:
            status = 0 if self.stopping else self.loop()
        except ActorUnavailable as exc:
            status = STATUS_INTERNAL
            self.log("actor-unavailable", detail=str(exc))
            self.event("fatal", status, str(exc))
        self.log("stopped", **self.vcpu.stats(), cpu_seconds=round(time.process_time(), 3),
                 **{f"exits_{name}": n for name, n in self.exits_by_device.most_common()})
        if hasattr(self.vcpu, "jit_report"):
            self.vcpu.jit_report()
        if profiling:
            samples = array.array("Q", self.vcpu.profile_samples())
            (self.rundir.path / f"profile-{self.role}.bin").write_bytes(samples.tobytes())
        if self.latency is not None:
            Path(os.environ["BHIVE_EXIT_LATENCY"] + f".{self.role}").write_bytes(self.latency.tobytes())
        self.control_events.send(b"")
        control.join(timeout=2)
        return status

    def loop(self) -> int:
        vcpu = self.vcpu
        latency = self.latency
        halted_reported = False
        while not self.stopping:
            ex = vcpu.vm_run()
            code = ex.code
            self.last_exit = (code, ex.rip)
            t0 = time.perf_counter_ns() if latency is not None else 0
            if code == ExitCode.INOUT or code == ExitCode.INOUT_STR:
                self.handle_inout(ex)
            elif code == ExitCode.INST_EMUL:
                self.handle_mmio(ex)
            elif code == ExitCode.BOGUS:
                continue
            elif code == ExitCode.IOAPIC_EOI:
                self.handle_eoi(ex)
            elif code in (ExitCode.RDMSR, ExitCode.WRMSR):
                self.handle_msr(ex)
            elif code == ExitCode.HLT:
                if not halted_reported:
                    halted_reported = True
                    self.log("halted", rip=ex.rip, detail="HLT with interrupts disabled")
                    self.event("halted", 0, f"HLT with interrupts disabled at {ex.rip:#x}")
                continue
            elif code == ExitCode.SUSPENDED:
                how = SuspendHow(ex.how)
                if how == SuspendHow.TRIPLEFAULT and self.cfg.triple_fault == "reset":
                    return self.reset_line(f"triple fault at rip={ex.rip:#x}")
                if how == SuspendHow.TRIPLEFAULT:
                    return self.fatal("triple-fault", f"triple fault at rip={ex.rip:#x}")
                self.event("suspended", 0, how.name.lower())
                return 0
            elif code == ExitCode.UNHANDLED:
                return self.fatal("unhandled-instruction",
                                  f"rip={ex.rip:#x} bytes={ex.insn.hex(' ')}")
            else:
                return self.fatal("unexpected-exit", f"{code!r} at rip={ex.rip:#x}")
            if latency is not None:
                latency.append(time.perf_counter_ns() - t0)
            halted_reported = False
        return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m bhive.vcpu_worker RUN_DIR VCPUID", file=sys.stderr)
        return 2
    run_path = Path(argv[0])
    worker_lifecycle.name_process(f"vcpu{argv[1]}")
    sys.setswitchinterval(0.0005)  # the MSI thread must not wait on a busy main thread
    vcpu = VcpuWorker(RunDir(run_path.name, run_path.parent), int(argv[1]))
    return vcpu.run()


if __name__ == "__main__":
    worker_lifecycle.exit_now(main())
