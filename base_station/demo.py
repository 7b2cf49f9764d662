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

With --chain K the fleet is a serial chain instead (sim.chain.Chain, built as `starling
sim --chain` builds it): K MicroPython chain nodes on virtual UART wires, the base
station on the head's pty (a serial-only station: no UDP socket, nothing announced over
UDP). At the end the nodes are paused (Chain.pause()) and the base is given up to
--drain-timeout seconds to receive everything they published before the chain stops, so
that the "chain vs base" counts are final: per node, received == published, nothing
lost or out of order, and duplicates only after a reboot (a durable outbox replays what
was not yet acknowledged; the base stores each reading once).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("starling.demo")


EXAMPLES = """\
examples:
  starling demo                                  3 MicroPython nodes over UDP, 20 s
  starling demo --runtime cpython --nodes 50 --rate 100 --loss 0.05 --reboot-every 3
  starling demo --chain 3                        a serial chain of 3 nodes on virtual wires
  starling demo --chain 4 --ber 1e-5 --drop 0.001 --cut-every 8 --reboot-every 10
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from base_station.cli import add_station_arguments
    from base_station.argtypes import count, positive
    from sim.cli import add_chain_arguments, add_impairment_arguments

    p.epilog = EXAMPLES
    p.formatter_class = argparse.RawDescriptionHelpFormatter

    add_station_arguments(p, udp_default="127.0.0.1:<free port>",
                          discovery_default="127.255.255.255:<free port>")
    p.set_defaults(duration=20.0, lease=6)   # re-announce every 2 s: rebooted nodes come back fast
    g = p.add_argument_group("fleet")
    g.add_argument("--nodes", type=count, default=3, metavar="N", help="number of nodes (default 3)")
    g.add_argument("--runtime", choices=("micropython", "cpython"), default=None,
                   help="micropython: a unix-port process per node (default when installed); "
                        "cpython: in-process nodes")
    g.add_argument("--rate", type=positive, default=5.0, metavar="HZ",
                   help="readings per second per node (default %(default)s)")
    g.add_argument("--batch-ms", type=int, default=0, metavar="MS", help="nodes send BATCHes gathered over MS")
    g.add_argument("--status-every", type=int, default=1000, metavar="MS", help="STATUS period (default 1000)")
    g.add_argument("--reboot-every", type=positive, default=None, metavar="S",
                   help="reboot a random node every S seconds")
    g.add_argument("--static", action="store_true", help="nodes send to the base as a static base (no discovery)")
    add_impairment_arguments(g)
    g.add_argument("--seed", type=int, default=0, help="seeds the impairments, reboots and cuts")
    c = p.add_argument_group(
        "serial chain (instead of the UDP fleet)",
        "--chain K: K MicroPython chain nodes (firmware/chain.py) on virtual UART wires,\n"
        "the base station on the head's pty. --rate, --status-every, --reboot-every and\n"
        "--seed apply to it; the UDP options do not. At the end the nodes are paused,\n"
        "the base drains what they published, and 'chain vs base' shows per node\n"
        "published vs received, duplicates and out of order.")
    add_chain_arguments(c)
    c.add_argument("--drain-timeout", type=float, default=30.0, metavar="S",
                   help="at the end, wait at most S seconds for the base to receive everything "
                        "the paused nodes published (default %(default)s)")
    # what sim.cli.chain_from_args reads and the demo does not offer
    p.set_defaults(window=None, serial_link=None, workdir=None, heapsize=None)


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loopback(host: str) -> bool:
    return host.startswith("127.") or host in ("localhost", "::1")


def compare(station_summary: dict, fleet_summary: dict,
            base_id: str | None = None) -> tuple[list[str], bool]:
    """Lines comparing the base's accounting with what the fleet says it did, and
    whether every node adds up.

    Per node, the readings meant for this base are those published after the node
    subscribed it (under discovery, a node publishes before it hears our first
    ANNOUNCE: the fleet counts those as `since[base_id]`). They must equal received +
    lost + skipped at the base, and lost must equal what the simulator dropped (plus
    kernel drops, which are not per node). A node that crashed is not exact by nature."""
    lines = []
    exact = True
    kernel_drops = station_summary.get("kernel_drops", 0)
    for node, f in fleet_summary["nodes"].items():
        b = station_summary["nodes"].get(node)
        before = f.get("since", {}).get(base_id, 0) if base_id else 0
        meant = f["published"] - before
        if b is None:
            if meant:
                exact = False
            lines.append("node %s: published %d, nothing received" % (node, f["published"]))
            continue
        accounted = b["received"] + b["lost"] + b["skipped"]
        crashed = not f.get("exact", True)
        adds_up = accounted == meant and (
            b["lost"] == f["dropped_by_sim"] or (kernel_drops and b["lost"] > f["dropped_by_sim"]))
        if not adds_up and not crashed:
            exact = False
        lines.append(
            "node %s: published %d%s | received %d + lost %d + skipped %d = %d | sim dropped %d, "
            "duplicated %d; base saw %d duplicates%s" % (
                node, f["published"],
                " (%d before it heard us)" % before if before else "",
                b["received"], b["lost"], b["skipped"], accounted,
                f["dropped_by_sim"], f["duplicated_by_sim"], b["duplicates"],
                " (node crashed: not exact)" if crashed else
                "" if adds_up else "  <- does not add up"))
    return lines, exact


def _statuses_final(station: Any, fleet_summary: dict) -> bool:
    """Has the base the STATUS each node sent last (so trailing loss is counted)?"""
    for node, f in fleet_summary["nodes"].items():
        if f.get("last_seq") is None or not f.get("exact", True):
            continue
        acct = station.nodes.get(int(node))
        if acct is None or acct.status is None or acct.status.last_seq != f["last_seq"]:
            return False
    return True


def compare_chain(station_summary: dict, chain_summary: dict) -> tuple[list[str], bool]:
    """Lines comparing the base's accounting with what each chain node published, and
    whether every node is exact (received == published, nothing lost, no duplicates,
    nothing out of order)."""
    lines = []
    exact = True
    dups = ooo = 0
    for node, c in chain_summary["nodes"].items():
        b = station_summary["nodes"].get(node)
        if b is None:
            lines.append("node %s: published %d, nothing received" % (node, c["published"]))
            exact = False
            continue
        hop = (b.get("status") or {}).get("hop")
        complete = b["received"] == c["published"] and b["lost"] == 0
        ok = complete and b["duplicates"] == 0 and b["out_of_order"] == 0
        exact = exact and ok
        dups += b["duplicates"]
        ooo += b["out_of_order"]
        lines.append(
            "node %s (hop %s): published %d | received %d, duplicates %d, out of order %d, "
            "lost %d | forwarded %d, dead letters %d, boots %d  %s" % (
                node, "-" if hop is None else hop, c["published"], b["received"],
                b["duplicates"], b["out_of_order"], b["lost"], c["forwarded"],
                c["dead_letter"], c["boots"],
                "exact" if ok else "all received" if complete else "NOT EXACT"))
    if dups:
        lines.append("duplicates: copies the base already had (a durable queue replays what "
                     "was not yet acknowledged after a reboot); each reading is stored once")
    if ooo:
        lines.append("out of order: events that arrived after a later one of the same node "
                     "(the chain delivers in order: this points at a fault)")
    return lines, exact


def _received(station, published: dict[int, int]) -> bool:
    nodes = station.summary()["nodes"]
    return all(nodes.get(str(n), {}).get("received", 0) >= count
               for n, count in published.items())


def _final_status(station, published: dict[int, int]) -> bool:
    for n in published:
        acct = station.nodes.get(n)
        if acct is None or acct.status is None or acct.current is None:
            return False
        if acct.status.last_seq != acct.current.next - 1:
            return False
    return True


def run_chain(args: argparse.Namespace) -> int:
    """`starling demo --chain K`: a sim.chain.Chain and a serial-only base on its head."""
    from base_station.cli import _setup_logging, build_station, finish, serve, writes_stdout

    _setup_logging(args.verbose)
    udp_only = [name for name, given in (
        ("--udp", args.udp), ("--serial", args.serial), ("--discovery", args.discovery),
        ("--static", args.static), ("--loss", args.loss), ("--dup", args.dup),
        ("--reorder", args.reorder), ("--delay", args.delay), ("--jitter", args.jitter),
        ("--batch-ms", args.batch_ms), ("--runtime cpython", args.runtime == "cpython")) if given]
    if udp_only:
        print("starling demo: %s: not with --chain (the chain's nodes are MicroPython processes "
              "on serial wires)" % ", ".join(udp_only), file=sys.stderr)
        return 2
    try:
        from sim.cli import chain_from_args
        from sim.fleet import micropython_command
        micropython_command()
        chain = chain_from_args(args)
    except ImportError as e:
        print("starling demo: the simulator is not available (%s)" % e, file=sys.stderr)
        return 2
    except (RuntimeError, ValueError) as e:
        print("starling demo: %s" % e, file=sys.stderr)
        return 2
    duration = args.duration
    args.duration = None          # the chain task decides when to stop
    result: dict[str, Any] = {}

    async def chain_task(station) -> None:
        try:
            await asyncio.sleep(duration)
            try:
                published = await chain.pause()
            except RuntimeError as e:       # a node did not report its count
                result["error"] = str(e)
                return
            deadline = time.monotonic() + args.drain_timeout
            while not _received(station, published) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            result["drained"] = _received(station, published)
            # a STATUS sent after the last event, so the base's counters are final too
            deadline = time.monotonic() + 2.0 + 3 * args.status_every / 1000
            while not _final_status(station, published) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
        finally:
            # stop the base's head before the chain closes the wires under it
            loop = asyncio.get_running_loop()
            for head in station.heads:
                await loop.run_in_executor(None, head.stop)
            result["chain"] = await chain.stop()

    async def main() -> dict:
        try:
            await chain.start()
            print("starling demo: chain of %d nodes up at %d Bd%s%s" % (
                chain.k, chain.baud, ", ber %g" % chain.ber if chain.ber else "",
                ", drop %g" % chain.drop if chain.drop else ""), file=out, flush=True)
            args.serial = [(chain.head_path, chain.baud)]
            station = build_station(args, base_id=args.base_id or "starling-demo")
            return await serve(station, args, lambda: chain_task(station))
        finally:
            if "chain" not in result:
                result["chain"] = await chain.stop()

    out = sys.stderr if writes_stdout(args) else sys.stdout
    try:
        summary = asyncio.run(main())
    except (OSError, RuntimeError, ValueError) as e:
        print("starling demo: %s" % e, file=sys.stderr)
        return 1
    summary["chain"] = result["chain"]
    summary["chain"]["drained"] = result.get("drained", False)
    status = finish(summary, args)
    c = result["chain"]
    print("\nchain vs base (%d nodes at %d Bd, ber %g, drop %g, %s, %d reboots, %d cuts):" % (
        c["chain"], c["baud"], c["ber"], c["drop"], "durable" if c["durable"] else "not durable",
        c["reboots"], len(c["cuts"])), file=out)
    lines, _ = compare_chain(summary, c)
    for line in lines:
        print("  " + line, file=out)
    if "error" in result:
        print("  (%s: the counts are not final)" % result["error"], file=out)
    elif "drained" not in result:
        print("  (stopped before the end: the nodes were not paused and drained, so the counts "
              "are not final)", file=out)
    elif not result["drained"]:
        print("  (the base had not received everything %g s after the pause)" % args.drain_timeout,
              file=out)
    if not args.no_db:
        print("\nreadings stored in %s" % Path(args.db).resolve(), file=out)
    return status


def run(args: argparse.Namespace) -> int:
    if args.chain is not None:
        return run_chain(args)
    try:
        from sim.fleet import Fleet
    except ImportError as e:
        raise SystemExit("starling demo: the simulator is not available (%s)" % e)
    from base_station.cli import _setup_logging, build_station, finish, serve, writes_stdout

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
            # each node's final STATUS (relays do not drop STATUS), so trailing loss counts
            deadline = time.monotonic() + 2.0
            while not _statuses_final(station, result["fleet"]) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)

    try:
        summary = asyncio.run(serve(station, args, fleet_task))
    except (OSError, RuntimeError, ValueError) as e:     # the fleet could not run
        print("starling demo: %s" % e, file=sys.stderr)
        return 1
    status = finish(summary, args)
    out = sys.stderr if writes_stdout(args) else sys.stdout
    if "fleet" in result:
        print("\nfleet vs base (%s nodes, %s, %s):" % (
            args.nodes, runtime, "static base" if static else
            "discovery: a node's readings before it hears our ANNOUNCE are not ours"), file=out)
        lines, exact = compare(summary, result["fleet"], station.base_id)
        for line in lines:
            print("  " + line, file=out)
        print("  %s" % ("every node adds up: published (since it heard us) = received + lost + "
                        "skipped, and lost = what the simulator dropped" if exact else
                        "NOT every node adds up (marked above)"), file=out)
    if not args.no_db:
        print("\nreadings stored in %s (try: sqlite3 %s 'SELECT * FROM readings LIMIT 5')"
              % (Path(args.db).resolve(), args.db) if shutil.which("sqlite3") else
              "\nreadings stored in %s" % Path(args.db).resolve(), file=out)
    return status
