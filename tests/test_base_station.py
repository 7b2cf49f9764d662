"""BaseStation over real UDP sockets on 127.0.0.1: readings reach SQLite, JSON Lines and
CSV intact; bad datagrams change only counters; authentication; the announcer;
subscribers; kernel drops."""

import asyncio
import csv
import errno
import json
import logging
import os
import random
import socket
import time

import cbor2
import pytest

from protocol import codes
from protocol.auth import Key
from protocol.messages import Announce, Event, from_fields, head
from base_station.sinks import CSVSink, JSONLSink, SQLiteSink, read_db
from base_station.station import LOG_SOURCES, BaseStation, RateLimitedLog, load_keys
from base_station.testing import TestNode, now_ms
from conftest import run, until

LOCAL = [("127.0.0.1", 0)]


def station(**kw):
    kw.setdefault("udp", LOCAL)
    kw.setdefault("announce", False)
    return BaseStation(**kw)


VALUES = [21.5, -3, 0, 2**63 + 5, -(2**64), True, False, "hello", b"\x00\x01\xff",
          {"x": 1.5, "y": -2, "ok": True, "raw": b"\x07"}, 1e300, -0.0, "ünïcode ✓", 2**40]


def test_values_and_seqs_arrive_intact_in_sqlite_jsonl_csv(tmp_path):
    db, jl, cv = str(tmp_path / "s.db"), str(tmp_path / "r.jsonl"), str(tmp_path / "r.csv")
    tb = now_ms() - 5000

    async def main():
        st = station(sinks=[SQLiteSink(db), JSONLSink(jl), CSVSink(cv)])
        await st.start()
        node = TestNode(7, epoch=3, target=st.addresses[0], time_base=tb)
        node.send(node.status(since=0))
        for v in VALUES:
            node.send(node.event("lab/%s" % type(v).__name__, v))
        node.send(node.batch([("lab/batch", i * 0.25) for i in range(20)]))
        node.send(node.event("lab/dup", 1, seq=3))             # a duplicate: never stored
        await until(lambda: st.counters["readings"] == len(VALUES) + 20 and st.nodes[7].totals()["duplicates"] == 1)
        await st.stop()
        node.close()
        return st.summary()

    s = run(main())
    n = s["nodes"]["7"]
    assert (n["received"], n["lost"], n["duplicates"], n["epoch"]) == (len(VALUES) + 20, 0, 1, 3)
    rows = list(read_db(db))
    assert [r.seq for r in rows] == list(range(len(VALUES) + 20))
    assert [r.value for r in rows[:len(VALUES)]] == VALUES
    assert [type(r.value) for r in rows[:len(VALUES)]] == [type(v) for v in VALUES]
    assert [r.value for r in rows[len(VALUES):]] == [i * 0.25 for i in range(20)]
    assert all(r.node == 7 and r.epoch == 3 for r in rows)
    first = rows[0]
    assert first.t == 10 and first.time == pytest.approx((tb + 10) / 1000)
    assert abs(first.arrival - time.time()) < 30
    # JSON Lines
    lines = [json.loads(x) for x in open(jl, encoding="utf-8")]
    assert [x["seq"] for x in lines] == list(range(len(VALUES) + 20))
    assert lines[0]["value"] == 21.5 and lines[7]["value"] == "hello"
    assert lines[8]["value"] == {"$base64": "AAH/"}
    assert lines[3]["value"] == 2**63 + 5 and lines[0]["time"] == pytest.approx((tb + 10) / 1000)
    # CSV
    with open(cv, newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert [int(r["seq"]) for r in table] == list(range(len(VALUES) + 20))
    assert table[0]["value"] == "21.5" and table[5]["value"] == "true" and table[8]["value"] == "0001ff"
    assert json.loads(table[9]["value"])["y"] == -2


def test_malformed_datagrams_change_only_counters(tmp_path, caplog):
    db = str(tmp_path / "m.db")
    rng = random.Random(1)
    good = TestNode(1)
    bad_node = TestNode(2)
    valid = cbor2.dumps(Event(3, 0, 0, 1, "x/y", 1.0).to_fields())
    junk = {
        "random": [bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 60))) for _ in range(30)],
        "truncated": [valid[:k] for k in range(1, len(valid))],
        "oversize": [cbor2.dumps([head(codes.KIND_EVENT), 4, 0, 0, 0, "big", "x" * 200] + [0] * 1300)],
        "bad_version": [cbor2.dumps([0x21, 1, 0, 0, 0, "a", 1]), cbor2.dumps([0x40, 1])],
        "invalid": [cbor2.dumps([head(codes.KIND_EVENT), "one", 0, 0, 0, "a", 1]),
                    cbor2.dumps([head(codes.KIND_EVENT), 1, 0, -1, 0, "a", 1]),
                    cbor2.dumps([head(codes.KIND_EVENT), 1, 0, 0, 0, "a/#", 1]),
                    cbor2.dumps([head(codes.KIND_BATCH), 1, 0, 0, 0, [0, "a"]]),
                    cbor2.dumps([head(codes.KIND_STATUS), 1, 0]),
                    cbor2.dumps({"not": "an array"}), cbor2.dumps([]), cbor2.dumps([True, 1])],
        "trailing": [valid + b"\x00", valid + valid],
    }

    async def main():
        st = station(sinks=[SQLiteSink(db)])
        await st.start()
        target = st.addresses[0]
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        stream = [d for ds in junk.values() for d in ds]
        rng.shuffle(stream)
        sent_good = 0
        for i, d in enumerate(stream):
            tx.sendto(d, target)
            if i % 3 == 0:
                tx.sendto(good.event("ok/t", i), target)
                sent_good += 1
        # a kind from the future, and a message with extra fields: counted, not malformed
        tx.sendto(cbor2.dumps([head(20), 1, 2, 3]), target)
        tx.sendto(cbor2.dumps([head(codes.KIND_EVENT), 1, 0, good.seq, 99, "ok/t", 5.0, 0, "new", 1]),
                  target)
        good.seq += 1
        sent_good += 1
        await until(lambda: st.counters["datagrams"] == len(stream) + sent_good + 1)
        await st.stop()
        tx.close()
        return st, sent_good, len(stream)

    with caplog.at_level(logging.WARNING, logger="starling.base"):
        st, sent_good, n_bad = run(main())
    s = st.summary()
    assert s["malformed"] == n_bad
    reasons = s["malformed_reasons"]
    assert reasons["oversize"] == 1 and reasons["bad_version"] == 2
    assert reasons["trailing_bytes"] >= 2       # random bytes often start with a whole CBOR item
    assert reasons["invalid"] >= len(junk["invalid"])
    assert s["unknown_kind"] == 1 and s["extra_fields"] == 1
    assert s["nodes"]["1"]["received"] == sent_good and s["nodes"]["1"]["lost"] == 0
    assert list(s["nodes"]) == ["1"]
    assert [r.seq for r in read_db(db)] == list(range(sent_good))
    # rate-limited log: one source, far fewer lines than bad datagrams, source named
    lines = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert 1 <= len(lines) <= 3 and "127.0.0.1" in lines[0].getMessage()


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def _limited_log(**kw):
    lg = logging.getLogger("starling.test.limited")
    lg.propagate = False
    lg.setLevel(logging.INFO)
    lg.handlers[:] = [_Lines()]
    t = [100.0]
    return RateLimitedLog(lg, clock=lambda: t[0], **kw), lg.handlers[0].lines, t


def test_log_is_limited_per_source_and_over_all_sources():
    log, lines, t = _limited_log(max_lines=20)
    # one source: one line a second, the next one says how many were held back
    assert log(logging.WARNING, ("malformed", "10.0.0.1"), "bad from %s", "10.0.0.1")
    assert not log(logging.WARNING, ("malformed", "10.0.0.1"), "bad from %s", "10.0.0.1")
    t[0] += 1.0
    assert log(logging.WARNING, ("malformed", "10.0.0.1"), "bad from %s", "10.0.0.1")
    assert lines == ["bad from 10.0.0.1", "bad from 10.0.0.1 (1 similar suppressed)"]
    del lines[:]
    # 5,000 sources within one second (forged addresses cost a sender nothing): 20 lines,
    # then one that counts the rest once the second is over
    t[0] += 1.0
    logged = sum(log(logging.WARNING, ("malformed", "10.1.%d.%d" % divmod(i, 256)), "bad %d", i)
                 for i in range(5000))
    assert logged == 20 and lines == ["bad %d" % i for i in range(20)]
    log.tick()                                   # the second is not over: nothing yet
    assert len(lines) == 20
    t[0] += 1.0
    log.tick()
    assert lines[20:] == ["4980 log lines suppressed in 1.0 s (over 20 per 1 s from all "
                          "sources; the counters have every one)"]
    assert len(log._seen) <= LOG_SOURCES
    # the summary took one of the new second's lines; the rest are there for new sources
    logged = sum(log(logging.WARNING, ("rejected", "10.2.0.%d" % i), "rej %d", i) for i in range(30))
    assert logged == 19
    log.flush()                                  # at stop: whatever is pending
    assert lines[-1].startswith("11 log lines suppressed in 0.0 s")


def test_a_flood_from_many_addresses_logs_a_bounded_number_of_lines(caplog):
    # 250 source addresses on loopback (127.0.3.x), 4 garbage datagrams each, between
    # good events: every bad one counted, every good one stored, at most 20 log lines
    # a second plus the lines that say how many were suppressed
    async def main():
        st = station()
        await st.start()
        target = st.addresses[0]
        good = TestNode(1, target=target)
        senders = []
        for i in range(250):
            tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            tx.bind(("127.0.3.%d" % (i + 1), 0))
            senders.append(tx)
        t0 = time.monotonic()
        for k in range(4):
            for tx in senders:
                tx.sendto(b"\xff\x00garbage", target)
            good.send(good.event("ok/t", k))
        await until(lambda: st.counters["datagrams"] == 1004)
        await asyncio.sleep(1.3)                 # a tick after the second is over
        elapsed = time.monotonic() - t0
        await st.stop()
        for tx in senders:
            tx.close()
        good.close()
        return st.summary(), elapsed

    with caplog.at_level(logging.WARNING, logger="starling.base"):
        s, elapsed = run(main())
    assert s["malformed"] == 1000
    assert s["nodes"]["1"]["received"] == 4 and s["nodes"]["1"]["lost"] == 0
    bad = [r.getMessage() for r in caplog.records if "malformed datagram from" in r.getMessage()]
    summaries = [r.getMessage() for r in caplog.records if "log lines suppressed" in r.getMessage()]
    assert 20 <= len(bad) <= 20 * (int(elapsed) + 1)
    assert summaries and all("from all sources" in m for m in summaries)
    held = sum(int(m.split()[0]) for m in summaries)
    assert len(bad) + held <= 1000 and held >= 1000 - 20 * (int(elapsed) + 1) - 250


def test_authentication(tmp_path):
    key = Key(bytes(range(32)))
    other = Key(b"k" * 32)
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps({"5": bytes(range(32)).hex(), "6": (b"k" * 32).hex()}))
    keys = load_keys(str(keys_file))

    async def main():
        st = station(keys=keys)
        await st.start()
        target = st.addresses[0]
        signer = TestNode(5, key=key, target=target)
        plain = TestNode(5, target=target)
        forger = TestNode(5, key=other, target=target)          # wrong key for node 5
        good = signer.event("a/b", 1)
        signer.send(good)
        signer.send(signer.batch([("a/b", i) for i in range(5)]))
        plain.seq = 10
        plain.send(plain.event("a/b", 2))                        # unsigned
        forger.seq = 11
        forger.send(forger.event("a/b", 3))                      # forged tag
        signer.send(good)                                        # replayed datagram
        tampered = bytearray(signer.event("a/b", 4))
        tampered[-12] ^= 1                                       # flip a bit in the inner message
        signer.send(bytes(tampered))
        # node 6's key signing a message that claims to be node 5
        liar = TestNode(6, key=other, target=target)
        inner = cbor2.dumps(Event(5, 0, 20, 1, "a/b", 9).to_fields())
        liar.send(cbor2.dumps([head(codes.KIND_SIGNED), 6, inner, other.tag(inner)]))
        signer.send(signer.event("a/b", 5))                      # good again
        await until(lambda: st.counters["datagrams"] == 8)
        await st.stop()
        return st.summary()

    s = run(main())
    assert s["rejected"] == 5
    assert s["rejected_reasons"] == {"unsigned": 1, "bad_tag": 2, "replay": 1, "node_mismatch": 1}
    n = s["nodes"]["5"]
    assert n["received"] == 7 and n["duplicates"] == 0


def test_signed_batch_replay_and_partial_overlap_rejected():
    key = Key(b"s" * 16)
    st = BaseStation(udp=[], announce=False, keys={9: key})
    node = TestNode(9, key=key)
    b1 = node.batch([("t", i) for i in range(4)])            # seqs 0..3
    st.ingest(b1)
    st.ingest(b1)                                             # replay
    st.ingest(node.batch([("t", 9)] * 3, seq0=2))            # overlaps 2..3: replay
    st.ingest(node.batch([("t", 1)] * 3))                     # 4..6 fresh
    assert st.counters["rejected"] == 2
    assert st.nodes[9].totals()["received"] == 7


def test_signed_message_without_keys_is_rejected():
    st = BaseStation(udp=[], announce=False)
    st.ingest(TestNode(1, key=Key(b"z" * 16)).event())
    assert st.rejected_reasons == {"no_keys": 1}


def test_node_ids_beyond_max_nodes_are_rejected_and_the_others_carry_on(caplog):
    # a sender without a key that invents a node id per datagram: the station accounts
    # for max_nodes ids and rejects the rest, whatever the kind, instead of growing
    from protocol.messages import DeadLetter
    st = BaseStation(udp=[], announce=False, max_nodes=3)
    known = [TestNode(i) for i in (1, 2, 3)]
    for n in known:
        st.ingest(n.event("t", 1))
    with caplog.at_level(logging.WARNING, logger="starling.base"):
        for i in range(100, 400):
            n = TestNode(i)
            st.ingest(n.event("t", 1) if i % 3 == 0 else n.batch([("t", 1), ("t", 2)])
                      if i % 3 == 1 else n.status())
        st.ingest(DeadLetter(999, 1, [[1, 4]]).encode())
    assert sorted(st.nodes) == [1, 2, 3]
    assert st.rejected_reasons == {"too_many_nodes": 301} and st.counters["rejected"] == 301
    assert st.counters["readings"] == 3
    for n in known:                                   # the known nodes go on as before
        st.ingest(n.event("t", 2))
        st.ingest(n.status())
    for i in (1, 2, 3):
        t = st.nodes[i].totals()
        assert t["received"] == 2 and t["lost"] == 0
    assert "already accounting for 3 nodes (max_nodes)" in caplog.text
    assert len([r for r in caplog.records if "max_nodes" in r.getMessage()]) <= 2  # rate-limited
    for bad in (0, -1, "3"):
        with pytest.raises(ValueError, match="max_nodes"):
            BaseStation(udp=[], announce=False, max_nodes=bad)


def test_last_values_are_bounded_over_all_nodes(monkeypatch):
    # a node's new topic gets no last value once the station keeps LAST_TOTAL of them;
    # its readings are still accounted; topics already kept go on updating
    from base_station import station as station_mod
    monkeypatch.setattr(station_mod, "LAST_TOTAL", 10)
    st = BaseStation(udp=[], announce=False)
    nodes = [TestNode(i) for i in (1, 2, 3)]
    for n in nodes[:2]:
        for k in range(4):
            st.ingest(n.event("t%d" % k, k))               # 8 kept
    st.ingest(nodes[2].batch([("b%d" % k, k) for k in range(5)]))   # room for 2 of 5
    assert [len(st.nodes[i].last) for i in (1, 2, 3)] == [4, 4, 2]
    assert st.nodes[3].last == {"b0": 0, "b1": 1}
    st.ingest(nodes[2].event("new", 1))                    # no room
    st.ingest(nodes[0].event("t0", 99))                    # kept topics update
    st.ingest(nodes[2].batch([("b1", 7), ("b4", 4)]))
    assert st.nodes[1].last["t0"] == 99 and st.nodes[3].last == {"b0": 0, "b1": 7}
    assert st._last_total == 10 == sum(len(a.last) for a in st.nodes.values())
    assert st.nodes[3].totals()["received"] == 8 and st.counters["readings"] == 17


def test_announcer_sends_announce_that_decodes():
    async def main():
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind(("127.0.0.1", 0))
        rx.setblocking(False)
        st = station(announce=True, discovery=[rx.getsockname()], base_id="lab-base",
                     filters=["sensors/#", "alarm/+"], max_rate=50, lease=30)
        await st.start()
        loop = asyncio.get_running_loop()
        data = await asyncio.wait_for(loop.sock_recv(rx, 2048), 2)
        port = st.addresses[0][1]
        await st.stop()
        bye = await asyncio.wait_for(loop.sock_recv(rx, 2048), 2)
        rx.close()
        return data, bye, port

    data, bye, port = run(main())
    msg = from_fields(cbor2.loads(data))
    assert isinstance(msg, Announce)
    assert (msg.base, msg.host, msg.port, msg.filters, msg.max_rate, msg.lease) == (
        "lab-base", "", port, ["sensors/#", "alarm/+"], 50, 30)
    assert abs(msg.wall_ms - now_ms()) < 10_000
    goodbye = from_fields(cbor2.loads(bye))
    assert goodbye.lease == 0 and goodbye.base == "lab-base"


def test_announce_period_is_lease_over_3_but_never_above_5_s():
    """A node that boots hears of a base within 5 s, whatever the lease."""
    from base_station.station import ANNOUNCE_EVERY_MAX

    async def main(lease):
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind(("127.0.0.1", 0))
        st = station(announce=True, discovery=[rx.getsockname()], lease=lease)
        await st.start()
        interval = st.announcer.interval
        await st.stop()
        rx.close()
        return interval

    assert ANNOUNCE_EVERY_MAX == 5.0
    assert run(main(60)) == 5.0
    assert run(main(6)) == 2.0


def test_subscribe_iterator_and_callback_with_filters():
    async def main():
        st = station()
        await st.start()
        node = TestNode(3, target=st.addresses[0])
        temps = st.subscribe("sensors/+/temp")
        seen = []
        unregister = st.on_reading(seen.append, "sensors/#")
        node.send(node.event("sensors/a/temp", 20.0), node.event("sensors/a/hum", 40),
                  node.batch([("sensors/b/temp", 21.0), ("other/x", 1), ("sensors/c/temp", 22.0)]))
        got = [await temps.get(timeout=2) for _ in range(3)]
        await until(lambda: len(seen) == 4)
        unregister()
        node.send(node.event("sensors/a/temp", 23.0))
        r = await temps.get(timeout=2)
        temps.close()
        rest = [x async for x in temps]
        await st.stop()
        return got, seen, r, rest

    got, seen, last, rest = run(main())
    assert [(r.topic, r.value, r.seq) for r in got] == [
        ("sensors/a/temp", 20.0, 0), ("sensors/b/temp", 21.0, 2), ("sensors/c/temp", 22.0, 4)]
    assert got[0].node == 3 and got[0].epoch == 0 and got[0].t == 10 and got[0].time is None
    assert got[0].arrival == pytest.approx(time.time(), abs=30)
    assert [r.topic for r in seen] == ["sensors/a/temp", "sensors/a/hum", "sensors/b/temp",
                                       "sensors/c/temp"]
    assert last.value == 23.0 and rest == []


def test_subscription_bounded_drops_oldest():
    st = BaseStation(udp=[], announce=False)
    sub = st.subscribe("#", maxsize=3)
    node = TestNode(1)
    for i in range(5):
        st.ingest(node.event("t", i))
    assert sub.dropped == 2
    assert [sub.get_nowait().value for _ in range(3)] == [2, 3, 4]


def test_accounting_through_station_status_trailing_loss_and_time():
    tb = 1_700_000_000_000
    st = BaseStation(udp=[], announce=False)
    node = TestNode(4, time_base=tb)
    st.ingest(node.status(last_seq=None))
    for seq in (0, 1, 3):
        st.ingest(node.event("t", seq, seq=seq))
    node.seq = 10
    st.ingest(node.status())                                     # last_seq 9: 4..9 missing too
    node.reboot()
    st.ingest(node.event("t", 0))
    s = st.summary()["nodes"]["4"]
    assert (s["received"], s["lost"], s["reboots"], s["epoch"]) == (4, 7, 1, 1)
    assert s["status"]["firmware"] == "test-0.1"
    got = []
    st.on_reading(got.append)
    st.ingest(TestNode(4, epoch=0, time_base=tb).event("t", 2, seq=2, t=500))   # late, old epoch
    assert got[0].time == (tb + 500) / 1000 and got[0].epoch == 0
    assert st.summary()["nodes"]["4"]["lost"] == 6


def test_latency_from_the_node_timestamp_to_arrival():
    # arrival (the station's clock) minus the node's time of the newest reading in each
    # new EVENT or BATCH, once a STATUS gave the epoch's time base
    tb = 1_700_000_000_000
    now = [0.0]
    st = BaseStation(udp=[], announce=False, clock=lambda: now[0])
    node = TestNode(5, time_base=tb)
    now[0] = (tb + 1000) / 1000
    st.ingest(node.event("t", 1, t=990))                      # no STATUS yet: no time base
    assert st.summary()["nodes"]["5"]["latency_ms"] is None
    st.ingest(node.status())
    for k, delay in enumerate((12, 30, 18, 25, 40)):
        t = 2000 + 100 * k
        now[0] = (tb + t + delay) / 1000
        st.ingest(node.event("t", k, t=t))
    now[0] = (tb + 5000 + 7) / 1000
    st.ingest(node.event("t", 9, seq=3, t=5000))               # a duplicate: not a sample
    lat = st.summary()["nodes"]["5"]["latency_ms"]
    assert (lat["n"], lat["p50"], lat["max"], lat["max_recent"]) == (5, 25.0, 40.0, 40.0)
    now[0] = (tb + 3000 + 1500) / 1000                       # BATCH: its newest reading
    node.t = 2900
    st.ingest(node.batch([("t", 1), ("t", 2), ("t", 3)]))   # t 2910, 2920, 2930
    lat = st.summary()["nodes"]["5"]["latency_ms"]
    assert lat["n"] == 6 and lat["max"] == 4500 - 2930
    assert st.summary()["nodes"]["5"]["received"] == 9


def test_latency_keeps_the_last_64_and_the_maximum_of_all():
    from base_station.accounting import Latency
    assert Latency.MASK == 63        # BaseStation._reading inlines add() with this mask
    lat = Latency()
    for i in range(200):
        lat.add(float(i if i != 7 else 1000))
    s = lat.summary()
    assert s["n"] == 200 and s["max"] == 1000.0 and s["max_recent"] == 199.0
    assert s["p50"] == 168.0 and s["p95"] == 196.0       # over 136..199
    assert lat.summary() is s                               # cached until the next sample


@pytest.mark.parametrize("source", ["proc", "ovfl"])
def test_kernel_drops_counted_exactly(source, monkeypatch):
    # proc: recvfrom, drops from /proc/net/udp; ovfl (a system where /proc does not list
    # the socket): recvmsg and the SO_RXQ_OVFL count a datagram carries when it is
    # queued, so one more is sent once the buffer has room again
    from base_station import listener
    if source == "ovfl":
        monkeypatch.setattr(listener, "proc_udp_drops", lambda sock: None)

    async def main():
        st = station(rcvbuf=4096)
        await st.start()
        assert st.listeners[0]._drops_from_proc is (source == "proc")
        node = TestNode(8, target=st.addresses[0])
        n = 3000
        for _ in range(n):          # the loop is not running: the socket buffer overflows
            node.send(node.event("k", 1.0))
        await asyncio.sleep(0.2)    # the loop drains what the buffer held
        if source == "ovfl":
            node.send(node.event("k", 1.0))
            n += 1
        await until(lambda: st.counters["datagrams"] + st.kernel_drops >= n)
        s = st.summary()
        await st.stop()
        return s, n

    s, n = run(main())
    if s["kernel_drops"] == 0:
        pytest.skip("no kernel drops provoked (SO_RXQ_OVFL unsupported or huge minimum buffer)")
    assert s["datagrams"] + s["kernel_drops"] == n
    # what the kernel dropped is, for the accounting, lost (trailing ones via STATUS)
    assert s["nodes"]["8"]["received"] == s["datagrams"]


def test_bind_failure_leaves_nothing_running():
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    try:
        st = station(udp=[("127.0.0.1", 0), taken.getsockname()])
        with pytest.raises(OSError) as e:
            run(st.start())
        assert st.listeners == []
        assert e.value.errno == errno.EADDRINUSE
        assert str(e.value).endswith("cannot receive on 127.0.0.1:%d: Address already in use "
                                     "(another station on that port?)" % taken.getsockname()[1])
    finally:
        taken.close()


def test_internal_errors_do_not_stop_ingest(monkeypatch):
    st = BaseStation(udp=[], announce=False)
    st.on_reading(lambda r: 1 / 0)
    node = TestNode(1)
    for _ in range(3):
        st.ingest(node.event())
    assert st.counters["callback_errors"] == 3
    assert st.nodes[1].totals()["received"] == 3


def test_handle_accepts_decoded_messages_for_a_chain_head():
    st = BaseStation(udp=[], announce=False)
    got = []
    st.on_reading(got.append)
    st.handle(Event(2, 0, 0, 5, "chain/t", 1.5), source="serial:/dev/ttyUSB0#hop1")
    assert got[0].value == 1.5
    assert st.summary()["nodes"]["2"]["source"] == "serial:/dev/ttyUSB0#hop1"


def test_no_stray_files(tmp_path):
    # sanity: a station without sinks writes nothing
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        st = BaseStation(udp=[], announce=False)
        st.ingest(TestNode(1).event())
        assert os.listdir(tmp_path) == []
    finally:
        os.chdir(cwd)


def test_a_sink_whose_reader_goes_is_let_go_and_the_others_get_everything(tmp_path, caplog):
    # a JSON Lines sink on a FIFO whose reader exits: the station stops writing there,
    # says so once, tells on_sink_gone, and the SQLite sink still gets every reading
    fifo = str(tmp_path / "readings.fifo")
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    db = str(tmp_path / "s.db")
    gone = []

    async def main():
        jl = JSONLSink(fifo)
        st = station(sinks=[SQLiteSink(db), jl])
        st.on_sink_gone = gone.append
        await st.start()
        node = TestNode(9, target=st.addresses[0])
        node.send(node.event("lab/t", 0))
        await until(lambda: st.counters["readings"] == 1)
        st.tick()
        assert os.read(reader, 4096).startswith(b'{"node":9,"epoch":0,"seq":0')
        os.close(reader)                                     # the reader goes
        for i in range(1, 200):
            node.send(node.event("lab/t", i))
        await until(lambda: st.counters["readings"] == 200)
        await asyncio.sleep(0.5)                             # ticks flush into the broken pipe
        await st.stop()
        node.close()
        return st, jl

    with caplog.at_level(logging.WARNING, logger="starling.base"):
        st, jl = run(main())
    said = [r.getMessage() for r in caplog.records if "jsonl" in r.getMessage()]
    assert said == ["sink jsonl: its reader has gone (broken pipe): no more output there"]
    assert gone == [jl] and st.sinks_gone == [jl] and jl not in st.sinks
    s = st.summary()
    assert s["sinks"]["jsonl"]["gone"] is True and s["nodes"]["9"]["received"] == 200
    assert [r.seq for r in read_db(db)] == list(range(200))


def test_a_status_about_a_predecessors_subscription_does_not_set_what_is_expected():
    # A base with our id crashed; the node, not yet told of us, reports on the old
    # subscription (since 0): applying it would count seqs 0..99, which the predecessor
    # received, as lost. Its time base is still taken.
    st = station(udp=[], base_id="lab")
    node = TestNode(3, time_base=1_700_000_000_000)
    node.seq = 100
    for _ in range(5):
        st.ingest(node.event("t", 1.0), ("127.0.0.1", 1))            # 100..104
    st.ingest(node.status(since=0, instance=st.instance ^ 1), ("127.0.0.1", 1))
    n = st.summary()["nodes"]["3"]
    assert (n["received"], n["lost"], n["skipped"]) == (5, 0, 0)
    assert st.counters["predecessor_status"] == 1
    assert n["status"]["time_base"] == 1_700_000_000_000
    # the node hears our ANNOUNCE: a fresh subscription from its next seq (105), a STATUS
    # naming our instance; 105 and 106 never arrive and the final STATUS counts them lost
    st.ingest(node.status(since=105, instance=st.instance), ("127.0.0.1", 1))
    node.seq = 107
    st.ingest(node.event("t", 2.0), ("127.0.0.1", 1))                # 107
    st.ingest(node.status(since=105, instance=st.instance), ("127.0.0.1", 1))
    n = st.summary()["nodes"]["3"]
    assert (n["received"], n["lost"], n["skipped"], n["next_seq"]) == (6, 2, 0, 108)
    # a STATUS without an instance (an older node) is applied as ever
    old = TestNode(4)
    old.seq = 10
    st.ingest(old.event("t", 1.0), ("127.0.0.1", 1))
    st.ingest(old.status(since=0), ("127.0.0.1", 1))
    assert st.summary()["nodes"]["4"]["lost"] == 10
    assert st.make_announce().instance == st.instance != 0


def test_a_node_whose_epochs_started_again_is_taken_as_a_new_boot(caplog):
    # node 7 ran at epoch 5; it comes back at epoch 1 (its flash erased, or another
    # board with its id). Before: everything from it was `stale`, never delivered.
    t = [1000.0]
    st = station(udp=[], clock=lambda: t[0])
    old = TestNode(7, epoch=5)
    st.ingest(old.status(), ("127.0.0.1", 1))
    for i in range(3):
        st.ingest(old.event("t", i), ("127.0.0.1", 1))
    # a late STATUS of epoch 4, sent before epoch 5 began (boot 40 s ago): stale as ever
    late = TestNode(7, epoch=4)
    late.t = 40000
    t[0] += 1.0
    st.ingest(late.status(), ("127.0.0.1", 1))
    n = st.summary()["nodes"]["7"]
    assert (n["epoch"], n["stale"], st.counters["epoch_restarts"]) == (5, 1, 0)
    # the re-flashed node boots (uptime 0.2 s) well after epoch 5 began
    t[0] += 30.0
    new = TestNode(7, epoch=1)
    new.t = 200
    with caplog.at_level(logging.WARNING, logger="starling.base"):
        st.ingest(new.status(), ("127.0.0.1", 1))
    for i in range(4):
        st.ingest(new.event("t", 10 + i), ("127.0.0.1", 1))
    n = st.summary()["nodes"]["7"]
    assert (n["epoch"], n["received"], n["lost"], n["reboots"], n["stale"]) == (1, 7, 0, 1, 1)
    assert st.counters["epoch_restarts"] == 1
    assert "booted again with epoch 1, not above the epoch 5" in caplog.text
    # a late message of the retired epochs is stale; its next boot (epoch 2) opens with
    # its STATUS as usual
    st.ingest(old.event("t", 99), ("127.0.0.1", 1))
    assert st.summary()["nodes"]["7"]["stale"] == 2
    new.reboot()
    st.ingest(new.status(), ("127.0.0.1", 1))
    st.ingest(new.event("t", 1), ("127.0.0.1", 1))
    n = st.summary()["nodes"]["7"]
    assert (n["epoch"], n["received"], n["reboots"], n["stale"]) == (2, 8, 2, 2)


def test_a_young_node_flashed_again_at_the_same_epoch_is_a_new_boot_and_drift_is_not():
    t = [1000.0]
    st = station(udp=[], clock=lambda: t[0])
    node = TestNode(3, epoch=1)
    st.ingest(node.status(), ("127.0.0.1", 1))
    for i in range(5):
        st.ingest(node.event("t", i), ("127.0.0.1", 1))
    # a week later its STATUS says uptime 604,770 s (its clock 50 ppm slow): no restart
    t[0] += 604800.0
    node.t = 604770000
    st.ingest(node.status(), ("127.0.0.1", 1))
    assert st.counters["epoch_restarts"] == 0
    # flashed again from scratch: epoch 1 once more, seq from 0, uptime 0.3 s
    t[0] += 60.0
    again = TestNode(3, epoch=1)
    again.t = 300
    st.ingest(again.status(), ("127.0.0.1", 1))
    for i in range(3):
        st.ingest(again.event("t", 100 + i), ("127.0.0.1", 1))
    n = st.summary()["nodes"]["3"]
    assert st.counters["epoch_restarts"] == 1
    assert (n["epoch"], n["received"], n["duplicates"], n["lost"], n["reboots"]) == (1, 8, 0, 0, 1)


def test_a_node_flashed_again_onto_a_closed_epoch_number_is_a_new_boot():
    # epochs 1..5 seen (1 and 2 closed: 3 kept), then flashed from scratch: epoch 1
    t = [1000.0]
    st = station(udp=[], clock=lambda: t[0])
    for e in range(1, 6):
        n = TestNode(9, epoch=e)
        st.ingest(n.status(), ("127.0.0.1", 1))
        st.ingest(n.event("t", e), ("127.0.0.1", 1))
        t[0] += 10.0
    late = TestNode(9, epoch=1)            # a late STATUS of the first boot: stale
    late.t = 45000
    st.ingest(late.status(), ("127.0.0.1", 1))
    assert st.counters["epoch_restarts"] == 0 and st.summary()["nodes"]["9"]["stale"] == 1
    again = TestNode(9, epoch=1)
    again.t = 500
    st.ingest(again.status(), ("127.0.0.1", 1))
    st.ingest(again.event("t", 0), ("127.0.0.1", 1))
    n = st.summary()["nodes"]["9"]
    assert st.counters["epoch_restarts"] == 1
    assert (n["epoch"], n["received"], n["reboots"], n["stale"]) == (1, 6, 5, 1)


def test_a_wall_clock_step_at_the_base_is_not_a_node_booting_again():
    # a base without a battery-backed clock: NTP steps its wall clock by an hour while a
    # young node runs. The restart check runs on the monotonic clock, so nothing happens.
    wall, mono = [1000.0], [50.0]
    st = station(udp=[], clock=lambda: wall[0], monotonic=lambda: mono[0])
    node = TestNode(4, epoch=2)
    st.ingest(node.status(), ("127.0.0.1", 1))
    st.ingest(node.event("t", 1), ("127.0.0.1", 1))
    wall[0] += 3600.0
    mono[0] += 10.0
    node.t = 10000
    st.ingest(node.status(), ("127.0.0.1", 1))
    n = st.summary()["nodes"]["4"]
    assert st.counters["epoch_restarts"] == 0 and (n["received"], n["reboots"]) == (1, 0)


def test_a_node_restarting_our_subscription_again_and_again_is_called_out(caplog):
    st = station(udp=[], base_id="lab")
    node = TestNode(6)

    def status(n):
        st.ingest(node.status(counters={codes.CTR_PUBLISHED: 0, codes.CTR_RESUBSCRIBED: n},
                              instance=st.instance), ("127.0.0.1", 1))

    with caplog.at_level(logging.WARNING, logger="starling.base"):
        status(0)
        status(1)          # one restart: a base restarted, nothing to say
        assert st.counters["base_id_shared"] == 0
        status(3)          # two more since the last STATUS: flipping between two stations
    assert st.counters["base_id_shared"] == 1
    assert "another station is announcing with our base id 'lab'" in caplog.text
    node.reboot()          # a new boot counts from 0 again
    status(0)
    assert st.counters["base_id_shared"] == 1
