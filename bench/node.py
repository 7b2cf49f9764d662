"""Node-side benchmark: the firmware on MicroPython, and how big a fleet one machine runs.

    python bench/node.py [--quick] [--json]

Side by side in one run:

* Publish cost on the MicroPython unix port (bench/mp_node.py): µs and heap bytes per
  publish through the real firmware Node (firmware/node.py) with the unix HAL, one
  static subscriber at 127.0.0.1 (a socket in this process counts and decodes what
  arrives): int and float readings as EVENT, and int readings in BATCHes of 20.
  Beside it, the same steps with a HAL whose udp_send does nothing, and a bare
  sendto, to split node code from the system call.
* RAM held after boot: a `starling build --board unix` bundle (.mpy files) is built
  into a temporary directory; a fresh interpreter imports the node's modules from it
  leaves first, gc.collect() + gc.mem_alloc() after each import (so each delta is
  that module's own code and data), then boots a Node. The unix port is 64-bit.
  For 32-bit boards (ESP32, RP2) the same script runs on MicroPython's webassembly
  port (wasm32: 4-byte words and pointers, 16-byte GC blocks, as on the boards;
  npm package @micropython/micropython-webassembly-pyscript, run with node), if it
  is installed (`make bench` installs it into build/wasm). That port collects
  garbage only between calls from JavaScript, so its runner calls gc.collect() and
  gc.mem_alloc() in a call of their own at each step. It is MicroPython 1.29 as on
  the unix port, but not a board's build (other options, no flash), so it measures
  32-bit object sizes, not a board. Without node/npm, the 32-bit figures are not
  measured and the 64-bit ones stand as an upper bound.
* The same RAM figure with the modules imported from the bundle's romfs.img
  (`starling build --romfs`) mounted at /rom with vfs.VfsRom, as firmware with a
  ROMFS partition does at boot: bytecode and constant strings stay in the image
  (flash on a board), only the objects the imports create are on the heap. The
  image is read into a bytes object before the baseline (this unix build cannot
  place it outside the GC heap), so it is in no row. For the unix bundle and for
  the ESP32 bundle (board modules faked, as above), on both ports.
* Fleet size (sim/fleet.py) against a base station in its own process
  (bench/ingest.py's receiver): `micropython` runtime, one process per node, N = 10,
  20, 40 at 10 readings/s each: RSS per process (/proc/PID/status VmRSS), CPU of the
  node processes, and whether the base sees the expected rate with zero loss; and
  the in-process `cpython` runtime with 1,000 / 2,000 / 5,000 nodes at 1 reading/s.
  After a clean stop (final STATUS from every node) the base's count must equal
  what the nodes published: loss is exact, not sampled.

Targets: RAM after boot <= 32 KB (64-bit and 32-bit reported); fleets: the base
sees >= 97 % of the expected rate during the window and loses nothing.

What it does not measure: a real board (flash, Wi-Fi, 240 MHz cores are 10-50x
slower than this VM per bytecode), the serial chain, signing (key) costs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import ingest  # noqa: E402  (bench/ingest.py: its base-station receiver process)

from base_station import wire  # noqa: E402
from base_station.build import build_bundle  # noqa: E402
from sim.fleet import Fleet, micropython_command  # noqa: E402

MP_NODE = ROOT / "bench" / "mp_node.py"
WASM_PACKAGE = "@micropython/micropython-webassembly-pyscript"
WASM_VERSION = "1.29.0-6"
WASM_DEFAULT = ROOT / "build" / "wasm" / "node_modules" / WASM_PACKAGE / "micropython.mjs"
RAM_TARGET = 32 * 1024
NODE_CONFIG = {"node": 7, "bases": [["127.0.0.1", 5684]],
               "sensors": [{"topic": "temp", "kind": "sine", "period_ms": 1000},
                           {"topic": "count", "kind": "counter", "period_ms": 1000}],
               "status_every_ms": 5000}

# a middle chain node on a board (bench/mp_node.py ram_chain_esp32 / ram_chain_pico): the
# sensors and STATUS period of mp_node.py's CHAIN_CONFIG, two UARTs on pins the board
# allows (ESP32: UART1/UART2 on free GPIOs; Pico: UART0 on GP0/GP1, UART1 on GP4/GP5)
CHAIN_BOARD_UARTS = {
    "esp32": {"up": {"id": 1, "tx": 17, "rx": 16, "baud": 115200},
              "down": {"id": 2, "tx": 4, "rx": 5, "baud": 115200}},
    "pico": {"up": {"id": 0, "tx": 0, "rx": 1, "baud": 115200},
             "down": {"id": 1, "tx": 4, "rx": 5, "baud": 115200}},
}

# Runs mp_node.py on the webassembly port: copies the bundle into its in-memory
# filesystem and passes the arguments as the global MP_ARGS (it has no sys.argv).
WASM_RUNNER = r"""
import { readFileSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
const [mjs, bundle, script, ...args] = process.argv.slice(2);
const { loadMicroPython } = await import(pathToFileURL(mjs).href);
const out = [];
const mp = await loadMicroPython({ heapsize: 256 * 1024, stdout: (l) => out.push(l),
                                   stderr: (l) => process.stderr.write(l + "\n") });
function copy(src, dst) {
  mp.FS.mkdir(dst);
  for (const name of readdirSync(src)) {
    const p = join(src, name);
    if (statSync(p).isDirectory()) copy(p, dst + "/" + name);
    else mp.FS.writeFile(dst + "/" + name, readFileSync(p));
  }
}
copy(bundle, "/bundle");
// a further directory argument (the tests directory, for board_fakes) goes to /tests
const rest = args.slice(1).map((a) => {
  try { if (statSync(a).isDirectory()) { copy(a, "/tests"); return "/tests"; } } catch (e) {}
  return a;
});
try {
  // the script runs in the interpreter's own globals; a RAM mode leaves STEP(), which is
  // called in separate calls: the port collects garbage only between calls
  mp.runPython("MP_ARGS = " + JSON.stringify([args[0], "/bundle", ...rest]) + "\nMP_STEPPED = True");
  mp.runPython(readFileSync(script, "utf8"));
  if (args[0].startsWith("ram")) {
    for (let i = 0; i < 100 && !mp.globals.get("STEP_DONE"); i++) mp.runPython("STEP()");
  }
} catch (e) {
  process.stderr.write(String(e.message || e) + "\n");
  process.exit(1);
}
console.log(out.join("\n"));
"""


# -- MicroPython measurements ------------------------------------------------------------

def build(tmp: Path, board: str = "unix", chain: bool = False) -> Path:
    name = board + ("-chain" if chain else "")
    cfg = tmp / ("node-%s.json" % name)
    if chain:
        d = {"node": 7, "transport": "serial", "uart": CHAIN_BOARD_UARTS[board],
             "sensors": NODE_CONFIG["sensors"], "status_every_ms": 5000}
    else:
        d = dict(NODE_CONFIG)
        if board != "unix":
            d["wifi"] = {"ssid": "lab", "password": "secret"}   # the fake access point's
    cfg.write_text(json.dumps(d))
    out = tmp / ("bundle-%s" % name)
    build_bundle(board, cfg, out, romfs=True)     # + romfs.img; the .mpy files are the same
    return out


def run_unix(args: list[str], timeout: float = 120) -> dict:
    p = subprocess.run([micropython_command(), "-X", "heapsize=256K", str(MP_NODE), *args],
                       capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError("mp_node.py %s failed:\n%s%s" % (args[0], p.stdout, p.stderr))
    return json.loads(p.stdout.strip().splitlines()[-1])


def wasm_module() -> Path | None:
    env = os.environ.get("STARLING_MP_WASM")
    path = Path(env) if env else WASM_DEFAULT
    return path if path.exists() and shutil.which("node") else None


def run_wasm(tmp: Path, bundle: Path, args: list[str]) -> dict | None:
    mjs = wasm_module()
    if mjs is None:
        return None
    runner = tmp / "wasm_runner.mjs"
    runner.write_text(WASM_RUNNER)
    p = subprocess.run(["node", str(runner), str(mjs), str(bundle), str(MP_NODE), *args],
                       capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise RuntimeError("wasm mp_node.py %s failed:\n%s%s" % (args[0], p.stdout, p.stderr[-2000:]))
    return json.loads(p.stdout.strip().splitlines()[-1])


class Counter:
    """A UDP socket on 127.0.0.1 counting (and checking) what the node sends."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.datagrams = 0
        self.readings = 0
        self.bad = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(2048)
            except socket.timeout:
                continue
            self.datagrams += 1
            try:
                msg = wire.decode(data)
            except wire.DecodeError:
                self.bad += 1
                continue
            ts = getattr(msg, "ts", None)
            self.readings += len(ts) if ts is not None else (1 if hasattr(msg, "seq") else 0)

    def close(self) -> dict:
        time.sleep(0.2)
        self._stop = True
        self._thread.join()
        self.sock.close()
        return {"datagrams": self.datagrams, "readings": self.readings, "bad": self.bad}


def micropython_side(tmp: Path, rounds: int) -> dict:
    bundle = build(tmp)
    out: dict[str, Any] = {"bundle_bytes": sum(f.stat().st_size for f in bundle.rglob("*.mpy"))}
    # the unix bundle and an ESP32 bundle (its board modules faked), from .mpy files and
    # from the bundle's romfs.img mounted at /rom; 64-bit (unix) and 32-bit (wasm)
    esp32 = build(tmp, "esp32")
    picow = build(tmp, "pico-w")
    tests = str(ROOT / "tests")
    runs: dict[str, list[Any]] = {"ram": [bundle], "ram_rom": [bundle],
                                  "ram_esp32": [esp32, tests], "ram_esp32_rom": [esp32, tests],
                                  "ram_picow": [picow, tests], "ram_picow_rom": [picow, tests]}
    for mode, args in runs.items():
        out[mode + "_64"] = run_unix([mode] + [str(a) for a in args])
    for mode, args in runs.items():
        out[mode + "_32"] = run_wasm(tmp, args[0], [mode] + [str(a) for a in args[1:]])
    # a serial-chain node (middle of a chain) from the unix bundle's modules, and on
    # the ESP32 HAL from an ESP32 bundle built for a chain node
    for mode, _ in CHAIN_RUNS:
        out[mode + "_64"] = run_unix([mode, str(bundle)])
        out[mode + "_32"] = run_wasm(tmp, bundle, [mode])
    for board, board_runs in (("esp32", CHAIN_BOARD_RUNS), ("pico", CHAIN_PICO_RUNS)):
        chain_bundle = build(tmp, board, chain=True)
        for mode, _ in board_runs:
            out[mode + "_64"] = run_unix([mode, str(chain_bundle), tests])
            out[mode + "_32"] = run_wasm(tmp, chain_bundle, [mode, tests])
    out["heap_64"] = run_unix(["heap", str(bundle)])
    counter = Counter()
    try:
        out["publish_64"] = run_unix(["publish", str(bundle), str(counter.port), str(rounds)])
    finally:
        out["publish_received"] = counter.close()
    out["heap_32"] = run_wasm(tmp, bundle, ["heap"])
    if out["ram_32"] is None:
        out["wasm_note"] = ("32-bit: %s %s (node) not installed; make bench installs it into build/wasm"
                            % (WASM_PACKAGE, WASM_VERSION))
    return out


# -- fleets ---------------------------------------------------------------------------------

def _cpu(pid: int) -> float:
    """CPU seconds of a process, ns resolution (/proc/PID/schedstat), else ticks."""
    try:
        with open("/proc/%d/schedstat" % pid) as f:
            return int(f.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return ingest._proc_cpu(pid)


def _uss_kb(pid: int) -> int:
    """Private (unshared) memory of a process: what one more node process costs."""
    total = 0
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    total += int(line.split()[1])
    except OSError:
        return 0
    return total


async def fleet_run(runtime: str, n: int, rate: float, window: float) -> dict:
    """Start a base (own process) and N nodes; measure for `window` seconds; stop
    cleanly and compare what the nodes published with what the base accounted."""
    base = ingest.Child("--role", "recv-starling")
    try:
        port = base.hello["port"]
        fleet = Fleet(n, runtime=runtime, bases=[("127.0.0.1", port)], rate=rate,
                      status_every_ms=1000)
        t0 = time.monotonic()
        await fleet.start(boot_timeout=30)
        boot_s = time.monotonic() - t0
        await asyncio.sleep(1.0)                  # settle: first samples are staggered
        pids = [m.proc.pid for m in fleet.members.values() if m.proc is not None]
        s0 = base.ask("stats")
        c0 = sum(_cpu(p) for p in pids) if pids else time.process_time()
        w0 = time.monotonic()
        rss = [ingest._rss_kb(p) for p in pids]
        uss = [_uss_kb(p) for p in pids]
        await asyncio.sleep(window)
        w1 = time.monotonic()
        s1 = base.ask("stats")
        c1 = sum(_cpu(p) for p in pids) if pids else time.process_time()
        rss = [max(a, ingest._rss_kb(p)) for a, p in zip(rss, pids)]
        uss = [max(a, _uss_kb(p)) for a, p in zip(uss, pids)]
        summary = await fleet.stop()
        # the base drains what is in flight, final STATUSes included
        last, deadline = -1, time.monotonic() + 10
        while time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            s2 = base.ask("stats")
            if s2["readings"] == last:
                break
            last = s2["readings"]
    finally:
        base.close()
    dt = w1 - w0
    expected = n * rate
    seen = (s1["readings"] - s0["readings"]) / dt
    published = summary["totals"]["published"]
    received = s2["readings"]
    r = {
        "runtime": runtime, "nodes": n, "rate_per_node": rate, "window_s": round(dt, 2),
        "boot_s": round(boot_s, 2),
        "expected_rate": expected, "base_rate": seen, "rate_ratio": seen / expected,
        "fleet_cpu_cores": (c1 - c0) / dt,
        "base_cpu_cores": (s1["cpu"] - s0["cpu"]) / dt,
        "published": published, "received": received, "loss": published - received,
        "base_lost": s2["lost"], "kernel_drops": s2["kernel_drops"],
        "send_errors": sum(v["send_errors"] for v in summary["nodes"].values()),
        "exact": all(v["exact"] for v in summary["nodes"].values()),
    }
    if rss:
        r["rss_kb_mean"] = sum(rss) / len(rss)
        r["rss_kb_max"] = max(rss)
        r["uss_kb_mean"] = sum(uss) / len(uss)
        r["cpu_ms_per_s_per_node"] = r["fleet_cpu_cores"] / n * 1000
    else:
        r["rss_kb_process"] = ingest._rss_kb(os.getpid())
    r["holds"] = r["rate_ratio"] >= 0.97 and r["loss"] == 0 and r["kernel_drops"] == 0
    return r


# -- report -----------------------------------------------------------------------------------

MODULE_ORDER = ("protocol", "protocol.topics", "protocol.nodewire", "protocol.cbor_lite",
                "firmware", "firmware.sensors", "firmware.subscribers",
                "firmware.hal_unix", "firmware.core", "firmware.node", "firmware.config")
MODULE_LABEL = {"firmware.config": "config+codes, dropped"}


RAM_RUNS = (("ram", "unix, .mpy"), ("ram_rom", "unix, ROMFS"), ("ram_esp32", "ESP32, .mpy"),
            ("ram_esp32_rom", "ESP32, ROMFS"), ("ram_picow", "Pico W, .mpy"),
            ("ram_picow_rom", "Pico W, ROMFS"))
BOARD_ROWS = ("firmware.hal_board", "firmware.hal_esp32", "firmware.hal_pico")
CHAIN_RUNS = (("ram_chain", ".mpy"), ("ram_chain_rom", "ROMFS"), ("ram_chain_durable", ".mpy, durable"))
CHAIN_BOARD_RUNS = (("ram_chain_esp32", ".mpy"), ("ram_chain_esp32_rom", "ROMFS"))
CHAIN_PICO_RUNS = (("ram_chain_pico", ".mpy"), ("ram_chain_pico_rom", "ROMFS"))
CHAIN_BOARD_ORDER = ("protocol", "protocol.codes", "protocol.topics", "protocol.nodewire",
                     "protocol.cbor_lite", "protocol.framing", "protocol.link", "firmware",
                     "firmware.sensors", "firmware.hal_board", "firmware.hal_esp32",
                     "firmware.core", "firmware.outbox", "firmware.chain", "firmware.config")
CHAIN_ORDER = ("protocol", "protocol.codes", "protocol.topics", "protocol.nodewire",
               "protocol.cbor_lite", "protocol.framing", "protocol.link", "firmware",
               "firmware.sensors", "firmware.uart_unix", "firmware.hal_unix",
               "firmware.core", "firmware.outbox", "firmware.chain", "firmware.config")


def print_chain_table(mp: dict, runs: tuple = CHAIN_RUNS, order: tuple = CHAIN_ORDER,
                      hal: str = "unix HAL") -> None:
    """RAM of a serial-chain node after boot, 64-bit and 32-bit side by side."""
    cols = [(m + w, "%s %s" % (label, bits)) for w, bits in (("_64", "64-bit"), ("_32", "32-bit"))
            for m, label in runs]
    print("Serial-chain node (middle of a chain: up and down UART, 2 sensors, %s), RAM held "
          "after boot, bytes" % hal)
    print("  %-22s" % "" + "".join(" %21s" % label for _, label in cols))

    def cell(key: str, value: Any) -> str:
        run = mp.get(key)
        return " %21s" % ("-" if run is None else "" if value(run) is None else value(run))

    for name in order:
        print("  %-22s" % ("config, dropped" if name == "firmware.config" else name)
              + "".join(cell(k, lambda r, n=name: r["modules"].get(n)) for k, _ in cols))
    for key, label in (("node_boot", "ChainNode + boot"), ("node_running", "first 50 steps"),
                       ("total", "total")):
        print("  %-22s" % label + "".join(cell(k, lambda r, f=key: r.get(f)) for k, _ in cols))
    loaded = [n for n, flag in (("protocol.cbor", "cbor_loaded"), ("protocol.messages", "messages_loaded"))
              if any((mp.get(k) or {}).get(flag) for k, _ in cols)]
    print("  generic codec modules a booted chain node holds: %s"
          % (", ".join(loaded) + " (counted in the row of the module that imports them)"
             if loaded else "none"))
    print()


def print_table(r: dict) -> None:
    mp = r["micropython"]
    r64 = mp["ram_64"]
    print("RAM held after boot, bytes: `starling build` bundles for the unix HAL, ESP32 and Pico W"
          " (board modules faked), %d bytes of .mpy (unix bundle)" % mp["bundle_bytes"])

    def cell(run: dict | None, key: str, module: bool = True) -> str:
        if run is None:
            return " %13s" % "-"
        v = run["modules"].get(key) if module else run.get(key)
        return " %13s" % ("" if v is None else v)

    for w, bits in (("_64", "64-bit"), ("_32", "32-bit")):
        ver = next((mp[m + w]["version"] for m, _ in RAM_RUNS if mp.get(m + w)), None)
        print("  %s%s" % (bits, " (MicroPython %s, %s)" % (
            ver, "unix port" if w == "_64" else "webassembly port") if ver else ": not measured"))
        print("  %-22s" % "" + "".join(" %13s" % label for _, label in RAM_RUNS))
        for name in MODULE_ORDER + BOARD_ROWS:
            print("  %-22s" % MODULE_LABEL.get(name, name)
                  + "".join(cell(mp.get(m + w), name) for m, _ in RAM_RUNS))
        for key, label in (("node_boot", "Node + boot"), ("node_running", "first 50 steps"),
                           ("total", "total")):
            print("  %-22s" % label + "".join(cell(mp.get(m + w), key, False) for m, _ in RAM_RUNS))
    rom = mp["ram_rom_64"]
    print("  (ROMFS: modules imported in place from romfs.img (%d bytes, unix bundle) mounted at /rom,"
          " %s; the image buffer is allocated before the baseline; the board rows include"
          " begin(): Wi-Fi join, NTP)" % (rom["image_bytes"], rom["from"]))
    print("  protocol.cbor imported by a booted node: %s"
          % ("yes" if any(mp[m + w].get("cbor_loaded") for w in ("_64", "_32") for m, _ in RAM_RUNS
                          if mp.get(m + w)) else "no"))
    if mp.get("wasm_note"):
        print("  " + mp["wasm_note"])
    print()
    print_chain_table(mp)
    print_chain_table(mp, CHAIN_BOARD_RUNS, CHAIN_BOARD_ORDER,
                      "ESP32 HAL, board modules faked, config row includes begin()")
    print_chain_table(mp, CHAIN_PICO_RUNS,
                      tuple("firmware.hal_pico" if m == "firmware.hal_esp32" else m
                            for m in CHAIN_BOARD_ORDER),
                      "Pico HAL, board modules faked, config row includes begin()")
    p = mp["publish_64"]
    h32 = mp["heap_32"] or {}
    print("Publish on the unix port (one subscriber at 127.0.0.1; µs with GC on, heap with GC off)")
    print("  %-22s %8s %12s %12s" % ("", "µs", "heap 64-bit", "heap 32-bit"))
    for name, label in (("event_int", "EVENT, int"), ("event_float", "EVENT, float"),
                        ("batch20_int", "BATCH 20, int (/rd)")):
        print("  %-22s %8.1f %12.1f %12s" % (label, p[name]["us"], mp["heap_64"][name],
                                             "%.1f" % h32[name] if name in h32 else "-"))
    print("  %-22s %8.1f   (the node's own code: udp_send does nothing)" % ("EVENT, int, no socket",
                                                                           p["event_int_no_socket"]["us"]))
    print("  %-22s %8.1f   (a bare sendto of the same %d-byte EVENT to the same socket)" % (
        "sendto only", p["sendto_only"]["us"], p["sendto_only"]["bytes"]))
    rc = mp["publish_received"]
    sent = sum(p[k]["datagrams"] for k in ("event_int", "event_float", "batch20_int")) + p["sendto_only"]["count"]
    print("  received at 127.0.0.1: %d datagrams (%d data datagrams sent, + STATUS), %d readings,"
          " %d undecodable" % (rc["datagrams"], sent, rc["readings"], rc["bad"]))
    print()
    print("Fleets against a base station in its own process")
    print("  %-12s %6s %8s %10s %7s %10s %9s %17s %7s %6s" % (
        "runtime", "nodes", "exp/s", "base/s", "ratio", "fleet CPU", "base CPU", "RSS / USS per node",
        "loss", "holds"))
    for f in r["fleets"]:
        mem = ("%.1f / %.1f MB" % (f["rss_kb_mean"] / 1024, f["uss_kb_mean"] / 1024)
               if "rss_kb_mean" in f else "%.0f MB (1 proc)" % (f["rss_kb_process"] / 1024))
        print("  %-12s %6d %8.0f %10.1f %7.3f %9.3fc %8.3fc %17s %7d %6s" % (
            f["runtime"], f["nodes"], f["expected_rate"], f["base_rate"], f["rate_ratio"],
            f["fleet_cpu_cores"], f["base_cpu_cores"], mem, f["loss"], "yes" if f["holds"] else "NO"))
    print("  (c = cores; USS = private memory, what one more process costs; loss = published -"
          " accounted after a clean stop; windows %s s)"
          % ", ".join(sorted({str(f["window_s"]) for f in r["fleets"]})))
    print()
    for name, t in r["targets"].items():
        met = t.get("met")
        print("  target %-30s %s  %s" % (name, "n/a" if met is None else ("met" if met else "MISSED"),
                                         ", ".join("%s %s" % (k, v) for k, v in t.items() if k != "met")))
    m = r["machine"]
    print("total %.0f s; load average %.2f at the start, %.2f at the end (other work on the machine)"
          % (r["elapsed_s"], m["loadavg_start"], m.get("loadavg_end", 0.0)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--quick", action="store_true", help="one fleet size per runtime, short windows")
    args = ap.parse_args(argv)
    t_start = time.monotonic()
    res: dict[str, Any] = {"quick": args.quick, "machine": {"cpus": os.cpu_count(),
                                                            "loadavg_start": os.getloadavg()[0]}}
    with tempfile.TemporaryDirectory(prefix="starling-bench-node-") as d:
        res["micropython"] = micropython_side(Path(d), 1000 if args.quick else 5000)
    if args.quick:
        plan = [("micropython", 10, 10.0, 2.0), ("cpython", 1000, 1.0, 3.0)]
    else:
        plan = [("micropython", n, 10.0, 5.0) for n in (10, 20, 40)] + \
               [("cpython", n, 1.0, 8.0) for n in (1000, 2000, 5000)]
    res["fleets"] = [asyncio.run(fleet_run(*p)) for p in plan]
    res["targets"] = {}
    for mode, _ in RAM_RUNS:
        for w in ("64", "32"):
            run = res["micropython"].get("%s_%s" % (mode, w))
            res["targets"]["%s_%sbit_le_32KB" % (mode, w)] = (
                {"met": run["total"] <= RAM_TARGET, "bytes": run["total"]} if run
                else {"met": None, "bytes": None})
    for f in res["fleets"]:
        res["targets"]["fleet_%s_%d" % (f["runtime"], f["nodes"])] = {
            "met": f["holds"], "rate_ratio": round(f["rate_ratio"], 3), "loss": f["loss"]}
    res["elapsed_s"] = round(time.monotonic() - t_start, 1)
    res["machine"]["loadavg_end"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(res))
    else:
        print_table(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
