"""The simulator's virtual serial wire (sim/wire.py): transparency, pacing, impairments.

Every test opens the endpoints the way programs do (pyserial, a plain open(), the
MicroPython unix port), never the wire's internals. Timing bounds are generous: these
check that pacing works, they are not benchmarks (the host may be loaded).
"""

import json
import math
import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import serial

from sim.wire import VirtualWire, WireChain, WireError

ROOT = Path(__file__).resolve().parent.parent
FAST = 921600  # the fastest rate the firmware uses; 100 KB take ~1.1 s


def port(path, timeout=2.0):
    return serial.Serial(path, timeout=timeout)


def read_exactly(p, n, timeout=5.0):
    """Reads until n bytes or timeout; returns what came (maybe short)."""
    buf = bytearray()
    deadline = time.monotonic() + timeout
    saved = p.timeout
    try:
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            p.timeout = min(left, 0.1)
            buf += p.read(min(n - len(buf), max(1, p.in_waiting)))
    finally:
        p.timeout = saved
    return bytes(buf)


def carried(w, n, direction="ab", timeout=5.0):
    """Waits until the wire has read n bytes from the sender and put them all on the
    far side (wait_idle alone can return before the pump has read a fresh write)."""
    d = getattr(w, direction)
    deadline = time.monotonic() + timeout
    while d.bytes_in < n and time.monotonic() < deadline:
        time.sleep(0.002)
    return d.bytes_in >= n and w.wait_idle(max(0.1, deadline - time.monotonic()))


def send_and_receive(tx, rx, data, timeout=10.0):
    """Writes data on tx while a thread reads it on rx (as a UART peer would)."""
    got = []
    t = threading.Thread(target=lambda: got.append(read_exactly(rx, len(data), timeout)))
    t.start()
    tx.write(data)
    t.join()
    return got[0]


@pytest.fixture
def wire():
    w = VirtualWire(FAST, seed=1)
    yield w
    w.close()


# -- transparency -----------------------------------------------------------------------

ALL_BYTES = bytes(range(256))
# The bytes a cooked tty would eat or rewrite: CR/LF, XON/XOFF, ^C, ^D, ^Z, ^\, DEL, 0x00.
TTY_SPECIALS = b"\r\n\r\r\n\n\x11\x13\x03\x04\x1a\x1c\x7f\x00\x00\xff\x12\x15\x16\x17"


def test_all_byte_values_cross_unchanged_both_ways(wire):
    a, b = port(wire.a_path), port(wire.b_path)
    for tx, rx in ((a, b), (b, a)):
        data = ALL_BYTES + ALL_BYTES[::-1] + TTY_SPECIALS * 8
        assert send_and_receive(tx, rx, data) == data
    time.sleep(0.01)
    assert a.in_waiting == 0 and b.in_waiting == 0  # and nothing extra (no echo)
    s = wire.stats()
    assert s["ab"]["bytes_in"] == s["ab"]["bytes_out"] == len(data)
    assert s["ba"]["bytes_in"] == s["ba"]["bytes_out"] == len(data)


def test_raw_without_the_program_setting_termios(wire):
    # A program that opens the path and sets nothing (like `cat`) still gets raw bytes:
    # the wire put the ptys in raw mode itself (no ICRNL, IXON, ISIG, ECHO, OPOST).
    fa = os.open(wire.a_path, os.O_RDWR | os.O_NOCTTY)
    fb = os.open(wire.b_path, os.O_RDWR | os.O_NOCTTY)
    try:
        for src, dst in ((fa, fb), (fb, fa)):
            data = TTY_SPECIALS + ALL_BYTES
            os.write(src, data)
            got = bytearray()
            deadline = time.monotonic() + 3
            while len(got) < len(data) and time.monotonic() < deadline:
                if select.select([dst], [], [], 0.1)[0]:
                    got += os.read(dst, 4096)
            assert bytes(got) == data
            assert not select.select([src], [], [], 0.05)[0]  # no echo back
    finally:
        os.close(fa)
        os.close(fb)


# -- timing -----------------------------------------------------------------------------


def test_bytes_are_paced_at_the_baud_rate():
    n = 480
    expected = n * 10 / 9600  # 8N1: 10 bits a byte -> 0.5 s
    with VirtualWire(9600) as w:
        a, b = port(w.a_path), port(w.b_path)
        t0 = time.monotonic()
        got = send_and_receive(a, b, bytes(range(256)) + bytes(n - 256))
        elapsed = time.monotonic() - t0
        assert len(got) == n
        assert 0.9 * expected <= elapsed < expected + 0.5, elapsed

        # Full duplex: both directions at once take as long as one, not twice as long.
        times = {}

        def one_way(tx, rx, key):
            t = time.monotonic()
            assert send_and_receive(tx, rx, bytes(n)) == bytes(n)
            times[key] = time.monotonic() - t

        threads = [threading.Thread(target=one_way, args=(a, b, "ab")),
                   threading.Thread(target=one_way, args=(b, a, "ba"))]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        total = time.monotonic() - t0
        assert set(times) == {"ab", "ba"}
        for key in times:
            assert 0.9 * expected <= times[key] < expected + 0.5, times
        assert total < 1.5 * expected + 0.3, total


def test_first_byte_takes_one_byte_time():
    # At 1200 baud a byte takes 8.3 ms: it cannot arrive sooner.
    with VirtualWire(1200) as w:
        a, b = port(w.a_path), port(w.b_path)
        t0 = time.monotonic()
        a.write(b"\x55")
        assert b.read(1) == b"\x55"
        assert time.monotonic() - t0 >= 0.9 * 10 / 1200


# -- impairments ------------------------------------------------------------------------


def test_bit_error_rate_flips_about_ber_of_the_bits():
    n, ber = 100_000, 1e-3
    data = random.Random(5).randbytes(n)
    with VirtualWire(FAST, ber=ber, seed=11) as w:
        got = send_and_receive(port(w.a_path), port(w.b_path), data)
        assert len(got) == n  # flips never add or remove bytes
        flipped = sum(bin(x ^ y).count("1") for x, y in zip(data, got))
        assert flipped == w.ab.bit_flips
        mean = 8 * n * ber  # 800 flips; binomial sd ~28
        sd = math.sqrt(8 * n * ber * (1 - ber))
        assert abs(flipped - mean) < 6 * sd, (flipped, mean)
        assert w.ba.bit_flips == 0 and w.ab.bytes_dropped == 0


def test_drops_lose_about_p_of_the_bytes_and_keep_order():
    n, p = 20_000, 0.02
    data = random.Random(6).randbytes(n)
    with VirtualWire(FAST, drop=p, seed=12) as w:
        a, b = port(w.a_path), port(w.b_path)
        a.write(data)
        assert carried(w, n)
        got = read_exactly(b, n, timeout=0.5)
        dropped = w.ab.bytes_dropped
        assert len(got) == n - dropped
        sd = math.sqrt(n * p * (1 - p))  # ~20
        assert abs(dropped - n * p) < 6 * sd, dropped
        it = iter(data)  # what arrived is the sent bytes with some left out
        assert all(byte in it for byte in got)


def test_same_seed_same_damage_however_the_bytes_are_chunked():
    data = random.Random(7).randbytes(5000)
    results = []
    for chunk in (5000, 333):
        with VirtualWire(FAST, ber=1e-2, drop=1e-2, seed="repro") as w:
            a, b = port(w.a_path), port(w.b_path)
            for i in range(0, len(data), chunk):
                a.write(data[i:i + chunk])
            assert carried(w, len(data))
            results.append((read_exactly(b, len(data), timeout=0.3), w.stats()["ab"]))
    assert results[0] == results[1]
    assert results[0][0] != data


def test_cut_loses_traffic_both_ways_then_it_resumes():
    with VirtualWire(115200, seed=2) as w:
        a, b = port(w.a_path, timeout=0.2), port(w.b_path, timeout=0.2)
        assert send_and_receive(a, b, b"before") == b"before"
        w.cut(0.4)
        assert not w.connected()
        a.write(bytes(100))
        b.write(bytes(50))
        assert b.read(1) == b"" and a.read(1) == b""
        time.sleep(max(0.0, 0.45 - 0.2))
        assert w.connected()
        assert w.ab.cut_bytes == 100 and w.ba.cut_bytes == 50
        assert send_and_receive(a, b, b"after") == b"after"
        assert send_and_receive(b, a, b"back") == b"back"


def test_cut_mid_stream_makes_one_hole_of_the_cut_length():
    n, baud, start, length = 960, 9600, 0.3, 0.3
    data = random.Random(8).randbytes(n)
    with VirtualWire(baud) as w:
        a, b = port(w.a_path, timeout=0.3), port(w.b_path, timeout=0.3)
        w.cut(length, delay=start)
        got = send_and_receive(a, b, data, timeout=n * 10 / baud + 0.5)
        hole = n - len(got)
        assert hole == w.ab.cut_bytes
        # ~289 bytes: those whose 10 bit times touch the 0.3 s (a byte takes 1.04 ms)
        assert abs(hole - length * baud / 10) < 20, hole
        i = next(k for k in range(len(got)) if got[k] != data[k])
        assert got == data[:i] + data[i + hole:]
        assert 0.2 * baud / 10 < i < 0.4 * baud / 10  # the hole is where the cut was


def test_noise_on_demand_and_at_a_rate(wire):
    a, b = port(wire.a_path, timeout=0.3), port(wire.b_path, timeout=0.3)
    wire.inject("ab", b"\x55\xaa\x00")
    assert read_exactly(b, 3, timeout=1) == b"\x55\xaa\x00"
    wire.inject("ba", n=5)
    assert len(read_exactly(a, 5, timeout=1)) == 5
    assert wire.ab.noise_bytes == 3 and wire.ba.noise_bytes == 5

    wire.set_impairments(noise_rate=100, noise_len=4)  # ~30 bursts of 1..4 bytes in 0.3 s
    time.sleep(0.3)
    wire.set_impairments(noise_rate=0)
    time.sleep(0.05)
    for rx, d in ((b, wire.ab), (a, wire.ba)):
        got = rx.read(10_000)
        assert len(got) == d.noise_bytes - (3 if d is wire.ab else 5)
        assert 5 < len(got) < 300


def test_receiver_ring_overruns_when_not_read():
    with VirtualWire(FAST, rxbuf=256) as w:
        a, b = port(w.a_path), port(w.b_path, timeout=0.1)
        a.write(bytes(range(256)) * 8)
        assert carried(w, 2048)
        got = b.read(4096)
        assert 256 <= len(got) <= 300  # FIONREAD may lag the kernel a little
        assert got[:256] == ALL_BYTES  # the ring keeps the oldest, as a UART FIFO does
        assert w.ab.overrun_bytes == 2048 - len(got)


def test_slow_reader_loses_nothing_without_rxbuf(wire):
    data = random.Random(9).randbytes(60_000)  # more than a pty's kernel buffer
    a, b = port(wire.a_path), port(wire.b_path)
    a.write(data)  # nobody reads meanwhile
    assert read_exactly(b, len(data)) == data
    assert wire.ab.overrun_bytes == 0


# -- MicroPython on an endpoint ---------------------------------------------------------

MP_UART_ECHO = r"""
import sys, termios, select
f = open(sys.argv[1], 'r+b')
fd = f.fileno()
termios.setraw(fd)
attr = termios.tcgetattr(fd)
attr[6][6] = 0   # VMIN: a read may return nothing
attr[6][5] = 1   # VTIME: after 0.1 s without a byte
termios.tcsetattr(fd, termios.TCSANOW, attr)
poller = select.poll()
poller.register(f, select.POLLIN)
f.write(b'READY')
buf = bytearray()
while len(buf) < 256:
    if not poller.poll(5000):
        break
    buf.extend(f.read(256 - len(buf)))
out = bytearray(len(buf))
for i in range(len(buf)):
    out[i] = buf[i] ^ 0xFF
f.write(out)   # unbuffered; flush() would fsync, EINVAL on a tty
f.read(1)   # VTIME: returns b'' after 0.1 s; lets the peer read first
f.close()
print(len(buf))
"""


def test_micropython_unix_port_talks_through_the_wire(wire, micropython, tmp_path):
    script = tmp_path / "uart_echo.py"
    script.write_text(MP_UART_ECHO)
    peer = port(wire.b_path, timeout=5)
    proc = subprocess.Popen([micropython, str(script), wire.a_path],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert peer.read(5) == b"READY"
        peer.write(ALL_BYTES)
        assert peer.read(256) == bytes(x ^ 0xFF for x in ALL_BYTES)
        out, err = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out + err  # MicroPython prints tracebacks to stdout
    assert out.strip() == "256"


# -- chain, CLI, errors -----------------------------------------------------------------


def test_chain_gives_every_node_two_ports_and_cuts_one_hop(tmp_path):
    links = tmp_path / "links"
    with VirtualWire.chain(2, baud=FAST, link_dir=links, seed=3) as chain:
        assert len(chain.wires) == 3
        names = sorted(p.name for p in links.iterdir())
        assert names == ["head", "node1-down", "node1-up", "node2-down", "node2-up", "tail"]
        assert os.path.realpath(links / "head") == chain.base_path
        assert os.path.realpath(links / "node1-up") == chain.upstream_path(1)
        assert os.path.realpath(links / "node2-down") == chain.downstream_path(2)
        hops = [(links / "head", links / "node1-up"),
                (links / "node1-down", links / "node2-up"),
                (links / "node2-down", links / "tail")]
        ports = [(port(str(x), 0.3), port(str(y), 0.3)) for x, y in hops]
        for up, down in ports:
            assert send_and_receive(up, down, b"down") == b"down"
            assert send_and_receive(down, up, b"up") == b"up"

        chain.cut(1, 0.5)
        ports[1][0].write(b"lost")
        ports[0][0].write(b"kept")
        assert ports[0][1].read(4) == b"kept"  # wire 0 is unaffected
        assert ports[1][1].read(4) == b""
        assert chain.stats()[1]["ab"]["cut_bytes"] == 4
        with pytest.raises(WireError):
            chain.upstream_path(3)
    assert not links.exists() or not any(links.iterdir())  # symlinks removed


def test_cli_runs_until_interrupted(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sim.wire", "--baud", "115200", "--ber", "0",
         "--seed", "4", "--link-a", str(a), "--link-b", str(b)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 5
        while not (a.is_symlink() and b.is_symlink()) and time.monotonic() < deadline:
            time.sleep(0.01)
        pa, pb = port(str(a)), port(str(b))
        assert send_and_receive(pa, pb, b"hello\x00\r\n") == b"hello\x00\r\n"
        assert send_and_receive(pb, pa, ALL_BYTES) == ALL_BYTES
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    stats = json.loads(out.strip().splitlines()[-1])
    assert stats["ab"]["bytes_in"] == stats["ab"]["bytes_out"] == 8
    assert stats["ba"]["bytes_in"] == stats["ba"]["bytes_out"] == 256
    assert not a.exists() and not b.exists()


def test_bad_arguments_raise_wire_error(tmp_path):
    for kwargs in ({"baud": 0}, {"ber": 1.5}, {"drop": -0.1}, {"rxbuf": 0}):
        with pytest.raises(WireError):
            VirtualWire(**kwargs)
    taken = tmp_path / "taken"
    taken.write_text("not a link")
    with pytest.raises(WireError):
        VirtualWire(link_a=taken)
    with pytest.raises(WireError):
        WireChain(0)
    with VirtualWire() as w, pytest.raises(WireError):
        w.inject("xy")
