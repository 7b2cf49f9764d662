"""Soak runs (`make soak`, marker `soak`; minutes each, not part of `make test`).

* A UDP fleet of 300 in-process nodes, a random one rebooted every 0.2 s, behind a lossy, duplicating,
  reordering relay, for 90 s, into a base station with a reader process and the SQLite
  sink: the station's accounting equals what the relay did for every node and epoch,
  every accounted reading is in SQLite exactly once, and the station's memory levels
  off (no growth with time).
* A serial chain of four real MicroPython nodes, 20 readings/s each, for 120 s on wires
  with bit errors and 1 % of bytes lost, a wire cut every 15 s and a middle node
  rebooted every 30 s: every event exactly once and in order, nothing evicted, and each
  node's heap bounded. (Before the link's stalled-window probe this schedule made nodes
  2-4 evict hundreds of events: docs/PERFORMANCE.md.)
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from base_station.sinks import SQLiteSink  # noqa: E402
from base_station.station import BaseStation  # noqa: E402
from sim.chain import Chain  # noqa: E402
from sim.fleet import Fleet  # noqa: E402
from test_chain_sim import Head, check_delivery, wait_for  # noqa: E402

pytestmark = pytest.mark.soak


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_soak_udp_fleet_into_a_reader_process_station_with_sqlite(tmp_path):
    db = tmp_path / "soak.db"

    async def go():
        sink = SQLiteSink(str(db), process=True)
        st = BaseStation(udp=[("127.0.0.1", 0)], announce=False, sinks=[sink], reader_process=True)
        await st.start()
        rss = []
        try:
            fleet = Fleet(300, runtime="cpython", bases=[st.addresses[0]], rate=20, loss=0.05,
                          dup=0.02, reorder=0.05, jitter_ms=5, seed=21, status_every_ms=1000,
                          reboot_every=0.2)
            await fleet.start()
            for _ in range(9):
                await asyncio.sleep(10)
                rss.append(_rss_kb())
            sim = await fleet.stop()
            last, deadline = None, time.monotonic() + 20
            while time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                if st.counters["datagrams"] == last:
                    break
                last = st.counters["datagrams"]
            st.flush()
            return sim, st.summary(), rss
        finally:
            await st.stop()

    sim, base, rss = asyncio.run(asyncio.wait_for(go(), 300))
    print("station RSS every 10 s (KB):", rss)
    assert list(base["reader"].values()) == ["process"]
    assert sim["reboots"] >= 200
    received = 0
    for nid, s in sim["nodes"].items():
        b = base["nodes"][nid]
        assert s["exact"], (nid, s)
        assert b["received"] + b["lost"] == s["published"], (nid, s, b)
        assert b["lost"] == s["dropped_by_sim"] and b["duplicates"] == s["duplicated_by_sim"], (nid, s, b)
        assert b["reboots"] == s["boots"] - 1, (nid, s, b)
        received += b["received"]
    assert received > 400_000 and base["kernel_drops"] == 0 and base["malformed"] == 0
    assert base["sinks"]["sqlite"]["written"] == received and base["sinks"]["sqlite"]["dropped"] == 0
    with sqlite3.connect(str(db)) as con:
        assert con.execute("SELECT COUNT(*) FROM readings").fetchone()[0] == received
    # memory levels off: the last 40 s grow by less than 10 % of the first reading
    assert max(rss[-4:]) - rss[4] < max(0.1 * rss[4], 8 * 1024), rss


def test_soak_chain_with_cuts_and_reboots():
    async def go():
        chain = Chain(4, ber=1e-4, drop=0.01, durable=True, rate=20, window=16, seed=5)
        await chain.start()
        head = Head(chain.head_path, chain)
        reboots = 0
        try:
            for second in range(1, 121):
                await asyncio.sleep(1.0)
                if second % 15 == 0:
                    chain.cut(1 + (second // 15) % 3, 2.0)
                if second % 30 == 10:
                    assert await chain.reboot(2 + (second // 30) % 2) > 1
                    reboots += 1
            published = await chain.pause()
            await wait_for(lambda: len(head.seen) >= sum(published.values()), 60)
        finally:
            head.close()
            summary = await chain.stop()
        return head, published, summary, reboots

    head, published, summary, reboots = asyncio.run(asyncio.wait_for(go(), 400))
    print("dups %d, published %s" % (head.dups, published))
    assert reboots == 4 and sum(published.values()) > 8000
    check_delivery(head, published, summary)
    for nid, s in summary["nodes"].items():
        assert s["mem_max"] - s["mem_boot"] < 48 * 1024, (nid, s["mem_boot"], s["mem_max"])
