"""`starling chain --serial PORT`: the topology of a chain of two CPython chain nodes
(tests/test_base_serial_node.py) behind one another on virtual wires, and of two
MicroPython nodes running firmware/chain.py (sim/chain.py; skipped without it); clear
errors and a non-zero exit when nobody answers, the port does not exist, or TX is
looped to RX."""

import asyncio
import json
import subprocess
import sys
import time

import pytest

from base_station import chain_cmd
from base_station.sinks import read_db
from sim.wire import VirtualWire, WireChain
from test_base_serial_node import ChainTestNode

PY = sys.executable
BAUD = 230400


def starling(*args, timeout=20):
    return subprocess.run([PY, "-m", "base_station.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def chain():
    """base <-> node 11 (hop 1) <-> node 12 (hop 2), both CPython test nodes sending a
    periodic STATUS every 0.3 s besides their ENUMERATE answers. Node 11
    starts its downstream link only once it knows its hop (from the base's HELLO), so
    node 12 joins when a base first connects."""
    with WireChain(2, baud=BAUD, seed=1) as wires:
        n1 = ChainTestNode(11, wires.upstream_path(1), wires.downstream_path(1), epoch=4,
                           status_every=0.3, firmware="fw-a").start()
        n2 = ChainTestNode(12, wires.upstream_path(2), epoch=9, status_every=0.3,
                           firmware="fw-b").start()
        try:
            yield wires, n1, n2
        finally:
            n2.stop()
            n1.stop()


def test_chain_json_lists_hops_in_order(chain, tmp_path):
    wires, n1, n2 = chain
    for _ in range(5):
        n2.publish("lab/far")
    # a first run brings the chain up (node 11 learns its hop and starts its downstream
    # link) and carries node 12's events; the second one, a new base session, sees the
    # counters of that traffic
    code, first = chain_cmd.probe(wires.base_path, BAUD, timeout=10, settle=0.5)
    assert code == 0, first
    for _ in range(3):
        n1.publish("lab/near")
    db = str(tmp_path / "chain.db")
    r = starling("chain", "--serial", "%s@%d" % (wires.base_path, BAUD), "--json",
                 "--timeout", "10", "--settle", "1", "--db", db)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    # settled well before the 10 s timeout: periodic STATUS (every 0.3 s) do not keep it
    # waiting (typically ~1.5 s: the link, one round, 1 s of settle; slack for a busy host)
    assert out["elapsed_s"] < 7
    assert [(n["hop"], n["node"]) for n in out["nodes"]] == [(1, 11), (2, 12)]
    a, b = out["nodes"]
    assert (a["firmware"], a["epoch"], b["firmware"], b["epoch"]) == ("fw-a", 4, "fw-b", 9)
    assert b["published"] == 5 and b["last_seq"] == 4 and a["published"] == 3
    assert a["forwarded"] >= 6 and b["forwarded"] == 0    # 5 events + node 12's first STATUS
    for n in out["nodes"]:
        for k in ("uptime_ms", "queue_depth", "link_frames", "link_retransmissions",
                  "link_crc_errors", "link_rtt_ms", "link_window_in_use", "link_downs"):
            assert isinstance(n[k], int), (k, n)
    assert a["link_frames"] >= 2 and b["link_frames"] >= 2
    base = out["base"]
    assert base["hop"] == 0 and base["up"] and base["peer_node"] == 11 and base["peer_hop"] == 1
    assert base["link"]["messages_received"] >= 2       # the two STATUS answers
    assert out["port"] == wires.base_path and out["baud"] == BAUD
    assert out["rounds"] >= 1 and n1.enumerates >= 2 and n2.enumerates >= 2
    # what the chain handed over meanwhile was stored, not dropped
    assert out["stored_in"] == db and out["readings"] == len(list(read_db(db))) >= 3


def test_chain_table(chain):
    wires, n1, n2 = chain
    n1.publish("lab/near")
    code, result = chain_cmd.probe(wires.base_path, BAUD, timeout=10, settle=0.8)
    assert code == 0, result
    text = chain_cmd.table(result)
    lines = text.splitlines()
    assert lines[0] == "chain on %s at %d Bd: 2 nodes" % (wires.base_path, BAUD)
    assert lines[1].split() == list(chain_cmd.COLUMNS)
    assert lines[2].split()[:2] == ["0", "base"]
    assert lines[3].split()[:3] == ["1", "11", "fw-a"]
    assert lines[4].split()[:3] == ["2", "12", "fw-b"]
    assert lines[-1].startswith("warning: 1 readings arrived meanwhile and were not stored")


def test_no_node_is_a_clear_error_within_the_timeout():
    with VirtualWire(BAUD, seed=2) as wire:                 # nobody at the far end
        t0 = time.monotonic()
        r = starling("chain", "--serial", wire.a_path, "--timeout", "1.5")
        elapsed = time.monotonic() - t0
    assert r.returncode == 1 and r.stdout == ""
    assert ("no Starling node answered on %s: check wiring (TX\u2194RX crossed, common ground) "
            "and baud (115200)" % wire.a_path) in r.stderr
    assert elapsed < 15          # gave up near its 1.5 s timeout (start-up slack for a busy host)


def test_missing_port_and_echo_are_clear_errors(tmp_path):
    code, msg = chain_cmd.probe(str(tmp_path / "nothing"), BAUD, timeout=1, settle=0.5)
    assert code == 1 and msg.startswith("cannot open %s" % (tmp_path / "nothing"))
    code, msg = chain_cmd.probe("loop://", BAUD, timeout=1.5, settle=0.5)
    assert code == 1 and "our own frames come back on loop://" in msg


def test_busy_port_says_who_may_hold_it():
    import serial
    with VirtualWire(BAUD, seed=3) as wire:
        holder = serial.Serial(wire.a_path, exclusive=True)     # e.g. a running listen
        try:
            code, msg = chain_cmd.probe(wire.a_path, BAUD, timeout=1.5, settle=0.5)
        finally:
            holder.close()
    assert code == 1 and msg.startswith("cannot open %s" % wire.a_path)
    assert "the port is busy: another program holds it (a running `starling listen" in msg


def test_bad_arguments_exit_2():
    r = starling("chain", "--serial", "/dev/x@0")
    assert r.returncode == 2 and "baud" in r.stderr


def test_chain_of_real_firmware_nodes(tmp_path):
    """`starling chain` against two MicroPython nodes running firmware/chain.py (through
    sim/chain.py) that have just booted: the command must reach node 2 although node 1
    starts its downstream link only when the base connects."""
    try:
        from sim.chain import Chain
        from sim.fleet import micropython_command
        micropython_command()
    except (ImportError, RuntimeError) as e:
        pytest.skip("no MicroPython chain simulator: %s" % e)

    async def main():
        chain = Chain(2, rate=2, seed=5, durable=False, workdir=str(tmp_path / "chain"),
                      status_every_ms=60000)
        await chain.start()
        try:
            proc = await asyncio.create_subprocess_exec(
                PY, "-m", "base_station.cli", "chain", "--serial", chain.head_path, "--json",
                "--timeout", "10", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await proc.communicate()
            return proc.returncode, out.decode(), err.decode()
        finally:
            await chain.stop()

    code, out, err = asyncio.run(main())
    assert code == 0, err
    result = json.loads(out)
    assert [(n["hop"], n["node"]) for n in result["nodes"]] == [(1, 1), (2, 2)]
    for n in result["nodes"]:
        assert n["firmware"] and n["epoch"] >= 1 and n["link_frames"] is not None
    assert result["base"]["peer_node"] == 1 and result["base"]["peer_hop"] == 1
