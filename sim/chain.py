"""A simulated serial chain: K real `micropython` nodes on virtual UART wires.

    base <-> node 1 <-> node 2 <-> ... <-> node K

`Chain` builds a `sim.wire.WireChain` of K+1 paced 8N1 wires (impairments on every wire),
starts one MicroPython unix-port process per node running firmware/chain.py with the unix
HAL (``core.main(flash_dir, stdin_control=True)``, as /main.py on a board, which runs
firmware/chain.py for a "serial" node.json): exactly the code a board runs apart
from the HAL and the UART. Node j's upstream UART is ``wires.upstream_path(j)`` (wire j-1,
end B) and its downstream UART ``wires.downstream_path(j)`` (wire j, end A); the last node
has no downstream UART unless ``tail=True`` (then wire K's far end is left free). The
head, end A of wire 0, is where a base station connects: optionally symlinked at
``serial_link`` for ``starling listen --serial PATH`` (any program that opens a serial
port by path will do; see docs/PROTOCOL.md section 7 for how the head talks to node 1).

Each node has a flash directory (node.json, epoch, the outbox log, counters.json,
node.log) under the work directory. Stopping is graceful ("stop" on stdin, then SIGINT,
then SIGKILL after timeouts): the node sends a last STATUS, drains its outbox for up to
stop_drain_ms, syncs its log and writes counters.json; `summary()` then holds, per node,
``published`` (events accepted by publish(), summed over all boots), the shed counts,
``forwarded``, ``dead_letter``, the heap numbers (``mem_max``: largest gc.mem_alloc()
after a gc.collect(), sampled every second) and the boots' epochs. ``pause()`` stops
sampling on every node (they keep forwarding) and reads their published counts at once,
so a test can wait until the head has everything before stopping.

Usage (coroutines on the caller's event loop; not thread-safe)::

    chain = Chain(3, ber=1e-4, drop=0.01, durable=True, rate=10, serial_link="/tmp/head")
    await chain.start()
    chain.cut(1, 2.0)              # pull the cable between node 1 and node 2 for 2 s
    await chain.reboot(2)          # graceful; its durable outbox replays
    summary = await chain.stop()   # {"nodes": {"1": {"published": ..., ...}}, ...}

What it does NOT model (see also sim.wire and sim.fleet):

* Boards' timing and memory: processes get a fixed MicroPython heap (``heapsize``) of
  64-bit objects (a board's 32-bit objects take about half) and a PC's CPU; a board's UART
  FIFO and interrupt latency are absent (sim.wire delivers in ~1 ms slices).
* Flash: the flash is a host directory; littlefs wear, erase stalls and power loss in the
  middle of a write are not modelled. ``reboot(crash=True)`` kills the process, which
  loses what a power loss loses (the log buffer), but never tears a write.
* Blocking UART writes: a pty accepts about 4 KB beyond the wire's own buffer before a
  node's write blocks; a board's TX ring is usually smaller.
* Anything the wire does not model: baud mismatch, framing errors, breaks, flow control.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from firmware import config as fw_config
from sim.fleet import default_sensors, with_rate
from sim.runtime import NodeProcess, ensure_fd_limit
from sim.wire import WireChain

BOOT_TIMEOUT = 10.0


def auto_frame_bytes(ber: float, drop: float) -> int:
    """Target DATA payload per frame for a line with these impairments: a frame (payload +
    16 bytes of framing) gets through whole at least half the time; 0 (full frames) on a
    clean line or when that is 200 bytes or more; never below 32."""
    if ber <= 0 and drop <= 0:
        return 0
    per_byte = math.log1p(-min(drop, 0.5)) + 8 * math.log1p(-min(ber, 0.05))
    n = int(math.log(0.5) / per_byte) - 16
    if n >= 200:
        return 0
    return max(32, n - n % 8)


class _Node(NodeProcess):
    def __init__(self, node_id: int, flash: Path, heapsize: str):
        super().__init__(node_id, flash, "core", "chain node", heapsize)


class Chain:
    """K chain nodes on K+1 virtual wires (see the module docstring).

    Args:
        k: number of nodes; ids 1..k, node 1 next to the head.
        baud, ber, drop: line rate and impairments of every wire (sim.wire.VirtualWire).
        cut_every: seconds between cuts of a random wire 0..k-1 (None: never), each
            cut_seconds long.
        reboot_every: seconds between graceful reboots of a random node (None: never).
        durable: the nodes keep their outbox and forward queue in a flash log.
        rate: readings per second per node (split over the sensors).
        window: link window of every node (None: firmware/config.py's default, 8 full
            frames or, with small frames, as many as hold the same bytes).
        seed: seeds the wires, the cut and reboot schedules.
        serial_link: a symlink created to the head's pty (None: none).
        frame_bytes: target payload per frame (None: auto_frame_bytes(ber, drop); 0: full).
        max_payload: DATA payload bytes, the largest message (128..1016; None: 256, or 128
            with small frames: after a resync the link re-packs its unacknowledged
            messages into frames of up to max_payload, which a lossy line must carry).
        max_retries: retry budget of a frame (None: 16 on a clean line, 64 when impaired,
            so that dead letters stay a deliberate test of their own).
        sensors, status_every_ms, outbox, float32, host_clock, extra_config: node.json.
        workdir, keep_workdir: as sim.fleet.Fleet.
        heapsize: MicroPython heap per node. The unix port's 64-bit objects need about
            135 KB after boot (the firmware from source files) and 5-20 KB more under
            load with the default queues (tests/test_chain_sim.py prints them); a
            board's 32-bit objects about 75 % of that (docs/PERFORMANCE.md).
        tail: give node k a downstream UART too (wire k's far end stays free).
        per_wire: {wire index: {VirtualWire keyword: value}} overrides.
    """

    def __init__(self, k: int = 3, *, baud: int = 115200, ber: float = 0.0, drop: float = 0.0,
                 cut_every: float | None = None, cut_seconds: float = 2.0,
                 reboot_every: float | None = None, durable: bool = True, rate: float = 1.0,
                 window: int | None = None, seed: int = 0, serial_link: str | None = None,
                 max_payload: int | None = None, frame_bytes: int | None = None,
                 max_retries: int | None = None,
                 sensors: list[dict[str, Any]] | None = None, status_every_ms: int = 1000,
                 outbox: dict[str, Any] | None = None, float32: bool = True,
                 host_clock: bool = True, extra_config: dict[str, Any] | None = None,
                 workdir: str | None = None, keep_workdir: bool = False,
                 heapsize: str = "512K", tail: bool = False,
                 per_wire: dict[int, dict] | None = None, stop_drain_ms: int = 500):
        if k < 1:
            raise ValueError("a chain needs at least one node")
        self.k = k
        self.baud = baud
        self.ber = ber
        self.drop = drop
        self.cut_every = cut_every
        self.cut_seconds = cut_seconds
        self.reboot_every = reboot_every
        self.durable = durable
        self.rate = rate
        self.seed = seed
        self.serial_link = serial_link
        self.frame_bytes = frame_bytes if frame_bytes is not None else auto_frame_bytes(ber, drop)
        self.max_payload = max_payload or (128 if self.frame_bytes else 256)
        # None: node.json's default (8 full frames, or as many small ones as hold as much)
        self.window = window if window is not None else fw_config.default_window(
            self.frame_bytes, self.max_payload)
        self.max_retries = max_retries if max_retries is not None else (64 if (ber or drop) else 16)
        self.sensors = with_rate(sensors, rate) if sensors is not None else default_sensors(rate)
        self.status_every_ms = status_every_ms
        self.outbox = dict(outbox or {"max": 256, "max_bytes": 8192, "policy": "drop_oldest"})
        self.float32 = float32
        self.host_clock = host_clock
        self.extra_config = dict(extra_config or {})
        self.heapsize = heapsize
        self.tail = tail
        self.per_wire = per_wire
        self.stop_drain_ms = stop_drain_ms
        self._own_workdir = workdir is None
        self.keep_workdir = keep_workdir
        self.workdir = (Path(workdir) if workdir is not None
                        else Path(tempfile.mkdtemp(prefix="starling-chain-")))
        self.wires: WireChain | None = None
        self.nodes = {j: _Node(j, self.workdir / f"node-{j}", heapsize) for j in range(1, k + 1)}
        self.reboots = 0
        self.cuts: list[tuple[float, int, float]] = []   # (time since start, wire, seconds)
        self._rng = random.Random(seed)
        self._tasks: list[asyncio.Task] = []
        self._started = False
        self._stopped = False
        self._t0 = 0.0
        self._t1 = 0.0

    # --- set-up ---------------------------------------------------------------------------
    @property
    def head_path(self) -> str:
        """The head's pty (wire 0, end A): where the base station's serial port goes."""
        assert self.wires is not None, "start() first"
        return self.wires.base_path

    def node_config(self, j: int) -> dict[str, Any]:
        """node.json of node j (the wires must exist: start() creates them)."""
        assert self.wires is not None, "start() first"
        up = {"path": self.wires.upstream_path(j), "baud": self.baud}
        down = None
        if j < self.k or self.tail:
            down = {"path": self.wires.downstream_path(j), "baud": self.baud}
        cfg: dict[str, Any] = {
            "node": j, "transport": "serial", "uart": {"up": up, "down": down},
            "sensors": self.sensors, "durable": self.durable, "window": self.window,
            "status_every_ms": self.status_every_ms, "outbox": self.outbox,
            "link": {"max_payload": self.max_payload, "frame_bytes": self.frame_bytes,
                     "max_retries": self.max_retries},
            "float32": self.float32, "host_clock": self.host_clock,
            "stop_drain_ms": self.stop_drain_ms, "firmware": fw_config.FIRMWARE_VERSION,
        }
        cfg.update(self.extra_config)
        fw_config.from_dict(json.loads(json.dumps(cfg)))  # fail here, not in a node's log
        return cfg

    async def start(self, boot_timeout: float = BOOT_TIMEOUT) -> None:
        """Create the wires and start every node; return once all have booted."""
        if self._started:
            raise RuntimeError("chain already started")
        self._started = True
        self._t0 = time.monotonic()
        ensure_fd_limit(2 * self.k + 1)   # a pty pair per wire besides each node's files
        per_wire = {i: dict(v) for i, v in (self.per_wire or {}).items()}
        if self.serial_link:
            per_wire.setdefault(0, {})["link_a"] = self.serial_link
        self.wires = WireChain(self.k, per_wire=per_wire, seed=self.seed, baud=self.baud,
                               ber=self.ber, drop=self.drop)
        for n in self.nodes.values():
            n.flash.mkdir(parents=True, exist_ok=True)
            (n.flash / "node.json").write_text(json.dumps(self.node_config(n.node_id), indent=1))
        await asyncio.gather(*(n.spawn() for n in self.nodes.values()))
        await asyncio.gather(*(n.wait_booted(boot_timeout) for n in self.nodes.values()))
        if self.reboot_every:
            self._tasks.append(asyncio.create_task(self._reboot_loop()))
        if self.cut_every:
            self._tasks.append(asyncio.create_task(self._cut_loop()))

    # --- processes ----------------------------------------------------------------------------
    # --- control -------------------------------------------------------------------------
    async def reboot(self, node_id: int, crash: bool = False) -> int:
        """Restart node `node_id` (graceful unless crash); returns its new epoch."""
        n = self.nodes[node_id]
        self.reboots += 1
        await n.stop(crash)
        await n.spawn()
        await n.wait_booted(BOOT_TIMEOUT)
        return n.boot_epoch

    def cut(self, wire_index: int, seconds: float) -> None:
        """Pull wire `wire_index` (0: head-node 1, j: node j-node j+1) for `seconds`."""
        assert self.wires is not None, "start() first"
        self.wires.cut(wire_index, seconds)
        self.cuts.append((round(time.monotonic() - self._t0, 3), wire_index, seconds))

    async def pause(self, timeout: float = 5.0) -> dict[int, int]:
        """Stop sampling on every node (they keep forwarding); return node id -> events
        published over all boots so far (the current boot's read from its report)."""
        for n in self.nodes.values():
            (n.flash / "counters.json").unlink(missing_ok=True)
            await n.send("pause")
        out = {}
        deadline = time.monotonic() + timeout
        for n in self.nodes.values():
            rep = None
            while time.monotonic() < deadline:
                try:
                    rep = json.loads((n.flash / "counters.json").read_text())["report"]
                    if rep.get("paused") and rep.get("epoch") == n.boot_epoch:
                        break
                except (OSError, ValueError, KeyError):
                    pass
                rep = None
                await asyncio.sleep(0.02)
            if rep is None:
                raise RuntimeError(f"chain node {n.node_id} did not pause")
            out[n.node_id] = rep["published"] + sum(b.get("published") or 0 for b in n.boots)
        return out

    async def _reboot_loop(self) -> None:
        assert self.reboot_every
        while True:
            await asyncio.sleep(self.reboot_every)
            await self.reboot(self._rng.randint(1, self.k))

    async def _cut_loop(self) -> None:
        assert self.cut_every
        while True:
            await asyncio.sleep(self.cut_every)
            self.cut(self._rng.randrange(self.k), self.cut_seconds)

    # --- stop and results ----------------------------------------------------------------
    async def stop(self) -> dict[str, Any]:
        """Stop every node gracefully, close the wires, return summary()."""
        if self._stopped:
            return self.summary()
        self._stopped = True
        for t in self._tasks:
            t.cancel()
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        # the tail first: a node's last STATUS can still cross the wires above it
        for j in sorted(self.nodes, reverse=True):
            await self.nodes[j].stop()
        for n in self.nodes.values():
            n.close_log()
        self._t1 = time.monotonic()
        summary = self.summary()
        if self.wires is not None:
            self.wires.close()
        if self._own_workdir and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return summary

    def summary(self) -> dict[str, Any]:
        """Per node: published (all boots), dropped/evicted, forwarded, dead_letter, boots,
        epochs, exact, replayed, heap numbers; the wires' counters; cuts and reboots."""
        nodes: dict[str, Any] = {}
        totals = {"published": 0, "dropped": 0, "forwarded": 0, "dead_letter": 0}
        for nid, n in sorted(self.nodes.items()):
            boots = list(n.boots)

            def total(key: str) -> int:
                return sum(b.get(key) or 0 for b in boots)

            entry: dict[str, Any] = {
                "published": total("published"), "dropped": total("dropped"),
                "evicted": total("evicted"), "forwarded": total("forwarded"),
                "dead_letter": total("dead_letter"), "replayed": total("replayed"),
                "boots": len(boots), "epochs": [b.get("epoch") for b in boots],
                "last_seq": [b.get("last_seq") for b in boots],
                "exact": n.exact and n.proc is None,
                "hop": boots[-1].get("hop") if boots else None,
                "mem_boot": max((b.get("mem_boot") or 0 for b in boots), default=0),
                "mem_max": max((b.get("mem_max") or 0 for b in boots), default=0),
                "up_link": [b.get("up_link") for b in boots],
            }
            for k in totals:
                totals[k] += entry[k]
            nodes[str(nid)] = entry
        return {
            "chain": self.k, "nodes": nodes, "totals": totals, "reboots": self.reboots,
            "cuts": list(self.cuts),
            "duration_s": round((self._t1 or time.monotonic()) - self._t0, 3) if self._t0 else 0.0,
            "baud": self.baud, "ber": self.ber, "drop": self.drop, "durable": self.durable,
            "window": self.window, "max_payload": self.max_payload,
            "frame_bytes": self.frame_bytes, "max_retries": self.max_retries,
            "head": self.serial_link, "seed": self.seed,
            "wires": self.wires.stats() if self.wires is not None else [],
            "workdir": str(self.workdir),
        }
