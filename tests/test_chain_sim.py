"""Real MicroPython chain nodes (firmware/chain.py) on virtual UART wires (sim.chain).

The head is a small CPython stand-in for the base station's serial head: pyserial on the
head pty, protocol.framing, a protocol.link Link(node=0, hop=0) with the chain's link
parameters, and deduplication by (node, epoch, seq). It checks what the base station must
see: every event accepted by publish() exactly once, in per-node order, nothing lost,
despite bit errors, dropped bytes, a cut wire and a node reboot.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from pathlib import Path

import pytest
import serial

sys.path.insert(0, str(Path(__file__).resolve().parent))

from firmware.chain import link_kwargs  # noqa: E402
from protocol import messages  # noqa: E402
from protocol.framing import FrameDecoder, encode_frame  # noqa: E402
from protocol.link import Link  # noqa: E402
from sim import cli  # noqa: E402
from sim.chain import Chain, auto_frame_bytes  # noqa: E402


class Head:
    """The base side of wire 0, in a thread: Link(node=0, hop=0) over pyserial."""

    def __init__(self, path: str, chain: Chain):
        self.ser = serial.Serial(path, timeout=0.005)
        self.link = Link(node=0, hop=0, **link_kwargs(chain.window, chain.max_payload, chain.baud,
                                                      frame_bytes=chain.frame_bytes))
        self.dec = FrameDecoder()
        self.lock = threading.Lock()
        self.seen: set[tuple[int, int, int]] = set()
        self.order: dict[int, list[tuple[int, int]]] = {}
        self.dups = 0
        self.received: list[bytes] = []          # every message, in arrival order
        self.statuses: list[messages.Status] = []
        self.deadletters: list[messages.DeadLetter] = []
        self.error: BaseException | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="test-head", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop:
                data = self.ser.read(4096)
                with self.lock:
                    now = int(time.monotonic() * 1000)
                    if data:
                        for frame in self.dec.feed(data):
                            self.link.feed(frame, now)
                    for m in self.link.poll_received():
                        self._take(m)
                    self.link.poll_acked()
                    self.link.poll_dead()
                    for p in self.link.poll_transmit(now):
                        self.ser.write(encode_frame(p))
        except BaseException as e:  # reported by the test
            if not self._stop:
                self.error = e

    def _take(self, data: bytes) -> None:
        self.received.append(bytes(data))
        m = messages.decode(data)
        if isinstance(m, messages.Event):
            evs = [m]
        elif isinstance(m, messages.Batch):
            evs = m.events()
        else:
            if isinstance(m, messages.Status):
                self.statuses.append(m)
            elif isinstance(m, messages.DeadLetter):
                self.deadletters.append(m)
            return
        for e in evs:
            key = (e.node, e.epoch, e.seq)
            if key in self.seen:
                self.dups += 1
                continue
            self.seen.add(key)
            self.order.setdefault(e.node, []).append((e.epoch, e.seq))

    def send(self, msg: messages.Message) -> bool:
        with self.lock:
            return self.link.offer(msg.encode())

    def hops(self) -> dict[int, int]:
        with self.lock:
            return {s.node: s.hop for s in self.statuses if s.hop is not None}

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=2)
        self.ser.close()


def check_delivery(head: Head, published: dict[int, int], summary: dict) -> None:
    assert head.error is None, head.error
    for nid, n in published.items():
        s = summary["nodes"][str(nid)]
        assert s["published"] == n and s["exact"] and s["evicted"] == 0, (nid, s)
        ids = head.order.get(nid, [])
        assert len(ids) == n, (nid, len(ids), n)           # nothing lost, nothing extra
        assert ids == sorted(ids), nid                      # per-node order
        by_epoch: dict[int, list[int]] = {}
        for e, q in ids:
            by_epoch.setdefault(e, []).append(q)
        for e, seqs in by_epoch.items():
            assert seqs == list(range(len(seqs))), (nid, e)
        assert s["dead_letter"] == 0, (nid, s)
    # the base station's accounting of the same messages in arrival order (events and
    # STATUS): nothing lost or out of order, and duplicates are only what the head saw
    # (a rebooted node's durable replay), which the station keeps out of its sinks
    from base_station.station import BaseStation
    station = BaseStation(udp=[], announce=False)
    for data in head.received:
        station.ingest(data, "serial:test")
    for nid, n in published.items():
        t = station.nodes[nid].totals()
        assert (t["received"], t["lost"], t["out_of_order"]) == (n, 0, 0), (nid, t)
    assert sum(station.nodes[nid].totals()["duplicates"] for nid in published) == head.dups


async def wait_for(cond, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        await asyncio.sleep(0.05)
    return cond()


def _mem_line(summary: dict) -> str:
    return ", ".join("node %s: boot %d B, max %d B" % (nid, s["mem_boot"], s["mem_max"])
                     for nid, s in summary["nodes"].items())


def test_clean_chain_of_two_enumerates_and_delivers(tmp_path):
    link = tmp_path / "head"

    async def go():
        chain = Chain(2, rate=20, durable=False, seed=3, serial_link=str(link))
        await chain.start()
        head = Head(str(link), chain)
        try:
            assert await wait_for(lambda: len(head.seen) >= 10, 5)
            head.send(messages.Enumerate(1))
            head.send(messages.Announce("test-head", "", 1, ["#"], 0, 60, int(time.time() * 1000)))
            assert await wait_for(lambda: head.hops() == {1: 1, 2: 2}, 5), head.hops()
            await asyncio.sleep(1.0)
            published = await chain.pause()
            assert await wait_for(lambda: len(head.seen) >= sum(published.values()), 10)
        finally:
            head.close()
            summary = await chain.stop()
        return head, published, summary

    head, published, summary = asyncio.run(go())
    print("RAM (64-bit unix port, gc.mem_alloc after gc.collect):", _mem_line(summary))
    check_delivery(head, published, summary)
    assert head.dups == 0
    assert summary["nodes"]["1"]["forwarded"] >= published[2]
    last = {s.node: s for s in head.statuses}
    assert sorted(last) == [1, 2]
    assert all(s.time_base is not None and s.caps & 16 and s.caps & 2 for s in last.values())
    assert not link.exists()                      # the symlink goes with the wires


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_chaos_chain_delivers_every_event_exactly_once(seed):
    # K=3, BER 1e-4 and 1 % byte drops on every wire, a 2 s cut of the node 1 - node 2
    # wire, node 2 rebooted during the cut (durable: its backlog replays), 2 seeds.
    assert auto_frame_bytes(1e-4, 0.01) == 40

    async def go():
        chain = Chain(3, ber=1e-4, drop=0.01, durable=True, rate=20, window=16, seed=seed)
        await chain.start()
        head = Head(chain.head_path, chain)
        try:
            await asyncio.sleep(1.5)
            chain.cut(1, 2.0)
            await asyncio.sleep(1.0)
            assert await chain.reboot(2) == 2
            await asyncio.sleep(3.5)
            published = await chain.pause()
            await wait_for(lambda: len(head.seen) >= sum(published.values()), 20)
        finally:
            head.close()
            summary = await chain.stop()
        return chain, head, published, summary

    chain, head, published, summary = asyncio.run(go())
    print("seed %d: %s dups, RAM %s" % (seed, head.dups, _mem_line(summary)))
    check_delivery(head, published, summary)
    n2 = summary["nodes"]["2"]
    assert n2["epochs"] == [1, 2] and n2["replayed"] > 0
    wires = summary["wires"]
    assert sum(w["ab"]["bytes_dropped"] + w["ba"]["bytes_dropped"] for w in wires) > 100
    assert sum(w["ab"]["bit_flips"] + w["ba"]["bit_flips"] for w in wires) > 10
    assert wires[1]["ab"]["cut_bytes"] + wires[1]["ba"]["cut_bytes"] > 0
    for nid, s in summary["nodes"].items():
        # heap bounded: a few KB of working set on top of what boot needed
        assert s["mem_max"] - s["mem_boot"] < 48 * 1024, (nid, s["mem_boot"], s["mem_max"])


def test_starling_sim_chain_command_line(tmp_path):
    out = tmp_path / "summary.json"
    parser = __import__("argparse").ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--chain", "2", "--duration", "1", "--rate", "10", "--no-durable",
                              "--window", "4", "--serial-link", str(tmp_path / "head"),
                              "--summary-json", str(out)])
    assert cli.run(args) == 0
    summary = json.loads(out.read_text())
    assert summary["chain"] == 2 and not summary["durable"] and summary["window"] == 4
    assert sorted(summary["nodes"]) == ["1", "2"]
    assert all(s["published"] > 3 and s["exact"] for s in summary["nodes"].values())


def test_a_restarted_base_on_a_chain_counts_no_false_loss(tmp_path):
    # `starling listen --serial` stopped and started again while the chain runs: the
    # second process announces another instance, each node restarts its `since` at the
    # oldest event it still holds, and the second base counts nothing the first one
    # received as lost (before: since 0, and all of it counted lost)
    from base_station.serial_head import heads_for
    from base_station.station import BaseStation
    link = tmp_path / "head"

    def received(st, nid):
        a = st.nodes.get(nid)
        return a.totals()["received"] if a is not None else 0

    async def go():
        chain = Chain(2, rate=20, durable=False, seed=4, serial_link=str(link))
        await chain.start()
        try:
            first = BaseStation(udp=[], announce=False)
            heads_for(first, [(str(link), chain.baud)])
            await first.start()
            try:
                assert await wait_for(lambda: min(received(first, 1), received(first, 2)) >= 10, 15)
            finally:
                await first.stop()
            second = BaseStation(udp=[], announce=False)
            heads_for(second, [(str(link), chain.baud)])
            await second.start()
            try:
                assert await wait_for(lambda: second.counters["predecessor_status"] > 0 or min(
                    received(second, 1), received(second, 2)) >= 10, 15)
                await asyncio.sleep(1.0)
                published = await chain.pause()

                def drained():
                    nodes = second.summary()["nodes"]
                    return all(str(nid) in nodes and nodes[str(nid)]["next_seq"] == n
                               for nid, n in published.items())
                assert await wait_for(drained, 15)
                await asyncio.sleep(0.3)
            finally:
                await second.stop()
        finally:
            await chain.stop()
        return first.summary(), second.summary(), published

    one, two, published = asyncio.run(go())
    for nid, n in published.items():
        a, b = one["nodes"][str(nid)], two["nodes"][str(nid)]
        assert a["lost"] == 0 and b["lost"] == 0, (nid, a, b)
        assert b["status"]["counters"]["published"] == n      # the final STATUS: all published
        assert a["received"] + b["received"] >= n, (nid, a, b)   # between them, everything
        assert b["received"] + b["skipped"] < n                 # the second did not see it all
