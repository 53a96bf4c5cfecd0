"""Every message that crosses a process boundary in bhive, in one place.

Wire format: a msgpack array ``[type, version, field1, field2, ...]`` with
the fields in the order the dataclass declares them.  `encode()` and
`decode()` are the only ways in and out; actors never build dict literals.

Requests that a vCPU sends to an actor carry ``(source, req_id)``: the
actor answers with the same id, so that the vCPU can match the response
and an actor can recognise a retried request it already applied (the vCPU
retries when an actor dies mid-request and is restarted).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields
from typing import ClassVar

import msgpack


class MsgType(enum.IntEnum):
    PIO_REQUEST = 1
    PIO_RESPONSE = 2
    MMIO_REQUEST = 3
    MMIO_RESPONSE = 4
    MSI = 5
    IRQ_LINE = 6
    # 7 and 8 were the EOI and INIT/SIPI messages, never sent: not to be reused.
    CONTROL = 9
    HELLO = 10
    HEARTBEAT = 11
    CONSOLE_INPUT = 12
    VM_EVENT = 13
    ACK = 14
    EOI_REQUEST = 15
    PIC_OUTPUT = 16
    VCPU_GO = 17
    ZYGOTE_BIND = 18
    ZYGOTE_SPAWN = 19
    ZYGOTE_SPAWNED = 20


class SchemaError(ValueError):
    """A message that does not decode: unknown type, version or shape."""


_REGISTRY: dict[int, type] = {}


def message(kind: MsgType, version: int = 1):
    """Class decorator: registers a dataclass as the message `kind`."""

    def register(cls):
        cls = dataclass(slots=True)(cls)
        cls.TYPE = kind
        cls.VERSION = version
        cls._FIELDS = tuple(f.name for f in fields(cls))
        if int(kind) in _REGISTRY:
            raise RuntimeError(f"message type {kind!r} registered twice")
        _REGISTRY[int(kind)] = cls
        return cls

    return register


def encode(msg) -> bytes:
    cls = type(msg)
    return msgpack.packb([cls.TYPE, cls.VERSION, *(getattr(msg, f) for f in cls._FIELDS)],
                         use_bin_type=True)


def decode(raw: bytes):
    try:
        items = msgpack.unpackb(raw, raw=False, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise SchemaError(f"undecodable message: {exc}") from None
    if not isinstance(items, list) or len(items) < 2:
        raise SchemaError("message is not [type, version, ...]")
    cls = _REGISTRY.get(items[0])
    if cls is None:
        raise SchemaError(f"unknown message type {items[0]!r}")
    if items[1] != cls.VERSION:
        raise SchemaError(f"{cls.__name__} version {items[1]} (this build speaks {cls.VERSION})")
    if len(items) - 2 != len(cls._FIELDS):
        raise SchemaError(f"{cls.__name__} has {len(items) - 2} fields, expected {len(cls._FIELDS)}")
    return cls(*items[2:])


# --- Exits: vCPU -> owning actor, and the answers -------------------------

@message(MsgType.PIO_REQUEST)
class PioRequest:
    TYPE: ClassVar[MsgType]
    source: str        # who asks, e.g. "vcpu3"; with req_id, identifies a retry
    req_id: int        # increases by one per request from `source`
    port: int
    size: int          # 1, 2 or 4
    is_write: bool
    data: int          # value written (OUT); 0 for IN


@message(MsgType.PIO_RESPONSE)
class PioResponse:
    TYPE: ClassVar[MsgType]
    req_id: int
    data: int          # value read (IN); 0 for OUT


@message(MsgType.MMIO_REQUEST)
class MmioRequest:
    TYPE: ClassVar[MsgType]
    source: str
    req_id: int
    gpa: int
    size: int          # 1, 2, 4 or 8
    is_write: bool
    data: int


@message(MsgType.MMIO_RESPONSE)
class MmioResponse:
    TYPE: ClassVar[MsgType]
    req_id: int
    data: int


# --- Interrupts ----------------------------------------------------------

@message(MsgType.MSI, version=2)
class Msi:
    """An MSI towards a vCPU process, injected there with vm_lapic_msi.

    `seq` numbers the sender's MSIs and is committed with its state: a
    controller killed after sending but before committing replays the same
    MSI under the same number, and the vCPU process drops it (one edge,
    one interrupt, as on a wire)."""

    TYPE: ClassVar[MsgType]
    addr: int          # 0xFEE00000 | dest_id << 12 | dest_mode << 2
    data: int          # vector | delivery_mode << 8 | level << 14 | trigger << 15
    source: str        # the actor that sent it (for stats and logs)
    seq: int = 0       # the sender's MSI count (0: unnumbered, never dropped)


@message(MsgType.IRQ_LINE, version=2)
class IrqLineLevel:
    """A device drives one of its lines (ISA IRQ / GSI) to a level.

    The controller answers with Ack(seq): a device finishes the guest access
    that moved its line only once the controllers have applied the change,
    so a later exit can never overtake it (a wire's causality)."""

    TYPE: ClassVar[MsgType]
    source: str
    seq: int           # increases per message from `source`
    line: int
    level: bool


@message(MsgType.EOI_REQUEST)
class EoiRequest:
    """vCPU -> IOAPIC actor: the local APIC EOId level-triggered `vector`.

    Acknowledged (Ack), and applied exactly once like a PIO request: a lost
    EOI would leave Remote IRR set and the pin dead for good, so it is
    retried with the same id across an IOAPIC restart."""

    TYPE: ClassVar[MsgType]
    source: str
    req_id: int
    vector: int


@message(MsgType.PIC_OUTPUT)
class PicOutput:
    """IOAPIC actor -> PIC actor: whether the PIC's INTR may be delivered
    as ExtINT (only while every IOAPIC RTE is masked, i.e. the guest is
    in PIC mode).  Posted; sent on every change and after a restart."""

    TYPE: ClassVar[MsgType]
    source: str
    enabled: bool


# --- Control plane: every process <-> supervisor -------------------------

@message(MsgType.HELLO)
class Hello:
    """First message of every process: it is up and its sockets are bound."""

    TYPE: ClassVar[MsgType]
    role: str          # actor name ("uart") or "vcpu0"
    pid: int
    restored: bool     # rebuilt from saved state rather than reset


@message(MsgType.VCPU_GO)
class VcpuGo:
    """Supervisor -> vCPU process: every device actor has said Hello, so
    the vCPU may enter its run loop.  A vCPU process is spawned together
    with the actors and sets itself up meanwhile (imports, guest RAM, the
    accelerator, boot state), says Hello, then waits for this: no exit
    can reach an actor that is not up yet."""

    TYPE: ClassVar[MsgType]
    actors: list       # the roles of the actors that said Hello


@message(MsgType.HEARTBEAT)
class Heartbeat:
    TYPE: ClassVar[MsgType]
    role: str
    pid: int
    counters: dict     # e.g. {"requests": n} or {"instructions": n, "exits": n}


@message(MsgType.CONTROL)
class Control:
    """Supervisor -> process."""

    TYPE: ClassVar[MsgType]
    command: str       # "stop"


@message(MsgType.VM_EVENT)
class VmEvent:
    """Process -> supervisor: something that ends or changes the VM."""

    TYPE: ClassVar[MsgType]
    source: str
    kind: str          # "exit" | "triple-fault" | "fatal" | "halted"
    status: int        # exit status for "exit"
    detail: str


@message(MsgType.CONSOLE_INPUT)
class ConsoleInput:
    """Supervisor -> console device: bytes typed at the terminal."""

    TYPE: ClassVar[MsgType]
    source: str
    req_id: int
    data: bytes


@message(MsgType.ACK)
class Ack:
    """Reply to a request that returns nothing but must be confirmed."""

    TYPE: ClassVar[MsgType]
    req_id: int
    accepted: int      # e.g. console bytes taken


# --- Fork server: supervisor <-> zygote ------------------------------------

@message(MsgType.ZYGOTE_BIND)
class ZygoteBind:
    """Supervisor -> zygote (bhive.zygote), once: the VM it forks workers
    for.  Sent with file descriptors (SCM_RIGHTS): the zygote's stderr log,
    then the doorbells every worker inherits, which the worker gets under
    the numbers `fds` (the supervisor's own, named in the BHIVE_FDS
    environment variable)."""

    TYPE: ClassVar[MsgType]
    run_dir: str
    accel: str         # the accelerator module to import now, if not yet
    fds: list


@message(MsgType.ZYGOTE_SPAWN)
class ZygoteSpawn:
    """Supervisor -> zygote: fork a worker that runs `MODULE.main(args)` as
    `python -m MODULE ARGS...` would, with exactly `env` as its environment,
    stdin on /dev/null, stdout and stderr on the one file descriptor sent
    along (SCM_RIGHTS), and the doorbells of ZygoteBind."""

    TYPE: ClassVar[MsgType]
    role: str          # "uart", "vcpu0": the process name (bhive:ROLE)
    module: str        # "bhive.devices_worker" or "bhive.vcpu_worker"
    args: list         # argv after `python -m MODULE`
    env: dict


@message(MsgType.ZYGOTE_SPAWNED)
class ZygoteSpawned:
    """Zygote -> supervisor, one per ZygoteSpawn, in order: the worker's
    pid (a child of the supervisor, its subreaper), or 0 and why not."""

    TYPE: ClassVar[MsgType]
    role: str
    pid: int
    error: str


def message_types() -> dict[int, type]:
    return dict(_REGISTRY)
