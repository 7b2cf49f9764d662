"""The base station's serial chain head (base_station/serial_head.py) against a CPython
chain node (tests/test_base_serial_node.py) on the other end of real ptys joined by the
virtual wire: exactly-once delivery into SQLite over a noisy line, a port that vanishes
and comes back, a node reboot, DEADLETTER accounting, ENUMERATE, and `starling listen
--serial` as a subprocess, alone and beside `--udp`; then two MicroPython nodes running
the real firmware/chain.py through sim/chain.py (skipped without MicroPython).

`TestOwnFramesComeBack` is one class over several transports (STYLE.md item 8):
pyserial's ``loop://``, a virtual wire whose far end is jumpered (bytes read there are
written straight back), and a real port with TX jumpered to RX (``--serial-port``,
marker `hardware`). On each the head must see its own HELLOs, count them as echoes,
never pair with itself, and keep running.
"""

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time

import cbor2
import pytest
import serial

from protocol.messages import Announce, DeadLetter, from_fields
from base_station.cli import make_parser
from base_station.serial_head import SerialHead, parse_port
from base_station.sinks import SQLiteSink, read_db
from base_station.station import BaseStation
from base_station.testing import TestNode
from sim.wire import VirtualWire
from test_base_serial_node import ChainTestNode
from conftest import until

PY = sys.executable
BAUD = 230400
# the test node's retransmission timer is capped low: on a line that loses half of the
# frames, backoff to the default 4 s would make the test slow, not more thorough
FAST = {"rto_ms": 300, "rto_max_ms": 300}


def run(coro, timeout=40):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def serial_station(**kw):
    kw.setdefault("udp", [])
    kw.setdefault("announce", False)
    return BaseStation(**kw)


def received(st, node):
    a = st.nodes.get(node)
    return a.totals()["received"] if a is not None else 0


# -- parsing -----------------------------------------------------------------------------------

def test_parse_port():
    assert parse_port("/dev/ttyUSB0") == ("/dev/ttyUSB0", 115200)
    assert parse_port("/dev/ttyUSB0@921600") == ("/dev/ttyUSB0", 921600)
    assert parse_port("loop://") == ("loop://", 115200)
    assert parse_port("rfc2217://user@host:2217") == ("rfc2217://user@host:2217", 115200)
    assert parse_port("/tmp/a@b/port@9600") == ("/tmp/a@b/port", 9600)
    for bad in ("", "@9600", "/dev/x@0"):
        with pytest.raises(ValueError):
            parse_port(bad)


def test_open_hint_names_a_dangling_symlink(tmp_path):
    from base_station.serial_head import open_hint
    link = tmp_path / "head"
    link.symlink_to("/dev/pts/9999")                 # left by a simulator that was killed
    err = "[Errno 2] could not open port %s: [Errno 2] No such file or directory" % link
    hint = open_hint(err, str(link))
    assert "symlink to /dev/pts/9999, which does not exist" in hint and "replaces the link" in hint
    assert open_hint(err, str(tmp_path / "missing")).startswith("no such port")
    assert open_hint("[Errno 16] Device or resource busy", str(link)).startswith("%s is a symlink" % link)


def test_listen_serial_options_and_defaults():
    from base_station.cli import build_station
    args = make_parser().parse_args(["listen", "--serial", "loop://@9600", "--serial", "/dev/x",
                                     "--no-db"])
    assert args.serial == [("loop://", 9600), ("/dev/x", 115200)]
    st = build_station(args)
    assert st.udp == [] and not st.announce_enabled          # serial only: no UDP at all
    assert [(h.port, h.baud) for h in st.heads] == [("loop://", 9600), ("/dev/x", 115200)]
    args = make_parser().parse_args(["listen", "--serial", "loop://", "--udp", "127.0.0.1:0",
                                     "--no-db"])
    st = build_station(args)
    assert st.udp == [("127.0.0.1", 0)] and st.announce_enabled and len(st.heads) == 1
    with pytest.raises(SystemExit):
        make_parser().parse_args(["listen", "--serial", "/dev/x@0"])


# -- one node, in process --------------------------------------------------------------------

def test_events_exactly_once_into_sqlite_over_a_noisy_wire(tmp_path):
    """BER 1e-4 and 1 % of bytes dropped (about half of the frames lost): every event
    arrives once in the database and the accounting, none lost; the node's STATUS and
    its hop reach the station; the head's counters show the damage."""
    db = str(tmp_path / "serial.db")
    n_events = 100

    async def main():
        with VirtualWire(BAUD, ber=1e-4, drop=0.01, seed=7) as wire:
            st = serial_station(sinks=[SQLiteSink(db)])
            head = SerialHead(st, wire.a_path, BAUD)
            st.add_head(head)
            await st.start()
            node = ChainTestNode(5, wire.b_path, epoch=3, status_every=0.5,
                                 link_options=FAST).start()
            try:
                for _ in range(n_events):
                    node.publish("lab/t")
                await until(lambda: received(st, 5) >= n_events and node.idle(), 30,
                            "all events delivered")
                await until(lambda: st.nodes[5].status is not None
                            and st.nodes[5].status.last_seq == n_events - 1, 10, "final STATUS")
                summary = st.summary()
            finally:
                node.stop()
                await st.stop()
            return summary, node

    summary, node = run(main())
    n = summary["nodes"]["5"]
    assert (n["received"], n["lost"], n["epoch"]) == (n_events, 0, 3)
    assert n["status"]["hop"] == 1 and n["source"] == "serial:" + summary["serial"].popitem()[0]
    rows = list(read_db(db))
    assert len(rows) == n_events
    assert sorted(r.seq for r in rows) == list(range(n_events))
    assert {(r.node, r.epoch) for r in rows} == {(5, 3)}
    # duplicates are possible only across a link resync (a frame over its retry budget)
    if node.up.link.stats()["resyncs"] == 0:
        assert n["duplicates"] == 0


def test_summary_reports_the_head_and_enumerate_reaches_the_node(tmp_path):
    async def main():
        with VirtualWire(BAUD, seed=1) as wire:
            st = serial_station()
            head = SerialHead(st, wire.a_path, BAUD)
            st.add_head(head)
            await st.start()
            node = ChainTestNode(9, wire.b_path, status_every=None).start()
            try:
                await until(lambda: head.up, 5, "link up")
                await until(lambda: node.announces >= 1, 5, "ANNOUNCE at link up")
                head.enumerate()
                await until(lambda: st.nodes.get(9) is not None and st.nodes[9].status is not None,
                            5, "STATUS answer")
                return st.summary(), node
            finally:
                node.stop()
                await st.stop()

    summary, node = run(main())
    s = summary["serial"][next(iter(summary["serial"]))]
    assert s["open"] and s["up"] and s["peer_node"] == 9 and s["peer_hop"] == 1
    assert s["announces_sent"] >= 1 and s["enumerates_sent"] == 1 and s["messages_in"] >= 1
    assert s["link"]["up"] and s["crc_errors"] == 0 and s["echoes"] == 0
    assert node.enumerates == 1 and node.time_base is not None      # learned wall time
    assert summary["nodes"]["9"]["status"]["hop"] == 1
    assert summary["listening"] == [] and summary["announces_sent"] == 0
    json.dumps(summary)                                              # JSON-ready


def test_deadletter_is_counted_per_node():
    async def main():
        with VirtualWire(BAUD, seed=2) as wire:
            st = serial_station()
            st.add_head(SerialHead(st, wire.a_path, BAUD))
            await st.start()
            node = ChainTestNode(4, wire.b_path, status_every=None).start()
            try:
                node.publish()
                msg = DeadLetter(4, 2, [(1, 17), (1, 18)]).encode()
                with node.lock:
                    node.outbox.append((msg, None))
                node._wake()
                await until(lambda: st.nodes.get(4) is not None and st.nodes[4].dead_letter == 2,
                            5, "DEADLETTER counted")
                return st.summary()
            finally:
                node.stop()
                await st.stop()

    summary = run(main())
    assert summary["nodes"]["4"]["dead_letter"] == 2 and summary["nodes"]["4"]["received"] == 1
    assert summary["malformed"] == 0 and summary["internal_errors"] == 0


def test_head_survives_the_port_vanishing_and_coming_back(tmp_path):
    """The wire (both ptys) disappears for 1.5 s, as a USB adapter pulled out and
    plugged back: the head keeps retrying, reopens the same path, and the link session
    survives, so the events published before, during and after arrive exactly once."""
    head_path, node_path = str(tmp_path / "head"), str(tmp_path / "node")
    db = str(tmp_path / "v.db")

    async def main():
        wire = VirtualWire(BAUD, seed=3, link_a=head_path, link_b=node_path)
        st = serial_station(sinks=[SQLiteSink(db)])
        head = SerialHead(st, head_path, BAUD, reopen_interval=0.25)
        st.add_head(head)
        await st.start()
        node = ChainTestNode(6, node_path, status_every=0.5).start()
        try:
            for _ in range(30):
                node.publish()
            await until(lambda: received(st, 6) == 30, 10, "first 30 events")
            wire.close()
            await until(lambda: not head.is_open, 5, "the head notices")
            for _ in range(30):
                node.publish()                           # published while the port is gone
            await asyncio.sleep(1.5)
            assert received(st, 6) == 30
            wire = VirtualWire(BAUD, seed=4, link_a=head_path, link_b=node_path)
            await until(lambda: head.up, 10, "link up again")
            for _ in range(30):
                node.publish()
            await until(lambda: received(st, 6) == 90 and node.idle(), 15, "all 90 events")
            await until(lambda: st.nodes[6].status.last_seq == 89, 5, "final STATUS")
            return st.summary(), node
        finally:
            node.stop()
            await st.stop()
            wire.close()

    summary, node = run(main())
    n = summary["nodes"]["6"]
    assert (n["received"], n["lost"], n["duplicates"]) == (90, 0, 0)
    s = summary["serial"][head_path]
    assert s["disconnects"] >= 1 and s["opens"] >= 2 and s["open_errors"] >= 1
    assert s["internal_errors"] == 0 and s["up"]
    assert node.up.link.stats()["resyncs"] == 0          # the same link session throughout
    assert len(list(read_db(db))) == 90


def test_node_reboot_resyncs_the_link_and_starts_a_new_epoch():
    async def main():
        with VirtualWire(BAUD, seed=8) as wire:
            st = serial_station()
            head = SerialHead(st, wire.a_path, BAUD)
            st.add_head(head)
            await st.start()
            try:
                with ChainTestNode(8, wire.b_path, epoch=1) as node:
                    for _ in range(10):
                        node.publish()
                    await until(lambda: received(st, 8) == 10 and node.idle(), 5, "epoch 1")
                with ChainTestNode(8, wire.b_path, epoch=2) as node:   # rebooted: new session
                    for _ in range(10):
                        node.publish()
                    await until(lambda: received(st, 8) == 20 and node.idle(), 10, "epoch 2")
                return st.summary()
            finally:
                await st.stop()

    summary = run(main())
    n = summary["nodes"]["8"]
    assert (n["received"], n["lost"], n["reboots"], n["epoch"]) == (20, 0, 1, 2)
    s = summary["serial"][next(iter(summary["serial"]))]
    assert s["link"]["resyncs"] >= 1 and s["up"] and s["ups"] >= 2


# -- own frames coming back: one class, several transports -------------------------------------

class _Jumper:
    """Copies every byte read at a pty endpoint back into it: TX jumpered to RX."""

    def __init__(self, path):
        self.ser = serial.Serial(path, timeout=0.05)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            try:
                data = self.ser.read(4096)
                if data:
                    self.ser.write(data)
            except (serial.SerialException, OSError):
                return

    def close(self):
        self.stop.set()
        self.thread.join(1)
        self.ser.close()


@pytest.fixture(params=["loop", "vwire", pytest.param("hardware", marks=pytest.mark.hardware)])
def echo_port(request):
    kind = request.param
    if kind == "loop":
        yield "loop://", 115200
    elif kind == "vwire":
        with VirtualWire(BAUD, seed=0) as wire:
            jumper = _Jumper(wire.b_path)
            yield wire.a_path, BAUD
            jumper.close()
    else:
        yield request.config.getoption("--serial-port"), int(os.environ.get("STARLING_SERIAL_BAUD",
                                                                            "115200"))


class TestOwnFramesComeBack:
    def test_echoed_frames_are_counted_and_never_pair(self, echo_port):
        port, baud = echo_port

        async def main():
            st = serial_station()
            head = SerialHead(st, port, baud, link_options={"rto_ms": 300, "keepalive_ms": 300})
            st.add_head(head)
            await st.start()
            try:
                await until(lambda: head.counters["echoes"] >= 2, 5, "echoed HELLOs")
                await asyncio.sleep(0.3)
                return head.stats(), st.summary(), head._thread.is_alive()
            finally:
                await st.stop()

        stats, summary, alive = run(main())
        assert alive and stats["open"] and not stats["up"]
        assert not stats["link"]["up"] and stats["peer_node"] is None
        assert stats["internal_errors"] == 0 and stats["disconnects"] == 0
        assert stats["frames_in"] >= stats["echoes"] >= 2
        assert summary["messages"] == 0 and summary["nodes"] == {}


# -- starling listen --serial, as a subprocess -------------------------------------------------

def _start_listen(tmp_path, *extra, duration=3):
    cmd = [PY, "-m", "base_station.cli", "listen", "--duration", str(duration),
           "--db", str(tmp_path / "l.db"), "--summary-json", str(tmp_path / "summary.json"),
           "--every", "1", "--plain", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=str(tmp_path))


def test_listen_serial_subprocess_summary_json(tmp_path):
    with VirtualWire(BAUD, seed=5) as wire, \
            ChainTestNode(21, wire.b_path, epoch=2, status_every=0.3) as node:
        for _ in range(40):
            node.publish("lab/serial")
        proc = _start_listen(tmp_path, "--serial", "%s@%d" % (wire.a_path, BAUD))
        try:
            first = proc.stdout.readline()
            out, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, err
    assert first.strip() == "starling: serial chain head on %s at %d Bd" % (wire.a_path, BAUD)
    summary = json.loads((tmp_path / "summary.json").read_text())
    n = summary["nodes"]["21"]
    assert (n["received"], n["lost"], n["duplicates"], n["epoch"]) == (40, 0, 0, 2)
    assert n["source"] == "serial:" + wire.a_path and n["status"]["hop"] == 1
    assert summary["listening"] == [] and summary["announces_sent"] == 0
    s = summary["serial"][wire.a_path]
    assert s["baud"] == BAUD and s["messages_in"] >= 41 and s["ups"] >= 1
    assert len(list(read_db(str(tmp_path / "l.db")))) == 40
    assert node.announces >= 1                             # the head announced on the chain


def test_listen_serial_and_udp_together(tmp_path):
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(5)
    with VirtualWire(BAUD, seed=6) as wire, \
            ChainTestNode(31, wire.b_path, status_every=0.3) as node:
        for _ in range(20):
            node.publish("lab/serial")
        proc = _start_listen(tmp_path, "--serial", wire.a_path, "--udp", "127.0.0.1:0",
                             "--discovery", "%s:%d" % rx.getsockname(), "--base-id", "both")
        try:
            line = proc.stdout.readline()
            assert line.startswith("starling: listening on 127.0.0.1:"), line + proc.stderr.read()
            addr = ("127.0.0.1", int(line.strip().rsplit(":", 1)[1]))
            assert proc.stdout.readline().startswith("starling: serial chain head on " + wire.a_path)
            ann = from_fields(cbor2.loads(rx.recv(2048)))          # UDP announces: --udp given
            udp_node = TestNode(32, target=addr)
            for i in range(10):
                udp_node.send(udp_node.event("lab/udp", i))
            udp_node.send(udp_node.status())
            out, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
            rx.close()
    assert proc.returncode == 0, err
    assert isinstance(ann, Announce) and ann.base == "both"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["nodes"]["31"]["received"] == 20 and summary["nodes"]["31"]["lost"] == 0
    assert summary["nodes"]["32"]["received"] == 10 and summary["nodes"]["32"]["lost"] == 0
    assert summary["nodes"]["31"]["source"] == "serial:" + wire.a_path
    assert summary["nodes"]["32"]["source"].startswith("127.0.0.1:")
    assert summary["listening"] == ["%s:%d" % addr] and wire.a_path in summary["serial"]
    assert len(list(read_db(str(tmp_path / "l.db")))) == 30


# -- the real chain firmware (firmware/chain.py on MicroPython, via sim/chain.py) ---------------

def _sim_chain():
    try:
        from sim.chain import Chain
        from sim.fleet import micropython_command
        micropython_command()
    except (ImportError, RuntimeError) as e:
        pytest.skip("no MicroPython chain simulator: %s" % e)
    return Chain


def test_real_chain_nodes_into_sqlite_exactly_once(tmp_path):
    """Two MicroPython chain nodes (firmware/chain.py) on a noisy chain: everything they
    published reaches the database exactly once, each node's STATUS carries its hop."""
    Chain = _sim_chain()
    db = str(tmp_path / "chain.db")

    async def main():
        chain = Chain(2, ber=1e-5, drop=0.001, rate=20, seed=3, durable=False,
                      workdir=str(tmp_path / "chain"))
        await chain.start()
        st = serial_station(sinks=[SQLiteSink(db)])
        head = SerialHead(st, chain.head_path, chain.baud)
        st.add_head(head)
        await st.start()
        try:
            await until(lambda: received(st, 1) > 20 and received(st, 2) > 20, 15, "traffic")
            published = await chain.pause()
            await until(lambda: all(received(st, n) == published[n] for n in (1, 2)), 15,
                        "all published events")
            await until(lambda: all(st.nodes[n].status is not None
                                    and st.nodes[n].status.last_seq == published[n] - 1
                                    for n in (1, 2)), 10, "final STATUS")
            return st.summary(), published
        finally:
            await st.stop()
            await chain.stop()

    summary, published = run(main(), timeout=60)
    for n, hop in ((1, 1), (2, 2)):
        s = summary["nodes"][str(n)]
        assert (s["received"], s["lost"]) == (published[n], 0), s
        assert s["status"]["hop"] == hop
    assert summary["nodes"]["1"]["status"]["counters"]["forwarded"] > 0
    assert len(list(read_db(db))) == published[1] + published[2]
