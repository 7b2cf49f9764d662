"""Virtual serial wires for the simulator: pty pairs joined by a paced, lossy UART line.

A `VirtualWire` joins two endpoints, A and B. Each endpoint is the slave side of a
pseudo-terminal (``os.openpty``), so any program that can open a serial port can open
it by path: pyserial ``serial.Serial(wire.a_path)``, the MicroPython unix port with
``open(path, 'r+b')`` and termios, ``starling listen --serial PATH``, ``screen``. The
simulator keeps both pty masters and carries the bytes written at one endpoint to the
other, in both directions at once (full duplex, the two directions independent), as an
8N1 UART line would:

* **Byte timing.** A byte takes 10 bit times (start, 8 data, stop) on the line, so it is
  delivered 10/baud seconds after the previous byte of the same direction finished, and
  never earlier than 10/baud after the simulator read it from the sender. Delivery is
  done in time slices: whatever is due is written every ~1 ms (``TICK``), not byte by
  byte, so a receiver sees small bursts, as from a UART FIFO with an RX timeout.
* **Transmit buffer.** At most ``tx_buffer`` bytes (default 4096) wait in the simulator
  per direction; beyond that it stops reading the sender's pty, whose kernel buffer
  then fills and the sender's ``write`` blocks, as with a UART driver's TX ring.
* **Impairments**, per direction, from a seeded RNG (``seed``; ``wire.seed`` tells the
  seed used when none was given): each delivered data bit flips with probability
  ``ber``; each byte is lost with probability ``drop`` (it still took its time on the
  line); noise bursts of 1..``noise_len`` random bytes arrive at ``noise_rate`` bursts
  per second (Poisson), or on demand with ``inject()``. Flips and drops are drawn
  with geometric skips over a per-direction bit / byte count, so for the same seed
  and the same byte stream they hit the same bytes however the stream was chunked.
* **Cuts** (``cut(seconds)``): a pulled cable. For the period nothing crosses in either
  direction: a byte whose 10 bit times overlap the cut is lost (counted ``cut_bytes``),
  bytes sent meanwhile are lost, and the senders are not told (their line time still
  runs). Traffic resumes by itself afterwards.
* **Receive buffer** (optional ``rxbuf``): a board's UART ring (RP2 default 256). Bytes
  arriving while the receiver's pty already holds ``rxbuf`` unread bytes are lost and
  counted ``overrun_bytes``. Without ``rxbuf`` overruns are not modelled: bytes the
  receiver's pty cannot take (its kernel buffer holds some 30 KB on Linux) wait in the
  simulator, up to ``rx_hold`` bytes (1 MiB), and only beyond that are lost and
  counted. The line's timing never depends on the receiver.

Counters per direction (``wire.ab`` carries A to B, ``wire.ba`` B to A; ``stats()``):
``bytes_in`` (read from the sender), ``bytes_out`` (written to the receiver, noise
included), ``bit_flips``, ``bytes_dropped``, ``noise_bytes``, ``cut_bytes``,
``overrun_bytes``.

`WireChain` (or ``VirtualWire.chain(k)``) builds the wires of a daisy chain
base <-> node1 <-> ... <-> nodeK, one wire more than there are hops so that every node
has an upstream and a downstream port (the last wire's far end, ``tail_path``, is free).

``python -m sim.wire --baud 115200 --ber 1e-5 --link-a PATH --link-b PATH`` runs one wire
until Ctrl-C, for manual use.

What it does NOT model (do not trust it for these):

* Electrical matters: voltage levels, line capacitance, ground loops, cable length.
* Baud mismatch and clock drift between the two ends (the ``baud`` set by a program on
  its pty, e.g. pyserial's ``baudrate``, is ignored; only the wire's ``baud`` counts),
  and so no sampling errors from them.
* Framing and parity errors, break conditions, idle-line detection: a flipped bit never
  moves a start or stop bit, bytes are never split or merged, a cut never yields a
  break or a 0x00 with a framing error. Only the 8 data bits are flipped.
* Other frame formats than 8N1 (7 bits, parity, 2 stop bits).
* Flow control: RTS/CTS, DTR/DSR and XON/XOFF are not carried; modem-control ioctls on
  a pty fail or do nothing. All 256 byte values pass through as data.
* Noise that corrupts bytes in flight: noise bursts are inserted between bytes and take
  no line time; real noise also damages the bytes it overlaps (use ``ber``).
* The exact instant of arrival inside a ~1-2 ms slice, the receiver's FIFO thresholds
  and interrupt latency. Timing is only as good as the host's scheduler: a loaded
  machine delivers late (never early). In-process, busy Python threads hold the GIL
  for up to 5 ms (``sys.getswitchinterval()``) and delay the pump thread; run the wire
  in its own process (the CLI) when timing matters more than that.
* A closed port: the simulator holds each pty slave open, so bytes delivered while no
  program has an endpoint open wait in the pty (up to ``rxbuf``, else the kernel
  buffer and ``rx_hold``) instead of being discarded as by a real closed port;
  ``reset_input(side)`` discards them.
* ``rxbuf`` is approximate: it reads the pty's queued byte count (FIONREAD), which may
  lag the kernel's flip buffers a little, and it cannot exceed the pty's
  line-discipline buffer (4096 bytes on Linux).
* Counters move when bytes fall due, not when the cut or the write happens, so they
  lag the line by what is queued (at most ``tx_buffer`` byte times).

Requires a POSIX system with ptys (Linux, macOS). Everything is local; no network.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import json
import math
import os
import random
import select
import signal
import struct
import sys
import termios
import threading
import time
from collections import deque
from pathlib import Path

TICK = 0.001  # seconds between deliveries while bytes are in flight
BITS_PER_BYTE = 10  # 8N1: start bit, 8 data bits, stop bit
_DIRECTIONS = ("ab", "ba")
_COUNTERS = ("bytes_in", "bytes_out", "bit_flips", "bytes_dropped", "noise_bytes",
             "cut_bytes", "overrun_bytes")


class WireError(RuntimeError):
    """The wire cannot be set up as asked (bad argument, a link path in the way)."""


def make_raw(fd: int) -> None:
    """Puts the tty at fd into raw 8-bit mode, like cfmakeraw(3).

    tty.setraw leaves INLCR, IGNCR, IXOFF and IXANY as they were; a pty starts with
    ICRNL and IXON set, so without this 0x0d would become 0x0a and 0x11/0x13 would be
    eaten as XON/XOFF.
    """
    attrs = termios.tcgetattr(fd)
    attrs[0] &= ~(termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP
                  | termios.INLCR | termios.IGNCR | termios.ICRNL | termios.IXON
                  | termios.IXOFF | termios.IXANY | termios.INPCK)
    attrs[1] &= ~termios.OPOST
    attrs[2] &= ~(termios.CSIZE | termios.PARENB)
    attrs[2] |= termios.CS8 | termios.CREAD | termios.CLOCAL
    attrs[3] &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG
                  | termios.IEXTEN)
    attrs[6][termios.VMIN] = 1
    attrs[6][termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


def _geometric(rng: random.Random, p: float) -> int:
    """Failures before the first success of Bernoulli(p) trials (0 when p >= 1)."""
    if p >= 1.0:
        return 0
    u = 1.0 - rng.random()  # (0, 1]
    return int(math.log(u) / math.log1p(-p))


class _Direction:
    """One direction of a wire: its queue, impairments, RNGs and counters.

    Only the wire's pump thread touches the queue and the skip counters; settings
    changed from other threads take effect at the next slice.
    """

    def __init__(self, name: str, src_master: int, dst_master: int, dst_slave: int,
                 seed: str) -> None:
        self.name = name
        self.src = src_master
        self.dst = dst_master
        self.dst_slave = dst_slave
        # Separate streams, so flips do not shift when drops are switched on, and
        # noise timing (which depends on wall time) does not disturb either.
        self._flip_rng = random.Random(seed + "/flip")
        self._drop_rng = random.Random(seed + "/drop")
        self._noise_rng = random.Random(seed + "/noise")
        self._ber = 0.0
        self._drop = 0.0
        self._flip_left = 0   # bits to pass before the next flip
        self._drop_left = 0   # bytes to pass before the next drop
        self.noise_rate = 0.0
        self.noise_len = 8
        self.next_noise = math.inf
        # [data, t0, bt, pos]: data[i] ends its 10 bit times at t0 + (i + 1) * bt
        self.queue: deque[list] = deque()
        self.queued = 0
        self.line_free = 0.0  # when the last scheduled byte ends
        self.reading = True   # src registered for POLLIN
        self.injected: list[bytes] = []
        # Bytes due at the receiver that its pty refused (without rxbuf): they wait
        # here, in order, up to rx_hold bytes.
        self.hold: deque[bytes] = deque()
        self.held = 0
        self.bytes_in = 0       # read from the sender
        self.bytes_out = 0      # written to the receiver (noise included)
        self.bit_flips = 0
        self.bytes_dropped = 0
        self.noise_bytes = 0
        self.cut_bytes = 0
        self.overrun_bytes = 0  # lost to rxbuf, or to rx_hold without rxbuf

    @property
    def ber(self) -> float:
        return self._ber

    @ber.setter
    def ber(self, value: float) -> None:
        if not 0.0 <= value <= 1.0:
            raise WireError("ber must be within [0, 1]")
        self._ber = float(value)
        self._flip_left = _geometric(self._flip_rng, value) if value > 0 else 0

    @property
    def drop(self) -> float:
        return self._drop

    @drop.setter
    def drop(self, value: float) -> None:
        if not 0.0 <= value <= 1.0:
            raise WireError("drop must be within [0, 1]")
        self._drop = float(value)
        self._drop_left = _geometric(self._drop_rng, value) if value > 0 else 0

    def set_noise(self, rate: float, length: int, now: float) -> None:
        if rate < 0 or length < 1:
            raise WireError("noise_rate must be >= 0 and noise_len >= 1")
        self.noise_rate = float(rate)
        self.noise_len = int(length)
        self.next_noise = now + self._noise_rng.expovariate(rate) if rate > 0 else math.inf

    def stats(self) -> dict[str, int]:
        return {c: getattr(self, c) for c in _COUNTERS}

    # -- the pump's side ------------------------------------------------------------

    def schedule(self, data: bytes, now: float, bt: float) -> None:
        t0 = max(now, self.line_free)
        self.queue.append([data, t0, bt, 0])
        self.line_free = t0 + len(data) * bt
        self.queued += len(data)
        self.bytes_in += len(data)

    def next_due(self) -> float:
        if not self.queue:
            return math.inf
        data, t0, bt, pos = self.queue[0]
        return t0 + (pos + 1) * bt

    def take_due(self, now: float, cuts: list[tuple[float, float]]) -> list[bytes]:
        """Pops the bytes whose last bit time has passed, minus those a cut touched."""
        parts: list[bytes] = []
        q = self.queue
        while q:
            item = q[0]
            data, t0, bt, pos = item
            n = len(data)
            end = min(n, int((now - t0) / bt + 1e-9))
            if end <= pos:
                break
            a = pos
            for c0, c1 in cuts:  # sorted, disjoint enough; byte i spans t0+i*bt..t0+(i+1)*bt
                lo = max(a, math.floor((c0 - t0) / bt))
                hi = min(end, math.ceil((c1 - t0) / bt))
                if hi <= lo:
                    continue
                if lo > a:
                    parts.append(data[a:lo])
                self.cut_bytes += hi - lo
                a = hi
            if a < end:
                parts.append(data[a:end] if (a, end) != (0, n) else data)
            self.queued -= end - pos
            if end >= n:
                q.popleft()
            else:
                item[3] = end
                break
        return parts

    def impair(self, data: bytes) -> bytes:
        """Drops bytes, then flips bits of the bytes kept."""
        if self._drop > 0 and data:
            kept = []
            start = 0
            m = len(data)
            while True:
                p = start + self._drop_left
                if p >= m:
                    self._drop_left -= m - start
                    kept.append(data[start:])
                    break
                kept.append(data[start:p])
                self.bytes_dropped += 1
                start = p + 1
                self._drop_left = _geometric(self._drop_rng, self._drop)
            data = b"".join(kept)
        if self._ber > 0 and data:
            nbits = 8 * len(data)
            p = self._flip_left
            if p < nbits:
                buf = bytearray(data)
                while p < nbits:
                    buf[p >> 3] ^= 1 << (p & 7)
                    self.bit_flips += 1
                    p += 1 + _geometric(self._flip_rng, self._ber)
                data = bytes(buf)
            self._flip_left = p - nbits
        return data

    def noise_due(self, now: float, connected: bool) -> bytes:
        out = b""
        if self.injected:
            out = b"".join(self.injected)
            self.injected = []
        bursts = 0
        while self.next_noise <= now and bursts < 1000:
            n = self._noise_rng.randint(1, self.noise_len)
            out += self._noise_rng.randbytes(n)
            self.next_noise += self._noise_rng.expovariate(self.noise_rate)
            bursts += 1
        if bursts == 1000:  # the pump stalled for a long time: do not flood
            self.next_noise = now + self._noise_rng.expovariate(self.noise_rate)
        if not connected:
            return b""
        self.noise_bytes += len(out)
        return out


class VirtualWire:
    """Two pty endpoints joined by a simulated 8N1 UART line (see the module docstring).

    Args:
        baud: line rate in bit/s; a byte takes 10/baud seconds.
        ber: probability that each data bit is flipped (both directions).
        drop: probability that each byte is lost (both directions).
        noise_rate: noise bursts per second (Poisson, both directions).
        noise_len: a noise burst is 1..noise_len random bytes.
        seed: RNG seed (any str/int); None picks one, readable as ``wire.seed``.
        rxbuf: receive ring of the receiving "board" in bytes, or None (pty limit).
        tx_buffer: bytes the simulator accepts from a sender before it stops reading.
        rx_hold: without rxbuf, bytes kept for a receiver whose pty is full (beyond
            that they are lost as overruns).
        link_a, link_b: optional symlink paths created to the endpoint ptys (parent
            folders are created; an existing symlink is replaced).
        name: shown in reprs and the CLI.
        start: start the pump thread now (else call ``start()``).

    Raises:
        WireError: a bad argument, or a link path taken by something not a symlink.
        OSError: the system has no ptys left.
    """

    def __init__(self, baud: int = 115200, *, ber: float = 0.0, drop: float = 0.0,
                 noise_rate: float = 0.0, noise_len: int = 8, seed: object = None,
                 rxbuf: int | None = None, tx_buffer: int = 4096,
                 rx_hold: int = 1 << 20,
                 link_a: str | os.PathLike | None = None,
                 link_b: str | os.PathLike | None = None,
                 name: str = "wire", start: bool = True) -> None:
        if baud <= 0:
            raise WireError("baud must be > 0")
        if rxbuf is not None and rxbuf < 1:
            raise WireError("rxbuf must be >= 1 or None")
        if tx_buffer < 1:
            raise WireError("tx_buffer must be >= 1")
        self.name = name
        self.seed = seed if seed is not None else int.from_bytes(os.urandom(4), "big")
        self._baud = int(baud)
        self.rxbuf = rxbuf
        self.tx_buffer = int(tx_buffer)
        self.rx_hold = int(rx_hold)
        self._lock = threading.Lock()
        self._cuts: list[tuple[float, float]] = []
        self._links: list[Path] = []
        self._fds: list[int] = []
        self._thread: threading.Thread | None = None
        self._stop = False
        try:
            ma, sa = self._open_pty()
            mb, sb = self._open_pty()
            self._ma, self._sa, self._mb, self._sb = ma, sa, mb, sb
            self.a_path = os.ttyname(sa)
            self.b_path = os.ttyname(sb)
            self._wake_r, self._wake_w = os.pipe()
            self._fds += [self._wake_r, self._wake_w]
            for fd in (self._wake_r, self._wake_w):
                os.set_blocking(fd, False)
            self.ab = _Direction("ab", ma, mb, sb, f"{self.seed}/ab")
            self.ba = _Direction("ba", mb, ma, sa, f"{self.seed}/ba")
            now = time.monotonic()
            for d in (self.ab, self.ba):
                d.ber = ber
                d.drop = drop
                d.set_noise(noise_rate, noise_len, now)
            if link_a is not None:
                self._link(self.a_path, link_a)
            if link_b is not None:
                self._link(self.b_path, link_b)
        except BaseException:
            self.close()
            raise
        if start:
            self.start()

    # -- set-up -------------------------------------------------------------------------

    def _open_pty(self) -> tuple[int, int]:
        master, slave = os.openpty()
        self._fds += [master, slave]
        # Keep the slave open for the wire's life: a program may close and reopen
        # its endpoint, and a master whose slave is closed reads EIO.
        make_raw(slave)
        os.set_blocking(master, False)
        return master, slave

    def _link(self, target: str, link: str | os.PathLike) -> None:
        path = Path(link)
        if path.is_symlink():
            path.unlink()
        elif path.exists():
            raise WireError(f"{path} exists and is not a symlink")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(target)
        self._links.append(path)

    @classmethod
    def chain(cls, k: int, **kwargs) -> "WireChain":
        """The wires of a chain base <-> node1 <-> ... <-> nodeK; see `WireChain`."""
        return WireChain(k, **kwargs)

    def start(self) -> None:
        """Starts the pump thread (a daemon); idempotent."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"vwire-{self.name}",
                                            daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stops the pump, closes the ptys (programs on them then read EOF/EIO) and
        removes the symlinks. Idempotent."""
        self._stop = True
        if self._thread is not None:
            self._wake()
            self._thread.join(timeout=2)
            self._thread = None
        for path in self._links:
            try:
                if path.is_symlink():
                    path.unlink()
            except OSError:
                pass
        self._links = []
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = []

    def __enter__(self) -> "VirtualWire":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<VirtualWire {self.name} {self._baud} baud {self.a_path} <-> "
                f"{self.b_path} seed={self.seed!r}>")

    # -- control (any thread) -----------------------------------------------------------

    @property
    def baud(self) -> int:
        return self._baud

    @baud.setter
    def baud(self, value: int) -> None:
        """Changes the line rate for bytes read from now on (queued bytes keep theirs)."""
        if value <= 0:
            raise WireError("baud must be > 0")
        self._baud = int(value)

    @property
    def byte_time(self) -> float:
        """Seconds one 8N1 byte takes on the line."""
        return BITS_PER_BYTE / self._baud

    def set_impairments(self, direction: str | None = None, *, ber: float | None = None,
                        drop: float | None = None, noise_rate: float | None = None,
                        noise_len: int | None = None) -> None:
        """Changes impairments of one direction ('ab' or 'ba') or of both (None)."""
        dirs = self._dirs(direction)
        with self._lock:
            for d in dirs:
                if ber is not None:
                    d.ber = ber
                if drop is not None:
                    d.drop = drop
                if noise_rate is not None or noise_len is not None:
                    d.set_noise(d.noise_rate if noise_rate is None else noise_rate,
                                d.noise_len if noise_len is None else noise_len,
                                time.monotonic())
        self._wake()

    def cut(self, seconds: float, *, delay: float = 0.0) -> None:
        """Disconnects the wire for `seconds`, starting after `delay` seconds.

        Nothing crosses in either direction meanwhile: bytes on the line or sent
        during the cut are lost (``cut_bytes``). Returns at once.
        """
        if seconds < 0 or delay < 0:
            raise WireError("seconds and delay must be >= 0")
        start = time.monotonic() + delay
        with self._lock:
            self._cuts.append((start, start + seconds))
            self._cuts.sort()
        self._wake()

    def connected(self, at: float | None = None) -> bool:
        """False while a cut is in force (at monotonic time `at`, default now)."""
        t = time.monotonic() if at is None else at
        with self._lock:
            return not any(c0 <= t < c1 for c0, c1 in self._cuts)

    def inject(self, direction: str, data: bytes | None = None, n: int = 8) -> None:
        """Delivers noise now to the receiver of `direction` ('ab' reaches B): `data`,
        or `n` random bytes from the direction's noise RNG. Lost during a cut."""
        (d,) = self._dirs(direction)
        with self._lock:
            if data is None:
                data = d._noise_rng.randbytes(n)
            d.injected.append(bytes(data))
        self._wake()

    def reset_input(self, side: str) -> None:
        """Discards bytes delivered to endpoint `side` ('a' or 'b') but not yet read."""
        fd = {"a": self._sa, "b": self._sb}[side]
        termios.tcflush(fd, termios.TCIFLUSH)

    def stats(self) -> dict[str, dict[str, int]]:
        """Counters per direction: {'ab': {...}, 'ba': {...}}."""
        return {"ab": self.ab.stats(), "ba": self.ba.stats()}

    def idle(self) -> bool:
        """True when no byte is on the line in either direction (bytes held for a
        receiver whose pty is full do not count: they are waiting for the reader)."""
        return self.ab.queued == 0 and self.ba.queued == 0

    def wait_idle(self, timeout: float = 5.0, settle: float = 0.01) -> bool:
        """Waits until nothing is in flight in the simulator for `settle` seconds.

        Bytes a sender wrote but the pump has not read yet are not seen; `settle`
        covers them. Returns False on timeout.
        """
        deadline = time.monotonic() + timeout
        quiet_since = None
        while time.monotonic() < deadline:
            if self.idle():
                now = time.monotonic()
                quiet_since = quiet_since or now
                if now - quiet_since >= settle:
                    return True
            else:
                quiet_since = None
            time.sleep(0.002)
        return False

    def _dirs(self, direction: str | None) -> tuple[_Direction, ...]:
        if direction is None:
            return (self.ab, self.ba)
        if direction not in _DIRECTIONS:
            raise WireError(f"direction must be 'ab' or 'ba', not {direction!r}")
        return (getattr(self, direction),)

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"!")
        except (BlockingIOError, OSError):
            pass  # pipe full (a wake-up is pending anyway) or closed

    # -- the pump -----------------------------------------------------------------------

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        for d in (self.ab, self.ba):
            poller.register(d.src, select.POLLIN)
            d.reading = True
        try:
            while not self._stop:
                now = time.monotonic()
                nxt = min(self.ab.next_due(), self.ba.next_due(),
                          self.ab.next_noise, self.ba.next_noise)
                if self.ab.held or self.ba.held:
                    nxt = now  # retry the full receiver every TICK
                with self._lock:
                    pending_inject = bool(self.ab.injected or self.ba.injected)
                if pending_inject:
                    timeout_ms: float | None = 0
                elif nxt == math.inf:
                    timeout_ms = None  # idle: sleep until a sender writes or we are woken
                else:
                    # Never wake more often than TICK: deliver in slices, not per byte.
                    timeout_ms = max(TICK, nxt - now) * 1000.0
                for fd, ev in poller.poll(timeout_ms):
                    if fd == self._wake_r:
                        try:
                            while os.read(self._wake_r, 512):
                                pass
                        except BlockingIOError:
                            pass
                if self._stop:
                    break
                bt = self.byte_time
                for d in (self.ab, self.ba):
                    self._read_sender(d, bt)
                now = time.monotonic()
                with self._lock:
                    # Forget cuts that ended before anything still queued began.
                    horizon = min((q[0][1] for q in (self.ab.queue, self.ba.queue) if q),
                                  default=now)
                    self._cuts = [c for c in self._cuts if c[1] > horizon - 1.0]
                    cuts = list(self._cuts)
                    connected = not any(c0 <= now < c1 for c0, c1 in cuts)
                    outs = []
                    for d in (self.ab, self.ba):
                        parts = d.take_due(now, cuts)
                        data = d.impair(b"".join(parts)) if parts else b""
                        noise = d.noise_due(now, connected)
                        outs.append((d, data + noise if noise else data))
                for d, data in outs:
                    if data or d.held:
                        self._deliver(d, data)
                    # Hysteresis: stop reading the sender when tx_buffer is full and
                    # resume at half, so a saturated line costs a read every few
                    # slices instead of two wake-ups per slice.
                    if d.reading:
                        room = d.queued < self.tx_buffer
                    else:
                        room = d.queued <= self.tx_buffer // 2
                    if room != d.reading:
                        poller.modify(d.src, select.POLLIN if room else 0)
                        d.reading = room
        except OSError as e:
            if not self._stop:  # fds closed under us by close(): fine; else report
                print(f"sim.wire {self.name}: pump stopped: {e}", file=sys.stderr)

    def _read_sender(self, d: _Direction, bt: float) -> None:
        room = self.tx_buffer - d.queued
        while room > 0:
            try:
                data = os.read(d.src, min(room, 65536))
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno == errno.EIO:  # no slave open (cannot happen while we hold it)
                    return
                raise
            if not data:
                return
            # Stamp after the read: the bytes were written before now, never after,
            # so they can only be delivered late (by our wake-up delay), not early.
            d.schedule(data, time.monotonic(), bt)
            room -= len(data)

    def _deliver(self, d: _Direction, data: bytes) -> None:
        if self.rxbuf is not None:
            # A board's UART ring: what does not fit is lost, as in a FIFO overrun.
            buf = fcntl.ioctl(d.dst_slave, termios.FIONREAD, b"\0\0\0\0")
            room = max(0, self.rxbuf - struct.unpack("i", buf)[0])
            if room < len(data):
                d.overrun_bytes += len(data) - room
                data = data[:room]
            d.overrun_bytes += len(data) - self._write(d, data)
            return
        # No receive ring modelled: bytes the pty refuses wait in d.hold (oldest first)
        # up to rx_hold bytes; only beyond that are they lost.
        hold = d.hold
        while hold:
            head = hold[0]
            written = self._write(d, head)
            d.held -= written
            if written < len(head):
                hold[0] = head[written:]
                break
            hold.popleft()
        if not data:
            return
        if not hold:
            written = self._write(d, data)
            data = data[written:]
        if data:
            keep = min(len(data), self.rx_hold - d.held)
            if keep > 0:
                hold.append(data[:keep])
                d.held += keep
            d.overrun_bytes += len(data) - keep

    @staticmethod
    def _write(d: _Direction, data: bytes) -> int:
        if not data:
            return 0
        try:
            written = os.write(d.dst, data)
        except BlockingIOError:
            written = 0
        d.bytes_out += written
        return written


class WireChain:
    """The wires of a serial daisy chain base <-> node1 <-> ... <-> nodeK.

    There are K+1 wires: wire 0 joins the base (its A end) to node1's upstream port
    (its B end); wire j joins node j's downstream port (A) to node j+1's upstream port
    (B); wire K starts at nodeK's downstream port and its B end (``tail_path``) is free,
    for a probe or a node added later. So every node has both ports.

    Args:
        k: number of nodes (>= 1).
        link_dir: optional folder for symlinks: ``head`` (the base's port),
            ``node{j}-up``, ``node{j}-down`` and ``tail``.
        per_wire: {wire_index: {keyword: value}} overriding `wire_kwargs` per wire.
        seed: base seed; wire i uses f"{seed}/{i}".
        **wire_kwargs: passed to every `VirtualWire` (baud, ber, drop, ...).
    """

    def __init__(self, k: int, *, link_dir: str | os.PathLike | None = None,
                 per_wire: dict[int, dict] | None = None, seed: object = None,
                 **wire_kwargs) -> None:
        if k < 1:
            raise WireError("a chain needs at least one node")
        self.k = k
        self.seed = seed if seed is not None else int.from_bytes(os.urandom(4), "big")
        self.wires: list[VirtualWire] = []
        per_wire = per_wire or {}
        try:
            for i in range(k + 1):
                kw = dict(wire_kwargs)
                kw.update(per_wire.get(i, {}))
                kw.setdefault("seed", f"{self.seed}/{i}")
                if link_dir is not None:
                    d = Path(link_dir)
                    kw["link_a"] = d / ("head" if i == 0 else f"node{i}-down")
                    kw["link_b"] = d / (f"node{i + 1}-up" if i < k else "tail")
                self.wires.append(VirtualWire(name=f"wire{i}", **kw))
        except BaseException:
            self.close()
            raise

    @property
    def base_path(self) -> str:
        """The base station's port (wire 0, end A)."""
        return self.wires[0].a_path

    @property
    def tail_path(self) -> str:
        """The free far end of the last wire, past nodeK."""
        return self.wires[self.k].b_path

    def upstream_path(self, j: int) -> str:
        """Node j's port towards the base (1 <= j <= k)."""
        self._check(j)
        return self.wires[j - 1].b_path

    def downstream_path(self, j: int) -> str:
        """Node j's port away from the base (1 <= j <= k)."""
        self._check(j)
        return self.wires[j].a_path

    def _check(self, j: int) -> None:
        if not 1 <= j <= self.k:
            raise WireError(f"node index must be within 1..{self.k}")

    def cut(self, wire_index: int, seconds: float, *, delay: float = 0.0) -> None:
        """Cuts wire `wire_index` (0 is base-node1) for `seconds`."""
        self.wires[wire_index].cut(seconds, delay=delay)

    def stats(self) -> list[dict[str, dict[str, int]]]:
        return [w.stats() for w in self.wires]

    def close(self) -> None:
        for w in self.wires:
            w.close()

    def __enter__(self) -> "WireChain":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    """CLI: one wire between two symlinked ptys, until Ctrl-C (or SIGTERM)."""
    p = argparse.ArgumentParser(
        prog="python -m sim.wire",
        description="A virtual 8N1 serial wire between two ptys, with impairments.")
    p.add_argument("--baud", type=int, default=115200)
    p.add_argument("--ber", type=float, default=0.0, help="bit error rate (per data bit)")
    p.add_argument("--drop", type=float, default=0.0, help="byte drop probability")
    p.add_argument("--noise-rate", type=float, default=0.0, help="noise bursts per second")
    p.add_argument("--noise-len", type=int, default=8, help="max bytes per noise burst")
    p.add_argument("--rxbuf", type=int, default=None, help="receiver ring size in bytes")
    p.add_argument("--seed", default=None)
    p.add_argument("--link-a", help="symlink to create for endpoint A")
    p.add_argument("--link-b", help="symlink to create for endpoint B")
    p.add_argument("--stats-every", type=float, default=0.0,
                   help="print counters as JSON every N seconds (0: only at exit)")
    args = p.parse_args(argv)

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        wire = VirtualWire(args.baud, ber=args.ber, drop=args.drop,
                           noise_rate=args.noise_rate, noise_len=args.noise_len,
                           seed=args.seed, rxbuf=args.rxbuf,
                           link_a=args.link_a, link_b=args.link_b, name="cli")
    except WireError as e:
        print(f"sim.wire: {e}", file=sys.stderr)
        return 2
    print(f"A: {args.link_a or ''} -> {wire.a_path}", flush=True)
    print(f"B: {args.link_b or ''} -> {wire.b_path}", flush=True)
    print(f"{args.baud} baud 8N1, ber {args.ber}, drop {args.drop}, seed {wire.seed!r}; "
          "Ctrl-C to stop", flush=True)
    try:
        while True:
            if args.stats_every > 0:
                time.sleep(args.stats_every)
                print(json.dumps(wire.stats()), flush=True)
            else:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        wire.close()
    print(json.dumps(wire.stats()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
