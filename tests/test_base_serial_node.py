"""A CPython stand-in for a serial chain node, for the base station's serial tests.

Built from protocol.link + protocol.framing, as a node's firmware would be, but with
pyserial on pty paths and one thread. It is a test double, not the firmware
(firmware/chain.py): it models what the head must cope with and what `starling chain`
expects of a node, nothing about memory, flash or timing on a board:

* upstream port: a Link whose HELLO carries the node's hop once known (255 before);
  hop = the upstream peer's hop + 1, learned from its HELLO (the base sends hop 0);
* readings are EVENT messages queued in an outbox and offered to the upstream link;
  messages of a dead frame (retry budget exceeded) go back to the front of the outbox
  (at least once; the base deduplicates by (node, epoch, seq));
* ENUMERATE from upstream: answered at once with a STATUS carrying `hop` and the
  CTR_LINK_* / CTR_FORWARDED counters, and forwarded downstream;
* ANNOUNCE from upstream: wall-clock time learnt (time_base), forwarded downstream;
* downstream port (optional): started only once the hop is known, so the downstream
  node learns a valid hop from the first HELLO; every message received from it is
  forwarded upstream unchanged. Back-pressure: the downstream link is only polled
  while the outbox holds fewer than OUTBOX_MAX messages, so a slow upstream shrinks
  the credit advertised downstream instead of growing a buffer;
* a STATUS every `status_every` seconds while the upstream link is up;
* a port that fails (pty closed) is reopened every 0.2 s, keeping the Link (a cut).

No pytest tests here (the file name only keeps it among the serial test files).
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections import deque

import serial

from protocol import codes
from protocol.framing import FrameDecoder, encode_frame
from protocol.link import Link
from protocol.messages import Announce, Enumerate, Event, Status, decode

HOP_UNKNOWN = 255
OUTBOX_MAX = 256


class _Port:
    def __init__(self, path, link):
        self.path = path
        self.link = link
        self.decoder = FrameDecoder(codes.MAX_FRAME)
        self.ser = None
        self.next_open = 0.0
        self.crc_seen = 0

    def ensure_open(self):
        if self.ser is not None or time.monotonic() < self.next_open:
            return self.ser is not None
        try:
            self.ser = serial.Serial(self.path, timeout=0)
            self.decoder.reset()
        except (serial.SerialException, OSError):
            self.next_open = time.monotonic() + 0.2
            return False
        return True

    def fail(self):
        if self.ser is not None:
            try:
                self.ser.close()
            except Exception:
                pass
        self.ser = None
        self.next_open = time.monotonic() + 0.2

    def read(self, now):
        try:
            data = self.ser.read(4096)
        except (serial.SerialException, OSError):
            self.fail()
            return
        if data:
            for p in self.decoder.feed(data):
                self.link.feed(p, now)
            d = self.decoder
            bad = d.crc_errors + d.malformed + d.oversize
            self.link.crc_errors += bad - self.crc_seen
            self.crc_seen = bad

    def transmit(self, now):
        frames = self.link.poll_transmit(now)
        if frames and self.ser is not None:
            try:
                self.ser.write(b"".join(encode_frame(f) for f in frames))
            except (serial.SerialException, OSError):
                self.fail()


class ChainTestNode:
    """Args:
        node: node id; epoch: boot epoch.
        up_path: the port toward the base; down_path: the port away from it, or None.
        status_every: seconds between periodic STATUS messages (None: only on ENUMERATE).
        max_payload: bytes per DATA frame (small frames survive a noisy line better).
        link_options: more Link keyword arguments for both links.
    """

    __test__ = False

    def __init__(self, node, up_path, down_path=None, *, epoch=1, status_every=1.0,
                 max_payload=64, firmware="test-chain-0.1", link_options=None):
        self.node = node
        self.epoch = epoch
        self.status_every = status_every
        self.firmware = firmware
        self.link_options = dict(link_options or {}, max_payload=max_payload)
        self.hop = None
        self.up = _Port(up_path, Link(node=node, hop=HOP_UNKNOWN, **self.link_options))
        self.down_path = down_path
        self.down = None
        self.outbox = deque()        # (message bytes, ticket) for the upstream link
        self.down_box = deque()      # messages for the downstream link
        self.lock = threading.Lock()
        self.seq = 0
        self.t0 = time.monotonic()
        self.time_base = None
        self.published = 0
        self.forwarded = 0
        self.dead = 0
        self.enumerates = 0
        self.announces = 0
        self._next_status = 0.0
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._thread = None

    # -- API (any thread) ------------------------------------------------------------------
    def uptime(self):
        return int((time.monotonic() - self.t0) * 1000)

    def publish(self, topic="lab/t", value=None):
        with self.lock:
            seq = self.seq
            self.seq += 1
            v = float(seq) if value is None else value
            msg = Event(self.node, self.epoch, seq, self.uptime(), topic, v).encode()
            self.outbox.append((msg, msg))
            self.published += 1
        self._wake()
        return seq

    def status_message(self):
        ls = self.up.link.stats()
        with self.lock:
            last = self.seq - 1 if self.seq else None
            queue = len(self.outbox)
        counters = {
            codes.CTR_PUBLISHED: self.published, codes.CTR_QUEUE: queue,
            codes.CTR_DEADLETTER: self.dead,
            codes.CTR_LINK_FRAMES: ls["data_sent"], codes.CTR_LINK_RETRANS: ls["retransmissions"],
            codes.CTR_LINK_CRC: ls["crc_errors"] + ls["malformed"],
            codes.CTR_LINK_RTT: ls["rtt_ms"] or 0, codes.CTR_LINK_WINDOW: ls["window_in_use"],
            codes.CTR_LINK_DOWNS: ls["downs"], codes.CTR_FORWARDED: self.forwarded,
        }
        return Status(self.node, self.epoch, last, 0, 0, self.uptime(), self.time_base,
                      self.firmware, codes.CAP_SERIAL, counters, self.hop).encode()

    def idle(self):
        """Nothing waiting to go upstream, nothing unacknowledged."""
        with self.lock:
            pending = len(self.outbox)
        link = self.up.link
        return not pending and not link.queued() and not link.in_flight()

    def start(self):
        self._thread = threading.Thread(target=self._run, name="chain-node-%d" % self.node,
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(2)
        for p in (self.up, self.down):
            if p is not None:
                p.fail()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- I/O thread ------------------------------------------------------------------------
    def _wake(self):
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def _ports(self):
        return [p for p in (self.up, self.down) if p is not None]

    def _run(self):
        ms = lambda: int(time.monotonic() * 1000)  # noqa: E731
        while not self._stop.is_set():
            now = ms()
            self._offer()
            for p in self._ports():
                if p.ensure_open():
                    p.transmit(now)
                else:
                    p.link.poll_transmit(now)   # closed: frames lost, timers run
            fds = [self._wake_r] + [p.ser.fileno() for p in self._ports() if p.ser is not None]
            wait = min([p.link.next_wake(now) for p in self._ports()] + [50])
            try:
                ready, _, _ = select.select(fds, [], [], wait / 1000)
            except (OSError, ValueError):
                ready = []
            if self._wake_r in ready:
                try:
                    os.read(self._wake_r, 4096)
                except OSError:
                    pass
            now = ms()
            for p in self._ports():
                if p.ser is not None and p.ser.fileno() in ready:
                    p.read(now)
            self._handle(now)
            for p in self._ports():
                if p.ser is not None:
                    p.transmit(now)

    def _offer(self):
        link = self.up.link
        with self.lock:
            while self.outbox:
                msg, ticket = self.outbox[0]
                if not link.offer(msg, ticket):
                    break
                self.outbox.popleft()
        if self.down is not None:
            while self.down_box and self.down.link.offer(self.down_box[0]):
                self.down_box.popleft()

    def _handle(self, now):
        up = self.up.link
        if self.hop is None and up.peer_hop is not None and up.peer_hop < HOP_UNKNOWN - 1:
            self.hop = up.peer_hop + 1
            up.hop = self.hop
            if self.down_path is not None:
                self.down = _Port(self.down_path, Link(node=self.node, hop=self.hop,
                                                       **self.link_options))
        for m in up.poll_received():
            self._from_upstream(bytes(m))
        up.poll_acked()
        dead = up.poll_dead()
        if dead:
            with self.lock:
                self.dead += len(dead)
                self.outbox.extendleft(reversed([(t, t) for t in dead]))
        if self.down is not None:
            with self.lock:
                room = len(self.outbox) < OUTBOX_MAX
            if room:
                got = self.down.link.poll_received()
                if got:
                    with self.lock:
                        for m in got:
                            m = bytes(m)
                            self.outbox.append((m, m))
                    self.forwarded += len(got)
            self.down.link.poll_acked()
            self.down.link.poll_dead()
        if self.status_every is not None and up.up and time.monotonic() >= self._next_status:
            self._next_status = time.monotonic() + self.status_every
            self._queue_status()
        self._offer()

    def _queue_status(self):
        msg = self.status_message()
        with self.lock:
            self.outbox.append((msg, None))

    def _from_upstream(self, data):
        try:
            msg = decode(data)
        except Exception:
            return
        if type(msg) is Enumerate:
            self.enumerates += 1
            msg_status = self.status_message()
            with self.lock:
                self.outbox.appendleft((msg_status, None))
            if self.down_path is not None:
                self.down_box.append(data)
        elif type(msg) is Announce:
            self.announces += 1
            if msg.wall_ms is not None:
                self.time_base = msg.wall_ms - self.uptime()
            if self.down_path is not None:
                self.down_box.append(data)
