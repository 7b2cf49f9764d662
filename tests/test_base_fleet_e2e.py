"""The whole UDP path with the base station's own accounting: real MicroPython node
processes publish through the simulator's impairment relay (loss, duplication,
reordering, jitter) to a BaseStation on 127.0.0.1, whose socket is read in its own
process or by a reader process. After the fleet stops (final STATUS from every node)
and a quiet period, the station's numbers equal what the relay did, node by node."""

from __future__ import annotations

import asyncio
import time

import pytest

from base_station.station import BaseStation
from sim.fleet import Fleet


@pytest.mark.parametrize("reader_process", [False, True], ids=["in-process", "reader-process"])
def test_station_accounting_equals_what_the_relay_did(reader_process):
    async def go():
        st = BaseStation(udp=[("127.0.0.1", 0)], announce=False, reader_process=reader_process)
        await st.start()
        try:
            fleet = Fleet(3, runtime="micropython", bases=[st.addresses[0]], rate=50, loss=0.2,
                          dup=0.1, reorder=0.1, jitter_ms=5, seed=11, status_every_ms=500)
            await fleet.start()
            await asyncio.sleep(1.5)
            sim = await fleet.stop()
            # quiet period: until the station's counts stop moving
            last, deadline = None, time.monotonic() + 10
            while time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                now = st.counters["datagrams"]
                if now == last:
                    break
                last = now
            return sim, st.summary()
        finally:
            await st.stop()

    sim, base = asyncio.run(asyncio.wait_for(go(), 90))
    assert list(base["reader"].values()) == ["process" if reader_process else "in-process"]
    dropped = 0
    for nid, s in sim["nodes"].items():
        b = base["nodes"][nid]
        assert s["exact"] and s["epochs"] == [1]
        assert b["received"] + b["lost"] == s["published"], (nid, s, b)
        assert b["lost"] == s["dropped_by_sim"], (nid, s, b)
        assert b["duplicates"] == s["duplicated_by_sim"], (nid, s, b)
        assert b["skipped"] == 0 and b["reboots"] == 0
        dropped += s["dropped_by_sim"]
    assert dropped > 0 and sum(b["out_of_order"] for b in base["nodes"].values()) > 0
    assert base["malformed"] == 0 and base["kernel_drops"] == 0


def test_station_latency_includes_the_relay_delay():
    # the nodes take their time base from the host clock (the simulator's default), so
    # the base's latency of every message is at least what the relay held it back
    async def go():
        st = BaseStation(udp=[("127.0.0.1", 0)], announce=False)
        await st.start()
        try:
            fleet = Fleet(2, runtime="micropython", bases=[st.addresses[0]], rate=20,
                          delay_ms=60, seed=3, status_every_ms=300)
            await fleet.start()
            await asyncio.sleep(2.0)
            await fleet.stop()
            await asyncio.sleep(0.3)
            return st.summary()
        finally:
            await st.stop()

    base = asyncio.run(asyncio.wait_for(go(), 60))
    for nid, b in base["nodes"].items():
        lat = b["latency_ms"]
        assert lat is not None and lat["n"] >= 10, (nid, b)
        assert lat["p50"] >= 57 and min(lat["p50"], lat["p95"], lat["max"]) >= 57, (nid, lat)
