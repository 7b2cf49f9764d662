"""The base station's fast paths give the same results as the general ones.

* Single-event datagrams (the EVENT fast path in BaseStation.ingest, sinks'
  write_event): accounting, delivered readings and stored rows equal those of the same
  readings sent as one-reading BATCH datagrams, through reordering, duplicates, skips,
  reboots, STATUS and odd values; bad EVENTs are still counted malformed.
* The SQLite sink's pending data (marshalled blocks, flat event tuples) is not tracked
  by the cyclic GC, and every row shape (time known or not, converted values) is
  stored exactly once, from the writer thread and the writer process.
* kernel_drops is final after stop(); the receive buffer size is configurable.
"""

import asyncio
import gc
import random
import sqlite3
import time

import cbor2
import pytest

from protocol import codes
from protocol.messages import Batch, head
from base_station.listener import RCVBUF_LARGE, UdpListener
from base_station.records import Block
from base_station.sinks import SQLiteSink, read_db
from base_station.station import BaseStation
from base_station.testing import TestNode

TB = 1_700_000_000_000
EV = head(codes.KIND_EVENT)
VALUES = [21.5, -3, 0, 2**63 + 5, -(2**64), True, False, "hello", b"\x00\x01\xff",
          {"x": 1.5, "ok": True, "raw": b"\x07"}, 1e300, -0.0, "ünïcode ✓", 2**40, float("inf")]


def scenario(seed):
    """(kind, fields) items for two nodes: events with reordering, duplicates, gaps,
    skips, reboots and STATUS messages, some with extra trailing fields."""
    rng = random.Random(seed)
    items = []
    for node in (5, 6):
        for epoch in (1, 2, 4):
            seqs = list(range(rng.randrange(20, 60)))
            for _ in range(rng.randrange(0, 6)):            # gaps: never sent
                if len(seqs) > 5:
                    seqs.remove(rng.choice(seqs[1:]))
            sent = []
            for s in seqs:
                sent.append(s)
                if rng.random() < 0.1:
                    sent.append(s)                           # duplicate
            for i in range(len(sent) - 1):                   # local reordering
                if rng.random() < 0.15:
                    sent[i], sent[i + 1] = sent[i + 1], sent[i]
            for s in sent:
                skip = rng.choice([0, 0, 0, 0, 1, 2]) if s else 0
                extra = rng.random() < 0.05
                items.append(("ev", (node, epoch, s, 1000 + 10 * s, "n%d/t%d" % (node, s % 4),
                                     rng.choice(VALUES), skip, extra)))
            if rng.random() < 0.7:
                items.append(("status", (node, epoch, seqs[-1] + rng.randrange(0, 3))))
    # interleave the nodes, keep each node's order
    rng.shuffle(items)
    return items


def event_datagram(node, epoch, seq, t, topic, value, skip, extra):
    fields = [EV, node, epoch, seq, t, topic, value]
    if skip or extra:
        fields.append(skip)
    if extra:
        fields.append("a later field")
    return cbor2.dumps(fields)


def batch_datagram(node, epoch, seq, t, topic, value, skip, extra):
    fields = Batch(node, epoch, seq, [(t, topic, value)], skip).to_fields()
    if extra:
        if len(fields) == 6:
            fields.append(0)
        fields.append("a later field")
    return cbor2.dumps(fields)


def status_datagram(node, epoch, last_seq):
    n = TestNode(node, epoch=epoch, time_base=TB + epoch)
    return n.status(last_seq=last_seq, since=0)


def feed(items, as_batch, sinks=()):
    st = BaseStation(udp=[], announce=False, sinks=list(sinks))
    got = []
    st.on_reading(got.append)
    make = batch_datagram if as_batch else event_datagram
    arrival = 1_800_000_000.0
    for kind, f in items:
        data = make(*f) if kind == "ev" else status_datagram(*f)
        st.ingest(data, ("127.0.0.1", 9), arrival)
        arrival += 0.001
    return st, got


def node_view(st):
    out = {}
    for n, a in st.nodes.items():
        out[n] = (a.totals(), a.reboots, a.stale, dict(a.last),
                  {e: (s.start, s.next, s.holes()) for e, s in a.epochs.items()})
    return out


def rows(path):
    con = sqlite3.connect(path)
    try:
        return con.execute("SELECT * FROM readings ORDER BY node, epoch, seq").fetchall()
    finally:
        con.close()


@pytest.mark.parametrize("seed", range(6))
def test_event_fast_path_accounts_and_delivers_like_batches(seed, tmp_path):
    items = scenario(seed)
    db_e, db_b = str(tmp_path / "e.db"), str(tmp_path / "b.db")
    ev, got_e = feed(items, False, [SQLiteSink(db_e)])
    ba, got_b = feed(items, True, [SQLiteSink(db_b)])
    for st in (ev, ba):
        for s in st.sinks:
            s.close()
    assert node_view(ev) == node_view(ba)
    assert ev.counters["readings"] == ba.counters["readings"] > 0
    assert ev.counters["extra_fields"] == ba.counters["extra_fields"] > 0
    assert ev.counters["malformed"] == ba.counters["malformed"] == 0
    assert [r.as_dict() for r in got_e] == [r.as_dict() for r in got_b]
    assert rows(db_e) == rows(db_b)
    assert len(rows(db_e)) == ev.counters["readings"]
    assert ev.sinks[0].written == ev.counters["readings"]
    # exactly once: as many rows as distinct (node, epoch, seq) delivered
    assert len({(r.node, r.epoch, r.seq) for r in got_e}) == len(got_e)


def test_event_fast_path_keeps_malformed_and_unusual_events_on_the_general_path():
    st = BaseStation(udp=[], announce=False)
    got = []
    st.on_reading(got.append)
    bad = [
        [EV, 1, 0, 0, 10, "bad/+/topic", 1.0],         # invalid topic
        [EV, 1, 0, 0, 10, "t", None],                   # no value type
        [EV, 1, 0, 0, 10, "t", "x" * 300],              # value too long
        [EV, -1, 0, 0, 10, "t", 1.0],                   # negative node
        [EV, 1, 0, 0, 10, "t"],                         # too short
        [EV, 1, 0, 0, 10, "t", 1.0, -2],                # bad skip
        [EV, 1, 2**32, 0, 10, "t", 1.0],                # epoch beyond u32
    ]
    for fields in bad:
        st.ingest(cbor2.dumps(fields), ("127.0.0.1", 1))
    st.ingest(cbor2.dumps([EV, 1, 0, 0, 10, "t", 1.0]) + b"\x00", ("127.0.0.1", 1))  # trailing byte
    assert st.counters["malformed"] == len(bad) + 1
    assert st.malformed_reasons == {"invalid": len(bad), "trailing_bytes": 1}
    assert got == [] and st.counters["readings"] == 0
    # a map value and a big integer are valid: decided by the general validator
    st.ingest(cbor2.dumps([EV, 1, 0, 0, 10, "m", {"k": 1.5, "b": b"\x01"}]), ("127.0.0.1", 1))
    st.ingest(cbor2.dumps([EV, 1, 0, 1, 20, "b", 2**64 - 1]), ("127.0.0.1", 1))
    st.ingest(cbor2.dumps([EV, 1, 0, 1, 20, "b", 2**64 - 1]), ("127.0.0.1", 1))   # duplicate
    assert [(r.seq, r.value) for r in got] == [(0, {"k": 1.5, "b": b"\x01"}), (1, 2**64 - 1)]
    assert st.summary()["nodes"]["1"]["duplicates"] == 1


def test_events_over_udp_into_sqlite_writer_process_exactly_once(tmp_path):
    db = str(tmp_path / "p.db")

    async def main():
        st = BaseStation(udp=[("127.0.0.1", 0)], announce=False,
                         sinks=[SQLiteSink(db, process=True)])
        await st.start()
        node = TestNode(9, epoch=2, target=st.addresses[0], time_base=TB)
        for v in VALUES:
            node.send(node.event("u/%s" % type(v).__name__, v))
        node.send(node.event("u/dup", 1, seq=3))                 # duplicate of seq 3
        node.send(node.status(since=0))                          # time base from here on
        node.send(node.event("u/timed", 7))
        want = len(VALUES) + 1
        deadline = time.monotonic() + 10
        while st.counters["readings"] < want or st.nodes[9].totals()["duplicates"] < 1:
            assert time.monotonic() < deadline, st.summary()
            await asyncio.sleep(0.005)
        await st.stop()
        node.close()
        return st

    st = asyncio.run(main())
    stored = list(read_db(db))
    assert [r.seq for r in stored] == list(range(len(VALUES) + 1))
    assert [type(r.value) for r in stored[:-1]] == [type(v) for v in VALUES]
    assert [r.value for r in stored[:-1]] == VALUES
    assert all(r.time is None for r in stored[:-1])
    last = stored[-1]
    assert (last.value, last.time) == (7, pytest.approx((TB + last.t) / 1000))
    assert st.sinks[0].written == len(stored) and st.sinks[0].dropped == 0


@pytest.mark.parametrize("process", [False, True])
def test_sqlite_row_shapes_and_duplicates_never_stored(tmp_path, process):
    db = str(tmp_path / "s.db")
    sink = SQLiteSink(db, process=process)
    sink.write_block(Block(1, 0, 0, [10, 20, 30], ["a", "b", "c"], [1.5, 2, "x"], TB, 5.0))  # timed
    sink.write_block(Block(1, 0, 3, [40, 50], ["a", "b"], [b"\x01", -7], None, 6.0))        # untimed
    sink.write_block(Block(1, 0, 5, [60, 70, 80], ["a", "b", "c"],                          # converted
                           [True, {"k": b"\x02"}, 2**64 - 1], TB, 7.0))
    sink.write_event(1, 0, 8, 90, "e", 3.25, TB, 8.0)
    sink.write_event(1, 0, 9, 100, "e", False, None, 9.0)
    sink.write_event(1, 0, 10, 2**64 - 1, "e", 1, None, 10.0)                               # clamped t
    sink.flush()
    # the same (node, epoch, seq) again, e.g. after a restart on the same file: ignored
    sink.write_block(Block(1, 0, 0, [10, 20], ["a", "b"], [99.0, 99.0], TB, 11.0))
    sink.write_event(1, 0, 8, 90, "e", 99.0, None, 12.0)
    sink.close()
    got = rows(db)
    assert [r[2] for r in got] == list(range(11))
    assert got[0] == (1, 0, 0, "a", 10, (TB + 10) / 1000, 5.0, 1.5, None)
    assert got[3] == (1, 0, 3, "a", 40, None, 6.0, b"\x01", None)
    assert got[5][7:] == (1, "bool") and got[6][7:] == ('{"k":{"$base64":"Ag=="}}', "map")
    assert got[7][7:] == (str(2**64 - 1), "bigint")
    assert got[8] == (1, 0, 8, "e", 90, (TB + 90) / 1000, 8.0, 3.25, None)
    assert got[9][5:] == (None, 9.0, 0, "bool")
    assert got[10][4] == 2**63 - 1
    assert [r.value for r in read_db(db)] == [1.5, 2, "x", b"\x01", -7, True, {"k": b"\x02"},
                                              2**64 - 1, 3.25, False, 1]
    assert sink.written == 11 + 3 and sink.dropped == 0   # the 3 ignored rows were offered


def test_sqlite_pending_data_is_not_tracked_by_the_gc(tmp_path):
    sink = SQLiteSink(str(tmp_path / "g.db"), flush_interval=10, flush_rows=10**6)
    try:
        sink.write_block(Block(1, 0, 0, [1, 2], ["a", "b"], [1.0, 2.0], None, 1.0))
        sink.write_event(1, 0, 2, 3, "c", 3.0, None, 1.0)
        gc.collect()
        with sink._lock:
            items = list(sink._items)
        assert len(items) == 2
        assert not any(gc.is_tracked(i) for i in items)
    finally:
        sink.close()
    assert sink.written == 3


def _overflow(station_kw, n=400):
    """Blast n events at a station whose loop is not reading (the socket overflows),
    let it drain, stop it without reading kernel_drops before, return the station."""

    async def main():
        st = BaseStation(udp=[("127.0.0.1", 0)], announce=False, **station_kw)
        await st.start()
        node = TestNode(3, target=st.addresses[0])
        for _ in range(n):              # the loop does not run meanwhile
            node.send(node.event("k", 1.0))
        last, quiet = -1, 0
        while quiet < 20:               # until nothing more arrives for 100 ms
            await asyncio.sleep(0.005)
            now = st.counters["datagrams"]
            quiet = quiet + 1 if now == last else 0
            last = now
        await st.stop()
        node.close()
        return st

    return asyncio.run(asyncio.wait_for(main(), 20))


def test_kernel_drops_are_final_after_stop():
    n = 400
    st = _overflow({"rcvbuf": 2048}, n)
    received = st.counters["datagrams"]
    if received == n:
        pytest.skip("the kernel kept every datagram (no overflow provoked)")
    assert st.kernel_drops == n - received          # read only after stop()
    assert st.summary()["kernel_drops"] == n - received
    assert st.nodes[3].totals()["received"] == received


def test_receive_buffer_is_configurable():
    with pytest.raises(ValueError):
        BaseStation(udp=[], announce=False, rcvbuf=0)
    with pytest.raises(ValueError):
        UdpListener(lambda d, a: None, "127.0.0.1", 0, rcvbuf=-1)

    async def main():
        small = BaseStation(udp=[("127.0.0.1", 0)], announce=False, rcvbuf=64 * 1024)
        large = BaseStation(udp=[("127.0.0.1", 0)], announce=False, rcvbuf=RCVBUF_LARGE)
        await small.start()
        await large.start()
        out = small.summary()["rcvbuf"], large.summary()["rcvbuf"]
        await small.stop()
        await large.stop()
        return out

    small, large = asyncio.run(main())
    (s,), (l,) = small.values(), large.values()
    assert s >= 64 * 1024 and l >= s       # Linux grants twice the size, capped by rmem_max
    try:
        with open("/proc/sys/net/core/rmem_max") as f:
            rmem_max = int(f.read())
    except OSError:
        rmem_max = 0
    if l < 2 * RCVBUF_LARGE:                # capped: only without the right to force it
        assert l >= 2 * min(rmem_max, RCVBUF_LARGE) or l == s
