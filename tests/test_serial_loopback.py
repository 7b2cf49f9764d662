"""One serial test suite, several transports (STYLE.md item 8).

The same class runs over:
  * ``loop``     pyserial's ``loop://`` (what is written is read back, no OS involved);
  * ``vwire``    a pty pair joined by the simulator's VirtualWire (write at A, read at B);
  * ``hardware`` a real port given with ``--serial-port PORT`` with TX jumpered to RX
                 (baud from STARLING_SERIAL_BAUD, default 115200); skipped otherwise.

A test that passes over loop:// and the virtual wire but fails on the real port points
at the hardware or driver; one that fails on the wire only points at the simulator.
"""

import os
import random
import time
from dataclasses import dataclass

import pytest
import serial

from sim.wire import VirtualWire

ALL_BYTES = bytes(range(256))


@dataclass
class Link:
    """tx writes, rx reads; for loop:// and a jumpered port they are the same object."""

    tx: serial.SerialBase
    rx: serial.SerialBase
    baud: int  # what the line carries, for timeouts

    def read_exactly(self, n, timeout=None):
        """Reads until n bytes or timeout (default: the line time of n bytes + 2 s)."""
        if timeout is None:
            timeout = n * 10 / self.baud + 2.0
        buf = bytearray()
        deadline = time.monotonic() + timeout
        saved = self.rx.timeout
        try:
            while len(buf) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.rx.timeout = min(left, 0.1)
                buf += self.rx.read(min(n - len(buf), max(1, self.rx.in_waiting)))
        finally:
            self.rx.timeout = saved
        return bytes(buf)

    def wait_waiting(self, n, timeout=2.0):
        """Waits until at least n bytes are waiting at rx; returns in_waiting."""
        deadline = time.monotonic() + timeout
        while self.rx.in_waiting < n and time.monotonic() < deadline:
            time.sleep(0.002)
        return self.rx.in_waiting


@pytest.fixture(params=["loop", "vwire", pytest.param("hardware", marks=pytest.mark.hardware)])
def link(request):
    kind = request.param
    if kind == "loop":
        s = serial.serial_for_url("loop://", timeout=1)
        yield Link(s, s, baud=10**9)
        s.close()
    elif kind == "vwire":
        baud = 921600
        with VirtualWire(baud, seed=0) as wire:
            tx = serial.Serial(wire.a_path, timeout=1)
            rx = serial.Serial(wire.b_path, timeout=1)
            yield Link(tx, rx, baud)
            tx.close()
            rx.close()
    else:
        baud = int(os.environ.get("STARLING_SERIAL_BAUD", "115200"))
        s = serial.Serial(request.config.getoption("--serial-port"), baud, timeout=1)
        time.sleep(0.05)
        s.reset_input_buffer()
        yield Link(s, s, baud)
        s.close()


class TestSerialTransport:
    def test_block_round_trip(self, link):
        data = ALL_BYTES * 8 + random.Random(1).randbytes(2048)
        link.tx.write(data)
        link.tx.flush()
        assert link.read_exactly(len(data)) == data

    def test_many_small_writes(self, link):
        rng = random.Random(2)
        pieces = [rng.randbytes(rng.randint(1, 7)) for _ in range(300)]
        for piece in pieces:
            link.tx.write(piece)
        data = b"".join(pieces)
        assert link.read_exactly(len(data)) == data

    def test_read_returns_what_came_when_the_timeout_expires(self, link):
        link.tx.write(b"abc")
        assert link.wait_waiting(3) == 3
        link.rx.timeout = 0.2
        t0 = time.monotonic()
        assert link.rx.read(10) == b"abc"  # short read after the timeout, not an error
        assert 0.15 <= time.monotonic() - t0 < 1.5

    def test_read_on_a_silent_line_returns_nothing(self, link):
        link.rx.timeout = 0.1
        t0 = time.monotonic()
        assert link.rx.read(1) == b""
        assert 0.08 <= time.monotonic() - t0 < 1.0

    def test_non_blocking_read(self, link):
        link.rx.timeout = 0
        t0 = time.monotonic()
        assert link.rx.read(10) == b""
        assert time.monotonic() - t0 < 0.5     # returned at once (a blocking read would wait)
        link.tx.write(b"xyz")
        assert link.wait_waiting(3) == 3
        assert link.rx.read(10) == b"xyz"

    def test_reset_input_buffer_discards_what_is_waiting(self, link):
        link.tx.write(bytes(100))
        assert link.wait_waiting(100) == 100
        link.rx.reset_input_buffer()
        assert link.rx.in_waiting == 0
        link.tx.write(b"next")
        assert link.read_exactly(4) == b"next"

    def test_framing_round_trip(self, link):
        framing = pytest.importorskip(
            "protocol.framing",
            reason="protocol/framing.py is not present: no serial framing to round-trip")
        rng = random.Random(3)
        payloads = [b"", b"\x00", b"\x00" * 300, ALL_BYTES, bytes(range(1, 256)) * 2,
                    rng.randbytes(framing.MAX_FRAME)]
        stream = b"".join(framing.encode_frame(p) for p in payloads)
        link.tx.write(stream)
        got = link.read_exactly(len(stream))
        decoder = framing.FrameDecoder()
        frames = []
        i = 0
        while i < len(got):  # fed in uneven pieces, as reads return them
            step = rng.randint(1, 97)
            frames += decoder.feed(got[i:i + step])
            i += step
        assert frames == payloads
        assert decoder.stats()["crc_errors"] == decoder.stats()["malformed"] == 0
