"""The head of a serial chain: the base station's end of the UART link to node 1.

Theory of operation
-------------------
A `SerialHead` owns one serial port (anything `serial.serial_for_url` opens: a device
such as /dev/ttyUSB0, a pty or a symlink to one, or a pyserial URL like ``loop://``)
and one `protocol.link.Link(node=0, hop=0)`: the base is hop 0, so node 1 learns
hop 1 from the base's HELLO. One daemon thread runs the link's I/O loop
(protocol/link.py, "the caller's loop"):

    read what the port has (at most READ_MAX bytes, waiting at most TICK seconds)
      -> FrameDecoder.feed() -> Link.feed(payload, now_ms) for each frame
    Link.poll_received() -> hand every message to the station (and the callbacks)
    Link.poll_acked() / poll_dead() -> count what happened to our control messages
    Link.poll_transmit(now_ms) -> encode_frame() each payload -> one port write

Messages are handed to the station *before* the ACK that covers them is built: the
ACK ends node 1's responsibility, so from then on they are in the station's event
loop queue (`BaseStation.ingest_many_threadsafe`) and, a moment later, in the sinks.
A DATA frame may carry several messages; poll_received() already splits them, so the
station sees one message per `ingest()`, with source ``"serial:<port>"``.

Downstream the head sends control messages through the same link: the station's
ANNOUNCE when the link comes up and every `announce_every` seconds while it is up
(nodes learn wall-clock time from it; lease and filters mean nothing on a serial
chain), and ENUMERATE on request (`enumerate()`): every node forwards it down the
chain and answers with a STATUS carrying its hop. Control messages wait in a small
bounded queue (CONTROL_QUEUE; the oldest is dropped and counted when it overflows).

What can go wrong, and what the head does (it never raises into the station):

* Bad bytes on the line: bad CRC, bad COBS, oversize pieces are counted by the frame
  decoder and added to the link's `crc_errors` (STATUS counter CTR_LINK_CRC on a
  node); undecodable link frames are counted by the link (`malformed`); messages the
  station cannot decode are counted by the station (`malformed`). Nothing is fatal.
* Our own frames coming back (TX jumpered to RX, or a port echoing): a HELLO carrying
  our own session is counted `echoes`, logged (rate-limited) and not fed to the
  link, which would otherwise pair with itself. The echoed ACKs and DATA are then
  harmless: the link is not established, so it ignores them.
* Another base station on the other end (a HELLO from node 0): logged once; the link
  pairs anyway.
* The port disappears (USB unplugged, pty closed, read/write errors): the port is
  closed, the decoder forgets its partial frame, and the head tries to reopen it
  every `reopen_interval` seconds, logging at most one line per LOG_INTERVAL. The
  Link object is kept and its timers keep running (its frames are discarded while the
  port is closed, as a cut cable would lose them), so when the port comes back and
  node 1 did not reboot, the link session survives: no duplicates, no loss. If node 1
  did reboot, the link resyncs and the station deduplicates by (node, epoch, seq).
* A write that blocks longer than `write_timeout` (a port with flow control held off)
  is counted `write_timeouts`; the frames are lost to the link, which retransmits.

Bounds: one read takes at most READ_MAX bytes; the decoder holds at most one frame
(MAX_FRAME); the link holds `window` frames each way and its queue bounds; the control
queue CONTROL_QUEUE messages. The station's loop queue is the only unbounded buffer:
at 115200 Bd a chain delivers at most ~600 twenty-byte events per second, far below
what the station ingests.

Timers: the thread waits at most TICK (20 ms) for bytes, so link timers fire within
TICK of their time (the link's smallest timer is 100 ms); a control message queued
from another thread wakes it at once (pyserial's cancel_read).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from typing import Any, Callable, Iterable

import serial

from protocol import codes
from protocol.framing import FrameDecoder, encode_frame
from protocol.link import Link
from protocol.messages import Enumerate, Hello, decode as decode_message

log = logging.getLogger("starling.serial")

DEFAULT_BAUD = 115200
TICK = 0.02              # seconds: longest wait for bytes, so timer resolution
READ_MAX = 4096          # bytes taken from the port per read
CONTROL_QUEUE = 16       # control messages waiting for the link (oldest dropped beyond)
LOG_INTERVAL = 10.0      # seconds between repeated "cannot open" / "echo" log lines
REOPEN_INTERVAL = 1.0    # seconds between attempts to reopen a lost port
_HELLO_PREFIX = b"\x85\x07"  # array(5), head 7: a HELLO frame (protocol/link.py)


def parse_port(text: str) -> tuple[str, int]:
    """``"PORT[@BAUD]"`` -> (port, baud). Only an all-digit suffix after the last ``@``
    is a baud rate, so URLs and paths containing ``@`` stay whole.

    Raises:
        ValueError: an empty port, or a baud rate of 0.
    """
    text = text.strip()
    port, baud = text, DEFAULT_BAUD
    at = text.rfind("@")
    if at >= 0 and text[at + 1:].isdigit():
        port, baud = text[:at], int(text[at + 1:])
    if not port:
        raise ValueError("empty serial port in %r" % text)
    if baud <= 0:
        raise ValueError("baud rate must be > 0 in %r" % text)
    return port, baud


def open_hint(error: str | None, port: str | None = None) -> str:
    """What to do about a port that would not open, from pyserial's message and the
    port's path ("" if nothing useful can be said)."""
    e = error or ""
    if port and os.path.islink(port) and not os.path.exists(port):
        return ("%s is a symlink to %s, which does not exist: whatever made the link (a "
                "simulator, `python -m sim.wire`) is not running; starting it again "
                "replaces the link" % (port, os.readlink(port)))
    if "exclusively lock" in e or "Errno 16" in e:
        return ("the port is busy: another program holds it (a running `starling listen "
                "--serial` or `starling chain`, a serial monitor, mpremote); stop it first")
    if "Errno 13" in e or "Permission denied" in e:
        return "no permission: add yourself to the port's group (dialout; uucp on Arch)"
    if "Errno 2" in e or "No such file" in e:
        return "no such port (not plugged in, or the simulator is not running yet)"
    return ""


class _Limited:
    """At most one log line per `interval` seconds per key, with a suppressed count."""

    def __init__(self, interval: float):
        self.interval = interval
        self._seen: dict[str, list] = {}

    def __call__(self, level: int, key: str, msg: str, *args: Any) -> None:
        now = time.monotonic()
        e = self._seen.get(key)
        if e is not None and now - e[0] < self.interval:
            e[1] += 1
            return
        if e is not None and e[1]:
            msg += " (%d similar suppressed)"
            args = args + (e[1],)
        self._seen[key] = [now, 0]
        log.log(level, msg, *args)


class SerialHead:
    """The base station's end of a serial chain. See the module docstring.

    Args:
        station: a BaseStation to deliver messages to (started before this head, or
            through `station.add_head()`, which starts and stops it), or None (e.g.
            `starling chain`: messages go to `on_message` callbacks only).
        port: device path, symlink or pyserial URL (``loop://``, ``rfc2217://...``).
        baud: line rate (ignored by ptys and loop://).
        window: link window (frames in flight and frames buffered, 1..64). Default 64:
            node 1 sends no more than its own window (8 full frames, more small ones on
            a lossy line), so a large one here lets the node's decide.
        announce_every: seconds between ANNOUNCEs while the link is up (one is sent
            when it comes up); None: never announce. Default: the station's
            announce_every (lease/3, at most 5 s), or never without a station.
        reopen_interval: seconds between attempts to (re)open the port.
        write_timeout: seconds a port write may block.
        on_message: callable(message_bytes) called on the head's thread for every
            message received (before the station gets it); exceptions are counted.
        link_options: more keyword arguments for protocol.link.Link (rto_ms, ...).
        name: the key of this head in station.summary()["serial"] (default: port).
    """

    def __init__(self, station: Any, port: str, baud: int = DEFAULT_BAUD, window: int = 64, *,
                 announce_every: float | None | str = "auto", reopen_interval: float = REOPEN_INTERVAL,
                 write_timeout: float = 2.0, on_message: Callable[[bytes], Any] | None = None,
                 link_options: dict | None = None, name: str | None = None):
        self.station = station
        self.port = port
        self.baud = baud
        self.name = name or port
        self.source = "serial:%s" % port
        if isinstance(announce_every, str):   # "auto"
            announce_every = station.announce_every if station is not None else None
        self.announce_every: float | None = announce_every
        self.reopen_interval = reopen_interval
        self.write_timeout = write_timeout
        self.link = Link(node=0, hop=0, window=window, **(link_options or {}))
        self.decoder = FrameDecoder(codes.MAX_FRAME)
        self._callbacks: list[Callable[[bytes], Any]] = [on_message] if on_message else []
        self._ser: Any = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._up_event = threading.Event()
        self._lock = threading.Lock()
        self._control: deque = deque()
        self._was_up = False
        self._next_announce: float | None = None
        self._request = 0
        self._bad_seen = 0
        self._log = _Limited(LOG_INTERVAL)
        self._warned_base = False
        self.last_error: str | None = None
        self.counters: dict[str, int] = dict.fromkeys(
            ("opens", "open_errors", "disconnects", "bytes_in", "bytes_out", "frames_in",
             "frames_out", "echoes", "write_timeouts", "messages_in", "callback_errors",
             "internal_errors", "ups", "announces_sent", "enumerates_sent", "control_acked",
             "control_dead", "control_dropped"), 0)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start the I/O thread (it opens the port, retrying until it can). Idempotent."""
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="starling-serial-%s" % self.port,
                                            daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread and close the port (blocks up to `timeout` seconds)."""
        self._stopping.set()
        self._wake()
        t = self._thread
        if t is not None:
            t.join(timeout)
            self._thread = None
        self._close_port()

    def __enter__(self) -> "SerialHead":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- API -----------------------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self._ser is not None

    @property
    def up(self) -> bool:
        """The port is open and the link to node 1 is established and alive."""
        return self._up_event.is_set()

    def wait_up(self, timeout: float | None = None) -> bool:
        """Block until the link is up; False after `timeout` seconds."""
        return self._up_event.wait(timeout)

    def add_callback(self, fn: Callable[[bytes], Any]) -> None:
        """Call fn(message_bytes) on the head's thread for every message received."""
        self._callbacks.append(fn)

    def send(self, message: bytes, what: str = "control") -> None:
        """Queue one encoded message for the chain (thread-safe). It is sent once the
        link is up; with more than CONTROL_QUEUE waiting, the oldest is dropped."""
        with self._lock:
            if len(self._control) >= CONTROL_QUEUE:
                self._control.popleft()
                self.counters["control_dropped"] += 1
            self._control.append((bytes(message), what))
        self._wake()

    def enumerate(self) -> int:
        """Send ENUMERATE down the chain; returns its request id. Every node answers
        with a STATUS carrying its hop; they reach the station and the callbacks."""
        with self._lock:
            self._request = (self._request + 1) & 0xFFFFFFFF or 1
            req = self._request
        self.send(Enumerate(req).encode(), "enumerate")
        return req

    def stats(self) -> dict:
        """Counters of the port, the framing and the link, JSON-ready: `open`, `up`,
        `stopped` (stop() was called), `window` (the link's), the peer's node and hop,
        `last_error` (of the last failed open or lost port; cleared by a good open),
        the head's counters, the frame decoder's and the Link's stats() under "link"
        (base_station/view.py shows them)."""
        out: dict[str, Any] = {"port": self.port, "baud": self.baud, "open": self.is_open,
                               "up": self.up, "stopped": self._stopping.is_set(),
                               "window": self.link.window,
                               "peer_node": self.link.peer_node,
                               "peer_hop": self.link.peer_hop, "last_error": self.last_error}
        out.update(self.counters)
        d = self.decoder
        out.update({"crc_errors": d.crc_errors, "malformed": d.malformed, "oversize": d.oversize})
        out["link"] = self.link.stats()
        return out

    # -- the I/O thread ----------------------------------------------------------------------
    @staticmethod
    def _ms() -> int:
        return int(time.monotonic() * 1000)

    def _wake(self) -> None:
        ser = self._ser
        if ser is not None:
            try:
                ser.cancel_read()
            except Exception:   # not every port type can; it then waits out TICK
                pass

    def _run(self) -> None:
        while not self._stopping.is_set():
            if self._ser is None and not self._open():
                self._idle()
                self._stopping.wait(self.reopen_interval)
                continue
            try:
                self._service()
            except (serial.SerialException, OSError) as e:
                self._lost(e)
            except Exception as e:  # a bug: count, log, and go on after a pause
                self.counters["internal_errors"] += 1
                self._log(logging.ERROR, "internal", "%s: internal error: %r", self.port, e)
                self._stopping.wait(0.1)
        self._set_up(False)

    def _open(self) -> bool:
        try:
            ser = serial.serial_for_url(self.port, baudrate=self.baud, timeout=TICK,
                                        write_timeout=self.write_timeout, exclusive=True)
        except (serial.SerialException, OSError, ValueError) as e:
            self.counters["open_errors"] += 1
            self.last_error = str(e)
            hint = open_hint(self.last_error, self.port)
            self._log(logging.WARNING, "open", "%s: cannot open (%s)%s; retrying every %g s",
                      self.port, e, ": " + hint if hint else "", self.reopen_interval)
            return False
        self.decoder.reset()
        self._ser = ser
        self.last_error = None          # the counters keep the history
        self.counters["opens"] += 1
        log.info("%s: opened at %d Bd", self.port, self.baud)
        return True

    def _close_port(self) -> None:
        ser, self._ser = self._ser, None
        if ser is not None:
            try:
                ser.close()
            except Exception:
                pass

    def _lost(self, e: BaseException) -> None:
        self.counters["disconnects"] += 1
        self.last_error = str(e)
        self._log(logging.WARNING, "lost", "%s: port lost (%s); reopening every %g s",
                  self.port, e, self.reopen_interval)
        self._close_port()
        self._set_up(False)

    def _idle(self) -> None:
        # Port closed: keep the link's timers honest (it goes down, counts it, and
        # burns no retry budget since the peer is not heard); its frames are lost.
        try:
            self.link.poll_transmit(self._ms())
        except Exception:
            pass
        self._set_up(False)

    def _service(self) -> None:
        link = self.link
        now = self._ms()
        self._queue_control(now)
        self._transmit(now)
        ser = self._ser
        data = ser.read(1)
        if data:
            n = ser.in_waiting
            if n:
                data += ser.read(min(n, READ_MAX))
            self.counters["bytes_in"] += len(data)
            now = self._ms()
            for payload in self.decoder.feed(data):
                self.counters["frames_in"] += 1
                if payload[:2] == _HELLO_PREFIX and self._odd_hello(payload):
                    continue
                link.feed(payload, now)
            d = self.decoder
            bad = d.crc_errors + d.malformed + d.oversize
            if bad != self._bad_seen:
                link.crc_errors += bad - self._bad_seen
                self._bad_seen = bad
        msgs = link.poll_received()
        if msgs:
            self._deliver(msgs)
        for what in link.poll_acked():
            self.counters["control_acked"] += 1
        for what in link.poll_dead():
            self.counters["control_dead"] += 1
            log.info("%s: %s not confirmed by node 1", self.port, what)
        self._transmit(self._ms())
        self._set_up(link.up)

    def _odd_hello(self, payload: bytes) -> bool:
        """True when this HELLO must not reach the link (our own, echoed)."""
        try:
            h = decode_message(payload)
        except Exception:
            return False  # the link counts it as malformed
        if type(h) is not Hello:
            return False
        if h.session == self.link.session:
            self.counters["echoes"] += 1
            self._log(logging.WARNING, "echo", "%s: our own frames come back (TX looped to RX, "
                      "or an echoing adapter?): ignored", self.port)
            return True
        if h.node == 0 and not self._warned_base:
            self._warned_base = True
            log.warning("%s: the other end says it is a base station (node 0), not a node",
                        self.port)
        return False

    def _deliver(self, msgs: list) -> None:
        self.counters["messages_in"] += len(msgs)
        msgs = [bytes(m) for m in msgs]
        for cb in self._callbacks:
            for m in msgs:
                try:
                    cb(m)
                except Exception as e:
                    self.counters["callback_errors"] += 1
                    self._log(logging.ERROR, "callback", "%s: message callback failed: %r",
                              self.port, e)
        st = self.station
        if st is not None:
            try:
                st.ingest_many_threadsafe(msgs, self.source)
            except RuntimeError as e:  # the station's loop is closed: we are shutting down
                self._log(logging.WARNING, "deliver", "%s: station not running, %d messages "
                          "dropped: %s", self.port, len(msgs), e)

    def _transmit(self, now: int) -> None:
        frames = self.link.poll_transmit(now)
        if not frames:
            return
        buf = b"".join([encode_frame(f) for f in frames])
        try:
            self._ser.write(buf)
        except serial.SerialTimeoutException:
            self.counters["write_timeouts"] += 1
            self._log(logging.WARNING, "write", "%s: write blocked for %g s; frames dropped",
                      self.port, self.write_timeout)
            return
        self.counters["frames_out"] += len(frames)
        self.counters["bytes_out"] += len(buf)

    def _queue_control(self, now_ms: int) -> None:
        if self.announce_every is not None and self.station is not None and self._was_up:
            t = time.monotonic()
            if self._next_announce is None or t >= self._next_announce:
                self._next_announce = t + self.announce_every
                try:
                    msg = self.station.make_announce().encode()
                except Exception as e:
                    self.counters["internal_errors"] += 1
                    self._log(logging.ERROR, "announce", "%s: cannot build ANNOUNCE: %r", self.port, e)
                else:
                    with self._lock:
                        self._control.appendleft((msg, "announce"))
                        while len(self._control) > CONTROL_QUEUE:
                            self._control.pop()
                            self.counters["control_dropped"] += 1
        if not self._control:
            return
        with self._lock:
            while self._control:
                msg, what = self._control[0]
                if not self.link.offer(msg, what):
                    break
                self._control.popleft()
                if what == "announce":
                    self.counters["announces_sent"] += 1
                elif what == "enumerate":
                    self.counters["enumerates_sent"] += 1

    def _set_up(self, up: bool) -> None:
        if up == self._was_up:
            return
        self._was_up = up
        if up:
            self.counters["ups"] += 1
            self._next_announce = None   # announce at once: the node may have rebooted
            self._up_event.set()
            log.info("%s: link up (node %s, hop %s)", self.port, self.link.peer_node,
                     self.link.peer_hop)
        else:
            self._up_event.clear()
            log.info("%s: link down", self.port)


def heads_for(station: Any, ports: Iterable[tuple[str, int]], **kw: Any) -> list[SerialHead]:
    """One SerialHead per (port, baud), attached to `station` (started with it)."""
    heads = []
    for port, baud in ports:
        h = SerialHead(station, port, baud, **kw)
        station.add_head(h)
        heads.append(h)
    return heads
