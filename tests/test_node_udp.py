"""End to end over real loopback UDP: `micropython` node processes (and in-process
CPython nodes) started by sim.Fleet, received by a bare CPython socket (not the base
station, so these tests pin the node's behaviour on their own)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import defaultdict

import cbor2
import pytest

from firmware import config as fw_config
from firmware import sensors as fw_sensors
from protocol import messages
from protocol.auth import Key, verify
from sim.fleet import Fleet

pytestmark = pytest.mark.slow

KEY = "000102030405060708090a0b0c0d0e0f1011121314151617"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Receiver:
    """A minimal base: collects every datagram on 127.0.0.1:port, decoded."""

    def __init__(self, keys: dict[int, Key] | None = None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.keys = keys or {}
        self.msgs: list[tuple[float, object]] = []
        self.bad = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def addr(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def _run(self) -> None:
        while not self._stop:
            try:
                data, _ = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                msg = messages.from_fields(cbor2.loads(data))
                if isinstance(msg, messages.Signed):
                    msg = messages.from_fields(cbor2.loads(verify(msg, self.keys)))
            except Exception:
                self.bad += 1
                continue
            self.msgs.append((time.monotonic(), msg))

    def close(self) -> None:
        time.sleep(0.1)
        self._stop = True
        self._thread.join()
        self.sock.close()

    def events(self, node=None, epoch=None):
        out = []
        for _, m in self.msgs:
            if isinstance(m, messages.Batch):
                evs = m.events()
            elif isinstance(m, messages.Event):
                evs = [m]
            else:
                continue
            out.extend(e for e in evs if (node is None or e.node == node) and (epoch is None or e.epoch == epoch))
        return out

    def statuses(self, node=None, epoch=None):
        return [m for _, m in self.msgs if isinstance(m, messages.Status)
                and (node is None or m.node == node) and (epoch is None or m.epoch == epoch)]


def expected_value(node_id: int, sensor_index: int, spec: dict, n: int):
    """What the firmware's sensor must have sent as its n-th sample (f32 as on a board)."""
    cfg = fw_config.from_dict({"node": node_id, "bases": [["h", 1]], "sensors": [spec]})
    return fw_sensors.Sensor(cfg.sensors[0], node_id, sensor_index, True).value(n)


def run(coro):
    return asyncio.run(coro)


def test_micropython_nodes_deliver_values_and_seqs_intact():
    rx = Receiver({2: Key(bytes.fromhex(KEY))})
    fleet = Fleet(3, runtime="micropython", bases=[rx.addr], rate=40, status_every_ms=500,
                  keys={2: KEY})

    async def go():
        await fleet.start()
        await asyncio.sleep(1.5)
        return await fleet.stop()

    summary = run(go())
    rx.close()
    assert rx.bad == 0
    specs = fleet.sensors
    for nid in (1, 2, 3):
        s = summary["nodes"][str(nid)]
        assert s["exact"] and s["epochs"] == [1] and s["dropped_by_sim"] == 0
        assert s["since"] == {"static:127.0.0.1:%d" % rx.port: 0}
        evs = rx.events(nid, 1)
        seqs = [e.seq for e in evs]
        assert sorted(seqs) == list(range(s["published"])), nid     # nothing lost on loopback
        assert s["published"] >= 40                                   # ~60 at 40/s in 1.5 s
        assert all(e.skip == 0 for e in evs)
        # values: recomputed from the firmware's deterministic sensors
        by_topic = defaultdict(list)
        for e in sorted(evs, key=lambda e: e.seq):
            by_topic[e.topic].append(e)
        for i, spec in enumerate(specs):
            got = by_topic[spec["topic"]]
            assert got, spec["topic"]
            assert [e.value for e in got] == [expected_value(nid, i, spec, n) for n in range(len(got))]
            ts = [e.t for e in got]
            assert ts == sorted(ts) and ts[-1] - ts[0] >= (len(got) - 1) * spec["period_ms"] - 50
        st = rx.statuses(nid, 1)
        assert st[0].last_seq is None and st[0].since == 0          # STATUS at subscription start
        final = st[-1]
        assert final.last_seq == s["published"] - 1 == s["last_seq"]
        assert final.skip == 0 and final.counters[1] == s["published"]
        assert final.time_base is not None and abs(final.time_base + final.uptime - time.time() * 1000) < 5000
        assert final.caps & 8 if nid == 2 else not final.caps & 8    # CAP_AUTH only on the keyed node


def test_reboot_grows_epoch_and_restarts_seqs():
    rx = Receiver()
    fleet = Fleet(1, runtime="micropython", bases=[rx.addr], rate=20, status_every_ms=500)

    async def go():
        await fleet.start()
        await asyncio.sleep(0.6)
        epoch = await fleet.reboot(1)
        await asyncio.sleep(0.6)
        return epoch, await fleet.stop()

    epoch, summary = run(go())
    rx.close()
    assert epoch == 2
    s = summary["nodes"]["1"]
    assert s["epochs"] == [1, 2] and s["boots"] == 2 and s["exact"]
    e1 = sorted(e.seq for e in rx.events(1, 1))
    e2 = sorted(e.seq for e in rx.events(1, 2))
    assert e1 == list(range(len(e1))) and e2 == list(range(len(e2))) and e1 and e2
    assert len(e1) + len(e2) == s["published"]
    assert rx.statuses(1, 1)[-1].last_seq == e1[-1]
    assert rx.statuses(1, 2)[-1].last_seq == e2[-1]


def _announce(port: int, base: str, target_port: int, filters, max_rate: int, lease: int, wall_ms=None):
    msg = messages.Announce(base, "", target_port, list(filters), max_rate, lease, wall_ms)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        s.sendto(msg.encode(), ("127.255.255.255", port))


def test_discovery_filters_rate_cap_and_lease():
    rx = Receiver()
    disc = free_udp_port()
    fleet = Fleet(2, runtime="micropython", bases=[], discovery_port=disc, rate=40,
                  status_every_ms=300, host_clock=False)
    wall = int(time.time() * 1000)

    async def go():
        await fleet.start()
        await asyncio.sleep(0.3)
        _announce(disc, "b1", rx.port, ["count"], 5, 1, wall)
        t_announce = time.monotonic()
        await asyncio.sleep(2.0)
        return t_announce, await fleet.stop()

    t_announce, summary = run(go())
    rx.close()
    lease_end = t_announce + 1.0
    for nid in (1, 2):
        st = rx.statuses(nid)
        assert st, f"node {nid} never subscribed"
        first = st[0]
        since = first.since
        assert since > 0 and first.last_seq == since - 1 and first.skip == 0
        # the time base came from the ANNOUNCE (node boot ~ now - uptime)
        assert first.time_base is not None and abs(first.time_base - (wall - first.uptime)) < 200
        evs = sorted(rx.events(nid), key=lambda e: e.seq)
        assert evs and all(e.topic == "count" for e in evs)
        # every seq from `since` on is received or covered by a skip
        expect = since
        for e in evs:
            assert e.seq - e.skip == expect, (nid, e.seq, e.skip, expect)
            expect = e.seq + 1
        # 20 count readings/s offered for one lease second; cap 5/s with a burst of 2
        assert 3 <= len(evs) <= 2 + 5 * 1 + 1, len(evs)
        assert all(e.t <= first.uptime + 1000 for e in evs)      # nothing after the lease
        late = [t for t, m in rx.msgs if getattr(m, "node", None) == nid and t > lease_end + 0.5]
        assert not late, "traffic after the lease lapsed"
        s = summary["nodes"][str(nid)]
        assert s["rate_shed"] >= 5
        assert s["since"] == {}   # the lease had lapsed when the node stopped


@pytest.mark.parametrize("runtime,nodes,batch_ms", [("micropython", 3, 0), ("cpython", 40, 0),
                                                    ("micropython", 2, 100)])
def test_relay_loss_is_accounted_exactly(runtime, nodes, batch_ms):
    rx = Receiver()
    fleet = Fleet(nodes, runtime=runtime, bases=[rx.addr], rate=50, loss=0.2, dup=0.1, reorder=0.1,
                  jitter_ms=5, seed=7, status_every_ms=500, batch_ms=batch_ms)

    async def go():
        await fleet.start()
        await asyncio.sleep(1.5)
        return await fleet.stop()

    summary = run(go())
    rx.close()
    total_dropped = 0
    for nid in fleet.node_ids:
        s = summary["nodes"][str(nid)]
        evs = rx.events(nid, 1)
        unique = {e.seq for e in evs}
        assert s["exact"]
        assert len(unique) + s["dropped_by_sim"] == s["published"], (nid, s, len(unique))
        assert len(evs) == len(unique) + s["duplicated_by_sim"]
        final = rx.statuses(nid, 1)[-1]
        assert final.last_seq == s["published"] - 1
        # received + skipped (none: static base) + dropped by the relay = every seq
        skipped = sum(e.skip for e in {e.seq: e for e in evs}.values()) + final.skip
        missing = set(range(final.last_seq + 1)) - unique
        assert skipped == 0 and len(missing) == s["dropped_by_sim"]
        total_dropped += s["dropped_by_sim"]
    assert total_dropped > 0
    if batch_ms:
        batches = [m for _, m in rx.msgs if isinstance(m, messages.Batch)]
        assert batches and max(len(b.readings) for b in batches) > 1
        assert not any(isinstance(m, messages.Event) for _, m in rx.msgs)
    relay = summary["relays"][0]
    assert relay["undecodable"] == 0 and relay["send_errors"] == 0
