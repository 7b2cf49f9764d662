"""Ingest benchmark: the base station over real UDP on loopback, beside JSON and zenoh.

    python bench/ingest.py [--quick] [--json] [--step S] [--budget S]

What runs, side by side in one run, each receiver in its own process, fed by a
separate sender process on 127.0.0.1 (nothing leaves the loopback interface):

* ``starling``: BaseStation (base_station/station.py) decoding (base_station/wire.py),
  accounting per node and epoch; no sink. Its own recvfrom reader, 4 MB buffer asked for
  (the kernel doubles it to 8 MB; --rcvbuf changes it for every UDP receiver).
* ``starling+sqlite``: the same with SQLiteSink(process=True), what `starling listen`
  runs: every reading written to a SQLite file (WAL) by a writer process.
* ``starling+reader``: ``starling`` with `reader_process=True` (`starling listen
  --reader-process`): a separate process does the receive calls and hands the
  datagrams over a pipe (base_station/udp_reader.py), so receiving and decoding run
  on two cores, as zenoh's I/O threads do for its subscriber; its CPU counts both.
* ``json``: a plain asyncio DatagramProtocol doing json.loads and counting readings;
  the same readings as JSON objects ({"node", "epoch", "seq", "t", "topic", "value"},
  a list of them for a batch); the same socket options as Starling's listener.
* ``zenoh``: an eclipse-zenoh subscriber (callback, counting) in peer mode; the
  publisher connects to it over tcp/127.0.0.1, multicast and gossip scouting are
  off. It carries the Starling CBOR datagrams as payloads, one put per datagram.
  Transport only: it does not decode.
* ``zenoh+ingest``: the same subscriber handing every payload to
  BaseStation.ingest (decode + accounting, no socket, no sink): the work Starling's
  receiver does, over zenoh instead of UDP.

Payloads: ``event`` (one EVENT per datagram, 38 bytes), ``batch20`` and ``batch60``
(BATCH of 20 / 60 readings, 517 / 977 bytes; the readings of base_station/bench.py).
Sixteen nodes, each with its own gap-free sequence numbers, so the station's
accounting sees real streams (a CBOR template per node with seq and t patched in as
uint32: seqs start at 65536, so the encoding is still the preferred one).

Method, per (receiver, payload), with one sender process that paces by sleeping
between bursts of at most 64 datagrams:

1. a paced step at the same rate for every receiver (20,000 readings/s for events,
   200,000 for batches): CPU µs per reading = process CPU time of the receiver (all
   threads, plus the SQLite writer process) / readings delivered;
2. a ladder (not with --quick): the sender paces to a target rate for --step
   seconds; the rate doubles while a step passes (halves while the first fails),
   then two geometric bisections between the best pass and the first fail. A step
   passes when nothing is lost (receiver count == sent, no kernel drops, no sink
   drops), the receiver has drained its backlog within 0.25 s + 10 % of the step
   after the sender stopped (it keeps up), and, with SQLite, every row is committed
   within SINK_GRACE (0.5 s) of that. "max 0-loss" is the best passing rate; ">="
   when the sender could not go faster (offered < 90 % of target). Before a step,
   an SQLite backlog from the last one is waited out;
3. one step at the sender's full speed: offered (sent / send time), delivered
   (received / time until the last arrival, polled every 50 ms) and loss;
4. for Starling, a STATUS per node at the end, after which the station's own
   accounting ("lost") must equal what the steps lost, overload included.

Also: the SQLite sink alone (rows/s through write_block + flush, no network), the
in-process ingest ceiling (base_station.bench.in_process: no sockets; events,
batch20, batch60) and in-process ingest with the SQLite sink's writer process
(base_station.bench.in_process_detail: the ingest loop's rate and CPU per reading,
the end-to-end rate including the final flush, and the cyclic GC's collections and
longest pause during the loop).

Targets: Starling's max zero-loss rate >= the best rate the zenoh subscriber
delivered (its zero-loss rate or its full-speed delivered rate, whichever is
higher), against both zenoh rows; >= 1,000,000 readings/s accounted with batched
datagrams; SQLite keeps up with >= 200,000 readings/s (the sink alone and end to
end over UDP). --quick (no ladder) reports the numbers but assesses no target.

What it does not measure: real radio links or Wi-Fi loss, many sender hosts, a
zenoh router, the live view or subscribers. On a 2-core VM the sender, the receiver
and the SQLite writer share two cores: treat the numbers as ratios within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import select
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import cbor2  # noqa: E402

from base_station.bench import datagrams, in_process, in_process_detail  # noqa: E402
from base_station.listener import RCVBUF  # noqa: E402
from base_station.testing import TestNode  # noqa: E402

PAYLOADS = {"event": 1, "batch20": 20, "batch60": 60}
SYSTEMS = ("starling", "starling+reader", "starling+sqlite", "json", "zenoh", "zenoh+ingest")
STARLING_UDP = ("starling", "starling+reader")      # decode + accounting, no sink
NODES = 16
FIRST_NODE = {"event": 1, "batch20": 101, "batch60": 201}
SEQ0 = 65536            # >= 2**16: a uint32 field is the preferred encoding (RFC 8949 §4.2.1)
T0 = 65536
COMMON_RATE = {"event": 20_000, "batch20": 200_000, "batch60": 200_000}
LADDER_START = {"event": 25_000, "batch20": 250_000, "batch60": 250_000}
KEY = "starling/bench"
POLL = 0.05


def zenoh_missing() -> bool:
    try:
        import zenoh  # noqa: F401
    except ImportError:
        return True
    return False


# -- payloads ------------------------------------------------------------------------------

def cbor_templates(payload: str) -> list[tuple[bytearray, int, int]]:
    """Per node: (datagram, offset of seq's uint32, offset of t's uint32). Fields come
    from base_station.testing.TestNode (EVENT) or base_station.bench.datagrams (BATCH)."""
    per = PAYLOADS[payload]
    out = []
    for k in range(NODES):
        node = FIRST_NODE[payload] + k
        if per == 1:
            fields = cbor2.loads(TestNode(node).event("sensors/%d/temp" % (k % 3), 21.5))
        else:
            fields = cbor2.loads(datagrams(per, 1)[0])
            fields[1] = node
        head = bytes([0x80 + len(fields)]) + b"".join(cbor2.dumps(f) for f in fields[:3])
        buf = bytearray(head + b"\x1a" + struct.pack(">I", SEQ0) + b"\x1a" + struct.pack(">I", T0)
                        + b"".join(cbor2.dumps(f) for f in fields[5:]))
        out.append((buf, len(head) + 1, len(head) + 6))
    return out


def json_payloads(payload: str) -> list[bytes]:
    """Per node: the same readings as JSON objects (a list of them for a batch). The
    JSON receiver only counts, so every datagram of a node is the same bytes."""
    per = PAYLOADS[payload]
    out = []
    for (buf, _, _), k in zip(cbor_templates(payload), range(NODES)):
        f = cbor2.loads(bytes(buf))
        if per == 1:
            objs: Any = {"node": f[1], "epoch": f[2], "seq": f[3], "t": f[4], "topic": f[5], "value": f[6]}
        else:
            flat, t = f[5], f[4]
            objs = []
            for i in range(per):
                t += flat[3 * i]
                objs.append({"node": f[1], "epoch": f[2], "seq": f[3] + i, "t": t,
                             "topic": flat[3 * i + 1], "value": flat[3 * i + 2]})
        out.append(json.dumps(objs, separators=(",", ":")).encode())
    return out


def payload_sizes() -> dict[str, dict[str, int]]:
    return {p: {"cbor": len(cbor_templates(p)[0][0]), "json": len(json_payloads(p)[0])}
            for p in PAYLOADS}


# -- sender process -------------------------------------------------------------------------

def _loopback(host: str) -> str:
    if not ipaddress.ip_address(host).is_loopback:
        raise SystemExit("benchmarks send only to 127.0.0.0/8, not %s" % host)
    return host


def zenoh_config(listen: str | None, connect: str | None) -> Any:
    """Peer mode on loopback only: explicit endpoints, no multicast or gossip scouting."""
    import zenoh
    return zenoh.Config.from_json5(json.dumps({
        "mode": "peer",
        "listen": {"endpoints": [listen] if listen else []},
        "connect": {"endpoints": [connect] if connect else []},
        "scouting": {"multicast": {"enabled": False}, "gossip": {"enabled": False}},
    }))


class Sender:
    """Sends one payload kind to one receiver; `send(k)` sends k datagrams."""

    def __init__(self, system: str, payload: str, port: int):
        self.per = PAYLOADS[payload]
        self.addr = (_loopback("127.0.0.1"), port)
        self.i = 0
        self.session: Any = None
        self.templates = cbor_templates(payload)
        self.seq = [SEQ0] * NODES
        self.t = [T0] * NODES
        self.json = json_payloads(payload)
        if system == "zenoh":
            import zenoh
            self.session = zenoh.open(zenoh_config(None, "tcp/127.0.0.1:%d" % port))
            self.pub = self.session.declare_publisher(KEY)
            deadline = time.monotonic() + 10
            while not self.pub.matching_status.matching:
                if time.monotonic() > deadline:
                    raise SystemExit("zenoh: no subscriber matched within 10 s")
                time.sleep(0.01)
            self.send = self._send_zenoh
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
            self.send = self._send_json if system == "json" else self._send_cbor

    def _next_cbor(self) -> bytearray:
        k = self.i % NODES
        self.i += 1
        buf, so, to = self.templates[k]
        struct.pack_into(">I", buf, so, self.seq[k])
        struct.pack_into(">I", buf, to, self.t[k])
        self.seq[k] += self.per
        self.t[k] += 10 * self.per
        return buf

    def _send_cbor(self, n: int) -> None:
        sendto, addr, nxt = self.sock.sendto, self.addr, self._next_cbor
        for _ in range(n):
            sendto(nxt(), addr)

    def _send_json(self, n: int) -> None:
        sendto, addr, js = self.sock.sendto, self.addr, self.json
        i = self.i
        for j in range(i, i + n):
            sendto(js[j % NODES], addr)
        self.i = i + n

    def _send_zenoh(self, n: int) -> None:
        put, nxt = self.pub.put, self._next_cbor
        for _ in range(n):
            put(bytes(nxt()))

    def run(self, rate: float, seconds: float) -> dict:
        """Pace to `rate` readings/s (0: as fast as possible) for `seconds`."""
        dg_rate = rate / self.per
        sent = 0
        c0 = time.process_time()
        t0 = time.perf_counter()
        end = t0 + seconds
        while True:
            now = time.perf_counter()
            if now >= end:
                break
            if dg_rate:
                due = int((now - t0) * dg_rate) + 1
                if sent >= due:
                    time.sleep(min(0.0005, (sent + 1) / dg_rate - (now - t0)))
                    continue
                k = min(due - sent, 64)
            else:
                k = 128
            self.send(k)
            sent += k
        elapsed = time.perf_counter() - t0
        return {"datagrams": sent, "readings": sent * self.per, "elapsed": elapsed,
                "cpu": time.process_time() - c0}

    def status(self) -> dict:
        """A STATUS per node (last_seq = the last seq sent, since = SEQ0): the station can
        then tell exactly what was lost, trailing datagrams included (UDP CBOR only)."""
        n = 0
        for k, (buf, _, _) in enumerate(self.templates):
            node = TestNode(cbor2.loads(bytes(buf))[1])
            node.seq = self.seq[k]
            self.sock.sendto(node.status(since=SEQ0), self.addr)
            n += 1
        return {"statuses": n}

    def close(self) -> None:
        if self.session is not None:
            time.sleep(0.2)    # let zenoh flush its batches before the session goes
            self.session.close()


def sender_main(system: str, payload: str, port: int) -> None:
    s = Sender(system, payload, port)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        if cmd[0] == "run":
            print(json.dumps(s.run(float(cmd[1]), float(cmd[2]))), flush=True)
        elif cmd[0] == "status":
            print(json.dumps(s.status()), flush=True)
    s.close()


# -- receiver processes ---------------------------------------------------------------------

def _proc_cpu(pid: int | None) -> float:
    """utime + stime of a process in seconds (/proc/PID/stat), 0 if it is gone."""
    if pid is None:
        return 0.0
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _rss_kb(pid: int) -> int:
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


async def _serve_commands(stats, flush=None) -> None:
    """Answer "stats" / "flush" / "quit" lines on stdin with one JSON line each."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = (await reader.readline()).decode().strip()
        if not line or line == "quit":
            return
        if line == "flush" and flush is not None:
            await loop.run_in_executor(None, flush)
        sys.stdout.write(json.dumps(stats()) + "\n")
        sys.stdout.flush()


async def starling_receiver(sqlite: bool, rcvbuf: int, reader: bool = False) -> None:
    from base_station.sinks import SQLiteSink
    from base_station.station import BaseStation
    tmp = tempfile.mkdtemp(prefix="starling-bench-")
    sinks = [SQLiteSink(os.path.join(tmp, "bench.db"), process=True)] if sqlite else []
    st = BaseStation(udp=[("127.0.0.1", 0)], announce=False, sinks=sinks, rcvbuf=rcvbuf,
                     reader_process=reader)
    await st.start()
    writer = sinks[0]._proc.pid if sinks else None
    if reader and st.listeners[0].reader_pid is None:
        raise RuntimeError("the reader process did not start")

    def stats() -> dict:
        c = st.counters
        lost = sum(a.totals()["lost"] for a in st.nodes.values())
        out = {"readings": c["readings"], "datagrams": c["datagrams"], "malformed": c["malformed"],
               "internal_errors": c["internal_errors"], "kernel_drops": st.kernel_drops,
               "lost": lost, "cpu": time.process_time() + (_proc_cpu(writer) if writer else 0.0)
               + (_proc_cpu(st.listeners[0].reader_pid) if reader else 0.0),
               "rss_kb": _rss_kb(os.getpid())}
        if sinks:
            out.update(sink_written=sinks[0].written, sink_dropped=sinks[0].dropped,
                       sink_errors=sinks[0].errors)
        return out

    print(json.dumps({"port": st.addresses[0][1], "rcvbuf": st.listeners[0].rcvbuf_actual}), flush=True)
    await _serve_commands(stats, st.flush)
    await st.stop()
    for name in os.listdir(tmp):
        os.unlink(os.path.join(tmp, name))
    os.rmdir(tmp)


class _JsonProtocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.datagrams = 0
        self.readings = 0
        self.errors = 0

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.datagrams += 1
        try:
            obj = json.loads(data)
        except ValueError:
            self.errors += 1
            return
        self.readings += len(obj) if type(obj) is list else 1


async def json_receiver(rcvbuf: int) -> None:
    from base_station.listener import UdpListener, proc_udp_drops
    lst = UdpListener(lambda d, a: None, "127.0.0.1", 0, rcvbuf=rcvbuf)   # the same socket options
    sock = lst.open_socket()
    proto = _JsonProtocol()
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(lambda: proto, sock=sock)

    def stats() -> dict:
        return {"readings": proto.readings, "datagrams": proto.datagrams, "malformed": proto.errors,
                "kernel_drops": proc_udp_drops(sock) or 0, "cpu": time.process_time(),
                "rss_kb": _rss_kb(os.getpid())}

    print(json.dumps({"port": lst.address[1], "rcvbuf": lst.rcvbuf_actual}), flush=True)
    await _serve_commands(stats)
    transport.close()


def zenoh_receiver(port: int, per_payload: dict[str, int], ingest: bool) -> None:
    """Counts samples; with `ingest`, also hands each payload to BaseStation.ingest
    (decode + accounting, no sockets, no sink): the same work Starling's receiver does."""
    import zenoh
    session = zenoh.open(zenoh_config("tcp/127.0.0.1:%d" % port, None))
    lock = threading.Lock()
    count = [0, 0]     # samples, payload bytes
    station = None
    if ingest:
        from base_station.station import BaseStation
        station = BaseStation(udp=[], announce=False)
    source = ("zenoh", port)

    def on_sample(sample: Any) -> None:
        data = sample.payload.to_bytes()
        with lock:
            count[0] += 1
            count[1] += len(data)
            if station is not None:
                station.ingest(data, source)

    sub = session.declare_subscriber(KEY, on_sample)
    print(json.dumps({"port": port}), flush=True)
    per = 1
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        if cmd[0] == "per":        # readings per sample for the next payload kind
            per = per_payload[cmd[1]]
            with lock:
                count[0] = count[1] = 0
        with lock:
            samples = count[0]
            out = {"samples": samples, "readings": samples * per, "cpu": time.process_time(),
                   "rss_kb": _rss_kb(os.getpid())}
            if station is not None:
                out["readings"] = station.counters["readings"]     # decoded and accounted
                out["malformed"] = station.counters["malformed"]
                out["lost"] = sum(a.totals()["lost"] for a in station.nodes.values())
        print(json.dumps(out), flush=True)
    sub.undeclare()
    session.close()


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- controller ----------------------------------------------------------------------------

class Child:
    """A helper process speaking one JSON line per command."""

    def __init__(self, *args: str):
        self.name = " ".join(args)
        self.proc = subprocess.Popen([sys.executable, __file__, *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1, cwd=str(ROOT))
        self.hello = self.read(30)

    def write(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def ready(self, timeout: float) -> bool:
        assert self.proc.stdout is not None
        return bool(select.select([self.proc.stdout], [], [], timeout)[0])

    def read(self, timeout: float = 60) -> dict:
        if not self.ready(timeout):
            self.proc.kill()
            raise RuntimeError("benchmark helper (%s) did not answer" % self.name)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("benchmark helper (%s) exited (%s)" % (self.name, self.proc.wait()))
        return json.loads(line)

    def ask(self, line: str, timeout: float = 60) -> dict:
        self.write(line)
        return self.read(timeout)

    def close(self) -> None:
        try:
            self.write("quit")
            self.proc.wait(15)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


SINK_GRACE = 0.5     # s after the sender stops by which a keeping-up SQLite sink has committed
SETTLE_MAX = 60.0    # s to wait for a sink backlog from an earlier step before the next


def _committed(st: dict) -> bool:
    return "sink_written" not in st or st["sink_written"] >= st["readings"]


def run_step(recv: Child, send: Child, system: str, rate: float, seconds: float) -> dict:
    """One paced (or, rate 0, full-speed) step; see the module docstring."""
    before = recv.ask("stats")
    deadline = time.monotonic() + SETTLE_MAX
    while not _committed(before) and time.monotonic() < deadline:
        time.sleep(POLL)                   # an earlier step's rows still going to SQLite
        before = recv.ask("stats")
    t0 = time.monotonic()
    send.write("run %s %s" % (rate, seconds))
    last_n, last_change, cur = before["readings"], t0, before
    sent = None
    t_sent = 0.0
    t_commit = None
    grace = 0.25 + 0.1 * seconds
    while True:
        if sent is None and send.ready(POLL):
            sent = send.read()
            t_sent = time.monotonic()
        elif sent is not None:
            time.sleep(POLL)
        cur = recv.ask("stats")
        now = time.monotonic()
        if cur["readings"] != last_n:
            last_n, last_change = cur["readings"], now
        if sent is None:
            continue
        got = cur["readings"] - before["readings"]
        done = got >= sent["readings"] or now - last_change > 0.2    # all in, or nothing more coming
        if done and _committed(cur):
            t_commit = now
            break
        if now - t_sent > SINK_GRACE + 5:
            break
    got = cur["readings"] - before["readings"]
    d = {k: cur[k] - before[k] for k in ("kernel_drops", "lost", "sink_dropped", "malformed") if k in cur}
    drain = max(0.0, last_change - t_sent)
    span = max(last_change - t0, sent["elapsed"], 1e-9)
    cpu = cur["cpu"] - before["cpu"]
    r = {
        "target": rate, "seconds": seconds,
        "sent": sent["readings"], "delivered": got, "loss": sent["readings"] - got,
        "offered_rate": sent["readings"] / sent["elapsed"],
        "delivered_rate": got / span,
        "cpu_us_per_reading": cpu / got * 1e6 if got else None,
        "sender_cpu_us_per_reading": sent["cpu"] / sent["readings"] * 1e6 if sent["readings"] else None,
        "drain_s": round(drain, 3), "rss_kb": cur.get("rss_kb"),
    }
    r.update(d)   # "lost" (accounting) is informative only: a step's trailing gap shows in the next
    sink_ok = True
    if "sink_written" in cur:
        r["sink_lag_s"] = round(t_commit - t_sent, 3) if t_commit is not None else None
        sink_ok = t_commit is not None and t_commit - t_sent <= SINK_GRACE + POLL
    r["zero_loss"] = r["loss"] == 0 and not d.get("kernel_drops") and not d.get("sink_dropped")
    r["pass"] = r["zero_loss"] and drain <= grace and sink_ok
    r["sender_limited"] = bool(rate) and r["offered_rate"] < 0.9 * rate
    return r


def _achieved(r: dict) -> float:
    """A passing step's rate: its target when the sender held it (within 2 %), else what
    it offered."""
    return r["target"] if r["offered_rate"] >= 0.98 * r["target"] else r["offered_rate"]


def ladder(recv: Child, send: Child, system: str, payload: str, seconds: float,
           deadline: float) -> dict:
    """Double the rate while steps pass (halve while they fail, if the first fails),
    then bisect twice, geometrically, between the best pass and the first fail."""
    steps: list[dict] = []
    best: dict | None = None
    fail: float | None = None
    rate = float(LADDER_START[payload])

    def step(r: float) -> dict:
        res = run_step(recv, send, system, r, seconds)
        steps.append(res)
        return res

    while time.monotonic() < deadline and len(steps) < 8:
        r = step(rate)
        if r["pass"]:
            best = r
            if r["sender_limited"] or fail is not None:
                break
            rate *= 2
        else:
            fail = rate
            if best is not None:
                break
            rate /= 2
            if len(steps) >= 4:
                break
    if best is not None and fail is not None and not best["sender_limited"]:
        lo = best["target"]
        for _ in range(2):
            if time.monotonic() >= deadline:
                break
            mid = (lo * fail) ** 0.5
            r = step(mid)
            if r["pass"]:
                best, lo = r, mid
            else:
                fail = mid
    return {"steps": steps,
            "max_zero_loss": _achieved(best) if best else 0.0,
            "sender_limited": bool(best and best["sender_limited"]),
            "first_fail": fail}


def bench_system(system: str, payloads: list[str], args: argparse.Namespace,
                 deadline_for: Any) -> dict:
    out: dict[str, Any] = {}
    zen = system.startswith("zenoh")
    if zen:
        port = _free_tcp_port()
        recv = Child("--role", "recv-" + system, "--port", str(port))
    else:
        recv = Child("--role", "recv-" + system, "--rcvbuf", str(args.rcvbuf))
        port = recv.hello["port"]
    try:
        for payload in payloads:
            if zen:
                recv.ask("per " + payload)
            send = Child("--role", "send", "--system", "zenoh" if zen else system, "--payload", payload,
                         "--port", str(port))
            try:
                res: dict[str, Any] = {}
                start = recv.ask("stats")
                res["common"] = run_step(recv, send, system, COMMON_RATE[payload], args.step)
                if not args.quick:
                    res["ladder"] = ladder(recv, send, system, payload, args.step, deadline_for())
                res["max_speed"] = run_step(recv, send, system, 0, args.step)
                if system.startswith("starling"):
                    # exactness under overload: after a STATUS per node the station's
                    # accounting must name every reading the kernel dropped
                    send.ask("status")
                    time.sleep(0.3)
                    end = recv.ask("stats")
                    steps = [res["common"], res["max_speed"]] + res.get("ladder", {}).get("steps", [])
                    res["accounting_check"] = {
                        "readings_lost_in_steps": sum(st["loss"] for st in steps),
                        "station_lost": end["lost"] - start["lost"],
                        "kernel_drops": end["kernel_drops"] - start["kernel_drops"],
                        "per_datagram": PAYLOADS[payload]}
            finally:
                send.close()
            if system == "starling+sqlite":
                t0 = time.monotonic()
                st = recv.ask("flush", timeout=120)
                res["sqlite_final"] = {"accounted": st["readings"], "written": st["sink_written"],
                                       "dropped": st["sink_dropped"],
                                       "flush_s": round(time.monotonic() - t0, 3)}
            out[payload] = res
    finally:
        recv.close()
    return out


def sqlite_sink_alone(rows: int, process: bool) -> float:
    """Rows/s through SQLiteSink.write_block + flush (20-reading blocks, time base known)."""
    from base_station.records import Block
    from base_station.sinks import SQLiteSink
    topics = ["sensors/%d/temp" % (j % 3) for j in range(20)]
    values = [20.0 + j * 0.5 for j in range(20)]
    with tempfile.TemporaryDirectory() as d:
        sink = SQLiteSink(os.path.join(d, "bench.db"), process=process)
        blocks = [Block(1 + k % NODES, 1, (k // NODES) * 20, list(range(k * 200, k * 200 + 200, 10)),
                        topics, values, 1_795_459_200_000, 1_795_459_300.0) for k in range(rows // 20)]
        t0 = time.perf_counter()
        for b in blocks:
            sink.write_block(b)
        sink.flush()
        dt = time.perf_counter() - t0
        written, dropped = sink.written, sink.dropped
        sink.close()
    if written != rows or dropped:
        raise RuntimeError("sqlite sink wrote %d of %d rows (%d dropped)" % (written, rows, dropped))
    return rows / dt


def targets(results: dict) -> dict:
    sysres = results["systems"]
    out: dict[str, Any] = {}

    def zl(system: str, payload: str) -> float | None:
        r = sysres.get(system, {}).get(payload)
        if not r:
            return None
        if "ladder" in r:
            return r["ladder"]["max_zero_loss"]
        # --quick: no ladder; the full-speed step if it lost nothing, else the common step
        for k in ("max_speed", "common"):
            if r[k]["pass"]:
                return r[k]["offered_rate"] if k == "max_speed" else _achieved(r[k])
        return 0.0

    zens = [z for z in ("zenoh", "zenoh+ingest") if z in sysres]
    for zen in zens:
        z = sysres[zen]
        for system in STARLING_UDP + ("starling+sqlite",):
            for p in PAYLOADS:
                if p not in z or p not in sysres.get(system, {}):
                    continue
                zbest = max(zl(zen, p) or 0.0, z[p]["max_speed"]["delivered_rate"])
                s = zl(system, p) or 0.0
                out["%s_ge_%s_%s" % (system, zen, p)] = {
                    "met": s >= zbest, "starling_zero_loss": s, "zenoh_best_delivered": zbest}
    if not zens:
        out["ge_zenoh"] = {"met": None, "note": results.get("zenoh_note") or "zenoh not run"}
    best_batch = max((zl(sy, p) or 0.0) for sy in STARLING_UDP for p in ("batch20", "batch60"))
    out["accounted_1M_batched"] = {"met": best_batch >= 1_000_000, "best_zero_loss": best_batch}
    sink = results["sqlite_sink_alone"]["process"]
    e2e = zl("starling+sqlite", "batch20") or 0.0
    out["sqlite_200k"] = {"met": sink >= 200_000 and e2e >= 200_000, "sink_alone_rows_s": sink,
                          "udp_end_to_end_batch20_zero_loss": e2e}
    if results["quick"]:
        for t in out.values():
            if t.get("met") is not None:
                t["met"] = None
                t["note"] = "not assessed with --quick (no ladder)"
    return out


def fmt_rate(x: float | None) -> str:
    if x is None:
        return "-"
    return "%.0f" % x if x < 1e3 else ("%.1fk" % (x / 1e3) if x < 1e6 else "%.2fM" % (x / 1e6))


def print_table(results: dict) -> None:
    print("Ingest over UDP on loopback (readings/s; %s; step %.2f s)" % (
        "quick" if results["quick"] else "full", results["step_s"]))
    print("UDP receive buffer asked for: %d bytes" % results["rcvbuf"])
    print("payload bytes: " + ", ".join("%s CBOR %d / JSON %d" % (p, s["cbor"], s["json"])
                                       for p, s in results["payload_bytes"].items()))
    print()
    print("%-16s %-8s %9s %11s %10s %11s %11s %9s %7s %9s" % (
        "receiver", "payload", "µs/rd", "µs/rd@full", "max 0-loss", "full:offer", "delivered", "loss",
        "loss %", "÷zenoh"))
    sysres = results["systems"]
    for system, per in sysres.items():
        for p, r in per.items():
            ms = r["max_speed"]
            zlr = r["ladder"]["max_zero_loss"] if "ladder" in r else None
            ge = ">=" if "ladder" in r and r["ladder"]["sender_limited"] else ""
            z = sysres.get("zenoh", {}).get(p)
            ratio = "%.2f" % (ms["delivered_rate"] / z["max_speed"]["delivered_rate"]) \
                if z and z["max_speed"]["delivered_rate"] else "-"
            cpu = r["common"]["cpu_us_per_reading"]
            cpu_full = ms["cpu_us_per_reading"]
            print("%-16s %-8s %9s %11s %10s %11s %11s %9d %6.1f%% %9s" % (
                system, p, "%.2f" % cpu if cpu else "-", "%.2f" % cpu_full if cpu_full else "-",
                ge + fmt_rate(zlr) if zlr is not None else "-",
                fmt_rate(ms["offered_rate"]), fmt_rate(ms["delivered_rate"]), ms["loss"],
                100.0 * ms["loss"] / ms["sent"] if ms["sent"] else 0.0, ratio))
    print()
    print("µs/rd: receiver CPU per reading at the same paced rate for all (%s); @full: at full speed"
          % ", ".join("%s %s/s" % (p, fmt_rate(r)) for p, r in COMMON_RATE.items()))
    print("max 0-loss: best passing paced rate (ladder); full: sender at full speed, offered,"
          " delivered and loss; ÷zenoh: delivered / zenoh's delivered at full speed")
    for system in STARLING_UDP + ("starling+sqlite",):
        for p, r in sysres.get(system, {}).items():
            a = r.get("accounting_check")
            if a:
                print("%s %s: %d readings lost in all steps; the station's accounting says %d lost"
                      " (%d datagrams dropped by the kernel x %d)" % (
                          system, p, a["readings_lost_in_steps"], a["station_lost"], a["kernel_drops"],
                          a["per_datagram"]))
    for system in ("starling+sqlite",):
        for p, r in sysres.get(system, {}).items():
            f = r.get("sqlite_final")
            if f:
                print("%s %s: %d accounted, %d written, %d dropped by the sink, final flush %.2f s" % (
                    system, p, f["accounted"], f["written"], f["dropped"], f["flush_s"]))
    s = results["sqlite_sink_alone"]
    print("SQLite sink alone: %s rows/s (writer process), %s rows/s (writer thread)" % (
        fmt_rate(s["process"]), fmt_rate(s["thread"])))
    ip = results["in_process"]
    print("in-process ingest (no sockets, base_station.bench): " + ", ".join(
        "%s %s/s" % (k, fmt_rate(v)) for k, v in ip.items()))
    for k, r in results.get("in_process_sqlite", {}).items():
        print("in-process ingest + SQLite writer process, %s: ingest loop %s/s (%.2f µs CPU per"
              " reading), end to end %s/s; GC collections %s, longest pause %.1f ms" % (
                  k, fmt_rate(r["ingest"]), r["cpu_us"], fmt_rate(r["end_to_end"]),
                  "/".join(map(str, r["gc_collections"])), r["gc_max_pause_ms"]))
    if results.get("zenoh_note"):
        print(results["zenoh_note"])
    print()
    for name, t in results["targets"].items():
        met = t.get("met")
        detail = ", ".join("%s %s" % (k, fmt_rate(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
                           for k, v in t.items() if k != "met")
        print("  target %-34s %s  (%s)" % (name, "n/a" if met is None else ("met" if met else "MISSED"),
                                            detail))
    m = results["machine"]
    print("total %.0f s; load average %.2f at the start, %.2f at the end (other work on the machine)"
          % (results["elapsed_s"], m["loadavg_start"], m.get("loadavg_end", 0.0)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--quick", action="store_true", help="no ladder, short steps (< 30 s)")
    ap.add_argument("--step", type=float, help="seconds per step (default 1.0, quick 0.25)")
    ap.add_argument("--rcvbuf", type=int, default=RCVBUF,
                    help="receive buffer asked for by the UDP receivers, bytes (default %(default)s;"
                         " the kernel reports twice that)")
    ap.add_argument("--budget", type=float, default=150.0,
                    help="seconds for the ladders in all (default 150); bisection stops when spent")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset of " + ",".join(SYSTEMS))
    ap.add_argument("--payloads", default=",".join(PAYLOADS), help="comma-separated subset")
    ap.add_argument("--role", help=argparse.SUPPRESS)
    ap.add_argument("--system", help=argparse.SUPPRESS)
    ap.add_argument("--payload", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.role == "send":
        sender_main(args.system, args.payload, args.port)
        return 0
    if args.role in ("recv-starling", "recv-starling+sqlite", "recv-starling+reader"):
        asyncio.run(starling_receiver(args.role.endswith("sqlite"), args.rcvbuf,
                                      args.role.endswith("reader")))
        return 0
    if args.role == "recv-json":
        asyncio.run(json_receiver(args.rcvbuf))
        return 0
    if args.role in ("recv-zenoh", "recv-zenoh+ingest"):
        zenoh_receiver(args.port, PAYLOADS, args.role.endswith("ingest"))
        return 0

    if args.step is None:
        args.step = 0.25 if args.quick else 1.0
    t_start = time.monotonic()
    systems = [s for s in args.systems.split(",") if s]
    payloads = [p for p in args.payloads.split(",") if p]
    results: dict[str, Any] = {"quick": args.quick, "step_s": args.step, "payload_bytes": payload_sizes(),
                               "rcvbuf": args.rcvbuf,
                               "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                                           "loadavg_start": os.getloadavg()[0]},
                               "systems": {}}
    if any(s.startswith("zenoh") for s in systems) and zenoh_missing():
        systems = [s for s in systems if not s.startswith("zenoh")]
        results["zenoh_note"] = "zenoh: not installed (pip install -e '.[bench]')"
        print(results["zenoh_note"], file=sys.stderr if args.json else sys.stdout, flush=True)
    ladder_runs = len(systems) * len(payloads)
    done = [0]
    ladder_t0 = time.monotonic()

    def deadline_for() -> float:
        # an equal share of what is left of the budget for each remaining ladder
        left = args.budget - (time.monotonic() - ladder_t0)
        share = left / max(1, ladder_runs - done[0])
        done[0] += 1
        return time.monotonic() + max(0.0, share)

    for system in systems:
        results["systems"][system] = bench_system(system, payloads, args, deadline_for)
    rows = 40_000 if args.quick else 200_000
    results["sqlite_sink_alone"] = {"process": sqlite_sink_alone(rows, True),
                                    "thread": sqlite_sink_alone(rows, False)}
    count = 2000 if args.quick else 10000
    results["in_process"] = {"event": in_process(1, count * 10, None),
                             "batch20": in_process(20, count, None), "batch60": in_process(60, count, None)}
    with tempfile.TemporaryDirectory() as d:
        results["in_process_sqlite"] = {
            "event": in_process_detail(1, count * 10, os.path.join(d, "e.db"), True),
            "batch20": in_process_detail(20, count * 5, os.path.join(d, "b.db"), True)}
    results["targets"] = targets(results)
    results["elapsed_s"] = round(time.monotonic() - t_start, 1)
    results["machine"]["loadavg_end"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(results))
    else:
        print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
