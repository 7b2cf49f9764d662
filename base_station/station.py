"""The base station: listeners, authentication, accounting, sinks and subscribers.

Theory of operation
-------------------
Bytes come in through `ingest(data, source)` (UDP listeners call it for every
datagram; a serial chain head calls it for every frame payload) or, already decoded,
through `handle(msg, source)`. Each message is

    1. size-checked and decoded (base_station.wire): failures count `malformed`
       (by reason) and are logged at most once a second per source;
    2. authenticated when keys are configured: it must be SIGNED by the key of the
       node it names, and fresh in that node's replay window over (epoch, seq) (a
       BATCH's whole range); failures count `rejected`. The window is committed only
       once the message passed every check;
    3. accounted per node and epoch (base_station.accounting), which tells which of
       its readings are new: only those are delivered, as `Block`s, to every sink and
       to the subscribers whose topic filter matches.

Hot paths: without keys, a single-EVENT datagram is validated as its CBOR array
(wire.event_fields), accounted and handed to sinks with `write_event` (no message
object, no one-reading Block); a BATCH goes from wire.FastBatch's columns to one
Block. Everything else takes the generic dispatch.

Nothing in this path raises to the caller: a bug while handling one message is
counted (`internal_errors`) and logged, and the next message is handled as usual.
All of it runs on the event loop thread (call `ingest_threadsafe` from others).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections import deque
from typing import Any, Callable, Iterable

from protocol import auth, codes
from protocol.messages import (KIND_NAMES, Announce, Batch, DeadLetter, Event, Message, Signed,
                               Status, Unknown)
from protocol.topics import topic_matches, valid_filter

from base_station import wire
from base_station.accounting import (ALL, KEEP_EPOCHS, LAST_TOPICS, MAX_HOLES, MAX_HOLES_TOTAL,
                                     EpochStream, HoleBudget, NodeAccount)
from base_station.listener import RCVBUF, Announcer, UdpListener
from base_station.records import Block, Reading
from base_station.sinks import Sink, _json_default

log = logging.getLogger("starling.base")
_loads = wire.loads
_decode_fields = wire.decode_fields
_event_fields = wire.event_fields
_HEAD_EVENT = wire.HEAD_EVENT
_FastBatch = wire.FastBatch

TICK = 0.2            # seconds between sink ticks (flushes)
LOG_SOURCES = 1024    # sources remembered by the rate-limited log
MAX_LOG_LINES = 20    # lines per second it writes over all sources
DEFAULT_LEASE = 60
# Node ids accounted at most (BaseStation max_nodes, `listen --max-nodes`). A node's
# account is ~3 KB with a short history (measured: 20 readings, a gap, a STATUS; its
# holes and last values grow within their own bounds), so a sender without a key that
# invents a new id per datagram stops at ~50 MB instead of growing without end.
MAX_NODES = 16384
# Last values kept over all nodes (LAST_TOPICS per node): a node's new topic gets none
# once this many are kept (its readings are accounted and delivered as ever).
LAST_TOTAL = 1 << 16


# A node that boots waits for the next ANNOUNCE to learn of us: however long the lease,
# announce at least this often (seconds). An ANNOUNCE is a few dozen bytes.
ANNOUNCE_EVERY_MAX = 5.0

class RateLimitedLog:
    """At most one log line per `interval` seconds per (source, what), the next line
    saying how many were suppressed, and at most `max_lines` per `interval` over all
    keys: a flood from many source addresses (forged ones cost nothing) would otherwise
    log every datagram. Remembers at most LOG_SOURCES keys."""

    def __init__(self, logger: logging.Logger, interval: float = 1.0, clock=time.monotonic,
                 max_lines: int = MAX_LOG_LINES):
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self.max_lines = max_lines
        self._seen: dict[Any, list] = {}   # key -> [last time, suppressed]
        self._window = -interval            # start of the current all-keys window
        self._lines = 0                     # lines logged in it
        self._over = 0                      # lines over max_lines since the last summary
        self._over_since = 0.0

    def __call__(self, level: int, key: Any, msg: str, *args: Any) -> bool:
        now = self.clock()
        entry = self._seen.get(key)
        if entry is not None and now - entry[0] < self.interval:
            entry[1] += 1
            return False
        if now - self._window >= self.interval:
            self._window = now
            self._lines = 0
        if self._lines >= self.max_lines:
            if not self._over:
                self._over_since = now
            self._over += 1
            return False
        self._lines += 1
        if self._over:
            self._summarise(now)
        suppressed = entry[1] if entry is not None else 0
        if entry is None and len(self._seen) >= LOG_SOURCES:
            self._seen.pop(next(iter(self._seen)))
        self._seen[key] = [now, 0]
        if suppressed:
            msg += " (%d similar suppressed)"
            args = args + (suppressed,)
        self.logger.log(level, msg, *args)
        return True

    def tick(self) -> None:
        """Say how many lines the all-sources bound suppressed once its window is over,
        so a flood that stops is reported without waiting for the next line."""
        if self._over:
            now = self.clock()
            if now - self._window >= self.interval:
                self._window = now
                self._lines = 1
                self._summarise(now)

    def flush(self) -> None:
        if self._over:
            self._summarise(self.clock())

    def _summarise(self, now: float) -> None:
        self.logger.log(logging.WARNING, "%d log lines suppressed in %.1f s (over %d per %g s "
                        "from all sources; the counters have every one)", self._over,
                        now - self._over_since, self.max_lines, self.interval)
        self._over = 0


def load_keys(path: str) -> dict[int, auth.Key]:
    """A keys file: JSON {"<node id>": "<hex key>"} -> {node: Key}.

    Raises:
        ValueError: not JSON, a bad node id, or a key that is not 16..64 bytes of hex.
    """
    with open(path, encoding="utf-8") as f:
        try:
            raw = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError("%s: not JSON: %s" % (path, e)) from None
    if not isinstance(raw, dict):
        raise ValueError("%s: expected an object {\"<node id>\": \"<hex key>\"}" % path)
    keys = {}
    for k, v in raw.items():
        try:
            node = int(k)
            if not 0 <= node <= 0xFFFFFFFF:
                raise ValueError
        except ValueError:
            raise ValueError("%s: bad node id %r" % (path, k)) from None
        try:
            keys[node] = auth.Key(bytes.fromhex(v))
        except (ValueError, TypeError) as e:
            raise ValueError("%s: node %s: %s" % (path, k, e)) from None
    return keys


class Subscription:
    """Async iterator of `Reading`s whose topic matches `pattern`.

    Holds at most `maxsize` undelivered readings; when the consumer falls behind, the
    oldest is dropped and counted in `dropped`. `close()` ends the iteration.
    """

    def __init__(self, station: "BaseStation", pattern: str, maxsize: int):
        self.station = station
        self.pattern = pattern
        self.maxsize = maxsize
        self.dropped = 0
        self.delivered = 0
        self._items: deque = deque()
        self._waiter: asyncio.Future | None = None
        self._closed = False
        self._match: dict[str, bool] = {}

    def matches(self, topic: str) -> bool:
        m = self._match.get(topic)
        if m is None:
            m = topic_matches(self.pattern, topic)
            if len(self._match) >= 4096:
                self._match.clear()
            self._match[topic] = m
        return m

    def push(self, reading: Reading) -> None:
        if self._closed:
            return
        if len(self._items) >= self.maxsize:
            self._items.popleft()
            self.dropped += 1
        self._items.append(reading)
        self.delivered += 1
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def get_nowait(self) -> Reading | None:
        return self._items.popleft() if self._items else None

    def __aiter__(self) -> "Subscription":
        return self

    async def __anext__(self) -> Reading:
        while not self._items:
            if self._closed:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()

    async def get(self, timeout: float | None = None) -> Reading:
        """The next reading; raises asyncio.TimeoutError after `timeout` seconds and
        StopAsyncIteration once closed and drained."""
        return await asyncio.wait_for(self.__anext__(), timeout)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.station._unsubscribe(self)
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def __aenter__(self) -> "Subscription":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()


class _Callback:
    def __init__(self, fn: Callable[[Reading], Any], pattern: str):
        self.fn = fn
        self.pattern = pattern
        self._match: dict[str, bool] = {}
        self.station: BaseStation | None = None

    matches = Subscription.matches

    def push(self, reading: Reading) -> None:
        self.fn(reading)

    def close(self) -> None:
        if self.station is not None:
            self.station._unsubscribe(self)


class BaseStation:
    """A Starling base station.

    Args:
        udp: [(host, port)] to receive on ([] for none, e.g. a serial-only station).
        discovery: [(host, port)] to send ANNOUNCE to; [] or announce=False: no announce.
        base_id: our id in ANNOUNCE (default "starling-<hostname>").
        advertise: (host, port) nodes should send to; host "" = the ANNOUNCE's source
            address, port None = the first UDP listener's port.
        filters: topic filters we subscribe to.
        max_rate: events/s per node we accept (0: no cap); nodes shed the rest (counted
            as skipped, not lost).
        lease: seconds a node keeps our subscription; we re-announce every lease/3, at
            most ANNOUNCE_EVERY_MAX apart (a node that boots is subscribed within that).
        keys: {node id: protocol.auth.Key}; when given, only SIGNED messages from those
            nodes are accepted.
        sinks: Sink objects (the station closes them on stop()).
        max_datagram: bigger datagrams are rejected (malformed, reason "oversize").
        rcvbuf: receive buffer asked for per UDP socket, bytes (default 4 MB; the kernel
            reports twice what it grants, capped by net.core.rmem_max unless the process
            may force it). High-rate stations: listener.RCVBUF_LARGE (32 MB) or more.
        reader_process: each UDP socket is read by a separate process (Linux), so
            receiving and decoding run on two cores (base_station/udp_reader.py);
            for high-rate stations.
        max_nodes: node ids accounted at most (default MAX_NODES): without keys anyone
            can send, and each new id costs memory. Messages of further ids are
            rejected (reason "too_many_nodes"); the nodes already seen carry on.
        max_holes_total: gaps (holes) the accounting keeps over all nodes and epochs
            (default 2**20, ~75 MB); past it a stream that adds one forgets its older
            half (base_station/accounting.py, "Bounds").
        clock: Unix time in s for arrivals (default time.time; tests inject one).
        monotonic: the clock for intervals that must not jump when the wall clock is
            stepped (whether a node's epochs started again); default time.monotonic,
            or `clock` when one is injected.
    """

    def __init__(self, *, udp: Iterable[tuple[str, int]] = (("0.0.0.0", codes.UDP_PORT),),
                 discovery: Iterable[tuple[str, int]] = (("255.255.255.255", codes.DISCOVERY_PORT),),
                 announce: bool = True, base_id: str | None = None,
                 advertise: tuple[str, int | None] = ("", None), filters: Iterable[str] = ("#",),
                 max_rate: int = 0, lease: int = DEFAULT_LEASE,
                 keys: dict[int, auth.Key] | None = None, sinks: Iterable[Sink] = (),
                 max_datagram: int = codes.MAX_DATAGRAM, max_holes: int = MAX_HOLES,
                 keep_epochs: int = KEEP_EPOCHS, rcvbuf: int = RCVBUF,
                 reader_process: bool = False, max_nodes: int = MAX_NODES,
                 max_holes_total: int = MAX_HOLES_TOTAL, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] | None = None):
        self.udp = list(udp)
        self.discovery = list(discovery)
        self.announce_enabled = announce and bool(self.discovery)
        self.base_id = (base_id or "starling-%s" % socket.gethostname())[:64]
        # ANNOUNCE `instance`: this process's, so that nodes holding a subscription of a
        # predecessor with the same base id (one that crashed) start it afresh
        self.instance = int.from_bytes(os.urandom(4), "big") or 1
        self.advertise = advertise
        self.filters = list(filters)
        for f in self.filters:
            if not valid_filter(f):
                raise ValueError("invalid topic filter %r" % (f,))
        if not 1 <= len(self.filters) <= 16:
            raise ValueError("1..16 topic filters, got %d" % len(self.filters))
        if not 1 <= lease <= 86400:
            raise ValueError("lease is 1..86400 s, got %r" % (lease,))
        self.max_rate = max_rate
        self.lease = lease
        self.announce_every = min(self.lease / 3, ANNOUNCE_EVERY_MAX)
        self.keys = keys
        self.sinks: list[Sink] = list(sinks)
        self.sinks_gone: list[Sink] = []      # readers gone (broken pipe): no longer written
        self.on_sink_gone: Callable[[Sink], Any] | None = None
        self.max_datagram = max_datagram
        self.max_holes = max_holes
        self.keep_epochs = keep_epochs
        if type(rcvbuf) is not int or rcvbuf <= 0:
            raise ValueError("rcvbuf must be a positive number of bytes, got %r" % (rcvbuf,))
        self.rcvbuf = rcvbuf
        self.reader_process = reader_process
        if type(max_nodes) is not int or max_nodes < 1:
            raise ValueError("max_nodes must be at least 1, got %r" % (max_nodes,))
        self.max_nodes = max_nodes
        self.hole_budget = HoleBudget(max_holes_total)
        self._last_total = 0             # topics with a last value, over all nodes
        self.clock = clock
        # intervals that must not jump with the wall clock (an NTP step at a base's boot):
        # when a node's epochs started again. With an injected `clock`, that one.
        self.monotonic = monotonic or (time.monotonic if clock is time.time else clock)
        self.nodes: dict[int, NodeAccount] = {}
        self.listeners: list[UdpListener] = []
        self.announcer: Announcer | None = None
        self.heads: list[Any] = []   # serial chain heads (base_station.serial_head)
        self.counters: dict[str, int] = dict.fromkeys(
            ("datagrams", "bytes", "messages", "readings", "malformed", "rejected",
             "unknown_kind", "extra_fields", "ignored", "internal_errors", "sink_errors",
             "callback_errors", "predecessor_status", "epoch_restarts", "base_id_shared"), 0)
        self.malformed_reasons: dict[str, int] = {}
        self.rejected_reasons: dict[str, int] = {}
        self._windows: dict[int, auth.ReplayWindow] = {}
        self._subs: list[Any] = []
        self._log = RateLimitedLog(log)
        self._tick_task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.started = self.clock()
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Bind the listeners, start announcing and the sink ticker.

        Raises:
            OSError: a UDP address cannot be bound (nothing is left running).
        """
        self._loop = asyncio.get_running_loop()
        try:
            for host, port in self.udp:
                lst = UdpListener(self.ingest, host, port, rcvbuf=self.rcvbuf,
                                  reader_process=self.reader_process)
                await lst.start()
                self.listeners.append(lst)
        except BaseException:
            for lst in self.listeners:
                lst.close()
            self.listeners.clear()
            raise
        for head in self.heads:
            head.start()
        if self.announce_enabled:
            self.announcer = Announcer(self.discovery, self.make_announce, self.announce_every)
            self.announcer.start()
        self._tick_task = self._loop.create_task(self._ticker(), name="starling-tick")

    async def stop(self) -> None:
        """Say goodbye to the nodes, close the listeners, flush and close the sinks."""
        if self._closed:
            return
        self._closed = True
        if self._tick_task is not None:
            self._tick_task.cancel()
            try:
                await self._tick_task
            except asyncio.CancelledError:
                pass
        if self.announcer is not None:
            await self.announcer.stop(goodbye=True)
        for lst in self.listeners:
            lst.close()
        for head in self.heads:
            await asyncio.get_running_loop().run_in_executor(None, head.stop)
        await asyncio.sleep(0)   # run the ingests the heads queued before they stopped
        for sub in list(self._subs):
            sub.close()
        self._log.flush()
        loop = asyncio.get_running_loop()
        for sink in self.sinks:
            try:
                await loop.run_in_executor(None, sink.close)
            except Exception as e:
                self.counters["sink_errors"] += 1
                log.error("closing sink %s: %s", sink.name, e)

    async def __aenter__(self) -> "BaseStation":
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            self.tick()

    def tick(self) -> None:
        self._log.tick()
        for sink in self.sinks:
            try:
                sink.tick()
            except Exception as e:
                self._sink_failed(sink, e)

    def flush(self) -> None:
        """Write everything the sinks hold (blocking; for tests and shutdown)."""
        for sink in self.sinks:
            sink.flush()

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The bound UDP addresses (ports resolved when 0 was asked for)."""
        return [lst.address for lst in self.listeners]

    def make_announce(self, lease: int | None = None) -> Announce:
        host, port = self.advertise
        if port is None:
            port = self.listeners[0].address[1] if self.listeners else codes.UDP_PORT
        return Announce(self.base_id, host, port, list(self.filters), self.max_rate,
                        self.lease if lease is None else lease, int(time.time() * 1000),
                        self.instance)

    def add_sink(self, sink: Sink) -> None:
        self.sinks.append(sink)

    def add_head(self, head: Any) -> None:
        """Attach a serial chain head (base_station.serial_head.SerialHead): started by
        start() (or now, if the station runs already), stopped by stop(), reported in
        summary()["serial"][head.name]."""
        self.heads.append(head)
        if self._loop is not None and not self._closed:
            head.start()

    # -- subscribers -----------------------------------------------------------------------
    def subscribe(self, pattern: str = "#", maxsize: int = 100_000) -> Subscription:
        """An async iterator of the new readings whose topic matches `pattern`:

            async for r in station.subscribe("sensors/+/temp"): ...

        Raises:
            ValueError: `pattern` is not a valid topic filter.
        """
        if not valid_filter(pattern):
            raise ValueError("invalid topic filter %r" % (pattern,))
        sub = Subscription(self, pattern, maxsize)
        self._subs.append(sub)
        return sub

    def on_reading(self, callback: Callable[[Reading], Any], pattern: str = "#") -> Callable[[], None]:
        """Call `callback(reading)` for every new reading matching `pattern`, on the loop
        thread, synchronously (keep it short). An exception from it is counted
        (`callback_errors`) and logged. Returns a function that unregisters it."""
        if not valid_filter(pattern):
            raise ValueError("invalid topic filter %r" % (pattern,))
        cb = _Callback(callback, pattern)
        cb.station = self
        self._subs.append(cb)
        return cb.close

    def _unsubscribe(self, sub: Any) -> None:
        try:
            self._subs.remove(sub)
        except ValueError:
            pass

    # -- input -----------------------------------------------------------------------------
    def ingest_threadsafe(self, data: bytes, source: Any) -> None:
        """ingest() from another thread (e.g. a serial reader thread)."""
        assert self._loop is not None, "station not started"
        self._loop.call_soon_threadsafe(self.ingest, data, source)

    def ingest_many_threadsafe(self, datas: list[bytes], source: Any) -> None:
        """ingest() each of `datas`, in order, from another thread, with one wake-up of
        the loop (a serial head hands over the messages of a DATA frame this way).
        Raises RuntimeError when the loop is closed."""
        assert self._loop is not None, "station not started"
        self._loop.call_soon_threadsafe(self._ingest_many, datas, source)

    def _ingest_many(self, datas: list[bytes], source: Any) -> None:
        arrival = self.clock()
        for data in datas:
            self.ingest(data, source, arrival)

    def ingest(self, data: bytes, source: Any = None, arrival: float | None = None) -> None:
        """One datagram (or serial frame payload) from `source`. Never raises."""
        c = self.counters
        c["datagrams"] += 1
        c["bytes"] += len(data)
        if len(data) > self.max_datagram:
            self._malformed("oversize", source, "%d bytes > %d" % (len(data), self.max_datagram))
            return
        ev = None
        try:
            values = _loads(data)
            if self.keys is None and type(values) is list and values:
                h = values[0]
                if type(h) is int and h == _HEAD_EVENT:
                    # single-event datagrams: validated fields, no message object
                    ev = _event_fields(values)
            if ev is None:
                msg = _decode_fields(values)
        except wire.DecodeError as e:
            self._malformed(e.reason, source, str(e))
            return
        try:
            if arrival is None:
                arrival = self.clock()
            if ev is not None:
                c["messages"] += 1
                if ev[7]:
                    c["extra_fields"] += 1
                self._reading(ev[0], ev[1], ev[2], ev[3], ev[4], ev[5], ev[6], source, arrival)
            elif type(msg) is _FastBatch and self.keys is None:
                # the batched hot path, without the generic dispatch
                c["messages"] += 1
                if msg.extra:
                    c["extra_fields"] += 1
                self._batch(msg, source, arrival)
            else:
                self._dispatch(msg, source, arrival, False)
        except Exception as e:  # a bug must not stop the receive loop
            c["internal_errors"] += 1
            self._log(logging.ERROR, ("internal", type(e)), "error handling a message from %s: %r",
                      source, e)

    def handle(self, msg: Message, source: Any = None, arrival: float | None = None,
               authenticated: bool = False) -> None:
        """A message decoded elsewhere (e.g. by a serial chain head). `authenticated`
        True: the caller already verified it, skip the key check. Never raises."""
        try:
            self._dispatch(msg, source, self.clock() if arrival is None else arrival, authenticated)
        except Exception as e:
            self.counters["internal_errors"] += 1
            self._log(logging.ERROR, ("internal", type(e)), "error handling a message from %s: %r",
                      source, e)

    def _malformed(self, reason: str, source: Any, detail: str) -> None:
        self.counters["malformed"] += 1
        self.malformed_reasons[reason] = self.malformed_reasons.get(reason, 0) + 1
        self._log(logging.WARNING, ("malformed", _src_key(source)), "malformed datagram from %s: %s",
                  _fmt_src(source), detail)

    def _reject(self, reason: str, source: Any, detail: str) -> None:
        self.counters["rejected"] += 1
        self.rejected_reasons[reason] = self.rejected_reasons.get(reason, 0) + 1
        self._log(logging.WARNING, ("rejected", _src_key(source)), "rejected message from %s: %s",
                  _fmt_src(source), detail)

    def _dispatch(self, msg: Any, source: Any, arrival: float, trusted: bool) -> None:
        self.counters["messages"] += 1
        if msg.extra:
            self.counters["extra_fields"] += 1
        kind = type(msg)
        if kind is Signed:
            self._signed(msg, source, arrival)
        elif self.keys is not None and not trusted and kind is not Unknown:
            self._reject("unsigned", source, "unsigned %s (keys are configured)" % _kind(msg))
        else:
            self._route(msg, kind, source, arrival)

    def _route(self, msg: Any, kind: type, source: Any, arrival: float) -> None:
        if kind is wire.FastBatch or kind is Batch:
            self._batch(msg, source, arrival)
        elif kind is Event:
            self._event(msg, source, arrival)
        elif kind is Status:
            self._status(msg, source, arrival)
        elif kind is DeadLetter:
            acct = self._account(msg.node, source, arrival)
            if acct is not None:
                acct.dead_letter += msg.count
        elif kind is Unknown:
            self.counters["unknown_kind"] += 1
        else:
            # ANNOUNCE from another base, serial-link kinds, SIGNED inside SIGNED:
            # not for this path
            self.counters["ignored"] += 1

    def _signed(self, sm: Signed, source: Any, arrival: float) -> None:
        keys = self.keys
        if not keys:
            self._reject("no_keys", source, "SIGNED message but no keys are configured")
            return
        if sm.key_id not in keys:
            self._reject("unknown_key", source, "no key for node %d" % sm.key_id)
            return
        try:
            inner = auth.verify(sm, keys)
        except auth.AuthError as e:
            self._reject("bad_tag", source, str(e))
            return
        if len(inner) > self.max_datagram:
            self._malformed("oversize", source, "signed payload of %d bytes" % len(inner))
            return
        try:
            msg: Any = wire.decode(inner)
        except wire.DecodeError as e:
            self._malformed(e.reason, source, "inside SIGNED: %s" % e)
            return
        kind = type(msg)
        if kind is Unknown:
            self.counters["unknown_kind"] += 1
            return
        node = getattr(msg, "node", None)
        if node != sm.key_id:
            self._reject("node_mismatch", source, "%s of node %r signed with the key of node %d"
                         % (_kind(msg), node, sm.key_id))
            return
        window = self._windows.get(node)
        if window is None:
            window = self._windows[node] = auth.ReplayWindow()
        if kind is Event:
            if not window.check(msg.epoch, msg.seq):
                self._reject("replay", source, "replayed EVENT node %d epoch %d seq %d"
                             % (node, msg.epoch, msg.seq))
                return
            window.commit(msg.epoch, msg.seq)
        elif kind is Batch or kind is wire.FastBatch:
            n = len(msg.ts) if kind is wire.FastBatch else len(msg.readings)
            if not _fresh_range(window, msg.epoch, msg.seq0, n):
                self._reject("replay", source, "replayed BATCH node %d epoch %d seq %d..%d"
                             % (node, msg.epoch, msg.seq0, msg.seq0 + n - 1))
                return
            for seq in range(msg.seq0, msg.seq0 + n):
                window.commit(msg.epoch, seq)
        elif kind is Status and msg.epoch < window.epoch:
            self._reject("replay", source, "STATUS of node %d from an old epoch %d" % (node, msg.epoch))
            return
        if msg.extra:
            self.counters["extra_fields"] += 1
        self._route(msg, kind, source, arrival)

    # -- accounting and delivery -------------------------------------------------------------
    def _account(self, node: int, source: Any, arrival: float) -> NodeAccount | None:
        # the node's account, created on its first message; None (rejected) past max_nodes
        acct = self.nodes.get(node)
        if acct is None:
            if len(self.nodes) >= self.max_nodes:
                self._reject("too_many_nodes", source, "node %d: already accounting for %d "
                             "nodes (max_nodes)" % (node, self.max_nodes))
                return None
            acct = self.nodes[node] = NodeAccount(node, self.max_holes, self.keep_epochs,
                                                  self.hole_budget)
        acct.last_seen = arrival
        acct.source = source
        return acct

    def _event(self, ev: Event, source: Any, arrival: float) -> None:
        self._reading(ev.node, ev.epoch, ev.seq, ev.t, ev.topic, ev.value, ev.skip, source,
                      arrival)

    def _reading(self, node: int, epoch: int, seq: int, t: int, topic: str, value: Any,
                 skip: int, source: Any, arrival: float) -> None:
        """One EVENT's reading: account it and, if new, deliver it without building a
        Block (sinks get write_event, subscribers one Reading)."""
        acct = self.nodes.get(node)
        if acct is None:
            acct = self._account(node, source, arrival)
            if acct is None:
                return
        else:
            acct.last_seen = arrival
            acct.source = source
        s = acct.current
        if s is None or s.epoch != epoch:
            s = acct.stream(epoch, self.monotonic())
            if s is None:
                return
        if s.add(seq, 1, skip) is not ALL:
            return                                   # a duplicate, or too late
        if s.next == seq + 1:
            last = acct.last
            if topic in last:
                last[topic] = value
            elif len(last) >= LAST_TOPICS:
                last.pop(next(iter(last)))
                last[topic] = value
            elif self._last_total < LAST_TOTAL:
                self._last_total += 1
                last[topic] = value
        acct.count_rate(1, arrival)
        self.counters["readings"] += 1
        tb = s.time_base
        if tb is not None:        # Latency.add(), inlined: the single-event hot path
            lat = acct.latency
            ms = arrival * 1000.0 - tb - t
            i = lat.n
            lat.ring[i & 63] = ms
            lat.n = i + 1
            if ms > lat.max:
                lat.max = ms
        for sink in self.sinks:
            try:
                sink.write_event(node, epoch, seq, t, topic, value, tb, arrival)
            except Exception as e:
                self._sink_failed(sink, e)
        if self._subs:
            self._push(Reading(node, epoch, seq, topic, value, t,
                               None if tb is None else (tb + t) / 1000.0, arrival))

    def _batch(self, b: Batch, source: Any, arrival: float) -> None:
        acct = self.nodes.get(b.node)
        if acct is None:
            acct = self._account(b.node, source, arrival)
            if acct is None:
                return
        else:
            acct.last_seen = arrival
            acct.source = source
        s = acct.current
        if s is None or s.epoch != b.epoch:
            s = acct.stream(b.epoch, self.monotonic())
            if s is None:
                return
        if type(b) is _FastBatch:
            ts, topics, values = b.ts, b.topics, b.values
        else:
            rs = b.readings
            ts, topics, values = [r[0] for r in rs], [r[1] for r in rs], [r[2] for r in rs]
        n = len(ts)
        seq0 = b.seq0
        got = s.add(seq0, n, b.skip)
        if got and s.time_base is not None:           # something new in it
            acct.latency.add(arrival * 1000.0 - s.time_base - ts[-1])
        if got is ALL:
            if s.next == seq0 + n:
                last = acct.last
                before = len(last)
                last.update(zip(topics, values))
                while len(last) > LAST_TOPICS:
                    last.pop(next(iter(last)))
                grown = len(last) - before
                if grown > 0:
                    over = self._last_total + grown - LAST_TOTAL
                    for _ in range(over):        # the newest topics: no room station-wide
                        last.popitem()
                    self._last_total += grown - max(0, over)
            acct.count_rate(n, arrival)
            self._deliver(Block(b.node, b.epoch, seq0, ts, topics, values, s.time_base, arrival))
            return
        for a, e in got:
            i, j = a - seq0, e - seq0
            acct.count_rate(j - i, arrival)
            self._deliver(Block(b.node, b.epoch, a, ts[i:j], topics[i:j], values[i:j],
                                s.time_base, arrival))

    def _status(self, st: Status, source: Any, arrival: float) -> None:
        acct = self._account(st.node, source, arrival)
        if acct is None:
            return
        s: EpochStream | None
        mono = self.monotonic()
        if acct.epochs_started_again(st.epoch, st.uptime, mono):
            old = acct.current.epoch if acct.current is not None else None
            s = acct.restart_epochs(st.epoch, mono)
            self.counters["epoch_restarts"] += 1
            self._log(logging.WARNING, ("epoch_restart", st.node),
                      "node %d booted again with epoch %d, not above the epoch %s it had: its "
                      "epochs started again (its flash erased, another board with its node id, "
                      "or its epoch file could not be written); "
                      "taken as a new boot. A database that holds its earlier epoch %d keeps "
                      "those rows and ignores new readings with the same (node, epoch, seq); "
                      "`starling flash --epoch-from DB` carries a board's epoch over",
                      st.node, st.epoch, old, st.epoch)
        else:
            s = acct.stream(st.epoch, mono, True)
        if s is None:
            return
        if st.instance is None or st.instance == self.instance:
            s.add_status(st.last_seq, st.skip, st.since)
        else:
            # about the subscription a predecessor with our base id made (it crashed;
            # the node has not seen our ANNOUNCE yet): its since would have us expect
            # what the node sent to that process. Its time base and counters still hold.
            self.counters["predecessor_status"] += 1
        s.time_base = st.time_base
        s.status = st
        if s is acct.current:
            acct.status = st
            self._resubscribed(acct, st)
        for sink in self.sinks:
            try:
                sink.write_status(st.node, st, arrival)
            except Exception as e:
                self._sink_failed(sink, e)

    def _resubscribed(self, acct: NodeAccount, st: Status) -> None:
        # The node's count of subscriptions it started afresh because their base id
        # announced another instance. One is a base that restarted; two or more between
        # its STATUS messages to us, again and again, are two stations announcing with
        # one base id (our entry on the node flips between them, its address and
        # instance with it, so each station sees only its own instance).
        n = st.counters.get(codes.CTR_RESUBSCRIBED)
        if n is None:
            return
        prev = acct.resubscribed
        acct.resubscribed = (st.epoch, n)
        if prev is not None and prev[0] == st.epoch and n - prev[1] >= 2:
            self.counters["base_id_shared"] += 1
            self._log(logging.WARNING, ("base_id_shared", st.node),
                      "node %d started subscriptions afresh %d times since its last STATUS "
                      "to us: another station is announcing with our base id %r? Each then "
                      "gets part of the stream (counted skipped); give each its own --base-id",
                      st.node, n - prev[1], self.base_id)

    def _deliver(self, block: Block) -> None:
        self.counters["readings"] += len(block.ts)
        for sink in self.sinks:
            try:
                sink.write_block(block)
            except Exception as e:
                self._sink_failed(sink, e)
        if self._subs:
            for r in block.records():
                self._push(r)

    def _sink_failed(self, sink: Sink, e: Exception) -> None:
        self.counters["sink_errors"] += 1
        if isinstance(e, BrokenPipeError) and sink.writes_stream and sink in self.sinks:
            self._sink_gone(sink)
            return
        self._log(logging.ERROR, ("sink", sink.name), "sink %s: %s", sink.name, e)

    def _sink_gone(self, sink: Sink) -> None:
        # Its reader has gone (`listen --jsonl - | head`, a FIFO's reader closed): nothing
        # written there can arrive any more, so the station stops writing to it, says so
        # once, and tells on_sink_gone (the CLI ends a run whose stdout has gone)
        self.sinks = [s for s in self.sinks if s is not sink]     # a new list: loops go on
        self.sinks_gone.append(sink)
        try:
            sink.abandon()
        except Exception:
            pass
        log.warning("sink %s: its reader has gone (broken pipe): no more output there%s",
                    sink.name, " (stdout)" if sink.to_stdout else "")
        if self.on_sink_gone is not None:
            self.on_sink_gone(sink)

    def _push(self, r: Reading) -> None:
        """One reading to every subscription whose filter matches its topic."""
        for sub in self._subs:
            if sub.matches(r.topic):
                try:
                    sub.push(r)
                except Exception as e:
                    self.counters["callback_errors"] += 1
                    self._log(logging.ERROR, ("callback", id(sub)),
                              "reading callback failed: %r", e)

    # -- reporting -----------------------------------------------------------------------------
    @property
    def kernel_drops(self) -> int:
        return sum(lst.kernel_drops for lst in self.listeners)

    def node_summary(self, acct: NodeAccount, now: float | None = None) -> dict:
        totals = acct.totals()
        cur = acct.current
        st = acct.status
        out: dict[str, Any] = dict(totals)
        out.update({
            "reboots": acct.reboots,
            "stale": acct.stale,
            "dead_letter": acct.dead_letter,
            "epoch": cur.epoch if cur is not None else None,
            "next_seq": cur.next if cur is not None else None,
            "rate": round(acct.rate(self.clock() if now is None else now), 1),
            "last_seen": acct.last_seen,
            "source": _fmt_src(acct.source),
            "last": dict(acct.last),
            "latency_ms": acct.latency.summary(),
        })
        if st is not None:
            from protocol.codes import COUNTER_NAMES
            out["status"] = {"uptime": st.uptime, "firmware": st.firmware, "caps": st.caps,
                             "time_base": st.time_base, "hop": st.hop,
                             "counters": {COUNTER_NAMES.get(k, str(k)): v
                                          for k, v in st.counters.items()}}
        return out

    def summary(self) -> dict:
        """Everything counted so far, JSON-ready (except bytes values: see summary_json).

        Returns {"nodes": {"<id>": {received, lost, duplicates, out_of_order, reboots,
        skipped, too_late, stale, dead_letter, epoch, next_seq, rate, last_seen, source,
        last, status}}, "malformed", "rejected", "unknown_kind", "kernel_drops", ...}.
        """
        now = self.clock()
        out: dict[str, Any] = {"nodes": {str(n): self.node_summary(a, now)
                                         for n, a in sorted(self.nodes.items())}}
        out.update(self.counters)
        out["kernel_drops"] = self.kernel_drops
        out["malformed_reasons"] = dict(self.malformed_reasons)
        out["rejected_reasons"] = dict(self.rejected_reasons)
        out["announces_sent"] = self.announcer.sent if self.announcer else 0
        out["subscriber_drops"] = sum(getattr(s, "dropped", 0) for s in self._subs)
        out["sinks"] = {s.name: s.stats() for s in self.sinks}
        for s in self.sinks_gone:
            out["sinks"][s.name] = dict(s.stats(), gone=True)
        out["uptime"] = round(self.clock() - self.started, 3)
        out["listening"] = ["%s:%d" % a for a in self.addresses]
        out["rcvbuf"] = {"%s:%d" % lst.address: lst.rcvbuf_actual for lst in self.listeners}
        out["reader"] = {"%s:%d" % lst.address: lst.reader for lst in self.listeners}
        if self.heads:
            out["serial"] = {h.name: h.stats() for h in self.heads}
        return out

    def summary_json(self, **kw: Any) -> str:
        return json.dumps(self.summary(), default=_json_default, **kw)


def _kind(msg: Message) -> str:
    return KIND_NAMES.get(msg.kind, "kind %d" % msg.kind)


def _fresh_range(window: auth.ReplayWindow, epoch: int, first: int, count: int) -> bool:
    if epoch > window.epoch or (epoch == window.epoch and first > window.highest):
        return True
    return window.check_range(epoch, first, count)


def _src_key(source: Any) -> Any:
    if isinstance(source, tuple) and source:
        return source[0]
    return source


def _fmt_src(source: Any) -> str | None:
    if source is None:
        return None
    if isinstance(source, tuple) and len(source) >= 2:
        return "%s:%s" % (source[0], source[1])
    return str(source)

