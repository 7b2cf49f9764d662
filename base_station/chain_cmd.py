"""`starling chain --serial PORT[@BAUD]`: who is on a serial chain, and how its links are.

Opens the port with a `SerialHead` (no station, no sinks), waits for the link to node 1
to come up, sends one ENUMERATE and collects the STATUS answers: every node forwards
ENUMERATE downstream and answers with a STATUS carrying its `hop` (1 next to the
base), its firmware, uptime, epoch and counters, among them the health of its
upstream link (protocol/codes.py CTR_LINK_*) and how many messages of downstream nodes
it forwarded (CTR_FORWARDED). The answers are printed as a table ordered by hop, after
a row for the base's own end of the hop 0 -> 1 link; `--json` prints one JSON object.

Answers are collected until no new node answered for `--settle` seconds (the chain
is reliable hop by hop, so an answer is late, not lost; nodes' periodic STATUS do not
extend the wait), or until `--timeout` runs out. Nodes forward control messages only
over a downstream link that is up (control is soft state), and a node starts its
downstream link only once it knows its hop, i.e. when a base connects: so on a chain
that just woke up the first ENUMERATE may stop short. Whenever new nodes answered, the
ENUMERATE is sent again (after ROUND_GAP quiet), until a round brings no new node.
STATUS messages carry no request id: any STATUS arriving after the first ENUMERATE
counts (a node's periodic STATUS says the same); the newest one per node wins.

The chain hands everything over to whoever holds the head port: readings that arrive
during the probe are accounted by an in-process BaseStation and stored only with
`--db PATH`; otherwise they are counted (`readings`) and a warning says so. Run it
while `starling listen --serial` is stopped (the port is opened exclusively), or use
listen's summary ("serial" section and each node's STATUS with its hop) instead.

Exit codes: 0 topology printed; 1 the port could not be opened, the link did not come
up, or nobody answered within the timeout; 2 bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from typing import Any

from protocol.codes import (COUNTER_NAMES, CTR_FORWARDED, CTR_LINK_CRC, CTR_LINK_DOWNS,
                            CTR_LINK_FRAMES, CTR_LINK_RETRANS, CTR_LINK_RTT, CTR_LINK_WINDOW,
                            CTR_PUBLISHED, CTR_QUEUE)
from protocol.messages import Status, decode as decode_message

from base_station.argtypes import positive
from base_station.serial_head import SerialHead, open_hint, parse_port

ROUND_GAP = 0.3   # seconds without a new answer before asking the chain again
NO_NODE = ("no Starling node answered on %s: check wiring (TX\u2194RX crossed, common ground) "
           "and baud (%d)")


def _port_arg(text: str) -> tuple[str, int]:
    try:
        return parse_port(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--serial", required=True, type=_port_arg, metavar="PORT[@BAUD]",
                   help="the base's port to node 1 (device, symlink or pyserial URL; "
                        "baud default 115200)")
    p.add_argument("--timeout", type=positive, default=10.0, metavar="S",
                   help="give up after S seconds (default %(default)s)")
    p.add_argument("--settle", type=positive, default=1.5, metavar="S",
                   help="stop collecting once no new node answered for S seconds (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--db", metavar="PATH",
                   help="store the readings that arrive meanwhile in this SQLite file (without "
                        "it they are counted and dropped: the chain hands them over to us)")
    p.add_argument("-v", "--verbose", action="count", default=0)


class _Collector:
    """STATUS answers, newest per node, from the head's thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.statuses: dict[int, tuple[Status, float]] = {}
        self.last = 0.0
        self.active = False
        self.other = 0

    def __call__(self, data: bytes) -> None:
        if not self.active:
            return
        try:
            msg = decode_message(data)
        except Exception:
            return
        if type(msg) is not Status:
            with self.lock:
                self.other += 1
            return
        with self.lock:
            if msg.node not in self.statuses:
                self.last = time.monotonic()   # quiet = no new node (periodic STATUS go on)
            self.statuses[msg.node] = (msg, time.monotonic())


def node_row(st: Status) -> dict:
    """One node of the topology, from its STATUS."""
    c = st.counters
    return {
        "hop": st.hop, "node": st.node, "firmware": st.firmware, "uptime_ms": st.uptime,
        "epoch": st.epoch, "last_seq": st.last_seq, "time_base": st.time_base, "caps": st.caps,
        "published": c.get(CTR_PUBLISHED), "forwarded": c.get(CTR_FORWARDED),
        "queue_depth": c.get(CTR_QUEUE), "link_frames": c.get(CTR_LINK_FRAMES),
        "link_retransmissions": c.get(CTR_LINK_RETRANS), "link_crc_errors": c.get(CTR_LINK_CRC),
        "link_rtt_ms": c.get(CTR_LINK_RTT), "link_window_in_use": c.get(CTR_LINK_WINDOW),
        "link_downs": c.get(CTR_LINK_DOWNS),
        "counters": {COUNTER_NAMES.get(k, str(k)): v for k, v in sorted(c.items())},
    }


def base_row(head: SerialHead) -> dict:
    """The base's end of the hop 0 -> 1 link, in the same terms as a node's row."""
    s = head.stats()
    ls = s["link"]
    return {
        "hop": 0, "node": 0, "up": s["up"], "peer_node": s["peer_node"], "peer_hop": s["peer_hop"],
        "link_frames": ls["data_sent"], "link_retransmissions": ls["retransmissions"],
        "link_crc_errors": ls["crc_errors"] + ls["malformed"], "link_rtt_ms": ls["rtt_ms"],
        "link_window_in_use": ls["window_in_use"], "link_downs": ls["downs"],
        "frames_in": s["frames_in"], "frames_out": s["frames_out"], "echoes": s["echoes"],
        "link": ls,
    }


def _hop_key(row: dict) -> tuple:
    return (row["hop"] is None, row["hop"] if row["hop"] is not None else 0, row["node"])


def _fmt(v: Any) -> str:
    return "-" if v is None else str(v)


def _uptime(ms: int | None) -> str:
    if ms is None:
        return "-"
    s = ms // 1000
    if s < 60:
        return "%ds" % s
    if s < 3600:
        return "%dm%02ds" % (s // 60, s % 60)
    return "%dh%02dm" % (s // 3600, s // 60 % 60)


COLUMNS = ("hop", "node", "firmware", "uptime", "epoch", "published", "forwarded", "queue",
           "frames", "retrans", "crc", "rtt_ms", "window", "downs")


def table(result: dict) -> str:
    """The topology as a plain text table (one line per hop, the base first)."""
    rows = []
    b = result["base"]
    rows.append(["0", "base", "-", "-", "-", "-", "-", "-", _fmt(b["link_frames"]),
                 _fmt(b["link_retransmissions"]), _fmt(b["link_crc_errors"]),
                 _fmt(b["link_rtt_ms"]), _fmt(b["link_window_in_use"]), _fmt(b["link_downs"])])
    for n in result["nodes"]:
        rows.append([_fmt(n["hop"]), str(n["node"]), n["firmware"], _uptime(n["uptime_ms"]),
                     str(n["epoch"]), _fmt(n["published"]), _fmt(n["forwarded"]),
                     _fmt(n["queue_depth"]), _fmt(n["link_frames"]),
                     _fmt(n["link_retransmissions"]), _fmt(n["link_crc_errors"]),
                     _fmt(n["link_rtt_ms"]), _fmt(n["link_window_in_use"]), _fmt(n["link_downs"])])
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(COLUMNS)]
    left = {"node", "firmware"}

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if COLUMNS[i] in left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    out = ["chain on %s at %d Bd: %d node%s" % (result["port"], result["baud"], len(result["nodes"]),
                                               "" if len(result["nodes"]) == 1 else "s"),
           line(list(COLUMNS))]
    out += [line(r) for r in rows]
    out.append("(frames..downs: each row's upstream link; hop 0 is the base's end of the "
               "link to hop 1)")
    if result.get("readings") and not result.get("stored_in"):
        out.append("warning: %d readings arrived meanwhile and were not stored (give --db, or "
                   "run `starling listen --serial` to keep them)" % result["readings"])
    return "\n".join(out)


def probe(port: str, baud: int, timeout: float, settle: float,
          db: str | None = None) -> tuple[int, dict | str]:
    """Open the port, enumerate the chain. Returns (0, result) or (1, error text).
    Readings that arrive meanwhile are accounted, and stored in `db` if given."""
    return asyncio.run(_probe(port, baud, timeout, settle, db))


async def _probe(port: str, baud: int, timeout: float, settle: float,
                 db: str | None) -> tuple[int, dict | str]:
    from base_station.sinks import SQLiteSink
    from base_station.station import BaseStation

    collector = _Collector()
    station = BaseStation(udp=[], announce=False, sinks=[SQLiteSink(db)] if db else [])
    head = SerialHead(station, port, baud, announce_every=None, on_message=collector)
    station.add_head(head)
    deadline = time.monotonic() + timeout
    await station.start()
    try:
        while not head.up and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if not head.up:
            if not head.counters["opens"]:
                hint = open_hint(head.last_error, head.port)
                return 1, "cannot open %s: %s%s" % (port, head.last_error,
                                                    " (%s)" % hint if hint else "")
            if head.counters["echoes"]:
                return 1, ("our own frames come back on %s: TX is looped to RX (or the "
                           "adapter echoes); no node is connected" % port)
            return 1, NO_NODE % (port, baud)
        collector.active = True
        t_first = time.monotonic()
        request = head.enumerate()
        sent, rounds, seen_at_send = t_first, 1, 0
        while True:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            if now >= deadline:
                break
            with collector.lock:
                n, last = len(collector.statuses), collector.last
            if n > seen_at_send and now - last >= ROUND_GAP:
                # New nodes answered: their downstream links may have just come up (a
                # node starts it once it knows its hop) and may have missed the ENUMERATE
                # (nodes forward control only over a link that is up): ask again.
                request = head.enumerate()
                sent, rounds, seen_at_send = now, rounds + 1, n
            elif now - max(last, sent) >= settle:
                break
        collector.active = False
        with collector.lock:
            statuses = [s for s, _ in collector.statuses.values()]
        if not statuses:
            return 1, ("the link to node %s on %s is up, but no node answered ENUMERATE within "
                       "%g s (firmware without chain support?)" % (head.link.peer_node, port, timeout))
        await asyncio.sleep(0)
        nodes = sorted((node_row(s) for s in statuses), key=_hop_key)
        return 0, {"port": port, "baud": baud, "request": request, "rounds": rounds,
                   "base": base_row(head), "nodes": nodes,
                   "readings": station.counters["readings"], "stored_in": db,
                   "elapsed_s": round(time.monotonic() - t_first, 3)}
    finally:
        await station.stop()


def run(args: argparse.Namespace) -> int:
    import logging
    level = logging.WARNING if args.verbose == 0 else logging.INFO if args.verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        # the head's "cannot open, retrying" lines are the exit message here
        logging.getLogger("starling.serial").setLevel(logging.ERROR)
    port, baud = args.serial
    code, result = probe(port, baud, args.timeout, args.settle, args.db)
    if code:
        print("starling chain: %s" % result, file=sys.stderr)
        return code
    assert isinstance(result, dict)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        print(table(result))
    return 0
