"""Command line of the simulator: `starling sim ...` (base_station/cli.py) or `python -m sim`.

`add_arguments(parser)` adds the options below to an argparse parser and
`run(args) -> int` runs a fleet for --duration seconds and writes the summary.

Bases and discovery: nodes always get the --base addresses as static bases (all
topics, no rate cap, from boot). Without any --base *and* without --discovery the
default static base 127.0.0.1:5684 is used; with --discovery alone the nodes have no
static base and wait for ANNOUNCEs. --discovery HOST:PORT (or just PORT) makes nodes
listen on 0.0.0.0:PORT for ANNOUNCEs; HOST is where bases broadcast to
(127.255.255.255 on loopback, 255.255.255.255 on a LAN) and is only recorded.
Impairments (--loss/--dup/--reorder/--delay/--jitter) put a relay in front of each
static base; traffic to bases found by discovery is not impaired.

Serial chain (--chain K): K MicroPython chain nodes (firmware/chain.py) on virtual UART
wires (sim.chain.Chain) instead of a UDP fleet; --serial-link PATH symlinks the head's pty
for `starling listen --serial PATH`. --baud/--ber/--drop impair every wire, --cut-every S
pulls a random wire for --cut-seconds, --reboot-every S reboots a random node;
--durable/--no-durable (default durable) and --window N configure the nodes. --rate,
--duration, --seed, --status-every, --heapsize, --workdir and --summary-json apply too; the
UDP-only options are ignored.

Exit status: 0 after a clean run, 2 for bad arguments, 1 when the fleet failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from typing import Any

from base_station.argtypes import count, int_range, non_negative, positive, probability
from protocol import codes
from sim.fleet import RUNTIMES, Fleet


def _hostport(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = default_host, text
    try:
        p = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}") from None
    if not 0 < p < 65536:
        raise argparse.ArgumentTypeError(f"port out of range in {text!r}")
    return (host or default_host, p)


def add_impairment_arguments(i) -> None:
    """The UDP impairment relay's options (sim.relay), into the argument group `i`
    (`starling sim` and `starling demo`)."""
    i.add_argument("--loss", type=probability, default=0.0, metavar="P",
                   help="drop each EVENT/BATCH datagram with probability P")
    i.add_argument("--dup", type=probability, default=0.0, metavar="P",
                   help="send each one twice with probability P")
    i.add_argument("--reorder", type=probability, default=0.0, metavar="P",
                   help="hold each one back behind the next with probability P")
    i.add_argument("--delay", type=non_negative, default=0.0, metavar="MS",
                   help="fixed delay of every datagram")
    i.add_argument("--jitter", type=non_negative, default=0.0, metavar="MS",
                   help="extra uniform delay 0..MS")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the simulator's options to `parser` (see the module docstring)."""
    g = parser.add_argument_group("fleet")
    g.add_argument("--nodes", type=count, default=3, metavar="N", help="number of nodes (default 3)")
    g.add_argument("--first-id", type=int, default=1, metavar="ID", help="id of the first node (default 1)")
    g.add_argument("--runtime", choices=RUNTIMES, default="micropython",
                   help="micropython: one unix-port process per node (default); "
                        "cpython: in-process nodes, for large fleets")
    g.add_argument("--base", action="append", type=_hostport, default=None, metavar="HOST:PORT",
                   help=f"static base station (repeatable; default 127.0.0.1:{codes.UDP_PORT} "
                        "unless --discovery is given)")
    g.add_argument("--discovery", type=lambda t: _hostport(t, "127.255.255.255"), default=None,
                   metavar="HOST:PORT", help="nodes listen for ANNOUNCEs on this port")
    g.add_argument("--rate", type=positive, default=1.0, metavar="HZ", help="readings per second per node (default 1)")
    g.add_argument("--duration", type=non_negative, default=10.0, metavar="S", help="seconds to run (default 10)")
    g.add_argument("--status-every", type=int, default=1000, metavar="MS", help="STATUS period in ms (default 1000)")
    g.add_argument("--batch-ms", type=int, default=0, metavar="MS", help="send BATCHes gathered over MS (default 0: EVENTs)")
    g.add_argument("--reboot-every", type=positive, default=None, metavar="S",
                   help="reboot a random node every S seconds (graceful: counts stay exact)")
    g.add_argument("--key-file", default=None, metavar="PATH",
                   help='JSON {"node_id": "hex key"}: those nodes sign their messages')
    g.add_argument("--heapsize", default=None,
                   help="MicroPython heap per node (default 256K; 512K with --chain)")
    g.add_argument("--workdir", default=None, help="keep flash directories here (default: temporary, removed)")
    i = parser.add_argument_group("impairments (a relay in front of each static base)")
    add_impairment_arguments(i)
    i.add_argument("--impair-status", action="store_true", help="also drop/dup/reorder STATUS (breaks exact accounting)")
    i.add_argument("--seed", type=int, default=0, help="RNG seed for relays and reboots")
    c = add_chain_arguments(parser.add_argument_group("serial chain (instead of a UDP fleet)"))
    c.add_argument("--serial-link", default=None, metavar="PATH",
                   help="symlink to the head's pty (for starling listen --serial PATH)")
    c.add_argument("--window", type=int, default=None, metavar="N",
                   help="link window (default 8; with the small frames of a lossy line as many "
                        "as hold the same bytes, up to 64)")
    parser.add_argument("--summary-json", default=None, metavar="PATH", help="write the summary here")


def add_chain_arguments(c):
    """The chain's options (`starling sim --chain`, `starling demo --chain`), into the
    argument group `c`; returns it. chain_from_args() reads them."""
    c.add_argument("--chain", type=count, default=None, metavar="K",
                   help="run K chain nodes on virtual UART wires (sim.chain)")
    c.add_argument("--baud", type=int_range(1), default=115200, metavar="B", help="line rate (default 115200)")
    c.add_argument("--ber", type=probability, default=0.0, metavar="X", help="bit error rate per data bit")
    c.add_argument("--drop", type=probability, default=0.0, metavar="P", help="byte drop probability")
    c.add_argument("--cut-every", type=positive, default=None, metavar="S",
                   help="cut a random wire every S seconds")
    c.add_argument("--cut-seconds", type=positive, default=2.0, metavar="S", help="length of a cut (default 2)")
    c.add_argument("--durable", action=argparse.BooleanOptionalAction, default=True,
                   help="nodes keep their outbox and forward queue in a flash log (default: on)")
    return c


def fleet_from_args(args: argparse.Namespace) -> Fleet:
    """Build (not start) the Fleet described by parsed arguments."""
    keys: dict[int, str] = {}
    if args.key_file:
        with open(args.key_file) as f:
            keys = {int(k): v for k, v in json.load(f).items()}
    bases = args.base
    if bases is None:
        bases = [] if args.discovery else [("127.0.0.1", codes.UDP_PORT)]
    return Fleet(
        args.nodes, runtime=args.runtime, bases=bases,
        discovery_port=args.discovery[1] if args.discovery else None,
        rate=args.rate, loss=args.loss, dup=args.dup, reorder=args.reorder,
        delay_ms=args.delay, jitter_ms=args.jitter, impair_status=args.impair_status,
        seed=args.seed, keys=keys, first_id=args.first_id, status_every_ms=args.status_every,
        batch_ms=args.batch_ms, reboot_every=args.reboot_every, heapsize=args.heapsize or "256K",
        workdir=args.workdir,
    )


def chain_from_args(args: argparse.Namespace):
    """Build (not start) the sim.chain.Chain described by parsed arguments."""
    from sim.chain import Chain
    if args.chain < 1:
        raise ValueError("--chain needs at least 1 node")
    if args.window is not None and not 1 <= args.window <= 64:
        raise ValueError("--window must be 1..64")
    return Chain(args.chain, baud=args.baud, ber=args.ber, drop=args.drop,
                 cut_every=args.cut_every, cut_seconds=args.cut_seconds,
                 reboot_every=args.reboot_every, durable=args.durable, rate=args.rate,
                 window=args.window, seed=args.seed, serial_link=args.serial_link,
                 status_every_ms=args.status_every, workdir=args.workdir,
                 heapsize=args.heapsize or "512K")


def _say_started(fleet, args: argparse.Namespace) -> None:
    """One line on stderr once every node has booted, so a user knows when to connect."""
    until = f"for {args.duration:g} s" if args.duration else "until Ctrl-C"
    if getattr(args, "chain", None):
        head = args.serial_link or fleet.head_path
        print(f"sim: chain of {args.chain} nodes up at {args.baud} Bd, {until}; head on {head}"
              f" (starling listen --serial {head})", file=sys.stderr, flush=True)
    else:
        print(f"sim: {len(fleet.members)} nodes up ({args.runtime}), {until}",
              file=sys.stderr, flush=True)


async def run_async(args: argparse.Namespace) -> dict[str, Any]:
    """Run the fleet for args.duration seconds (or until SIGINT/SIGTERM); return the summary."""
    fleet = chain_from_args(args) if getattr(args, "chain", None) else fleet_from_args(args)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread
            pass
    try:
        await fleet.start()
        _say_started(fleet, args)
        try:
            await asyncio.wait_for(stop.wait(), args.duration)
        except asyncio.TimeoutError:
            pass
    finally:
        summary = await fleet.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.remove_signal_handler(sig)
            except (NotImplementedError, RuntimeError):
                pass
    return summary


def run(args: argparse.Namespace) -> int:
    """Entry point for `starling sim`: run, print a one-line-per-node table, write JSON."""
    try:
        summary = asyncio.run(run_async(args))
    except (ValueError, RuntimeError, OSError) as e:
        print(f"sim: {e}", file=sys.stderr)
        return 1
    if args.summary_json:
        with open(args.summary_json, "w") as f:
            json.dump(summary, f, indent=1)
    t = summary["totals"]
    if "chain" in summary:
        print(f"chain of {summary['chain']} nodes, {summary['duration_s']} s: published "
              f"{t['published']}, dropped {t['dropped']}, forwarded {t['forwarded']}, "
              f"dead letters {t['dead_letter']}, reboots {summary['reboots']}, "
              f"cuts {len(summary['cuts'])}")
        return 0
    print(f"{len(summary['nodes'])} nodes ({summary['runtime']}), {summary['duration_s']} s: "
          f"published {t['published']}, dropped_by_sim {t['dropped_by_sim']}, "
          f"duplicated_by_sim {t['duplicated_by_sim']}, reboots {summary['reboots']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim", description="Run a fleet of simulated Starling nodes.")
    add_arguments(parser)
    return run(parser.parse_args(argv))
