"""The one runtime every device actor process runs on.

Start-up: map the actor's state store, rebuild the device from the last
committed snapshot if there is one (a restart) or reset it, bind the
request socket, then say HELLO to the supervisor.  Loop: answer requests,
send a heartbeat every second, run device timers, stop on command.

Exactly-once: each request carries (source, req_id).  The actor applies a
request, then commits the device state *together with* the id and the
answer, then replies.  A retry of a request that was committed gets the
saved answer without being applied again; one that was not committed is
applied for the first time.  SIGKILL at any point loses nothing.
"""

from __future__ import annotations

import os
import signal
import time

import msgpack
import zmq

from .. import worker_lifecycle
from ..bus import channel, schema
from ..bus.schema import (Ack, ConsoleInput, Control, EoiRequest, Heartbeat, Hello, IrqLineLevel,
                          MmioRequest, MmioResponse, PicOutput, PioRequest, PioResponse)
from ..bus.shm import StateStore
from ..log import EventLog
from ..rundir import RunDir
from .host import DeviceHost

HEARTBEAT_INTERVAL = 1.0


class ActorRuntime:
    def __init__(self, rundir: RunDir, role: str):
        self.rundir = rundir
        self.role = role
        self.log = EventLog(rundir.log_path(role), role)
        self.store = StateStore(rundir.shm / f"{role}.state")
        self.ctx = zmq.Context.instance()
        self.answered: dict[str, list] = {}   # source -> [req_id, answer]
        # Exit channels (bhive.bus.channel): source -> [consumed, answered_id, answer]
        self.channels: dict[str, channel.ChannelServer] = {}
        self.channel_state: dict[str, list] = {}
        self.doorbell: int | None = None
        self.requests = 0
        self.stopping = False
        self.device: DeviceHost | None = None

    # -- state ------------------------------------------------------------
    def commit(self) -> None:
        blob = msgpack.packb({"device": self.device.state(), "answered": self.answered,
                              "channels": self.channel_state}, use_bin_type=True)
        self.store.commit(blob)
        self.device.after_commit()
        if self.channels:
            mirror = self.device.mirror_value()
            for server in self.channels.values():
                server.publish_mirror(mirror)

    def _restore(self) -> bool:
        blob = self.store.load()
        if blob is None:
            return False
        saved = msgpack.unpackb(blob, raw=False, strict_map_key=False)
        self.answered = saved["answered"]
        self.channel_state.update(saved.get("channels", {}))
        self.device.restore(saved["device"])
        return True

    def _open_channels(self) -> None:
        fds = channel.inherited_fds()
        self.doorbell = fds.get(channel.doorbell_name(self.role))
        if self.doorbell is None:
            return
        for name, fd in fds.items():
            if not name.startswith("wake."):
                continue
            source = name.removeprefix("wake.")
            path = self.rundir.shm / channel.channel_file(self.role, source)
            if path.exists():
                self.channels[source] = channel.ChannelServer(path, fd)
                self.channel_state.setdefault(source, [0, 0, 0])

    def _publish_channels(self, sources) -> None:
        for source in sources:
            consumed, answered_id, answer = self.channel_state[source]
            self.channels[source].publish(consumed, answered_id, answer)

    def serve_channels(self) -> None:
        """Apply every record waiting on every channel, in the guest's order
        across channels (bhive.bus.channel.gather_in_order); one commit
        covers the batch, then the clients are told."""
        channel.drain_doorbell(self.doorbell)
        touched = set()
        dev = self.device
        consumed = {source: self.channel_state[source][0] for source in self.channels}
        for source, msg in channel.gather_in_order(self.channels, consumed):
            if dev.busy():
                break              # flow control: the rest wait in their rings
            st = self.channel_state[source]
            st[0] += 1
            touched.add(source)
            self.requests += 1
            if isinstance(msg, PioRequest):
                value = dev.pio(msg.port, msg.size, msg.is_write, msg.data)
            elif isinstance(msg, MmioRequest):
                value = dev.mmio(msg.gpa, msg.size, msg.is_write, msg.data)
            else:
                self.log("bad-channel-record", source=source, detail=str(msg))
                continue
            if not msg.is_write:
                st[1], st[2] = msg.req_id, value
        if touched:
            self.commit()
            self._publish_channels(sorted(touched))

    # -- requests ---------------------------------------------------------
    def _apply_once(self, source: str, req_id: int, apply) -> int:
        """Apply a request unless this exact request was already committed."""
        last = self.answered.get(source)
        if last is not None and req_id <= last[0]:
            if req_id == last[0]:
                return last[1]
            self.log("stale-request", source=source, req_id=req_id, last=last[0])
            return None
        answer = apply()
        self.answered[source] = [req_id, answer]
        self.requests += 1
        self.commit()
        return answer

    def handle(self, msg):
        dev = self.device
        if isinstance(msg, PioRequest):
            data = self._apply_once(msg.source, msg.req_id,
                                    lambda: dev.pio(msg.port, msg.size, msg.is_write, msg.data))
            return None if data is None else PioResponse(msg.req_id, data)
        if isinstance(msg, MmioRequest):
            data = self._apply_once(msg.source, msg.req_id,
                                    lambda: dev.mmio(msg.gpa, msg.size, msg.is_write, msg.data))
            return None if data is None else MmioResponse(msg.req_id, data)
        if isinstance(msg, ConsoleInput):
            taken = self._apply_once(msg.source, msg.req_id, lambda: dev.console_input(msg.data))
            return None if taken is None else Ack(msg.req_id, taken)
        if isinstance(msg, IrqLineLevel):
            dev.irq_input(msg.source, msg.line, msg.level)   # a level: applying it twice is harmless
            self.commit()
            return Ack(msg.seq, 1)
        if isinstance(msg, EoiRequest):
            # Acknowledged and applied exactly once, like a port write.
            done = self._apply_once(msg.source, msg.req_id, lambda: dev.eoi(msg.vector))
            return None if done is None else Ack(msg.req_id, done)
        if isinstance(msg, PicOutput):
            dev.pic_output(msg.enabled)
            self.commit()
            return None
        self.log("unexpected-message", type=type(msg).__name__)
        return None

    def event(self, msg) -> None:
        """Tell the supervisor something that changes the VM (a VmEvent)."""
        self.ctl.send(schema.encode(msg))

    # -- main loop --------------------------------------------------------
    def run(self, device_factory) -> int:
        worker_lifecycle.die_with_supervisor(self.rundir.supervisor_pid())
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stopping", True))
        ctl = self.ctl = self.ctx.socket(zmq.DEALER)
        ctl.setsockopt(zmq.LINGER, 200)
        ctl.setsockopt_string(zmq.IDENTITY, self.role)
        ctl.connect(self.rundir.endpoint("supervisor"))
        self.device = device_factory(self)
        self._open_channels()
        restored = self._restore()
        if restored:
            self.log("restored", commits=self.store.commits)
        else:
            self.commit()
            self.log("reset")
        server = self.ctx.socket(zmq.ROUTER)
        server.setsockopt(zmq.LINGER, 0)
        server.bind(self.rundir.endpoint(self.role))
        # Logged before Hello: once the supervisor lists the actor as running, its log says so too.
        self.log("ready", pid=os.getpid(), cpu=f"{time.process_time():.3f}")   # CPU seconds to get here
        ctl.send(schema.encode(Hello(self.role, os.getpid(), restored)))

        poller = zmq.Poller()
        poller.register(server, zmq.POLLIN)
        poller.register(ctl, zmq.POLLIN)
        if self.doorbell is not None:
            # What the previous incarnation committed is final: republish it,
            # then apply whatever was posted while no actor was running.
            self._publish_channels(list(self.channels))
            poller.register(self.doorbell, zmq.POLLIN)
            self.serve_channels()
        next_beat = time.monotonic()
        while not self.stopping:
            now = time.monotonic()
            if now >= next_beat:
                ctl.send(schema.encode(Heartbeat(self.role, os.getpid(),
                                                 {"requests": self.requests, **self.device.counters()})))
                next_beat = now + HEARTBEAT_INTERVAL
            deadline = self.device.next_deadline()
            if deadline is not None and deadline <= now:
                self.device.on_timer(now)
                continue
            wait = next_beat - now if deadline is None else min(next_beat, deadline) - now
            for sock, _ in poller.poll(max(0, int(wait * 1000)) + 1):
                if sock == self.doorbell:
                    self.serve_channels()
                elif sock is server:
                    self._serve(server)
                else:
                    msg = self._decode(ctl.recv())
                    if isinstance(msg, Control) and msg.command == "stop":
                        self.stopping = True
        if self.channels:
            self.serve_channels()     # what the vCPUs posted before they stopped
        self.device.on_stop()
        self.log("stopped", requests=self.requests)
        server.close()
        ctl.close()
        return 0

    def _decode(self, raw: bytes):
        try:
            return schema.decode(raw)
        except schema.SchemaError as exc:
            self.log("bad-message", error=str(exc))
            return None

    def _serve(self, server) -> None:
        # Drain everything queued so a burst costs one poll.
        while True:
            try:
                ident, raw = server.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except ValueError:
                self.log("bad-frame")
                continue
            msg = self._decode(raw)
            if msg is None:
                continue
            reply = self.handle(msg)
            if reply is not None:
                server.send_multipart([ident, schema.encode(reply)])
