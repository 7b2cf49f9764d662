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


async def quiet(st: BaseStation, timeout: float = 10.0) -> None:
    """A quiet period: until the station's datagram count stops moving (at most `timeout` s)."""
    last, deadline = None, time.monotonic() + timeout
    while time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        if st.counters["datagrams"] == last:
            return
        last = st.counters["datagrams"]


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
            await quiet(st)
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


def test_a_base_that_crashed_and_restarted_counts_no_false_loss(tmp_path):
    # Base "lab" runs as `starling listen`, the nodes subscribe through discovery, then
    # it is killed (no goodbye ANNOUNCE: the nodes still hold its subscription) and a
    # new process with the same base id and port takes over. Before ANNOUNCE carried
    # an instance, the new process learned the old subscription's `since` from STATUS
    # and counted everything the first one had received as lost.
    import os
    import signal
    import socket
    import subprocess
    import sys

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        disc = s.getsockname()[1]
    discovery = "127.255.255.255:%d" % disc

    async def go():
        fleet = Fleet(2, runtime="micropython", bases=[], discovery_port=disc, rate=20,
                      status_every_ms=300)
        await fleet.start()
        first = subprocess.Popen(
            [sys.executable, "-m", "base_station.cli", "listen", "--udp", "127.0.0.1:%d" % port,
             "--discovery", discovery, "--base-id", "lab", "--lease", "3", "--no-db",
             "--plain", "--every", "0.5"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=str(tmp_path))
        try:
            assert first.stdout.readline().startswith("starling: listening on")
            seen = 0
            deadline = time.monotonic() + 20
            while seen < 20 and time.monotonic() < deadline:     # the first base's lines
                line = await asyncio.get_running_loop().run_in_executor(None, first.stdout.readline)
                if line.startswith("t="):
                    seen = int(line.split("received=")[1].split()[0])
            os.kill(first.pid, signal.SIGKILL)                     # a crash: no goodbye
            first.wait(10)
        finally:
            if first.poll() is None:
                first.kill()
        st = BaseStation(udp=[("127.0.0.1", port)], discovery=[("127.255.255.255", disc)],
                         base_id="lab", lease=3)
        await st.start()
        try:
            await asyncio.sleep(2.0)
            sim = await fleet.stop()
            await quiet(st)
            return seen, sim, st.summary()
        finally:
            await st.stop()

    seen, sim, base = asyncio.run(asyncio.wait_for(go(), 120))
    assert seen >= 20                                   # the first base had readings
    for nid, s in sim["nodes"].items():
        b = base["nodes"][nid]
        assert b["lost"] == 0, (nid, b, s)
        assert b["received"] >= 10 and b["next_seq"] == s["published"], (nid, b, s)
        assert s["since"]["lab"] > 0                    # started afresh for the new base


def test_a_node_flashed_again_from_scratch_is_a_new_boot_for_a_running_station():
    # a MicroPython node runs at epoch 1; its flash is erased (the epoch file goes) and
    # it boots at epoch 1 again, seq from 0. Before, the station took the new boot's
    # readings for duplicates of the old ones and delivered none of them.
    async def go():
        st = BaseStation(udp=[("127.0.0.1", 0)], announce=False)
        await st.start()
        fleet = Fleet(1, runtime="micropython", bases=[st.addresses[0]], rate=20,
                      status_every_ms=500)
        try:
            await fleet.start()
            await asyncio.sleep(6.0)                      # past the 5-s margin
            assert await fleet.reboot(1, forget_epoch=True) == 1
            await asyncio.sleep(1.5)
            sim = await fleet.stop()
            await quiet(st)
            return sim, st.summary()
        finally:
            await st.stop()

    sim, base = asyncio.run(asyncio.wait_for(go(), 90))
    b, s = base["nodes"]["1"], sim["nodes"]["1"]
    assert base["epoch_restarts"] == 1
    assert (b["epoch"], b["reboots"], b["duplicates"], b["lost"], b["stale"]) == (1, 1, 0, 0, 0), b
    assert b["received"] == s["published"] > 0, (b, s)


def test_two_stations_with_one_base_id_are_called_out(caplog):
    # a misconfiguration: two stations announce as "lab"; each node's one entry for "lab"
    # flips between them (each gets part of the stream, as `skipped`). The node counts
    # the entries it started afresh; a station seeing that count jump says so.
    import logging
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        disc = s.getsockname()[1]

    async def go():
        fleet = Fleet(1, runtime="micropython", bases=[], discovery_port=disc, rate=20,
                      status_every_ms=500)
        await fleet.start()
        stations = [BaseStation(udp=[("127.0.0.1", 0)], discovery=[("127.255.255.255", disc)],
                                base_id="lab", lease=1) for _ in range(2)]
        for st in stations:
            await st.start()
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if sum(st.counters["base_id_shared"] for st in stations):
                    break
                await asyncio.sleep(0.2)
        finally:
            await fleet.stop()
            for st in stations:
                await st.stop()
        return [st.counters["base_id_shared"] for st in stations]

    with caplog.at_level(logging.WARNING, logger="starling.base"):
        shared = asyncio.run(asyncio.wait_for(go(), 60))
    assert sum(shared) >= 1, shared
    assert "another station is announcing with our base id 'lab'" in caplog.text
