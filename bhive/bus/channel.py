"""Exit channels: one vCPU's requests to one actor, through shared memory.

A ZeroMQ round trip costs ~130 µs here (BENCHMARKS.md), and a Linux boot
makes ~50,000 device exits.  A channel carries the *same* schema messages
(msgpack `PioRequest`/`MmioRequest`) through a ring in shared memory, with
eventfd doorbells that the actor's poller waits on next to its sockets:

    client (a vCPU)                         actor
    write the record into its slot
    publish it (published += 1)
    ring the actor's doorbell  ---------->  poll wakes on the eventfd
                                            apply each record in [consumed, published)
                                            commit device state + `consumed`   (durable)
                                            publish consumed, (answer id, value)
    wait for answer id >= mine  <---------  ring the client's eventfd

Order across vCPUs: every record carries a stamp, the host's
CLOCK_MONOTONIC when it was written, and an actor applies the records of
all its channels merged by stamp.  A record that the guest ordered after
another one (by a lock, say: one vCPU prints, unlocks, the next locks and
prints) was written after that one was published, so it has the larger
stamp, and an actor that sees it also sees the earlier one when it scans
again (`gather_in_order`): the device sees accesses in the guest's order,
as a real bus would, even when they were posted.

Posted writes: a record that needs no answer (an OUT, an MMIO write) lets
the client go on at once.  It is not lost if the actor dies: the record
stays in shared memory until an actor commits past it, and a restarted
actor resumes from its committed `consumed`, so each record is applied
exactly once.  Records of one channel are applied in order, so a read
always sees the effect of the writes the same vCPU posted before it.

Memory ordering: x86-TSO keeps the slot store before the `published`
store and the loads in the same order on the other side; every counter is
an aligned 8-byte store (`memoryview.cast("Q")`), so none is torn.
"""

from __future__ import annotations

import os
import select
import struct
import time

from . import schema
from .shm import SharedRegion

SLOT = 64            # bytes per record: u16 length, msgpack message, ..., u64 stamp at STAMP
STAMP = SLOT - 8     # offset of the record's stamp (CLOCK_MONOTONIC ns) in its slot
MAX_MESSAGE = STAMP - 2
CAPACITY = 256       # records per ring
HEADER = 256         # counters, each on its own cache line

# u64 indexes into the header (cache-line separated: producer vs consumer)
PUBLISHED = 0        # client: records written
NONNEUTRAL = 1       # client: records below this index may change the mirrored register
CONSUMED = 8         # actor: records applied and committed
MIRROR = 9           # actor: MIRROR_VALID | the mirrored register (see below), or 0
ANSWERED_ID = 16     # actor: request id of the last answer
ANSWER = 17          # actor: the value of that answer

# The register mirror: a device whose type names a `mirror_offset` (the
# UART's LSR) publishes that register here after every commit, while
# reading it has no side effect.  softvmm's port lane (csrc/pio_lane.c)
# answers an IN from it without an exit once every posted write that could
# change it (NONNEUTRAL) has been applied (CONSUMED).  The actor stores
# MIRROR before CONSUMED; the lane loads them in the other order.
MIRROR_VALID = 1 << 63

SPIN_SECONDS = 30e-6  # an answer usually comes quicker than a sleep/wake


class ChannelError(RuntimeError):
    pass


ENV_FDS = "BHIVE_FDS"   # name=fd,... of the doorbells a child inherits


def doorbell_name(actor: str) -> str:
    return f"door.{actor}"


def wake_name(client: str) -> str:
    return f"wake.{client}"


def channel_file(actor: str, client: str) -> str:
    return f"chan.{actor}.{client}"


def encode_fds(fds: dict[str, int]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(fds.items()))


def inherited_fds() -> dict[str, int]:
    """The doorbells the supervisor handed this process (see `encode_fds`)."""
    text = os.environ.get(ENV_FDS, "")
    return {k: int(v) for k, v in (item.split("=") for item in text.split(",") if item)}


def channel_size(capacity: int = CAPACITY) -> int:
    return HEADER + capacity * SLOT


def create(path: str | os.PathLike, capacity: int = CAPACITY) -> None:
    SharedRegion(path, channel_size(capacity), create=True).close()


def eventfd() -> int:
    """A doorbell; inheritable so the supervisor can hand it to children."""
    fd = os.eventfd(0, os.EFD_NONBLOCK)
    os.set_inheritable(fd, True)
    return fd


def ring(fd: int) -> None:
    try:
        os.eventfd_write(fd, 1)
    except BlockingIOError:  # counter saturated: the reader is awake anyway
        pass


def drain_doorbell(fd: int) -> None:
    try:
        os.eventfd_read(fd)
    except BlockingIOError:
        pass


class _Ring:
    def __init__(self, path: str | os.PathLike):
        self.region = SharedRegion(path)
        self.capacity = (self.region.size - HEADER) // SLOT
        self.words = self.region.view[:HEADER].cast("Q")

    def slot_offset(self, index: int) -> int:
        return HEADER + (index % self.capacity) * SLOT

    def close(self) -> None:
        self.words.release()
        self.region.close()


class ChannelClient(_Ring):
    """The vCPU's end: posts requests, waits for answers to reads."""

    def __init__(self, path, actor_doorbell: int, wake_fd: int, give_up_after: float = 30.0):
        super().__init__(path)
        self.actor_doorbell = actor_doorbell
        self.wake_fd = wake_fd
        self.give_up_after = give_up_after

    def _wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + SPIN_SECONDS
        while not ready():
            if time.monotonic() > deadline:
                break
        started = time.monotonic()
        while not ready():
            if time.monotonic() - started > self.give_up_after:
                raise ChannelError(f"no progress on {what} for {self.give_up_after:.0f}s")
            select.select([self.wake_fd], [], [], 0.05)
            drain_doorbell(self.wake_fd)

    def post(self, msg) -> int:
        """Publish one request; returns its id, which this sets to the
        record's ring position + 1 (so ids never repeat on a channel)."""
        index = self.words[PUBLISHED]
        msg.req_id = index + 1
        raw = schema.encode(msg)
        if len(raw) > MAX_MESSAGE:
            raise ChannelError(f"{type(msg).__name__} of {len(raw)} bytes does not fit a {SLOT}-byte slot")
        if index - self.words[CONSUMED] >= self.capacity:
            self._wait(lambda: index - self.words[CONSUMED] < self.capacity, "a full ring")
        off = self.slot_offset(index)
        struct.pack_into("<H", self.region.map, off, len(raw))
        self.region.map[off + 2: off + 2 + len(raw)] = raw
        struct.pack_into("<Q", self.region.map, off + STAMP, time.monotonic_ns())
        if msg.is_write:
            self.words[NONNEUTRAL] = index + 1     # this side does not know which writes are neutral
        self.words[PUBLISHED] = index + 1
        ring(self.actor_doorbell)
        return msg.req_id

    def complete(self, msg) -> None:
        """Post a request and wait until the actor has applied it (a write
        whose completion the guest may depend on)."""
        req_id = self.post(msg)
        self._wait(lambda: self.words[CONSUMED] >= req_id, "a completion")

    def call(self, msg) -> int:
        """Post a request and wait for its answer's value."""
        req_id = self.post(msg)
        self._wait(lambda: self.words[ANSWERED_ID] >= req_id, "an answer")
        return self.words[ANSWER]


def gather_in_order(servers: dict, consumed: dict) -> list[tuple[str, object]]:
    """Every record waiting on `servers` (name -> ChannelServer, each
    pending from consumed[name]), as (name, record) in the guest's order:
    scan until a scan finds nothing new, so every record that came before
    one we have is in, then merge by stamp (each channel is already in
    order; its stamps never decrease)."""
    seen: dict[str, list] = {name: [] for name in servers}
    while True:
        grew = False
        for name, server in servers.items():
            have = seen[name]
            more = server.pending(consumed[name], consumed[name] + len(have))
            if more:
                have.extend(more)
                grew = True
        if not grew:
            break
    merged = [(stamp, name, index, msg) for name, recs in seen.items() for stamp, index, msg in recs]
    merged.sort(key=lambda r: (r[0], r[1], r[2]))
    return [(name, msg) for _, name, _, msg in merged]


class ChannelServer(_Ring):
    """The actor's end of one client's channel."""

    def __init__(self, path, client_wake_fd: int):
        super().__init__(path)
        self.client_wake_fd = client_wake_fd

    def pending(self, consumed: int, start: int | None = None) -> list[tuple[int, int, object]]:
        """(stamp, index, decoded record) for the records published after
        `consumed` (the committed index), from `start` if given."""
        out = []
        for index in range(consumed if start is None else start, self.words[PUBLISHED]):
            off = self.slot_offset(index)
            (n,) = struct.unpack_from("<H", self.region.map, off)
            (stamp,) = struct.unpack_from("<Q", self.region.map, off + STAMP)
            try:
                msg = schema.decode(bytes(self.region.map[off + 2: off + 2 + n]))
            except schema.SchemaError as exc:
                msg = exc
            out.append((stamp, index, msg))
        return out

    def publish_mirror(self, value: int | None) -> None:
        """After a commit, before `publish`: the mirrored register, or None
        when a read of it must go to the actor."""
        self.words[MIRROR] = 0 if value is None else MIRROR_VALID | (value & 0xFFFFFFFF)

    def publish(self, consumed: int, answered_id: int | None, answer: int) -> None:
        """After a commit: the records up to `consumed` are durable."""
        if answered_id is not None:
            self.words[ANSWER] = answer
            self.words[ANSWERED_ID] = answered_id
        self.words[CONSUMED] = consumed
        ring(self.client_wake_fd)
