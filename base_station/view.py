"""Terminal views of BaseStation.summary(): rich tables (live or final) and plain lines
for logs and pipes.

* `node_table`: one row per node; with a serial chain, a `hop` column (each node's
  position, from its STATUS; "-" until one arrived or over UDP).
* `serial_table` / `serial_line`: one row / line per serial chain head port (the
  "serial" section of the summary, SerialHead.stats()): link state, the peer (node 1
  and its hop), frames received / sent, retransmissions, CRC errors (bad CRC, bad
  COBS, oversize and undecodable link frames), smoothed RTT, window in use of the
  link's window, and how often the link went down.
* `live_view`: what `starling listen` shows on a terminal: the node table, and the
  serial table below it when there are heads.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

MAX_LAST_CHARS = 40
MAX_ERROR_CHARS = 120     # of a port's last error in the serial table's caption


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return "%.6g" % v
    if isinstance(v, (bytes, bytearray)):
        return "0x" + bytes(v[:8]).hex() + ("…" if len(v) > 8 else "")
    return str(v)


def last_values(last: dict, limit: int = MAX_LAST_CHARS) -> str:
    """`name=value` per topic, in topic order: a row keeps its layout from one refresh
    to the next (the station keeps them in order of arrival)."""
    parts = ["%s=%s" % (topic.rsplit("/", 1)[-1], _fmt_value(v)) for topic, v in sorted(last.items())]
    text = " ".join(parts)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def loss_pct(n: dict) -> float:
    expected = n["received"] + n["lost"]
    return 100.0 * n["lost"] / expected if expected else 0.0


def _ago(t: float | None, now: float) -> str:
    if t is None:
        return "-"
    d = now - t
    return "%.1fs" % d if d < 60 else "%dm" % (d // 60)


def node_table(summary: dict, title: str | None = None) -> Table:
    """The per-node table: id, epoch, received, lost, loss %, skipped, duplicates, out of
    order, reboots, rate, latency (p50/p95 ms of the recent messages, from the node's
    timestamp to arrival: needs the node's time base), last seen, last values; the caption carries the station-wide
    counters. On a narrow terminal only the last-values column gives way."""
    now = time.time()
    table = Table(title=title, expand=False, pad_edge=False, collapse_padding=True)
    # the hop column only when a chain is in the picture (heads, or a STATUS with a hop)
    hops = "serial" in summary or any(node_hop(n) is not None for n in summary["nodes"].values())
    cols = ("node", "hop") if hops else ("node",)
    for col in cols + ("epoch", "recv", "lost", "loss%", "skip", "dup", "ooo", "boots", "rate/s",
                       "lat ms"):
        table.add_column(col, justify="right", no_wrap=True, min_width=len(col))
    table.add_column("seen", justify="right", no_wrap=True, min_width=4)
    # the only column that gives way on a narrow terminal (and the last one)
    table.add_column("last", justify="left", overflow="ellipsis", ratio=1, min_width=6)
    for node, n in summary["nodes"].items():
        pct = loss_pct(n)
        style = "red" if pct >= 1 else ("yellow" if n["lost"] else None)
        first = (node, _dash(node_hop(n))) if hops else (node,)
        table.add_row(*first, str(n["epoch"]), str(n["received"]), str(n["lost"]), "%.2f" % pct,
                      str(n["skipped"]), str(n["duplicates"]), str(n["out_of_order"]),
                      str(n["reboots"]), "%.1f" % n["rate"], latency_cell(n), _ago(n["last_seen"], now),
                      Text(last_values(n["last"])), style=style)   # readings: no markup
    table.caption = station_line(summary)
    return table


def _ms(v: float) -> str:
    return "%.0f" % v if abs(v) >= 10 else "%.1f" % v


def latency_cell(n: dict) -> str:
    """p50/p95 of the node's recent delivery latency in ms ("-": no time base yet)."""
    lat = n.get("latency_ms")
    return "-" if not lat else "%s/%s" % (_ms(lat["p50"]), _ms(lat["p95"]))


def station_line(s: dict) -> str:
    # a serial head hands over messages, not datagrams: say so when there are heads
    unit = "messages" if s.get("serial") else "datagrams"
    return ("%s %d  readings %d  malformed %d  rejected %d  unknown kind %d  "
            "kernel drops %d" % (unit, s["datagrams"], s["readings"], s["malformed"], s["rejected"],
                                 s["unknown_kind"], s["kernel_drops"]))


def summary_line(s: dict) -> str:
    """One plain line for logs: totals over all nodes plus station counters."""
    nodes = s["nodes"].values()
    received = sum(n["received"] for n in nodes)
    lost = sum(n["lost"] for n in nodes)
    dup = sum(n["duplicates"] for n in nodes)
    ooo = sum(n["out_of_order"] for n in nodes)
    rate = sum(n["rate"] for n in nodes)
    return ("t=%.1fs nodes=%d received=%d lost=%d dup=%d ooo=%d rate=%.0f/s malformed=%d "
            "rejected=%d kernel_drops=%d" % (s["uptime"], len(s["nodes"]), received, lost, dup,
                                              ooo, rate, s["malformed"], s["rejected"],
                                              s["kernel_drops"]))


def _dash(v: Any) -> str:
    return "-" if v is None else str(v)


def node_hop(n: dict) -> int | None:
    """A node's hop on a serial chain, from its last STATUS (None: unknown, or UDP)."""
    st = n.get("status") or {}
    return st.get("hop")


SERIAL_COLUMNS = ("port", "link", "peer", "hop", "rx", "tx", "retx", "crc", "rtt", "window",
                  "downs")


def serial_row(port: str, s: dict) -> dict:
    """The health of one head's link (SerialHead.stats()) as display strings, keyed by
    SERIAL_COLUMNS; "link" is "up", "down" (port open, link not established),
    "closed" (the port is not open: missing, unplugged) or "stopped" (the head was
    stopped, as in listen's final summary)."""
    ls = s.get("link") or {}
    if s.get("stopped"):
        state = "stopped"          # the head was stopped (final summary): not a fault
    else:
        state = "up" if s.get("up") else ("down" if s.get("open") else "closed")
    rtt = ls.get("rtt_ms")
    window = s.get("window")
    in_use = ls.get("window_in_use", 0)
    return {
        "port": port, "link": state,
        "peer": _dash(s.get("peer_node")), "hop": _dash(s.get("peer_hop")),
        "rx": str(s.get("frames_in", 0)), "tx": str(s.get("frames_out", 0)),
        "retx": str(ls.get("retransmissions", 0)),
        "crc": str(ls.get("crc_errors", 0) + ls.get("malformed", 0)),
        "rtt": "-" if rtt is None else "%dms" % rtt,
        "window": "%d/%s" % (in_use, _dash(window)),
        "downs": str(ls.get("downs", 0)),
    }


_STATE_STYLE = {"up": "green", "down": "red", "closed": "red", "stopped": "dim"}


def serial_table(summary: dict, title: str | None = "serial links") -> Table | None:
    """One row per serial chain head port (None when the summary has none): link state,
    peer node and its hop, frames received (rx) and sent (tx), retransmissions, CRC
    errors, smoothed round-trip time, frames in flight of the window, link downs."""
    heads = summary.get("serial")
    if not heads:
        return None
    table = Table(title=title, title_justify="left", expand=False, pad_edge=False,
                  collapse_padding=True)
    for col in SERIAL_COLUMNS:
        if col == "port":     # the only column that gives way on a narrow terminal
            table.add_column(col, justify="left", overflow="ellipsis", ratio=1,
                             min_width=8)
        else:
            table.add_column(col, justify="left" if col == "link" else "right", no_wrap=True,
                             min_width=7 if col == "link" else len(col))
    for port, s in heads.items():
        row = serial_row(port, s)
        cells: list[Any] = [Text(row[c]) for c in SERIAL_COLUMNS]   # no markup in ports
        cells[1] = Text(row["link"], style=_STATE_STYLE[row["link"]])
        table.add_row(*cells)
    errors = [s["last_error"] for s in heads.values()
              if s.get("last_error") and not s.get("up") and not s.get("open")]
    if errors:      # pyserial's messages name the port
        table.caption = Text("; ".join(e if len(e) <= MAX_ERROR_CHARS
                                       else e[:MAX_ERROR_CHARS - 1] + "…" for e in errors))
    return table


def live_view(summary: dict, title: str | None = None) -> Any:
    """The node table, and below it the serial links' table when there are heads."""
    nodes = node_table(summary, title)
    serial = serial_table(summary)
    return nodes if serial is None else Group(nodes, serial)


def serial_line(port: str, s: dict) -> str:
    """One plain line per serial head, for logs (beside summary_line)."""
    r = serial_row(port, s)
    line = ("serial %s link=%s peer=%s hop=%s rx=%s tx=%s retx=%s crc=%s rtt=%s window=%s "
            "downs=%s" % (port, r["link"], r["peer"], r["hop"], r["rx"], r["tx"], r["retx"],
                          r["crc"], r["rtt"], r["window"], r["downs"]))
    if r["link"] in ("closed", "stopped") and not s.get("open") and s.get("last_error"):
        line += " error=%r" % s["last_error"]
    return line


def plain_lines(summary: dict) -> list[str]:
    """What `starling listen --plain` prints every --every seconds: the totals line, one
    line per serial head, and one per node heard over a serial chain (its hop, counts,
    and the retransmissions and CRC errors of its upstream link from its last STATUS)."""
    lines = [summary_line(summary)]
    heads = summary.get("serial") or {}
    for port, s in heads.items():
        lines.append(serial_line(port, s))
    if heads:
        for node, n in summary["nodes"].items():
            if not str(n.get("source") or "").startswith("serial:"):
                continue        # UDP nodes: in the totals line only
            # its upstream link as the node counts it (from its STATUS): the node, not
            # the base, retransmits the events, so the head's retx stays near 0
            c = (n.get("status") or {}).get("counters") or {}
            lines.append("node %s hop=%s epoch=%s received=%d lost=%d dup=%d up_retx=%s "
                         "up_crc=%s source=%s" % (
                             node, _dash(node_hop(n)), _dash(n["epoch"]), n["received"],
                             n["lost"], n["duplicates"], _dash(c.get("link_retransmissions")),
                             _dash(c.get("link_crc_errors")), n.get("source") or "-"))
    return lines
