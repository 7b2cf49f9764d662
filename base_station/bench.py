"""Throughput of the base station: `python -m base_station.bench [--udp] [--db PATH]`.

* in-process: pre-encoded BATCH datagrams (20 readings, the firmware's BATCH_MAX, and
  60 readings with short topics, still under 1400 bytes) and single-EVENT datagrams
  fed to BaseStation.ingest: decode + validate + account + deliver, no socket.
* --udp: a sender process blasts the same datagrams over loopback at a station
  listening on 127.0.0.1; reports readings/s received and kernel drops.
* --db: with the SQLite sink: the ingest loop alone (what the receive loop can take
  while the sink queues) and end to end (including the final flush), with the cyclic
  GC's collections and longest pause during the ingest loop.

What it does not measure: real radio links, many senders, the rich live view.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import subprocess
import sys
import tempfile
import time

from base_station.sinks import SQLiteSink
from base_station.station import BaseStation
from base_station.testing import TestNode


def datagrams(per_batch: int, count: int, nodes: int = 10) -> list[bytes]:
    """`count` datagrams round-robin over `nodes` nodes: BATCHes of `per_batch`
    readings, or single EVENTs when per_batch is 1."""
    ns = [TestNode(i + 1) for i in range(nodes)]
    if per_batch == 1:
        return [ns[k % nodes].event("sensors/%d/temp" % (k % 3), 21.5) for k in range(count)]
    topic = "sensors/%d/temp" if per_batch <= 20 else "s/%d/t"
    out = []
    for k in range(count):
        n = ns[k % nodes]
        out.append(n.batch([(topic % (j % 3), 20.0 + j * 0.5) for j in range(per_batch)]))
    return out


def in_process(per_batch: int, count: int, db: str | None, process: bool = True) -> float:
    dg = datagrams(per_batch, count)
    sinks = [SQLiteSink(db, process=process)] if db else []
    st = BaseStation(udp=[], announce=False, sinks=sinks)
    t0 = time.perf_counter()
    for d in dg:
        st.ingest(d, ("127.0.0.1", 1))
    for s in sinks:
        s.flush()
    dt = time.perf_counter() - t0
    for s in sinks:
        s.close()
    assert st.counters["readings"] == per_batch * count, st.summary()
    return per_batch * count / dt


def in_process_detail(per_batch: int, count: int, db: str | None, process: bool = True) -> dict:
    """Like in_process, with the ingest loop timed apart from the final flush:
    {"ingest": readings/s while ingesting, "end_to_end": readings/s including the
    flush, "cpu_us": CPU µs per reading of this process during the loop,
    "gc_collections": [gen0, gen1, gen2], "gc_max_pause_ms", "gc_total_ms"}."""
    dg = datagrams(per_batch, count)
    sinks = [SQLiteSink(db, process=process)] if db else []
    st = BaseStation(udp=[], announce=False, sinks=sinks)
    pauses: list[list[float]] = [[], [], []]
    started = [0.0]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses[info["generation"]].append(time.perf_counter() - started[0])

    gc.callbacks.append(on_gc)
    try:
        source = ("127.0.0.1", 1)
        t0 = time.perf_counter()
        c0 = time.process_time()
        for d in dg:
            st.ingest(d, source)
        t1 = time.perf_counter()
        c1 = time.process_time()
    finally:
        gc.callbacks.remove(on_gc)
    for s in sinks:
        s.flush()
    t2 = time.perf_counter()
    for s in sinks:
        s.close()
    n = per_batch * count
    assert st.counters["readings"] == n, st.summary()
    assert all(s.written == n for s in sinks), [s.stats() for s in sinks]
    every = [p for gen in pauses for p in gen]
    return {"ingest": n / (t1 - t0), "end_to_end": n / (t2 - t0), "cpu_us": (c1 - c0) / n * 1e6,
            "gc_collections": [len(p) for p in pauses],
            "gc_max_pause_ms": max(every) * 1e3 if every else 0.0,
            "gc_total_ms": sum(every) * 1e3}


_SENDER = """
import socket, sys, pickle
dg = pickle.load(sys.stdin.buffer)
port = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for d in dg:
    s.sendto(d, ("127.0.0.1", port))
"""


async def over_udp(per_batch: int, count: int) -> tuple[float, int, int]:
    import pickle
    dg = datagrams(per_batch, count)
    st = BaseStation(udp=[("127.0.0.1", 0)], announce=False)
    await st.start()
    port = st.addresses[0][1]
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", _SENDER, str(port),
                                                stdin=subprocess.PIPE)
    assert proc.stdin is not None
    proc.stdin.write(pickle.dumps(dg))
    await proc.stdin.drain()
    proc.stdin.close()
    while st.counters["datagrams"] == 0:
        await asyncio.sleep(0.001)
    t0 = time.perf_counter()         # from the first datagram received ...
    t1, last = t0, 0
    while time.perf_counter() - t1 < 0.2:
        await asyncio.sleep(0.001)
        n = st.counters["datagrams"]
        if n != last:
            last, t1 = n, time.perf_counter()   # ... to the last one
    await proc.wait()
    dt = t1 - t0
    await st.stop()
    return st.counters["readings"] / dt, st.counters["readings"], st.kernel_drops


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m base_station.bench")
    p.add_argument("--count", type=int, default=20000, help="datagrams per run")
    p.add_argument("--udp", action="store_true", help="also over loopback UDP from another process")
    p.add_argument("--db", action="store_true", help="also with the SQLite sink (temporary file)")
    a = p.parse_args(argv)
    for per in (1, 20, 60):
        print("in-process, %d readings/datagram: %.0f readings/s" % (per, in_process(per, a.count, None)))
    if a.db:
        for process in (False, True):
            with tempfile.TemporaryDirectory() as d:
                r = in_process_detail(20, a.count * 5, os.path.join(d, "bench.db"), process)
            print("in-process + SQLite (writer %s), 20 readings/datagram: ingest %.0f readings/s"
                  " (%.2f µs CPU each), %.0f readings/s end to end; GC collections %s, longest"
                  " pause %.1f ms" % ("process" if process else "thread", r["ingest"], r["cpu_us"],
                                      r["end_to_end"], "/".join(map(str, r["gc_collections"])),
                                      r["gc_max_pause_ms"]))
    if a.udp:
        for per in (20, 60):
            rate, got, drops = asyncio.run(over_udp(per, a.count))
            print("UDP loopback, %d readings/datagram: %.0f readings/s received (%d readings, "
                  "%d datagrams dropped by the kernel)" % (per, rate, got, drops))
    return 0


if __name__ == "__main__":
    sys.exit(main())

