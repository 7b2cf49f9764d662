"""Terminal views of BaseStation.summary(): a rich table (live or final) and a one-line
plain summary for logs and pipes."""

from __future__ import annotations

import time
from typing import Any

from rich.table import Table

MAX_LAST_CHARS = 40


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return "%.6g" % v
    if isinstance(v, (bytes, bytearray)):
        return "0x" + bytes(v[:8]).hex() + ("…" if len(v) > 8 else "")
    return str(v)


def last_values(last: dict, limit: int = MAX_LAST_CHARS) -> str:
    parts = ["%s=%s" % (topic.rsplit("/", 1)[-1], _fmt_value(v)) for topic, v in last.items()]
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
    order, reboots, rate, last values, last seen; the caption carries the station-wide
    counters. On a narrow terminal only the last-values column gives way."""
    now = time.time()
    table = Table(title=title, expand=False, pad_edge=False, collapse_padding=True)
    for col in ("node", "epoch", "recv", "lost", "loss%", "skip", "dup", "ooo", "boots", "rate/s"):
        table.add_column(col, justify="right", no_wrap=True, min_width=len(col))
    table.add_column("seen", justify="right", no_wrap=True, min_width=4)
    # the only column that gives way on a narrow terminal (and the last one)
    table.add_column("last", justify="left", overflow="ellipsis", ratio=1, min_width=6)
    for node, n in summary["nodes"].items():
        pct = loss_pct(n)
        style = "red" if pct >= 1 else ("yellow" if n["lost"] else None)
        table.add_row(node, str(n["epoch"]), str(n["received"]), str(n["lost"]), "%.2f" % pct,
                      str(n["skipped"]), str(n["duplicates"]), str(n["out_of_order"]),
                      str(n["reboots"]), "%.1f" % n["rate"], _ago(n["last_seen"], now),
                      last_values(n["last"]), style=style)
    table.caption = station_line(summary)
    return table


def station_line(s: dict) -> str:
    return ("datagrams %d  readings %d  malformed %d  rejected %d  unknown kind %d  "
            "kernel drops %d" % (s["datagrams"], s["readings"], s["malformed"], s["rejected"],
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
