"""The views of `starling listen` (base_station/view.py) on real data: a SerialHead on a
virtual wire with a CPython chain node (tests/test_base_serial_node.py) at the far end,
a second head on a port that does not exist, a third on a wire with nobody at the far
end; the rich tables (serial links, nodes with
their hop) and the plain lines show the head's link counters, and `starling listen
--serial --plain` prints them."""

import asyncio
import io
import json
import subprocess
import sys
import time

from rich.console import Console

from base_station import view
from base_station.serial_head import SerialHead
from base_station.station import BaseStation
from sim.wire import VirtualWire
from test_base_serial_node import ChainTestNode
from conftest import until

PY = sys.executable
BAUD = 230400


def rendered_rows(renderable, width=200) -> list[list[str]]:
    """The cells of every table row (header included) as rich prints them."""
    console = Console(record=True, width=width, color_system=None, file=io.StringIO())
    console.print(renderable)
    rows = []
    for line in console.export_text().splitlines():
        sep = "│" if "│" in line else ("┃" if "┃" in line else None)
        if sep is None:
            continue
        rows.append([c.strip() for c in line.strip().strip(sep).split(sep)])
    return rows


def live_summary(tmp_path):
    """A station with three heads: one to node 5 over a virtual wire (a cut while the
    head sends an ENUMERATE forces a retransmission, injected garbage a CRC error), one
    on a port that does not exist, one on a wire with nobody at the far end. Returns
    (summary, stats of the live head, its port, the lonely port, summary after stop)."""
    async def main():
        with VirtualWire(BAUD, seed=4) as wire, VirtualWire(BAUD, seed=5) as lonely:
            st = BaseStation(udp=[], announce=False)
            head = SerialHead(st, wire.a_path, BAUD, link_options={"rto_ms": 300})
            missing = SerialHead(st, str(tmp_path / "no-such-port"), BAUD)
            nobody = SerialHead(st, lonely.a_path, BAUD)     # open, nobody at the far end
            st.add_head(head)
            st.add_head(missing)
            st.add_head(nobody)
            await st.start()
            node = ChainTestNode(5, wire.b_path, epoch=3, status_every=0.3).start()
            try:
                await until(lambda: head.up, 10, "link up")
                for _ in range(30):
                    node.publish("lab/t")
                await until(lambda: st.nodes.get(5) is not None and st.nodes[5].status is not None
                            and st.nodes[5].status.hop == 1, 10, "STATUS with hop")
                acked = head.counters["control_acked"]
                wire.cut(0.6)                     # the ENUMERATE's first frame is lost
                head.enumerate()
                await until(lambda: head.link.retransmissions >= 1
                            and head.counters["control_acked"] > acked and wire.connected(),
                            15, "ENUMERATE retransmitted and acknowledged")
                wire.inject("ba", b"\x00\x11\x22\x33\x44\x55\x00")   # a bad frame towards the head
                await until(lambda: head.link.crc_errors >= 1, 10, "CRC error counted")
                await until(lambda: st.nodes[5].totals()["received"] == 30 and node.idle(), 15, "all events")
                await until(lambda: missing.counters["open_errors"] >= 1, 5, "open error")
                await until(lambda: nobody.is_open, 5, "open port")
                summary = st.summary()
            finally:
                node.stop()
                await st.stop()
            return summary, summary["serial"][wire.a_path], wire.a_path, lonely.a_path, st.summary()

    return asyncio.run(asyncio.wait_for(main(), 60))


def test_serial_table_and_plain_lines_show_the_link_counters(tmp_path):
    summary, s, port, lonely, final = live_summary(tmp_path)
    ls = s["link"]
    missing = str(tmp_path / "no-such-port")
    json.dumps(summary)

    rows = rendered_rows(view.serial_table(summary))
    assert rows[0] == list(view.SERIAL_COLUMNS)
    live = rows[1]
    assert live[:4] == [port, "up", "5", "1"]
    cells = dict(zip(view.SERIAL_COLUMNS, live))
    assert int(cells["rx"]) == s["frames_in"] > 30 // 8
    assert int(cells["tx"]) == s["frames_out"] > 0
    assert int(cells["retx"]) == ls["retransmissions"] >= 1
    assert int(cells["crc"]) == ls["crc_errors"] + ls["malformed"] >= 1
    # no RTT sample yet (Karn: only frames sent once give one; a loaded machine can
    # retransmit them all) shows as "-"
    rtt = "-" if ls["rtt_ms"] is None else "%dms" % ls["rtt_ms"]
    assert cells["rtt"] == rtt
    assert cells["window"] == "%d/64" % ls["window_in_use"] and s["window"] == 64   # the head's default
    assert int(cells["downs"]) == ls["downs"]
    assert rows[2][:4] == [missing, "closed", "-", "-"]
    assert rows[3][:4] == [lonely, "down", "-", "-"] and rows[3][4] == "0"
    # after stop (listen's final summary) every head says "stopped", not a fault
    rows = rendered_rows(view.serial_table(final))
    assert [r[1] for r in rows[1:4]] == ["stopped"] * 3
    assert rows[1][2:4] == ["5", "1"]            # the last peer is still shown

    # the node table gains a hop column; the live view stacks both tables
    rows = rendered_rows(view.live_view(summary, "starling"))
    header = rows[0]
    assert header[:3] == ["node", "hop", "epoch"]
    node_row = next(r for r in rows if r[0] == "5")
    assert node_row[1:4] == ["1", "3", "30"]
    assert [r[0] for r in rows].count("port") == 1 and any(r[0] == port for r in rows)
    assert view.station_line(summary).startswith("messages %d  readings 30  " % summary["datagrams"])

    lines = view.plain_lines(summary)
    assert lines[0].startswith("t=") and "nodes=1 received=30 lost=0" in lines[0]
    assert lines[1] == ("serial %s link=up peer=5 hop=1 rx=%d tx=%d retx=%d crc=%d rtt=%s "
                        "window=%d/64 downs=%d" % (port, s["frames_in"], s["frames_out"],
                                                  ls["retransmissions"],
                                                  ls["crc_errors"] + ls["malformed"], rtt,
                                                  ls["window_in_use"], ls["downs"]))
    assert lines[2].startswith("serial %s link=closed peer=- hop=- rx=0 tx=0" % missing)
    assert "error=" in lines[2] and "no-such-port" in lines[2]
    assert lines[3].startswith("serial %s link=down peer=- hop=- rx=0 tx=" % lonely)
    assert "error=" not in lines[3]
    c = summary["nodes"]["5"]["status"]["counters"]
    assert lines[4] == ("node 5 hop=1 epoch=3 received=30 lost=0 dup=0 up_retx=%d up_crc=%d "
                        "source=serial:%s" % (c["link_retransmissions"], c["link_crc_errors"], port))
    assert len(lines) == 5


def test_udp_only_view_has_no_hop_column_nor_serial_lines():
    summary = {"nodes": {"7": {"epoch": 1, "received": 3, "lost": 0, "skipped": 0, "duplicates": 0,
                               "out_of_order": 0, "reboots": 0, "rate": 1.0, "last_seen": None,
                               "last": {"t": 1.5}, "source": "127.0.0.1:4000"}},
               "datagrams": 3, "readings": 3, "malformed": 0, "rejected": 0, "unknown_kind": 0,
               "kernel_drops": 0, "uptime": 1.0}
    rows = rendered_rows(view.live_view(summary))
    assert rows[0][:2] == ["node", "epoch"]
    assert view.serial_table(summary) is None
    assert view.station_line(summary).startswith("datagrams 3  readings 3  ")
    assert len(view.plain_lines(summary)) == 1


def test_latency_column_shows_p50_and_p95_or_a_dash():
    node = {"epoch": 1, "received": 3, "lost": 0, "skipped": 0, "duplicates": 0,
            "out_of_order": 0, "reboots": 0, "rate": 1.0, "last_seen": None, "last": {},
            "latency_ms": {"n": 40, "p50": 4.25, "p95": 31.0, "max_recent": 40.2, "max": 90.0}}
    summary = {"nodes": {"7": node, "8": dict(node, latency_ms=None)},
               "datagrams": 6, "readings": 6, "malformed": 0, "rejected": 0, "unknown_kind": 0,
               "kernel_drops": 0, "uptime": 1.0}
    rows = rendered_rows(view.live_view(summary))
    col = rows[0].index("lat ms")
    assert rows[1][col] == "4.2/31" and rows[2][col] == "-"


def test_listen_serial_plain_prints_link_and_hop(tmp_path):
    with VirtualWire(BAUD, seed=8) as wire, \
            ChainTestNode(21, wire.b_path, epoch=2, status_every=0.3) as node:
        for _ in range(10):
            node.publish("lab/serial")
        proc = subprocess.run(
            [PY, "-m", "base_station.cli", "listen", "--duration", "3", "--no-db", "--plain",
             "--every", "1", "--serial", "%s@%d" % (wire.a_path, BAUD)],
            capture_output=True, text=True, timeout=30, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    serial = [ln for ln in lines if ln.startswith("serial %s " % wire.a_path)]
    assert serial and "link=up peer=21 hop=1 " in serial[-1], proc.stdout
    assert any(ln.startswith("node 21 hop=1 epoch=2 received=10 lost=0 dup=0") for ln in lines), \
        proc.stdout
    # the final tables: the serial links below the nodes
    assert any(ln.strip().startswith("serial links") for ln in lines), proc.stdout


def test_last_values_in_topic_order_whatever_the_order_of_arrival():
    # two nodes whose readings arrived in different orders show the same layout
    assert view.last_values({"lab/temp": 21.5, "lab/count": 3}) == "count=3 temp=21.5"
    assert view.last_values({"lab/count": 4, "lab/temp": 22.25}) == "count=4 temp=22.25"
    assert view.last_values({"b/x": 1, "a/x": 2}, limit=5) == "x=2 …"
