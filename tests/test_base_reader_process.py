"""A UDP socket read by a separate process (base_station/udp_reader.py,
`BaseStation(reader_process=True)`, `starling listen --reader-process`), over real
sockets on loopback: every datagram reaches the station once with its source address,
bad ones are counted as before, a stop hands over what is in flight, kernel drops stay
exact, and a reader process that dies gives the socket back to the station. The pipe's
record stream (the module docstring is its spec) survives any split."""

import asyncio
import logging
import os
import signal
import socket
import struct
import time

import cbor2
import pytest
from hypothesis import given, settings, strategies as st

from base_station import udp_reader
from base_station.station import BaseStation
from base_station.testing import TestNode
from base_station.udp_reader import RecordReader
from conftest import run, until

pytestmark = pytest.mark.skipif(not hasattr(socket.socket, "recvmsg_into"),
                                reason="the reader process needs recvmsg (Linux)")


def station(**kw):
    kw.setdefault("udp", [("127.0.0.1", 0)])
    kw.setdefault("announce", False)
    kw.setdefault("reader_process", True)
    return BaseStation(**kw)


def gone(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


# -- the record stream, as docs in udp_reader describe it ---------------------------------

def address_record(aid, addr):
    text = "|".join(str(x) for x in addr).encode()
    return struct.pack(">HHH", 0xFFFF, aid, len(text)) + text


def datagram_record(aid, data):
    return struct.pack(">HH", len(data), aid) + data


def test_records_split_anywhere_give_the_same_calls():
    stream = (address_record(0, ("127.0.0.1", 4000)) + datagram_record(0, b"abc")
              + address_record(1, ("::1", 5000, 0, 0)) + datagram_record(1, b"")
              + struct.pack(">HHI", 0xFFFE, 0, 7) + datagram_record(0, b"x" * 300)
              + struct.pack(">HHI", 0xFFFD, 0, 2) + datagram_record(1, b"\x00\xff"))
    want = [(b"abc", ("127.0.0.1", 4000)), (b"", ("::1", 5000, 0, 0)),
            (b"x" * 300, ("127.0.0.1", 4000)), (b"\x00\xff", ("::1", 5000, 0, 0))]
    for cut in range(len(stream) + 1):
        got = []
        r = RecordReader(lambda d, a: got.append((d, a)))
        n = r.feed(stream[:cut]) + r.feed(stream[cut:])
        assert got == want and n == 4, cut
        assert r.drops == 7 and r.errors == 2 and r.pending == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.binary(max_size=70)), max_size=30),
       st.lists(st.integers(1, 40), min_size=1, max_size=20))
def test_records_in_any_pieces(items, pieces):
    addrs = [("10.0.0.%d" % i, 1000 + i) for i in range(4)]
    stream = b"".join(address_record(i, a) for i, a in enumerate(addrs))
    stream += b"".join(datagram_record(i, d) for i, d in items)
    got = []
    r = RecordReader(lambda d, a: got.append((d, a)))
    p = k = 0
    while p < len(stream):
        step = pieces[k % len(pieces)]
        r.feed(stream[p:p + step])
        p += step
        k += 1
    assert got == [(d, addrs[i]) for i, d in items] and r.pending == 0


def test_a_broken_stream_is_an_error_not_a_guess():
    r = RecordReader(lambda d, a: None)
    with pytest.raises(ValueError, match="undefined address id 3"):
        r.feed(datagram_record(3, b"abc"))
    with pytest.raises(ValueError, match="a record of 65532 bytes"):
        RecordReader(lambda d, a: None).feed(struct.pack(">HHI", 0xFFFC, 0, 0))


# -- over real sockets -------------------------------------------------------------------------

def test_every_datagram_arrives_once_with_its_source_address():
    async def main():
        s = station()
        await s.start()
        lst = s.listeners[0]
        pid = lst.reader_pid
        assert pid is not None and not gone(pid)
        nodes = [TestNode(n, target=s.addresses[0]) for n in (1, 2, 3)]
        for i in range(700):
            for node in nodes:
                node.send(node.event("t/%d" % node.node, i))
        bad = [b"", b"\xff\x00 garbage", cbor2.dumps([1, 2]), b"\x84" + b"\x00" * 3000]
        nodes[0].send(*bad)                 # empty, not CBOR, too short, oversize
        total = 700 * 3 + len(bad)
        await until(lambda: s.counters["datagrams"] == total)
        summary = s.summary()
        sources = {n.node: "127.0.0.1:%d" % n.sock.getsockname()[1] for n in nodes}
        await s.stop()
        for node in nodes:
            node.close()
        return summary, sources, pid, lst

    summary, sources, pid, lst = run(main())
    for node, src in sources.items():
        acc = summary["nodes"][str(node)]
        assert (acc["received"], acc["lost"], acc["duplicates"], acc["out_of_order"]) == (700, 0, 0, 0)
        assert acc["source"] == src and acc["last"] == {"t/%d" % node: 699}
    assert summary["malformed"] == 4
    assert gone(pid) and lst.reader_pid is None       # ended by stop(), nothing left behind


def test_ipv6_source_addresses_come_through():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        probe = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("no ::1 here")

    async def main():
        s = station(udp=[("::1", 0)])
        await s.start()
        sender = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sender.bind(("::1", 0))
        node = TestNode(9)
        for i in range(50):
            sender.sendto(node.event("v6", i), s.addresses[0][:2])
        await until(lambda: s.counters["readings"] == 50)
        summary = s.summary()
        port = sender.getsockname()[1]
        await s.stop()
        sender.close()
        return summary, port

    summary, port = run(main())
    acc = summary["nodes"]["9"]
    assert acc["received"] == 50 and acc["lost"] == 0
    assert acc["source"] == "::1:%d" % port          # (host, port, flowinfo, scope_id) kept


def test_stop_hands_over_what_is_in_flight():
    # the reader is frozen while 2,000 datagrams wait in the socket buffer; the station
    # stops right after it thaws: every one of them is still counted
    async def main():
        s = station(rcvbuf=8 * 1024 * 1024)
        await s.start()
        pid = s.listeners[0].reader_pid
        node = TestNode(4, target=s.addresses[0])
        os.kill(pid, signal.SIGSTOP)
        try:
            for i in range(2000):
                node.send(node.event("k", i))
        finally:
            os.kill(pid, signal.SIGCONT)
        await s.stop()
        node.close()
        return s

    s = run(main())
    assert s.counters["datagrams"] == 2000 and s.kernel_drops == 0
    assert s.nodes[4].totals()["received"] == 2000


@pytest.mark.parametrize("source", ["proc", "ovfl"])
def test_kernel_drops_stay_exact(source, monkeypatch):
    # proc: the reader uses recvfrom_into and the station reads /proc/net/udp; ovfl (a
    # system where /proc does not list the socket): recvmsg_into and the SO_RXQ_OVFL
    # count the reader passes on, which a datagram carries when it is queued, so one
    # more is sent once the buffer has room again
    from base_station import listener
    if source == "ovfl":
        monkeypatch.setattr(listener, "proc_udp_drops", lambda sock: None)

    async def main():
        s = station(rcvbuf=4096)
        await s.start()
        lst = s.listeners[0]
        assert lst._drops_from_proc is (source == "proc")
        assert lst._proc.args[-1] == source       # how the reader was told to read
        pid = lst.reader_pid
        node = TestNode(8, target=s.addresses[0])
        n = 3000
        os.kill(pid, signal.SIGSTOP)        # nobody reads: the socket buffer overflows
        try:
            for i in range(n):
                node.send(node.event("k", 1.0))
        finally:
            os.kill(pid, signal.SIGCONT)
        if source == "ovfl":
            await until(lambda: s.counters["datagrams"] > 0)
            await asyncio.sleep(0.2)        # the reader drains what the buffer held
            node.send(node.event("k", 1.0))
            n += 1
        await until(lambda: s.counters["datagrams"] + s.kernel_drops >= n)
        summary = s.summary()
        await s.stop()
        node.close()
        return summary, n

    summary, n = run(main())
    assert summary["kernel_drops"] > 0
    assert summary["datagrams"] + summary["kernel_drops"] == n
    assert summary["nodes"]["8"]["received"] == summary["datagrams"]


def test_a_dead_reader_process_gives_the_socket_back(caplog):
    async def main():
        s = station()
        await s.start()
        lst = s.listeners[0]
        pid = lst.reader_pid
        node = TestNode(6, target=s.addresses[0])
        for i in range(100):
            node.send(node.event("k", i))
        await until(lambda: s.counters["datagrams"] == 100)
        os.kill(pid, signal.SIGKILL)
        await until(lambda: lst.reader_pid is None)
        assert list(s.summary()["reader"].values()) == ["in-process after the reader process ended"]
        for i in range(100):
            node.send(node.event("k", i))
        await until(lambda: s.counters["datagrams"] == 200)
        totals = s.nodes[6].totals()
        await s.stop()
        node.close()
        return totals, pid

    with caplog.at_level(logging.WARNING, logger="starling.base.listener"):
        totals, pid = run(main())
    assert totals["received"] == 200 and totals["lost"] == 0 and totals["duplicates"] == 0
    assert gone(pid)
    assert any("reader process" in r.getMessage() and "ended" in r.getMessage() for r in caplog.records)


def test_the_reader_script_runs_on_the_standard_library_alone():
    # it is started as `python -I udp_reader.py`: no project import may creep in
    with open(udp_reader.__file__, encoding="utf-8") as f:
        src = f.read()
    imports = {line.split()[1].split(".")[0] for line in src.splitlines()
               if line.startswith(("import ", "from ")) and not line.startswith("from __future__")}
    assert imports <= {"os", "select", "socket", "struct", "sys"}, imports
