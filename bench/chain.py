#!/usr/bin/env python3
"""Serial-chain benchmark: delivered event bytes per second as a share of the line rate,
and per-hop latency, for chains of 1..K hops, clean and with bit errors, with the
default link window beside window 1 (stop-and-wait).

    .venv/bin/python bench/chain.py                 # the full matrix, a table
    .venv/bin/python bench/chain.py --json          # one JSON object on stdout
    .venv/bin/python bench/chain.py --quick         # one small configuration, seconds
    .venv/bin/python bench/chain.py --bauds 115200 --hops 1,8 --windows 8 --bers 0,1e-5

Definitions
-----------
* **Line rate**: baud / 10 bytes per second (8N1: start bit, 8 data bits, stop bit).
* **Delivered event bytes**: the bytes of the encoded EVENT messages (protocol section
  3.1, the application payload: about 16 bytes for the counter readings used here, 20
  for a float reading) that the base station's head
  (`base_station.serial_head.SerialHead`, the real one) hands to the station, counted
  once per event; duplicates after a resync are not counted. Not counted: STATUS
  messages, the DATA header (`83 06 seq bstr-head`, up to 8 bytes per frame), CRC-32 (4)
  and COBS + delimiters (3+ per frame), ACK / HELLO frames, retransmissions.
* **Share** = delivered event bytes per second / line rate, measured on the wire next to
  the base (every event of the chain crosses it).
* **Line busy** = bytes that crossed that wire towards the base per second / line rate:
  the gap between *line busy* and *share* is framing and link overhead, the gap between
  100 % and *line busy* is idle line time (the senders did not keep the line full).
* **Frame time**: the time a full DATA frame (`max_payload` bytes of messages, DATA
  header, CRC, COBS, delimiters) takes on the line.
* **Latency**: from publish on a node (the EVENT's `t`, the node's uptime in ms, plus
  the node's `time_base` from its STATUS; the simulated nodes take `time_base` from the
  host's wall clock at boot, `host_clock`) to the moment the head's callback runs, on
  the same host clock. Resolution about 1 ms (`t` is whole ms, taken at the start of the
  node's step). Measured in two separate runs: lightly loaded (all nodes together
  offering 5 % of the line rate in 16-byte events, split evenly, or `--latency-rate`
  events/s per node; queues stay short) and loaded (`--latency-load` of the line rate,
  50 % by default; the outbox drops its oldest when full). Per-hop latency = the
  event's latency / its node's hop count (node j is hop j). Target: p99 <= 2 frame
  times + 5 ms.

Two variants run side by side for every configuration:

* ``mp``: the real thing: K MicroPython unix-port processes running firmware/chain.py
  (`sim.chain.Chain`) on paced virtual wires (`sim.wire`, in this process) and the
  base station's `SerialHead` on the head pty. To saturate, every node has enough
  counter sensors with period 1 ms for the nodes together to offer 1.5 x the line rate
  (``--sensors`` overrides) and the outbox policy ``block``: a node always has events
  waiting (refused samples are counted, not queued). On this 2-core
  machine 8 MicroPython nodes plus 9 wire pumps can run out of CPU before the wire is
  full; the run records each process's CPU share and says which limit was hit.
* ``model``: the same protocol code (protocol/link.py Link objects, protocol/framing.py)
  with no processes and no real time: a discrete-time model in which each node's loop
  runs every ``--tick-ms`` (1 ms) of simulated time and takes no CPU time, a frame takes
  exactly its bytes x 10 / baud on its wire, and bit errors flip bits at the given BER.
  Relays forward what their down link delivers into their up link (bounded forward
  queue, back-pressure as the firmware does, alternating with their own events). This
  isolates the link: it is the wire-limited number.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from firmware.chain import link_kwargs  # noqa: E402
from protocol import messages  # noqa: E402
from protocol.framing import FrameDecoder, encode_frame, max_encoded_len  # noqa: E402
from protocol.link import DATA_OVERHEAD, Link  # noqa: E402

TARGET_ONE_HOP = 0.90      # share of the line rate, one clean hop
TARGET_EIGHT_HOPS = 0.80   # share of the line rate, 8 hops with BER 1e-5
TARGET_LAT_SLACK_MS = 5.0  # per-hop latency <= 2 frame times + this

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def frame_time_ms(max_payload: int, baud: int) -> float:
    """Line time of a full DATA frame carrying max_payload bytes of messages."""
    return max_encoded_len(max_payload + DATA_OVERHEAD) * 10_000.0 / baud


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    i = min(len(v) - 1, max(0, int(math.ceil(q / 100.0 * len(v))) - 1))
    return v[i]


def is_event(m: bytes) -> bool:
    # EVENT: array(7), or array(8) with a skip, kind 1 (protocol section 3.1)
    return len(m) > 2 and (m[0] == 0x87 or m[0] == 0x88) and m[1] == 0x01


# ======================================================================================
# mp: real MicroPython chain nodes, the real base-station head
# ======================================================================================

class _Collector:
    """The head's on_message callback: counts event bytes, records latencies."""

    def __init__(self) -> None:
        self.ev_n = 0
        self.ev_bytes = 0
        self.other_n = 0
        self.other_bytes = 0
        self.dups = 0
        self.per_node: dict[int, int] = {}
        self.time_base: dict[int, int] = {}
        self.hop: dict[int, int] = {}
        self.lat_from_ms: float | None = None   # record latencies of events published after
        self.lat: list[tuple[int, float]] = []   # (node, ms)
        self._last: dict[tuple[int, int], int] = {}

    def __call__(self, m: bytes) -> None:
        now_ms = time.time() * 1000.0
        if is_event(m):
            ev = messages.decode(m)
            key = (ev.node, ev.epoch)
            last = self._last.get(key, -1)
            if ev.seq <= last:           # a resync delivered it again: count once
                self.dups += 1
                return
            self._last[key] = ev.seq
            self.ev_n += 1
            self.ev_bytes += len(m)
            self.per_node[ev.node] = self.per_node.get(ev.node, 0) + 1
            tb = self.time_base.get(ev.node)
            if self.lat_from_ms is not None and tb is not None:
                pub = tb + ev.t
                if pub >= self.lat_from_ms:
                    self.lat.append((ev.node, now_ms - pub))
            return
        self.other_n += 1
        self.other_bytes += len(m)
        try:
            st = messages.decode(m)
        except Exception:
            return
        if isinstance(st, messages.Status):
            if st.time_base is not None:
                self.time_base[st.node] = st.time_base
            if st.hop is not None:
                self.hop[st.node] = st.hop


def _cpu_ticks(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            parts = f.read().rsplit(")", 1)[1].split()
        return int(parts[11]) + int(parts[12])
    except (OSError, IndexError, ValueError):
        return 0


def _host_idle() -> tuple[float, float]:
    with open("/proc/stat") as f:
        vals = [float(x) for x in f.readline().split()[1:]]
    return vals[3] + vals[4], sum(vals)   # idle + iowait, total (ticks, all CPUs)


def _snapshot(chain: Any, head: Any, col: _Collector) -> dict[str, Any]:
    w0 = chain.wires.stats()[0]
    idle, total = _host_idle()
    t = os.times()
    return {
        "t": time.monotonic(), "ev_bytes": col.ev_bytes, "ev_n": col.ev_n,
        "other_bytes": col.other_bytes, "line_up": w0["ba"]["bytes_in"],
        "head_bytes_in": head.counters["bytes_in"], "head_frames_in": head.counters["frames_in"],
        "data_received": head.link.data_received, "duplicates": head.link.duplicates,
        "crc": head.decoder.crc_errors + head.decoder.malformed,
        "nodes": {j: _cpu_ticks(n.proc.pid) for j, n in chain.nodes.items() if n.proc},
        "self": t.user + t.system, "idle": idle, "total": total,
    }


def _mp_chain(k: int, baud: int, window: int, ber: float, max_payload: int, seed: int,
              sensors: list[dict[str, Any]], policy: str, workdir: str | None,
              drop: float = 0.0) -> Any:
    from sim.chain import Chain
    return Chain(k, baud=baud, ber=ber, drop=drop, durable=False, window=window, seed=seed,
                 max_payload=max_payload, sensors=sensors, status_every_ms=1000,
                 outbox={"max": 256, "max_bytes": 8192, "policy": policy},
                 host_clock=True, stop_drain_ms=0, workdir=workdir)


def _mp_head(chain: Any, col: _Collector) -> Any:
    from base_station.serial_head import SerialHead
    lk = link_kwargs(chain.window, chain.max_payload, chain.baud,
                     max_retries=chain.max_retries, frame_bytes=chain.frame_bytes)
    window = lk.pop("window")
    head = SerialHead(None, chain.head_path, chain.baud, window, announce_every=None,
                      on_message=col, link_options=lk, name="bench")
    head.start()
    return head


async def _wait(cond, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        await asyncio.sleep(0.05)
    return cond()


async def mp_throughput(k: int, baud: int, window: int, ber: float, *, max_payload: int,
                        seconds: float, warm: float, n_sensors: int, seed: int,
                        drop: float = 0.0) -> dict[str, Any]:
    if n_sensors <= 0:
        n_sensors = saturating_sensors(baud, k)
    sensors = [{"topic": "c%d" % i, "kind": "counter", "period_ms": 1} for i in range(n_sensors)]
    chain = _mp_chain(k, baud, window, ber, max_payload, seed, sensors, "block", None, drop)
    col = _Collector()
    head = None
    out: dict[str, Any] = {}
    try:
        await chain.start()
        head = _mp_head(chain, col)
        ok = await _wait(lambda: len(col.per_node) == k, 20.0 + 2 * k)
        if not ok:
            out["error"] = "not every node delivered within %.0f s (%d of %d)" % (
                20.0 + 2 * k, len(col.per_node), k)
        await asyncio.sleep(warm)
        a = _snapshot(chain, head, col)
        await asyncio.sleep(seconds)
        b = _snapshot(chain, head, col)
        dt = b["t"] - a["t"]
        line = baud / 10.0
        ev = b["ev_bytes"] - a["ev_bytes"]
        up = b["line_up"] - a["line_up"]
        hb = b["head_bytes_in"] - a["head_bytes_in"]
        other = b["other_bytes"] - a["other_bytes"]
        frames = b["data_received"] - a["data_received"]
        node_cpu = {j: (b["nodes"].get(j, 0) - a["nodes"].get(j, 0)) / _CLK_TCK / dt
                    for j in a["nodes"]}
        host_busy = 1.0 - (b["idle"] - a["idle"]) / max(1.0, b["total"] - a["total"])
        out.update({
            "sensors_per_node": n_sensors, "frame_bytes": chain.frame_bytes,
            "events_per_s": round((b["ev_n"] - a["ev_n"]) / dt, 1),
            "duration_s": round(dt, 3), "events": b["ev_n"] - a["ev_n"],
            "event_bytes": ev, "event_Bps": round(ev / dt, 1),
            "share": round(ev / dt / line, 4), "line_busy": round(up / dt / line, 4),
            "event_size": round(ev / max(1, b["ev_n"] - a["ev_n"]), 2),
            "overhead": {
                "wire_bytes": up, "head_bytes_in": hb, "event_bytes": ev, "other_msg_bytes": other,
                "link_and_framing_bytes": hb - ev - other, "data_frames": frames,
                "events_per_frame": round((b["ev_n"] - a["ev_n"]) / max(1, frames), 2),
                "duplicate_frames": b["duplicates"] - a["duplicates"],
                "damaged_frames": b["crc"] - a["crc"],
            },
            "cpu": {"node_cores": {str(j): round(v, 3) for j, v in node_cpu.items()},
                    "node_max": round(max(node_cpu.values(), default=0.0), 3),
                    "nodes_total": round(sum(node_cpu.values()), 3),
                    "bench_process": round((b["self"] - a["self"]) / dt, 3),
                    "host_busy": round(host_busy, 3), "host_cpus": os.cpu_count(),
                    # everything else on the machine (other jobs), in cores
                    "other_cores": round(max(0.0, host_busy * (os.cpu_count() or 1)
                                             - sum(node_cpu.values())
                                             - (b["self"] - a["self"]) / dt), 3)},
        })
    finally:
        if head is not None:
            head.stop()
        summ = await chain.stop()
    refused = sum((summ["nodes"][str(j)].get("dropped") or 0) for j in range(1, k + 1))
    out["node_samples_refused"] = refused
    out["wires"] = [w["ba"] for w in summ.get("wires", [])][:1]
    cpu = out.get("cpu")
    if cpu:
        if out["line_busy"] >= 0.97:
            out["bottleneck"] = "wire"
        elif cpu["host_busy"] >= 0.9 or cpu["node_max"] >= 0.9:
            out["bottleneck"] = "cpu"
        else:
            out["bottleneck"] = "link (idle line, CPU to spare)"
    return out


async def mp_latency(k: int, baud: int, window: int, ber: float, *, max_payload: int,
                     seconds: float, rate: float, seed: int, drop: float = 0.0) -> dict[str, Any]:
    sensors = _sensors_for(rate)
    chain = _mp_chain(k, baud, window, ber, max_payload, seed, sensors, "drop_oldest", None, drop)
    col = _Collector()
    head = None
    try:
        await chain.start()
        head = _mp_head(chain, col)
        await _wait(lambda: len(col.time_base) == k and len(col.per_node) == k, 20.0 + 2 * k)
        await asyncio.sleep(0.5)
        col.lat_from_ms = time.time() * 1000.0
        await asyncio.sleep(seconds)
        lat = list(col.lat)
    finally:
        if head is not None:
            head.stop()
        await chain.stop()
    return latency_summary(lat, k, baud, max_payload)


def saturating_sensors(baud: int, k: int) -> int:
    """1-ms sensors per node so that k nodes offer 1.5 x the line rate in 16-byte events
    (plus one): enough to keep every wire full, while a node deep in the chain, whose
    share of the line is small, does not spend its CPU sampling readings it must refuse."""
    return int(math.ceil(1.5 * baud / 10.0 / 16.0 / k / 1000.0)) + 1


def _sensors_for(rate: float) -> list[dict[str, Any]]:
    """Counter sensors that together publish about `rate` events/s (periods are whole ms)."""
    n = max(1, int(math.ceil(rate / 400.0)))
    period = max(1, int(round(n * 1000.0 / rate)))
    return [{"topic": "c%d" % i, "kind": "counter", "period_ms": period} for i in range(n)]


def loaded_rate(load: float, baud: int, k: int) -> float:
    """Events/s per node so that k nodes together offer `load` x the line rate in 16-byte
    events (the counter sensors' EVENTs are about 16 bytes)."""
    return load * baud / 10.0 / 16.0 / k


def offered_rate(rate: float) -> float:
    sensors = _sensors_for(rate)
    return len(sensors) * 1000.0 / sensors[0]["period_ms"]


def latency_summary(lat: list[tuple[int, float]], k: int, baud: int,
                    max_payload: int) -> dict[str, Any]:
    per_hop = [ms / node for node, ms in lat if node >= 1]
    tail = [ms for node, ms in lat if node == k]
    ft = frame_time_ms(max_payload, baud)
    target = 2 * ft + TARGET_LAT_SLACK_MS
    p99 = pct(per_hop, 99)
    return {"samples": len(lat), "per_hop_p50_ms": _r(pct(per_hop, 50)),
            "per_hop_p99_ms": _r(p99), "tail_e2e_p50_ms": _r(pct(tail, 50)),
            "tail_e2e_p99_ms": _r(pct(tail, 99)), "frame_time_ms": round(ft, 2),
            "target_ms": round(target, 2),
            "met_p99": None if p99 is None else p99 <= target}


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


# ======================================================================================
# model: Link objects over a paced wire in simulated time (no processes, no CPU limit)
# ======================================================================================

class _Line:
    """One direction of a wire in simulated time: frames serialised at baud, bit errors,
    bytes lost (a lost byte takes its line time: the receiver never sees it)."""

    def __init__(self, baud: int, ber: float, rng: random.Random, drop: float = 0.0):
        self.bt = 10.0 / baud          # seconds per byte
        self.ber = ber
        self.drop = drop
        self.rng = rng
        self.free = 0.0
        self.q: deque = deque()        # (arrival time, bytes)
        self.bytes = 0
        self.flips = 0
        self.dropped = 0
        self._skip = self._next_skip()
        self._dskip = self._geometric(drop)

    def _geometric(self, p: float) -> int:
        # how many trials pass before the next event of probability p (-1: never)
        if p <= 0:
            return -1
        u = self.rng.random()
        return int(math.log(1.0 - u) / math.log1p(-p))

    def _next_skip(self) -> int:
        return self._geometric(self.ber)

    def send(self, now: float, data: bytes) -> None:
        start = max(now, self.free)
        self.free = start + len(data) * self.bt
        if self._skip >= 0:
            bits = len(data) * 8
            if self._skip < bits:
                b = bytearray(data)
                while 0 <= self._skip < bits:
                    b[self._skip >> 3] ^= 1 << (self._skip & 7)
                    self.flips += 1
                    self._skip += 1 + self._next_skip()
                data = bytes(b)
            self._skip -= bits
        if self._dskip >= 0:
            n = len(data)
            if self._dskip < n:
                keep = bytearray()
                last = 0
                while 0 <= self._dskip < n:
                    keep += data[last:self._dskip]
                    last = self._dskip + 1
                    self.dropped += 1
                    self._dskip += 1 + self._geometric(self.drop)
                keep += data[last:]
                data = bytes(keep)
            self._dskip -= n
        self.q.append((self.free, data))

    def take(self, now: float) -> list[bytes]:
        out = []
        q = self.q
        while q and q[0][0] <= now:
            data = q.popleft()[1]
            self.bytes += len(data)     # counted when the frame has crossed
            out.append(data)
        return out


class _MNode:
    def __init__(self, j: int, k: int, lk: dict[str, Any], fwd_max: int, rng: random.Random):
        self.j = j
        r = lambda: rng.getrandbits(32)  # noqa: E731
        self.up = Link(node=j, hop=j, rng=r, **lk)
        self.down = Link(node=j, hop=j, rng=r, **lk) if j < k else None
        self.up_dec = FrameDecoder()
        self.down_dec = FrameDecoder()
        self.fwd: deque = deque()
        self.fwd_max = fwd_max
        self.seq = 0
        self.turn = 0
        self.pending_own: deque = deque()   # light load: events waiting for the link


class ChainModel:
    """K nodes and a base, Link objects joined by _Line pairs; step() = one tick."""

    def __init__(self, k: int, baud: int, window: int, ber: float, max_payload: int,
                 seed: int, tick_ms: float = 1.0, fwd_max: int = 256, drop: float = 0.0):
        from sim.chain import auto_frame_bytes
        self.k = k
        self.baud = baud
        rng = random.Random(seed)
        # small frames on a lossy line, as sim.chain and the firmware choose them
        fb = auto_frame_bytes(ber, drop)
        self.frame_bytes = fb if fb and fb < max_payload else 0
        lk = link_kwargs(window, max_payload, baud, max_retries=64 if (ber or drop) else 16,
                         frame_bytes=self.frame_bytes or None)
        self.base = Link(node=0, hop=0, rng=lambda: rng.getrandbits(32), **lk)
        self.base_dec = FrameDecoder()
        self.nodes = [_MNode(j, k, lk, fwd_max, rng) for j in range(1, k + 1)]
        # lines[i]: wire i joins hop i (upper end) and hop i+1; up = towards the base
        self.up = [_Line(baud, ber, random.Random(rng.getrandbits(32)), drop) for _ in range(k)]
        self.dn = [_Line(baud, ber, random.Random(rng.getrandbits(32)), drop) for _ in range(k)]
        self.now = 0.0
        self.dt = tick_ms / 1000.0
        self.ev_bytes = 0
        self.ev_n = 0
        self.lat: list[tuple[int, float]] = []
        self.lat_from_ms = 0.0     # latencies of events published from then on (as mp's)
        self.saturate = True
        self.rate = 0.0
        self._next_pub = 0.0

    def _event(self, n: _MNode) -> bytes:
        # a 20-byte EVENT: [1, node, 1, seq, t_ms, "c0", value]; t carries publish time
        m = messages.Event(n.j, 1, n.seq & 0xFFFF, int(self.now * 1000) & 0xFFFFFF, "c0",
                           1000 + (n.seq & 0xFF)).encode()
        n.seq += 1
        return m

    def _deliver_base(self, msgs: list) -> None:
        for m in msgs:
            if is_event(m):
                self.ev_n += 1
                self.ev_bytes += len(m)
                if not self.saturate:
                    ev = messages.decode(m)
                    if ev.t >= self.lat_from_ms:
                        self.lat.append((ev.node, self.now * 1000 - ev.t))

    def _fill(self, n: _MNode, limit: int = 0) -> int:
        # offer messages, forwarded and own in turn; limit > 0 (small frames): about
        # `limit` bytes into an empty link queue, as the firmware does. Returns bytes.
        up = n.up
        if limit and up.queued():
            return 0
        offered = 0
        while not limit or offered < limit:
            # alternate between forwarded and own messages (the firmware's round-robin)
            use_fwd = bool(n.fwd) and (n.turn == 1 or (not self.saturate and not n.pending_own))
            if use_fwd:
                if not up.offer(n.fwd[0]):
                    return offered
                offered += len(n.fwd.popleft())
            else:
                if self.saturate:
                    m = n.pending_own[0] if n.pending_own else self._own(n)
                    if not up.offer(m):
                        return offered
                    n.pending_own.popleft()
                    offered += len(m)
                elif n.pending_own:
                    if not up.offer(n.pending_own[0]):
                        return offered
                    offered += len(n.pending_own.popleft())
                elif not n.fwd:
                    return offered
            n.turn ^= 1
        return offered

    def _own(self, n: _MNode) -> bytes:
        m = self._event(n)
        n.pending_own.append(m)   # offer() may refuse: keep it for the next try
        return m

    def step(self) -> None:
        now = self.now
        ms = int(now * 1000)
        k = self.k
        # light load: publish
        if not self.saturate:
            while self._next_pub <= now:
                for n in self.nodes:
                    n.pending_own.append(self._event(n))
                self._next_pub += 1.0 / self.rate
        # arrivals
        for data in self.up[0].take(now):
            for p in self.base_dec.feed(data):
                self.base.feed(p, ms)
        for i in range(k):
            n = self.nodes[i]
            for data in self.dn[i].take(now):
                for p in n.up_dec.feed(data):
                    n.up.feed(p, ms)
            down = n.down
            if down is not None:
                for data in self.up[i + 1].take(now):
                    for p in n.down_dec.feed(data):
                        down.feed(p, ms)
        # base
        self._deliver_base(self.base.poll_received())
        self.base.poll_acked()
        for p in self.base.poll_transmit(ms):
            self.dn[0].send(now, encode_frame(p))
        # nodes
        for i in range(k):
            n = self.nodes[i]
            n.up.poll_acked()
            n.up.poll_dead()
            n.up.poll_received()
            if n.down is not None:
                if len(n.fwd) < n.fwd_max:
                    n.fwd.extend(n.down.poll_received())
                n.down.poll_acked()
            fb = self.frame_bytes
            self._fill(n, fb)
            sent = 0
            for p in n.up.poll_transmit(ms):
                self.up[i].send(now, encode_frame(p))
                sent += 1
            if fb:
                # small frames: one batch of about frame_bytes per frame, as many as the
                # window takes now (the firmware's loop in ChainNode._service)
                j = 0
                while sent and j < 64 and not n.up.queued() and self._fill(n, fb):
                    sent = 0
                    for p in n.up.poll_transmit(ms):
                        self.up[i].send(now, encode_frame(p))
                        sent += 1
                    j += 1
            if n.down is not None:
                for p in n.down.poll_transmit(ms):
                    self.dn[i + 1].send(now, encode_frame(p))
        self.now = now + self.dt

    def run(self, seconds: float) -> None:
        end = self.now + seconds
        while self.now < end:
            self.step()

    def all_up(self) -> bool:
        # every link, both ends: a middle node's down link can still be shaking hands
        # when the node below already counts its up link as up
        return self.base.up and all(n.up.up and (n.down is None or n.down.up)
                                    for n in self.nodes)


def model_throughput(k: int, baud: int, window: int, ber: float, *, max_payload: int,
                     seconds: float, warm: float, seed: int, tick_ms: float,
                     drop: float = 0.0) -> dict[str, Any]:
    m = ChainModel(k, baud, window, ber, max_payload, seed, tick_ms, drop=drop)
    m.saturate = False
    m.rate = 1e-9
    while not m.all_up() and m.now < 30:
        m.run(0.05)
    m.saturate = True
    m.run(warm)
    e0, b0, t0 = m.ev_bytes, m.up[0].bytes, m.now
    n0 = m.ev_n
    f0 = m.base.data_received
    cpu0 = time.process_time()
    m.run(seconds)
    dt = m.now - t0
    line = baud / 10.0
    ev = m.ev_bytes - e0
    up = m.up[0].bytes - b0
    frames = m.base.data_received - f0
    return {"duration_s": round(dt, 3), "events": m.ev_n - n0, "event_bytes": ev,
            "event_Bps": round(ev / dt, 1), "share": round(ev / dt / line, 4),
            "line_busy": round(up / dt / line, 4),
            "event_size": round(ev / max(1, m.ev_n - n0), 2),
            "overhead": {"wire_bytes": up, "event_bytes": ev,
                         "link_and_framing_bytes": up - ev, "data_frames": frames,
                         "events_per_frame": round((m.ev_n - n0) / max(1, frames), 2),
                         "duplicate_frames": m.base.duplicates,
                         "retransmissions": sum(n.up.retransmissions for n in m.nodes),
                         "bit_flips": sum(ln.flips for ln in m.up),
                         "bytes_dropped": sum(ln.dropped for ln in m.up)},
            "frame_bytes": m.frame_bytes,
            "model_cpu_s": round(time.process_time() - cpu0, 2),
            "bottleneck": "wire" if up / dt / line >= 0.97 else "link (idle line)"}


def model_latency(k: int, baud: int, window: int, ber: float, *, max_payload: int,
                  seconds: float, rate: float, seed: int, tick_ms: float,
                  drop: float = 0.0) -> dict[str, Any]:
    m = ChainModel(k, baud, window, ber, max_payload, seed, tick_ms, drop=drop)
    m.saturate = False
    m.rate = rate
    while not m.all_up() and m.now < 30:
        m.run(0.05)
    m.run(0.5)
    # events published before now (a backlog from while the links came up) do not count
    m.lat = []
    m.lat_from_ms = m.now * 1000
    m.run(seconds)
    return latency_summary(m.lat, k, baud, max_payload)


# ======================================================================================
# driver
# ======================================================================================

def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x.strip()]


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--quick", action="store_true",
                    help="one small configuration (1 hop, 921600 Bd, clean, window 8), short runs")
    ap.add_argument("--bauds", default="115200,921600")
    ap.add_argument("--hops", default="1,4,8")
    ap.add_argument("--windows", default="8,1", help="link windows, side by side")
    ap.add_argument("--bers", default="0,1e-5", help="bit error rates")
    ap.add_argument("--drops", default="0",
                    help="shares of bytes lost on every wire (the chain then uses small "
                         "frames, sim.chain.auto_frame_bytes)")
    ap.add_argument("--variants", default="mp,model", help="mp (MicroPython processes), model")
    ap.add_argument("--max-payload", type=int, default=256,
                    help="DATA payload bytes (firmware default 256; 128..1016)")
    ap.add_argument("--seconds", type=float, default=6.0, help="throughput measurement window")
    ap.add_argument("--warm", type=float, default=2.0, help="seconds of saturation before it")
    ap.add_argument("--latency-seconds", type=float, default=5.0)
    ap.add_argument("--latency-rate", type=float, default=0.0,
                    help="events/s per node in the light-load latency run (0: all nodes "
                         "together offer 5 %% of the line rate in 16-byte events)")
    ap.add_argument("--latency-load", type=float, default=0.5,
                    help="a second latency run with all nodes together offering this share "
                         "of the line rate (in 16-byte events), split evenly; 0: skip it")
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--sensors", type=int, default=0,
                    help="1-ms counter sensors per node when saturating (mp); 0: enough for "
                         "the nodes together to offer 1.5 x the line rate in 16-byte events")
    ap.add_argument("--tick-ms", type=float, default=1.0, help="model: node loop period")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    if a.quick:
        a.bauds, a.hops, a.windows, a.bers = "921600", "1", "8", "0"
        a.seconds, a.warm, a.latency_seconds = 1.5, 0.5, 1.5
    return a


def run(a: argparse.Namespace) -> dict[str, Any]:
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    rows = []
    t_start = time.monotonic()
    for baud in _ints(a.bauds):
        for k in _ints(a.hops):
            for ber, drop in [(b, d) for b in _floats(a.bers) for d in _floats(a.drops)]:
                for window in _ints(a.windows):
                    for var in variants:
                        row: dict[str, Any] = {"variant": var, "baud": baud, "hops": k,
                                               "ber": ber, "drop": drop, "window": window,
                                               "max_payload": a.max_payload,
                                               "line_Bps": baud / 10.0}
                        print("chain: %s %d Bd, %d hops, BER %g, drop %g, window %d ..." % (
                            var, baud, k, ber, drop, window), file=sys.stderr, flush=True)
                        try:
                            if var == "mp":
                                row["throughput"] = asyncio.run(mp_throughput(
                                    k, baud, window, ber, max_payload=a.max_payload,
                                    seconds=a.seconds, warm=a.warm, n_sensors=a.sensors,
                                    seed=a.seed, drop=drop))
                                if not a.no_latency:
                                    rate = a.latency_rate or loaded_rate(0.05, baud, k)
                                    row["latency"] = asyncio.run(mp_latency(
                                        k, baud, window, ber, max_payload=a.max_payload,
                                        seconds=a.latency_seconds, rate=rate, seed=a.seed,
                                        drop=drop))
                                    row["latency"]["rate_per_node"] = round(offered_rate(rate), 1)
                                    if a.latency_load > 0:
                                        rate = loaded_rate(a.latency_load, baud, k)
                                        row["latency_loaded"] = asyncio.run(mp_latency(
                                            k, baud, window, ber, max_payload=a.max_payload,
                                            seconds=a.latency_seconds, rate=rate, seed=a.seed,
                                            drop=drop))
                                        row["latency_loaded"]["load"] = a.latency_load
                                        row["latency_loaded"]["rate_per_node"] = round(
                                            offered_rate(rate), 1)
                            elif var == "model":
                                row["throughput"] = model_throughput(
                                    k, baud, window, ber, max_payload=a.max_payload,
                                    seconds=a.seconds, warm=a.warm, seed=a.seed,
                                    tick_ms=a.tick_ms, drop=drop)
                                if not a.no_latency:
                                    rate = offered_rate(a.latency_rate
                                                        or loaded_rate(0.05, baud, k))
                                    row["latency"] = model_latency(
                                        k, baud, window, ber, max_payload=a.max_payload,
                                        seconds=a.latency_seconds, rate=rate,
                                        seed=a.seed, tick_ms=a.tick_ms, drop=drop)
                                    row["latency"]["rate_per_node"] = round(rate, 1)
                                    if a.latency_load > 0:
                                        rate = offered_rate(loaded_rate(a.latency_load, baud, k))
                                        row["latency_loaded"] = model_latency(
                                            k, baud, window, ber, max_payload=a.max_payload,
                                            seconds=a.latency_seconds, rate=rate,
                                            seed=a.seed, tick_ms=a.tick_ms, drop=drop)
                                        row["latency_loaded"]["load"] = a.latency_load
                                        row["latency_loaded"]["rate_per_node"] = round(rate, 1)
                            else:
                                raise ValueError("unknown variant %r" % var)
                        except Exception as e:  # report it in the row, go on with the others
                            row["error"] = "%s: %s" % (type(e).__name__, e)
                        rows.append(row)
    return {"bench": "chain", "rows": rows, "targets": targets(rows),
            "definitions": {
                "line_Bps": "baud / 10 (8N1)",
                "event_Bps": "bytes of EVENT messages delivered to the base per second "
                             "(application payload, each event once)",
                "share": "event_Bps / line_Bps",
                "line_busy": "bytes crossing the last wire towards the base per second / line_Bps",
                "latency": "publish on the node (time_base + t) to the head's callback, "
                           "same host clock; per hop = latency / hop count; light load",
                "frame_time_ms": "a full DATA frame (max_payload) on the line"},
            "elapsed_s": round(time.monotonic() - t_start, 1),
            "load_average": os.getloadavg(), "host_cpus": os.cpu_count(),
            "python": sys.version.split()[0]}


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        tp = r.get("throughput") or {}
        if "share" not in tp or r["window"] == 1 or r.get("drop"):
            continue
        if r["hops"] == 1 and r["ber"] == 0:
            out.append({"target": "one clean hop >= 90 % of line rate", "variant": r["variant"],
                        "baud": r["baud"], "share": tp["share"],
                        "met": tp["share"] >= TARGET_ONE_HOP})
        if r["hops"] == 8 and abs(r["ber"] - 1e-5) < 1e-12:
            out.append({"target": "8 hops, BER 1e-5 >= 80 % of line rate",
                        "variant": r["variant"], "baud": r["baud"], "share": tp["share"],
                        "met": tp["share"] >= TARGET_EIGHT_HOPS})
    for key, what in (("latency", "light load"), ("latency_loaded", "loaded")):
        for r in rows:
            lat = r.get(key) or {}
            if lat.get("met_p99") is not None and r["window"] != 1 and not r.get("drop"):
                if key == "latency_loaded":
                    what = "%.0f %% load" % (100 * lat["load"])
                out.append({"target": "per-hop latency p99 <= 2 frame times + 5 ms (%s)" % what,
                            "variant": r["variant"], "baud": r["baud"], "hops": r["hops"],
                            "ber": r["ber"], "p99_ms": lat["per_hop_p99_ms"],
                            "limit_ms": lat["target_ms"], "met": lat["met_p99"]})
    return out


def _f(x: Any, fmt: str = "%.1f") -> str:
    return "" if x is None else fmt % x


def _errors(r: dict[str, Any]) -> str:
    # the BER column: "1e-05", or "1e-04 + 1 % bytes lost"
    text = "%g" % r["ber"]
    if r.get("drop"):
        text += " + %g %% bytes lost" % (100 * r["drop"])
    return text


def table(res: dict[str, Any]) -> str:
    lines = ["| variant | baud | hops | BER | window | events/s | event B/s | share of line | line busy "
             "| overhead B/event | events/frame | bottleneck | per-hop p50 / p99 ms, light "
             "| per-hop p50 / p99 ms, loaded | target ms | CPU cores: busiest node / all nodes "
             "/ wires+head / other jobs |",
             "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|--:|--:|--:|--:|"]
    for r in res["rows"]:
        tp = r.get("throughput") or {}
        lat = r.get("latency") or {}
        ll = r.get("latency_loaded") or {}
        if "error" in r or "share" not in tp:
            lines.append("| %s | %d | %d | %s | %d | error: %s |" % (
                r["variant"], r["baud"], r["hops"], _errors(r), r["window"],
                r.get("error") or tp.get("error")))
            continue
        ov = tp["overhead"]
        per_ev = ov["link_and_framing_bytes"] / max(1, tp["events"])
        cpu = tp.get("cpu")
        lines.append("| %s | %d | %d | %s | %d | %.0f | %.0f | %.1f %% | %.1f %% | %.1f | %.1f | %s "
                     "| %s / %s | %s / %s | %s | %s |" % (
                         r["variant"], r["baud"], r["hops"], _errors(r), r["window"],
                         tp["events"] / tp["duration_s"], tp["event_Bps"], 100 * tp["share"], 100 * tp["line_busy"], per_ev,
                         ov["events_per_frame"], tp.get("bottleneck", ""),
                         _f(lat.get("per_hop_p50_ms")), _f(lat.get("per_hop_p99_ms")),
                         _f(ll.get("per_hop_p50_ms")), _f(ll.get("per_hop_p99_ms")),
                         _f(lat.get("target_ms")),
                         ("%.2f / %.2f / %.2f / %.2f" % (
                             cpu["node_max"], cpu["nodes_total"], cpu["bench_process"],
                             cpu.get("other_cores", 0.0))) if cpu else ""))
    lines.append("")
    for t in res["targets"]:
        what = t["target"]
        val = ("%.1f %%" % (100 * t["share"])) if "share" in t else (
            "p99 %.1f ms (limit %.1f)" % (t["p99_ms"], t["limit_ms"]))
        where = "%s %d Bd" % (t["variant"], t["baud"])
        if "hops" in t:
            where += ", %d hops, BER %g" % (t["hops"], t["ber"])
        lines.append("- %s [%s]: %s: %s" % (what, where, val, "met" if t["met"] else "MISSED"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    res = run(a)
    if a.json:
        print(json.dumps(res))
    else:
        print(table(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
