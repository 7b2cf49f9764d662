"""`starling demo`: a simulated fleet (sim.fleet.Fleet, the real firmware) and a base
station in one command, on loopback only.

By default the nodes find the base the brokerless way: they listen for ANNOUNCEs on a
free discovery port, and the base broadcasts to 127.255.255.255 on it (Linux loopback
broadcast). With impairments (--loss/--dup/--reorder/--delay/--jitter) or --static the
nodes get the base as a static base instead, behind the simulator's relays, since
relays only sit in front of static bases. At the end the base's accounting is set
beside the fleet's own numbers: per node, published = received + lost + skipped (plus
what was published before our subscription began, under discovery), and lost =
dropped by the simulator (+ kernel drops, normally 0).

Everything stays on 127.0.0.0/8: the demo never sends to the LAN.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("starling.demo")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from base_station.cli import add_station_arguments

    add_station_arguments(p, udp_default="127.0.0.1:<free port>",
                          discovery_default="127.255.255.255:<free port>")
    p.set_defaults(duration=20.0, lease=6)   # re-announce every 2 s: rebooted nodes come back fast
    g = p.add_argument_group("fleet")
    g.add_argument("--nodes", type=int, default=3, metavar="N", help="number of nodes (default 3)")
    g.add_argument("--runtime", choices=("micropython", "cpython"), default=None,
                   help="micropython: a unix-port process per node (default when installed); "
                        "cpython: in-process nodes")
    g.add_argument("--rate", type=float, default=5.0, metavar="HZ",
                   help="readings per second per node (default %(default)s)")
    g.add_argument("--batch-ms", type=int, default=0, metavar="MS", help="nodes send BATCHes gathered over MS")
    g.add_argument("--status-every", type=int, default=1000, metavar="MS", help="STATUS period (default 1000)")
    g.add_argument("--reboot-every", type=float, default=None, metavar="S",
                   help="reboot a random node every S seconds")
    g.add_argument("--static", action="store_true", help="nodes send to the base as a static base (no discovery)")
    g.add_argument("--loss", type=float, default=0.0, metavar="P")
    g.add_argument("--dup", type=float, default=0.0, metavar="P")
    g.add_argument("--reorder", type=float, default=0.0, metavar="P")
    g.add_argument("--delay", type=float, default=0.0, metavar="MS")
    g.add_argument("--jitter", type=float, default=0.0, metavar="MS")
    g.add_argument("--seed", type=int, default=0)


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loopback(host: str) -> bool:
    return host.startswith("127.") or host in ("localhost", "::1")


def compare(station_summary: dict, fleet_summary: dict) -> list[str]:
    """Lines comparing the base's accounting with what the fleet says it did."""
    lines = []
    for node, f in fleet_summary["nodes"].items():
        b = station_summary["nodes"].get(node)
        if b is None:
            lines.append("node %s: published %d, nothing received" % (node, f["published"]))
            continue
        accounted = b["received"] + b["lost"] + b["skipped"]
        lines.append(
            "node %s: published %d | received %d + lost %d + skipped %d = %d | sim dropped %d, "
            "duplicated %d; base saw %d duplicates%s" % (
                node, f["published"], b["received"], b["lost"], b["skipped"], accounted,
                f["dropped_by_sim"], f["duplicated_by_sim"], b["duplicates"],
                "" if f.get("exact", True) else " (node crashed: not exact)"))
    return lines


def run(args: argparse.Namespace) -> int:
    try:
        from sim.fleet import Fleet
    except ImportError as e:
        raise SystemExit("starling demo: the simulator is not available (%s)" % e)
    from base_station.cli import _setup_logging, build_station, finish, serve

    _setup_logging(args.verbose)
    udp = args.udp or [("127.0.0.1", 0)]
    impaired = bool(args.loss or args.dup or args.reorder or args.delay or args.jitter)
    static = args.static or impaired
    dport = _free_udp_port()
    discovery = args.discovery or [("127.255.255.255", dport)]
    for host, _ in list(udp) + list(discovery):
        if not _loopback(host):
            print("starling demo: stays on loopback; %s is not a 127.x address" % host, file=sys.stderr)
            return 2
    runtime = args.runtime
    if runtime is None:
        from sim.fleet import micropython_command
        try:
            micropython_command()
            runtime = "micropython"
        except RuntimeError:
            runtime = "cpython"
    keys_hex = None
    if args.keys:
        import json
        with open(args.keys, encoding="utf-8") as f:
            keys_hex = {int(k): v for k, v in json.load(f).items()}
    try:
        station = build_station(args, udp=udp, discovery=discovery,
                                announce=not static and not args.no_announce,
                                base_id=args.base_id or "starling-demo")
    except (OSError, ValueError) as e:
        print("starling demo: %s" % e, file=sys.stderr)
        return 2
    duration = args.duration
    args.duration = None          # the fleet task decides when to stop
    result: dict[str, Any] = {}

    async def fleet_task() -> None:
        fleet = Fleet(args.nodes, runtime=runtime,
                      bases=[station.addresses[0]] if static else [],
                      discovery_port=None if static else discovery[0][1],
                      rate=args.rate, batch_ms=args.batch_ms, status_every_ms=args.status_every,
                      reboot_every=args.reboot_every, loss=args.loss, dup=args.dup,
                      reorder=args.reorder, delay_ms=args.delay, jitter_ms=args.jitter,
                      seed=args.seed, keys=keys_hex)
        try:
            await fleet.start()
            if station.announcer is not None:
                station.announcer.send_once()   # the nodes were not listening yet at our first
            await asyncio.sleep(duration)
        finally:
            result["fleet"] = await fleet.stop()
            await asyncio.sleep(0.3)            # let the final STATUSes land

    summary = asyncio.run(serve(station, args, fleet_task))
    finish(summary, args)
    out = sys.stderr if args.jsonl == "-" else sys.stdout
    if "fleet" in result:
        print("\nfleet vs base (%s nodes, %s, %s):" % (
            args.nodes, runtime, "static base" if static else
            "discovery: a node's readings before it hears our ANNOUNCE are not ours"), file=out)
        for line in compare(summary, result["fleet"]):
            print("  " + line, file=out)
    if not args.no_db:
        print("\nreadings stored in %s (try: sqlite3 %s 'SELECT * FROM readings LIMIT 5')"
              % (Path(args.db).resolve(), args.db) if shutil.which("sqlite3") else
              "\nreadings stored in %s" % Path(args.db).resolve(), file=out)
    return 0
