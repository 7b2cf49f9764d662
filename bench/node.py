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
  is installed (`make bench` installs it into build/wasm). The boards' firmware
  differs in version and options (MicroPython 1.27 wasm vs 1.29 unix), so that is
  an estimate, not a board measurement. Without node/npm, the 32-bit figure is not
  measured and the 64-bit one stands as an upper bound.
* The same RAM figure with the modules imported from the bundle's romfs.img
  (`starling build --romfs`) mounted at /rom with vfs.VfsRom, as firmware with a
  ROMFS partition does at boot: bytecode and constant strings stay in the image
  (flash on a board), only the objects the imports create are on the heap. The
  image is read into a bytes object before the baseline (this unix build cannot
  place it outside the GC heap), so it is in no row. For the unix bundle and for
  the ESP32 bundle (board modules faked, as above).
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
WASM_VERSION = "1.27.0"
WASM_DEFAULT = ROOT / "build" / "wasm" / "node_modules" / WASM_PACKAGE / "micropython.mjs"
RAM_TARGET = 32 * 1024
NODE_CONFIG = {"node": 7, "bases": [["127.0.0.1", 5684]],
               "sensors": [{"topic": "temp", "kind": "sine", "period_ms": 1000},
                           {"topic": "count", "kind": "counter", "period_ms": 1000}],
               "status_every_ms": 5000}

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
mp.FS.writeFile("/mp_node.py", readFileSync(script));
try {
  mp.runPython("exec(open('/mp_node.py').read(), {'__name__': '__main__', 'MP_ARGS': "
               + JSON.stringify([args[0], "/bundle", ...args.slice(1)]) + "})");
} catch (e) {
  process.stderr.write(String(e.message || e) + "\n");
  process.exit(1);
}
console.log(out.join("\n"));
"""


# -- MicroPython measurements ------------------------------------------------------------

def build(tmp: Path, board: str = "unix") -> Path:
    cfg = tmp / ("node-%s.json" % board)
    d = dict(NODE_CONFIG)
    if board != "unix":
        d["wifi"] = {"ssid": "lab", "password": "secret"}   # the fake access point's
    cfg.write_text(json.dumps(d))
    out = tmp / ("bundle-%s" % board)
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
    out["ram_64"] = run_unix(["ram", str(bundle)])
    # an ESP32 bundle's modules on the unix port, the board modules faked
    esp32 = build(tmp, "esp32")
    out["ram_esp32_64"] = run_unix(["ram_esp32", str(esp32), str(ROOT / "tests")])
    # the same, the modules imported in place from the bundle's romfs.img mounted at /rom
    out["ram_rom_64"] = run_unix(["ram_rom", str(bundle)])
    out["ram_esp32_rom_64"] = run_unix(["ram_esp32_rom", str(esp32), str(ROOT / "tests")])
    out["heap_64"] = run_unix(["heap", str(bundle)])
    counter = Counter()
    try:
        out["publish_64"] = run_unix(["publish", str(bundle), str(counter.port), str(rounds)])
    finally:
        out["publish_received"] = counter.close()
    out["ram_32"] = run_wasm(tmp, bundle, ["ram"])
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
                "firmware.hal_unix", "firmware.node", "firmware.config")
MODULE_LABEL = {"firmware.config": "config+codes, dropped"}


def print_table(r: dict) -> None:
    mp = r["micropython"]
    r64, r32, rom = mp["ram_64"], mp["ram_32"], mp.get("ram_rom_64")
    print("RAM held after boot, from a `starling build --board unix` bundle (.mpy, %d bytes of .mpy)"
          % mp["bundle_bytes"])
    print("  %-22s %10s %10s %10s" % ("", "64-bit", "32-bit", "64-bit"))
    print("  %-22s %10s %10s %10s" % ("", "unix %s" % r64["version"],
                                      "wasm %s" % r32["version"] if r32 else "-", "ROMFS"))
    for name in MODULE_ORDER:
        print("  %-22s %10d %10s %10s" % (MODULE_LABEL.get(name, name), r64["modules"][name],
                                          r32["modules"][name] if r32 else "-",
                                          rom["modules"][name] if rom else "-"))
    for key, label in (("node_boot", "Node + boot"), ("node_running", "first 50 steps"),
                       ("total", "total")):
        print("  %-22s %10d %10s %10s" % (label, r64[key], r32[key] if r32 else "-",
                                          rom[key] if rom else "-"))
    if rom:
        print("  (ROMFS: modules imported in place from romfs.img (%d bytes) mounted at /rom, %s; the"
              " image buffer is allocated before the baseline)" % (rom["image_bytes"], rom["from"]))
    print("  protocol.cbor imported by the booted node: %s (.mpy), %s (ROMFS)"
          % ("yes" if r64.get("cbor_loaded") else "no",
             "-" if not rom else "yes" if rom.get("cbor_loaded") else "no"))
    if mp.get("wasm_note"):
        print("  " + mp["wasm_note"])
    e = mp.get("ram_esp32_64")
    if e:
        print("  ESP32 bundle on the unix port (board modules faked), 64-bit: hal_board %d,"
              " hal_esp32 %d, config + begin() %d, Node + boot %d, total %d"
              % (e["modules"]["firmware.hal_board"], e["modules"]["firmware.hal_esp32"],
                 e["modules"]["firmware.config"], e["node_boot"], e["total"]))
    e = mp.get("ram_esp32_rom_64")
    if e:
        print("  the same from its romfs.img (%d bytes) at /rom: hal_board %d, hal_esp32 %d, config +"
              " begin() %d, Node + boot %d, total %d"
              % (e["image_bytes"], e["modules"]["firmware.hal_board"], e["modules"]["firmware.hal_esp32"],
                 e["modules"]["firmware.config"], e["node_boot"], e["total"]))
    print()
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
    r64, r32 = res["micropython"]["ram_64"], res["micropython"]["ram_32"]
    res["targets"] = {
        "ram_after_boot_64bit_le_32KB": {"met": r64["total"] <= RAM_TARGET, "bytes": r64["total"]},
        "ram_after_boot_esp32_64bit_le_32KB": {
            "met": res["micropython"]["ram_esp32_64"]["total"] <= RAM_TARGET,
            "bytes": res["micropython"]["ram_esp32_64"]["total"]},
        "ram_after_boot_romfs_64bit_le_32KB": {
            "met": res["micropython"]["ram_rom_64"]["total"] <= RAM_TARGET,
            "bytes": res["micropython"]["ram_rom_64"]["total"]},
        "ram_after_boot_romfs_esp32_64bit_le_32KB": {
            "met": res["micropython"]["ram_esp32_rom_64"]["total"] <= RAM_TARGET,
            "bytes": res["micropython"]["ram_esp32_rom_64"]["total"]},
        "ram_after_boot_32bit_le_32KB": ({"met": r32["total"] <= RAM_TARGET, "bytes": r32["total"]}
                                         if r32 else {"met": None, "bytes": None}),
    }
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
