"""`starling flash` onto a VirtualBoard (the unix port's REPL on a pty, driven by mpremote):
copy, verify by hash on the board, reset, tail; reboots run main.py; clear errors. A
UDP node publishes to a UDP socket; a serial chain node (its upstream UART one end of a
virtual wire) publishes to a base station's SerialHead on the other end, and `starling
chain --serial` finds it at hop 1."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from base_station import flash
from base_station.build import build_bundle
from base_station.flash import FlashError, flash_bundle
from base_station.serial_head import SerialHead
from base_station.station import BaseStation
from protocol import messages
from sim.virtual_board import VirtualBoard
from sim.wire import VirtualWire
from conftest import until

pytestmark = pytest.mark.slow

NODE = 7


@pytest.fixture
def base():
    """A UDP socket standing in for the base station."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(5)
    yield s
    s.close()


@pytest.fixture
def bundle(tmp_path, base) -> Path:
    cfg = {"node": NODE, "transport": "udp",
           "sensors": [{"topic": "temp", "kind": "sine", "period_ms": 100}],
           "bases": [["127.0.0.1", base.getsockname()[1]]]}
    path = tmp_path / "node.json"
    path.write_text(json.dumps(cfg))
    build_bundle("unix", path, tmp_path / "bundle")
    return tmp_path / "bundle"


@pytest.fixture
def board(tmp_path):
    with VirtualBoard(tmp_path / "board", log_path=tmp_path / "board.log") as b:
        yield b


def _receive(base: socket.socket, node: int, timeout: float = 5.0) -> list[messages.Message]:
    """Datagrams from `node` until one EVENT (or BATCH) came in; fails on timeout."""
    got = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data, _ = base.recvfrom(2048)
        except socket.timeout:
            break
        msg = messages.decode(data)
        assert msg.node == node
        got.append(msg)
        if isinstance(msg, (messages.Event, messages.Batch)):
            return got
    pytest.fail("no EVENT from node %d within %.0f s (got %r)" % (node, timeout, got))


def test_flash_verify_reset_and_publish(board, bundle, base):
    # a stale source module on the board would shadow node.mpy: flash must remove it
    (board.root / "firmware").mkdir()
    (board.root / "firmware" / "node.py").write_text("raise SystemExit('stale')\n")
    lines: list[str] = []
    report = flash_bundle(board.port, bundle, tail=1.5, out=lines.append)

    manifest = json.loads((bundle / "MANIFEST.json").read_text())
    assert report.platform == "linux" and report.reset == "soft"
    assert report.verified == len(manifest["files"])
    assert report.removed == ["/firmware/node.py"]
    for name in manifest["files"]:     # byte for byte on the board's flash
        assert (board.root / name).read_bytes() == (bundle / name).read_bytes(), name
    assert "MPY: soft reboot" in report.tail
    assert any(line.startswith("  | ") for line in lines)

    # the node runs main.py -> firmware.node from .mpy and publishes to its base
    first = _receive(base, NODE)
    epoch = first[-1].epoch
    assert (board.root / "epoch").read_text().strip() == str(epoch)

    # a hard reset boots again: boot.py, main.py, a new epoch
    board.reboot()
    deadline = time.monotonic() + 10
    while True:
        msgs = _receive(base, NODE)
        if msgs[-1].epoch == epoch + 1:
            break
        assert time.monotonic() < deadline, "no EVENT of epoch %d after reboot" % (epoch + 1)
    assert board.boots >= 3   # power on, soft reset after flashing, reboot()


def test_reboot_runs_boot_then_main_in_a_sandboxed_root(board):
    """Board emulation without the firmware: "/" is board.root, boot.py runs before main.py."""
    root = board.root
    (root / "boot.py").write_text("import os\nprint('boot ran in', os.getcwd())\n")
    (root / "main.py").write_text(
        "import os, sys\n"
        "f = open('/made-by-main.txt', 'w'); f.write('x'); f.close()\n"
        "os.rename('/made-by-main.txt', '/renamed.txt')\n"   # unix-port bug worked around
        "print('main ran', sorted(os.listdir('/')), sys.path)\n")
    mark = board.mark()
    board.reboot()
    out = board.wait_for(r"main ran .*\n", since=mark)
    assert out.index("boot ran in /") < out.index("main ran")
    assert "'renamed.txt'" in out and "['', '.frozen', '/lib']" in out
    assert (root / "renamed.txt").exists()
    assert not Path("/renamed.txt").exists()


def test_plain_mpremote_works_while_main_runs(board):
    """mpremote without `resume`: Ctrl-C stops main.py, the soft reset is emulated."""
    (board.root / "main.py").write_text("import time\nwhile True:\n    print('tick')\n    time.sleep(0.05)\n")
    board.reboot()
    board.wait_for("tick")
    for i in range(2):
        proc = subprocess.run([sys.executable, "-m", "mpremote", "connect", board.port,
                               "exec", "print(6 * 7)"], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0 and proc.stdout.strip() == "42", proc.stdout + proc.stderr
    assert "MPY: soft reboot" in board.output()


def test_hash_mismatch_names_the_file(board, bundle, monkeypatch):
    real = flash._run_mpremote

    def corrupt_after_copy(argv, step, port, timeout):
        out = real(argv, step, port, timeout)
        if step == "copy":   # flash wear, a bad cable...: the board now holds other bytes
            (board.root / "firmware" / "node.mpy").write_bytes(b"M\x06 not what was sent")
        return out

    monkeypatch.setattr(flash, "_run_mpremote", corrupt_after_copy)
    with pytest.raises(FlashError) as err:
        flash_bundle(board.port, bundle, reset="none", out=lambda line: None)
    assert "hash mismatch for /firmware/node.mpy" in str(err.value)


def test_port_missing(bundle, capsys):
    rc = flash.main(["--port", "/dev/pts/99999", str(bundle)])
    assert rc == 1
    assert "port /dev/pts/99999 does not exist" in capsys.readouterr().err


def test_port_busy(board, bundle):
    import serial
    holder = serial.Serial(board.port, exclusive=True)   # a serial monitor left open
    try:
        with pytest.raises(FlashError) as err:
            flash_bundle(board.port, bundle, out=lambda line: None)
        assert "is busy" in str(err.value)
    finally:
        holder.close()


def test_board_not_responding(bundle):
    master, slave = pty.openpty()     # a port with nothing behind it
    try:
        t0 = time.monotonic()
        with pytest.raises(FlashError) as err:
            flash_bundle(os.ttyname(slave), bundle, timeout=3, out=lambda line: None)
        assert "board not responding" in str(err.value)
        assert time.monotonic() - t0 < 15
    finally:
        os.close(master)
        os.close(slave)


def test_not_a_bundle(tmp_path, capsys):
    rc = flash.main(["--port", "/dev/ttyUSB0", str(tmp_path)])
    assert rc == 1
    assert "no MANIFEST.json" in capsys.readouterr().err


def test_dry_run_lists_the_mpremote_commands(bundle, capsys):
    rc = flash.main(["--port", "/dev/ttyUSB0", str(bundle), "--dry-run"])
    assert rc == 0
    out = capsys.readouterr().out
    mpremote = "%s -m mpremote connect /dev/ttyUSB0" % sys.executable
    assert out.count(mpremote) == 4
    for step in ("# probe", "# prepare", "# copy", "# verify", "# reset"):
        assert step in out
    manifest = json.loads((bundle / "MANIFEST.json").read_text())
    copy_line = next(line for line in out.splitlines() if " fs cp " in line)
    for name in manifest["files"]:
        assert str(bundle / name) in copy_line, name
    assert copy_line.endswith(":/protocol/") and " :/ + " in copy_line and ":/firmware/ + " in copy_line


def test_list_and_missing_arguments(capsys):
    assert flash.main(["--list"]) == 0
    assert flash.main(["--port", "/dev/ttyUSB0"]) == 2
    assert flash.main(["/tmp/somewhere"]) == 2
    assert "--port is required" in capsys.readouterr().err


# --- a serial chain node on the virtual board ----------------------------------------------

CHAIN_NODE = 9
CHAIN_BAUD = 115200


def _starling(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "base_station.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


class _Events:
    """(epoch, seq) of every EVENT the head hands over, in arrival order (head thread)."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []
        self.other_kinds: set[str] = set()

    def __call__(self, data: bytes) -> None:
        msg = messages.decode(data)
        if isinstance(msg, messages.Event):
            assert msg.node == CHAIN_NODE
            self.seen.append((msg.epoch, msg.seq))
        else:
            self.other_kinds.add(type(msg).__name__)

    def of(self, epoch: int) -> list[int]:
        return [s for e, s in list(self.seen) if e == epoch]


def test_chain_node_flashed_publishes_over_the_serial_link(tmp_path):
    """`starling build` a chain node whose uart.up is the board end of a virtual wire,
    `starling flash` it, reboot: the base's SerialHead on the other end receives its
    events in order, each once, before and after the reboot; `starling chain` then
    lists it at hop 1."""
    with VirtualWire(CHAIN_BAUD, seed=11) as wire, \
            VirtualBoard(tmp_path / "board", log_path=tmp_path / "board.log") as board:
        up = board.attach_uart("uart-up", wire.b_path)
        assert up == "/dev/uart-up" and os.path.realpath(board.root / "dev" / "uart-up") == \
            os.path.realpath(wire.b_path)
        cfg = {"node": CHAIN_NODE, "transport": "serial", "status_every_ms": 1000,
               "sensors": [{"topic": "lab/t", "kind": "sine", "period_ms": 100}],
               "uart": {"up": {"path": up, "baud": CHAIN_BAUD}, "down": None}}
        (tmp_path / "node.json").write_text(json.dumps(cfg))
        r = _starling("build", "--board", "unix", "--config", str(tmp_path / "node.json"),
                      "--out", str(tmp_path / "bundle"), "-q")
        assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
        r = _starling("flash", "--port", board.port, str(tmp_path / "bundle"), "--tail", "1")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "verified by sha256" in r.stdout
        board.wait_for(r"chain node %d epoch 1: " % CHAIN_NODE, timeout=20)

        events = _Events()

        async def listen() -> tuple[dict, int]:
            station = BaseStation(udp=[], announce=False)
            head = SerialHead(station, wire.a_path, CHAIN_BAUD, on_message=events)
            station.add_head(head)
            await station.start()
            try:
                await until(lambda: len(events.of(1)) >= 20, 30, "20 events of epoch 1")
                mark = board.mark()
                board.reboot()          # a hard reset: RAM is lost, a new epoch starts
                board.wait_for(r"chain node %d epoch 2: " % CHAIN_NODE, timeout=20, since=mark)
                await until(lambda: len(events.of(2)) >= 20, 30, "20 events of epoch 2")
                await until(lambda: station.nodes[CHAIN_NODE].status is not None
                             and station.nodes[CHAIN_NODE].status.epoch == 2, 15, "a STATUS of epoch 2")
                return station.summary(), head.counters["ups"]
            finally:
                await station.stop()

        summary, ups = asyncio.run(asyncio.wait_for(listen(), 120))

        # in order, none missing, none twice: seq 0, 1, 2, ... per epoch, epoch 1 then 2
        epochs = [e for e, _ in events.seen]
        assert epochs == sorted(epochs) and set(epochs) == {1, 2}
        for epoch in (1, 2):
            seqs = events.of(epoch)
            assert seqs == list(range(len(seqs))), (epoch, seqs)
        n = summary["nodes"][str(CHAIN_NODE)]
        assert n["duplicates"] == 0 and n["out_of_order"] == 0 and n["epoch"] == 2
        assert n["received"] == len(events.seen) and n["reboots"] == 1
        assert n["source"] == "serial:" + wire.a_path and n["status"]["hop"] == 1
        assert "Batch" not in events.other_kinds and "Status" in events.other_kinds
        head_stats = summary["serial"][wire.a_path]
        assert head_stats["crc_errors"] == 0 and head_stats["echoes"] == 0 and ups >= 1

        # the port is free again: `starling chain` enumerates the node at hop 1
        r = _starling("chain", "--serial", "%s@%d" % (wire.a_path, CHAIN_BAUD), "--json",
                      "--timeout", "20", timeout=60)
        assert r.returncode == 0, r.stderr + board.output()[-2000:]
        chain = json.loads(r.stdout)
        assert [(x["hop"], x["node"]) for x in chain["nodes"]] == [(1, CHAIN_NODE)]
        assert chain["nodes"][0]["epoch"] == 2 and chain["nodes"][0]["firmware"]
        assert chain["base"]["peer_node"] == CHAIN_NODE and chain["base"]["peer_hop"] == 1


def test_attach_uart_links_a_host_port_under_dev(tmp_path):
    board = VirtualBoard(tmp_path / "board")           # not started: only the flash dir
    assert board.attach_uart("uart-up", tmp_path / "pty-a") == "/dev/uart-up"
    assert board.attach_uart("uart-up", tmp_path / "pty-b") == "/dev/uart-up"   # re-wired
    assert os.readlink(board.root / "dev" / "uart-up") == str(tmp_path / "pty-b")
    for bad in ("", "a/b", "..", "."):
        with pytest.raises(ValueError):
            board.attach_uart(bad, tmp_path / "pty-a")


def test_epoch_carried_over_from_the_database(board, bundle, base, tmp_path):
    # a board with no epoch file (its flash erased, or a new board for node 7) whose
    # base database already holds node 7 up to epoch 12: --epoch-from writes 12, the
    # node boots at 13, and its readings do not collide with the stored ones
    from base_station.sinks import SQLiteSink
    from base_station.testing import TestNode
    db = str(tmp_path / "s.db")
    sink = SQLiteSink(db)
    st = BaseStation(udp=[], announce=False, sinks=[sink])
    st.ingest(TestNode(NODE, epoch=12).event("temp", 1.0), ("127.0.0.1", 1))
    st.ingest(TestNode(NODE + 1, epoch=40).event("temp", 1.0), ("127.0.0.1", 1))
    st.flush()
    sink.close()
    assert flash.database_epoch(db, NODE) == 12 and flash.database_epoch(db, 99) is None
    assert not (board.root / "epoch").exists()
    lines: list[str] = []
    report = flash_bundle(board.port, bundle, tail=1.0, out=lines.append, epoch_from=db)
    assert report.epoch_written == 12
    assert any("epoch: the board had no epoch file; wrote 12" in line for line in lines), lines
    assert _receive(base, NODE)[-1].epoch == 13
    # flashed again: the board's epoch (13) is not below the database's: kept
    lines = []
    report = flash_bundle(board.port, bundle, tail=1.0, out=lines.append, epoch_from=db)
    assert report.epoch_written is None
    assert any("epoch: the board's epoch 13 is not below 12" in line for line in lines), lines
    with pytest.raises(FlashError, match="no such database"):
        flash_bundle(board.port, bundle, tail=0, out=lines.append,
                     epoch_from=str(tmp_path / "missing.db"))
    lines = []
    flash_bundle(board.port, bundle, dry_run=True, out=lines.append, epoch_from=db)
    step = [line for line in lines if line.startswith("# epoch")]
    assert step and "below 12, the newest epoch of node 7" in step[0] and "/epoch" in step[0]
