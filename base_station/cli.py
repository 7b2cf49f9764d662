"""`starling`: the command line.

Subcommands are registered in one table. `listen` and `export` live here; `demo` runs
a simulated fleet (sim.fleet) against an in-process base station. Commands owned by
other packages are *lazy*: `LAZY_COMMANDS` maps a name to a module with
`add_arguments(parser)` and `run(args) -> int`, imported only when that command runs,
so a missing or broken module never breaks `starling listen`. To add one (chain,
build, flash, ...), add a line to LAZY_COMMANDS, or call `register()` for a command
defined in this package.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import signal
import sys
import time
from typing import Any, Callable

from protocol import codes
from base_station.argtypes import int_range, non_negative, positive
from base_station.listener import RCVBUF
from base_station.station import MAX_NODES

log = logging.getLogger("starling.cli")

# name -> (module, one-line help); the module provides add_arguments(parser) and run(args)
LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "sim": ("sim.cli", "run simulated sensor nodes"),
    "build": ("base_station.build", "build a flashable bundle for a board from node.json"),
    "flash": ("base_station.flash", "copy a bundle onto a board with mpremote and verify it"),
    "chain": ("base_station.chain_cmd", "show a serial chain's topology and link health"),
}

_COMMANDS: list[tuple[str, str, Callable[[argparse.ArgumentParser], None],
                      Callable[[argparse.Namespace], int]]] = []


def register(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None],
             run: Callable[[argparse.Namespace], int]) -> None:
    """Add a subcommand defined in this package (its arguments are parsed eagerly)."""
    _COMMANDS.append((name, help, add_arguments, run))


# -- listen --------------------------------------------------------------------------------

def _hostport(default_host: str, default_port: int) -> Callable[[str], tuple[str, int]]:
    from base_station.listener import parse_hostport

    def parse(text: str) -> tuple[str, int]:
        try:
            return parse_hostport(text, default_host, default_port)
        except ValueError as e:
            raise argparse.ArgumentTypeError("%r: %s" % (text, e)) from None
    return parse


def _serial_port(text: str) -> tuple[str, int]:
    from base_station.serial_head import parse_port
    try:
        return parse_port(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_station_arguments(p: argparse.ArgumentParser, udp_default: str = "0.0.0.0:%d" % codes.UDP_PORT,
                          discovery_default: str = "255.255.255.255:%d" % codes.DISCOVERY_PORT) -> None:
    """Options shared by `listen` and `demo`."""
    g = p.add_argument_group("network")
    g.add_argument("--udp", action="append", type=_hostport("0.0.0.0", codes.UDP_PORT),
                   metavar="HOST:PORT", help="receive on this address (repeatable; default %s, "
                   "none when --serial is given)" % udp_default)
    g.add_argument("--serial", action="append", type=_serial_port, metavar="PORT[@BAUD]",
                   help="head of a serial chain on this port (device, symlink or pyserial URL; "
                        "repeatable; baud default 115200). With --serial and no --udp, no UDP "
                        "socket is opened and nothing is announced over UDP")
    g.add_argument("--discovery", action="append", type=_hostport("255.255.255.255", codes.DISCOVERY_PORT),
                   metavar="HOST:PORT",
                   help="send ANNOUNCE here (repeatable; default %s)" % discovery_default)
    g.add_argument("--no-announce", action="store_true", help="do not send ANNOUNCEs")
    g.add_argument("--base-id", help="our id in ANNOUNCE (default starling-<hostname>)")
    g.add_argument("--advertise", type=_hostport("", 0), metavar="HOST:PORT",
                   help="address nodes should send to (default: the ANNOUNCE's source address "
                        "and the first --udp port)")
    g.add_argument("--filter", action="append", metavar="F",
                   help="topic filter to subscribe to (repeatable; default '#')")
    g.add_argument("--max-rate", type=int_range(0), default=0, metavar="N",
                   help="events/s per node (0: no cap); nodes count the rest as skipped")
    g.add_argument("--lease", type=int_range(1, 86400), default=60, metavar="S",
                   help="subscription lease in seconds (re-announced every lease/3, at most 5 s apart)")
    g.add_argument("--max-datagram", type=int_range(64, 65507), default=codes.MAX_DATAGRAM, metavar="BYTES",
                   help="reject bigger datagrams as oversize (default %(default)s)")
    g.add_argument("--max-nodes", type=int_range(1), default=MAX_NODES, metavar="N",
                   help="node ids accounted at most (default %(default)s); messages of further "
                        "ids are rejected (too_many_nodes)")
    g.add_argument("--rcvbuf", type=int_range(1), default=RCVBUF, metavar="BYTES",
                   help="UDP receive buffer to ask for (default %(default)s; the kernel grants "
                        "twice that, capped by net.core.rmem_max without CAP_NET_ADMIN); "
                        "high-rate stations: 33554432")
    g.add_argument("--reader-process", action="store_true",
                   help="read each UDP socket in a separate process (Linux), so receiving and "
                        "decoding use two cores: for high-rate stations")
    g.add_argument("--keys", metavar="FILE",
                   help='JSON {"<node id>": "<hex key>"}: accept only messages signed by these nodes')
    o = p.add_argument_group("output")
    o.add_argument("--db", default="starling.db", metavar="PATH", help="SQLite file (default %(default)s)")
    o.add_argument("--no-db", action="store_true", help="do not write SQLite")
    o.add_argument("--topic-index", action="store_true",
                   help="index readings by (topic, time): faster queries, ~25%% slower inserts")
    o.add_argument("--jsonl", metavar="PATH|-", help="also write JSON Lines (- = stdout)")
    o.add_argument("--csv", metavar="PATH|-", help="also write CSV (- = stdout)")
    o.add_argument("--senml", metavar="PATH|-",
                   help="also write SenML (.cbor: CBOR, else JSON; - = stdout, JSON)")
    o.add_argument("--summary-json", metavar="PATH", help="write the final summary here as JSON")
    o.add_argument("--duration", type=non_negative, metavar="S", help="stop after S seconds (default: Ctrl-C)")
    o.add_argument("--plain", action="store_true", help="plain log lines even on a terminal")
    o.add_argument("--every", type=positive, default=5.0, metavar="S",
                   help="seconds between plain summary lines (default %(default)s)")
    o.add_argument("-v", "--verbose", action="count", default=0)


def build_station(args: argparse.Namespace, **overrides: Any):
    """A BaseStation and its sinks from parsed `listen` options."""
    from base_station.sinks import CSVSink, JSONLSink, SenMLSink, SQLiteSink
    from base_station.station import BaseStation, load_keys

    keys = load_keys(args.keys) if args.keys else None
    summary_json = getattr(args, "summary_json", None)
    if summary_json and not os.path.isdir(os.path.dirname(os.path.abspath(summary_json))):
        raise ValueError("--summary-json %s: no such directory" % summary_json)
    dashes = stdout_outputs(args)
    if len(dashes) > 1:
        raise ValueError("%s: only one output can be stdout (-)" % " and ".join(dashes))
    sinks: list = []
    if not args.no_db:
        import sqlite3
        try:
            sinks.append(SQLiteSink(args.db, topic_index=True if args.topic_index else None,
                                    process=True))
        except sqlite3.Error as e:
            raise ValueError("--db %s: %s" % (args.db, e)) from None
    if args.jsonl:
        sinks.append(JSONLSink(args.jsonl))
    if args.csv:
        sinks.append(CSVSink(args.csv))
    if args.senml:
        sinks.append(SenMLSink(args.senml))
    adv = args.advertise or ("", 0)
    serial_ports = getattr(args, "serial", None) or []
    serial_only = bool(serial_ports) and not args.udp
    kw: dict[str, Any] = dict(
        udp=args.udp or ([] if serial_only else [("0.0.0.0", codes.UDP_PORT)]),
        discovery=args.discovery or [("255.255.255.255", codes.DISCOVERY_PORT)],
        announce=not args.no_announce and not serial_only, base_id=args.base_id,
        advertise=(adv[0], adv[1] or None), filters=args.filter or ["#"],
        max_rate=args.max_rate, lease=args.lease, keys=keys, sinks=sinks,
        max_datagram=args.max_datagram, rcvbuf=args.rcvbuf, max_nodes=args.max_nodes,
        reader_process=getattr(args, "reader_process", False))
    kw.update(overrides)
    station = BaseStation(**kw)
    if serial_ports:
        from base_station.serial_head import heads_for
        heads_for(station, serial_ports)
    return station


def stdout_outputs(args: argparse.Namespace) -> list[str]:
    """The output options given as "-" (stdout): at most one may be."""
    return ["--" + n for n in ("jsonl", "csv", "senml") if getattr(args, n, None) == "-"]


def writes_stdout(args: argparse.Namespace) -> bool:
    """A sink writes to stdout ("-"): the view, the plain lines and the summary go to
    stderr instead."""
    return bool(stdout_outputs(args))


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


async def serve(station, args: argparse.Namespace, extra_task: Callable[[], Any] | None = None) -> dict:
    """Run `station` until --duration, Ctrl-C/SIGTERM, or `extra_task` finishing;
    show the live view or plain lines; return the final summary. If `extra_task`
    fails, the station is stopped and its exception raised here."""
    from base_station import view

    out = sys.stderr if writes_stdout(args) else sys.stdout
    live_ok = out.isatty() and not args.plain
    await station.start()
    if station.addresses or not station.heads:
        print("starling: listening on %s" % ", ".join("%s:%d" % a for a in station.addresses),
              file=out, flush=True)
    for head in station.heads:
        print("starling: serial chain head on %s at %d Bd" % (head.port, head.baud), file=out,
              flush=True)
    if station.announcer is not None:
        print("starling: announcing as %r to %s" % (
            station.base_id, ", ".join("%s:%d" % a for a in station.discovery)), file=out, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    stdout_gone = []

    def sink_gone(sink: Any) -> None:      # `starling listen --jsonl - | head`: done
        if sink.to_stdout:
            stdout_gone.append(sink)
            stop.set()
    station.on_sink_gone = sink_gone
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    extra = loop.create_task(extra_task()) if extra_task is not None else None
    if extra is not None:
        extra.add_done_callback(lambda _t: stop.set())
    deadline = None if args.duration is None else time.monotonic() + args.duration

    async def wait(seconds: float) -> None:
        if deadline is not None:
            seconds = min(seconds, max(0.0, deadline - time.monotonic()))
        try:
            await asyncio.wait_for(stop.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    def done() -> bool:
        return stop.is_set() or (deadline is not None and time.monotonic() >= deadline)

    try:
        if live_ok:
            from rich.console import Console
            from rich.live import Live
            console = Console(file=out)
            with Live(view.live_view(station.summary(), "starling"), console=console,
                      refresh_per_second=4, transient=True) as live:
                while not done():
                    await wait(0.5)
                    live.update(view.live_view(station.summary(), "starling"))
        else:
            next_line = time.monotonic() + args.every
            while not done():
                await wait(max(0.0, next_line - time.monotonic()))
                if time.monotonic() >= next_line:
                    for line in view.plain_lines(station.summary()):
                        print(line, file=out, flush=True)
                    next_line += args.every
    finally:
        if extra is not None and not extra.done():
            extra.cancel()
            try:
                await extra
            except (asyncio.CancelledError, Exception):
                pass
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.remove_signal_handler(sig)
            except (NotImplementedError, RuntimeError):
                pass
        await station.stop()
    if stdout_gone:
        print("starling: stdout closed by its reader: stopped", file=sys.stderr, flush=True)
    if extra is not None and extra.done() and not extra.cancelled() \
            and extra.exception() is not None:
        raise extra.exception()    # type: ignore[misc]
    return station.summary()


def finish(summary: dict, args: argparse.Namespace) -> int:
    """Final table and summary JSON; returns the exit status (1: the JSON could not be
    written, said on stderr)."""
    from rich.console import Console

    from base_station import view
    from base_station.sinks import _json_default

    out = sys.stderr if writes_stdout(args) else sys.stdout
    console = Console(file=out) if out.isatty() else Console(file=out, width=160)
    console.print(view.live_view(summary, "starling: final summary"))
    if args.summary_json:
        tmp = args.summary_json + ".tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(summary, f, default=_json_default, indent=2, sort_keys=True)
                f.write("\n")
            os.replace(tmp, args.summary_json)
        except OSError as e:
            print("starling: could not write --summary-json %s: %s" % (args.summary_json, e),
                  file=sys.stderr)
            return 1
    return 0


def run_listen(args: argparse.Namespace) -> int:
    _setup_logging(args.verbose)
    try:
        station = build_station(args)
    except (OSError, ValueError) as e:
        print("starling listen: %s" % e, file=sys.stderr)
        return 2
    try:
        summary = asyncio.run(serve(station, args))
    except OSError as e:
        print("starling listen: %s" % e, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return finish(summary, args)


# -- export --------------------------------------------------------------------------------

def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default="starling.db", metavar="PATH", help="SQLite file (default %(default)s)")
    p.add_argument("--senml", metavar="PATH", help="SenML output (- = stdout)")
    p.add_argument("--format", choices=("json", "cbor"),
                   help="SenML representation (default: cbor for *.cbor, else json)")
    p.add_argument("--jsonl", metavar="PATH", help="JSON Lines output (- = stdout)")
    p.add_argument("--csv", metavar="PATH", help="CSV output (- = stdout)")
    p.add_argument("--node", type=int, help="only this node")
    p.add_argument("--topic", metavar="FILTER", type=_topic_filter,
                   help="only topics matching this filter")


def _topic_filter(text: str) -> str:
    from protocol.topics import valid_filter
    if not valid_filter(text):
        raise argparse.ArgumentTypeError("not a topic filter: %r ('+' is one whole level, '#' "
                                         "the whole last one)" % text)
    return text


def run_export(args: argparse.Namespace) -> int:
    from base_station.sinks import CSVSink, JSONLSink, SenMLSink, read_db

    if not (args.senml or args.jsonl or args.csv):
        print("starling export: give --senml, --jsonl and/or --csv", file=sys.stderr)
        return 2
    if not os.path.exists(args.db):
        print("starling export: %s: no such database" % args.db, file=sys.stderr)
        return 2
    dashes = stdout_outputs(args)
    if len(dashes) > 1:
        print("starling export: %s: only one output can be stdout (-)" % " and ".join(dashes),
              file=sys.stderr)
        return 2
    import sqlite3
    sinks: list = []
    n = 0
    try:
        if args.senml:
            sinks.append(SenMLSink(args.senml, args.format))
        if args.jsonl:
            sinks.append(JSONLSink(args.jsonl))
        if args.csv:
            sinks.append(CSVSink(args.csv))
        for r in read_db(args.db, args.node, args.topic):
            for s in sinks:
                s.write_records((r,))
            n += 1
    except sqlite3.Error as e:
        print("starling export: %s: not a Starling database (%s)" % (args.db, e), file=sys.stderr)
        return 1
    except BrokenPipeError as e:
        piped = [s for s in sinks if s.to_stdout]
        if not piped:                 # a FIFO given as a path lost its reader
            print("starling export: %s" % e, file=sys.stderr)
            return 1
        # `starling export --jsonl - | head`: the reader has what it wanted; stop as
        # quietly as `cat` does, unless files given beside stdout are now incomplete
        piped[0].abandon()
        files = [s.path for s in sinks if not s.to_stdout]
        if files:
            print("starling export: stdout closed by its reader after %d readings; %s "
                  "incomplete" % (n, ", ".join(files)), file=sys.stderr)
            return 1
        return 0
    except OSError as e:
        print("starling export: %s" % e, file=sys.stderr)
        return 1
    finally:
        for s in sinks:
            s.close()
    print("starling export: %d readings" % n, file=sys.stderr)
    return 0


# -- demo ----------------------------------------------------------------------------------

def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    from base_station import demo
    demo.add_arguments(p)


def run_demo(args: argparse.Namespace) -> int:
    from base_station import demo
    return demo.run(args)


register("listen", "receive readings, account for every sequence number, store them",
         add_station_arguments, run_listen)
register("export", "export a database as SenML, JSON Lines or CSV", add_export_arguments, run_export)
register("demo", "a simulated fleet and a base station in one command", add_demo_arguments, run_demo)


# -- dispatch --------------------------------------------------------------------------------

def _run_lazy(name: str, module: str, rest: list[str]) -> int:
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        print("starling %s: not available (%s)" % (name, e), file=sys.stderr)
        return 2
    p = argparse.ArgumentParser(prog="starling %s" % name, description=LAZY_COMMANDS[name][1])
    mod.add_arguments(p)
    return int(mod.run(p.parse_args(rest)) or 0)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="starling", description="Starling: brokerless telemetry")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, help, add_args, run in _COMMANDS:
        p = sub.add_parser(name, help=help, description=help)
        add_args(p)
        p.set_defaults(_run=run)
    for name, (module, help) in LAZY_COMMANDS.items():
        p = sub.add_parser(name, help=help, add_help=False, prefix_chars="\0")
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(_lazy=(name, module))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    lazy = getattr(args, "_lazy", None)
    if lazy is not None:
        return _run_lazy(lazy[0], lazy[1], args.rest)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
