"""A fleet of simulated Starling nodes running the real firmware.

Each node gets a flash directory (node.json, the persisted `epoch`, `counters.json`,
`node.log`) under the fleet's work directory and runs either

* ``runtime="micropython"``: as a real `micropython` unix-port process executing
  firmware/node.py with the unix HAL (``core.main(flash_dir, stdin_control=True)``, as
  /main.py on a board), exactly the code a board runs apart from the HAL; or
* ``runtime="cpython"``: as an in-process `firmware.node.Node` driven by one asyncio
  task, all nodes sharing one send socket and one socket per discovery port, so
  thousands of nodes fit in one process.

When loss, duplication, reordering or delay is asked for, every static base gets a
`sim.relay.Relay` and the nodes' node.json points at the relay instead of the base,
so the firmware is unmodified. ANNOUNCEs received over discovery are *not* routed
through relays: a base that announces its own address gets unimpaired traffic.

Exact accounting: nodes are stopped cleanly (micropython: "stop" on stdin, then
SIGINT, then SIGKILL after timeouts; cpython: `Node.finish()`), which sends each
subscriber a final STATUS and writes the node's counters (counters.json), before the
relays are drained. `summary()` then holds, per node, `published` (summed over all
boots, from the nodes themselves) and the relays' `dropped_by_sim` and
`duplicated_by_sim`. A crash (`reboot(..., crash=True)`) loses that boot's counters:
the node's entry is then marked ``"exact": false``.

Usage (everything is a coroutine on the caller's event loop; Fleet is not
thread-safe: call it from the loop's thread only)::

    fleet = Fleet(3, runtime="micropython", bases=[("127.0.0.1", 5684)], rate=10, loss=0.1)
    await fleet.start()
    await asyncio.sleep(5)
    await fleet.reboot(2)          # epoch of node 2 grows
    summary = await fleet.stop()   # {"nodes": {"1": {"published": ..., ...}}, ...}
"""

from __future__ import annotations

import asyncio
import heapq
import json
import os
import random
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

from firmware import config as fw_config
from firmware import hal_unix
from firmware import node as fw_node
from sim.relay import Relay
from sim.runtime import NodeProcess, ensure_fd_limit, micropython_command  # noqa: F401 (re-exported)

RUNTIMES = ("micropython", "cpython")


def default_sensors(rate: float) -> list[dict[str, Any]]:
    """Two sensors sharing `rate` readings/s: a sine "temp" and a "count" counter."""
    specs: list[dict[str, Any]] = [
        {"topic": "temp", "kind": "sine", "amplitude": 5.0, "offset": 20.0, "wave_ms": 60000},
        {"topic": "count", "kind": "counter"}]
    return with_rate(specs, rate)


def with_rate(specs: list[dict[str, Any]], rate: float) -> list[dict[str, Any]]:
    """Give every spec without period_ms a period so the node totals `rate` readings/s."""
    if rate <= 0:
        raise ValueError("rate must be > 0 readings per second")
    period = max(1, round(len(specs) * 1000.0 / rate))
    out = []
    for s in specs:
        s = dict(s)
        s.setdefault("period_ms", period)
        out.append(s)
    return out


class _SharedNet:
    """Sockets shared by all in-process (cpython runtime) nodes."""

    def __init__(self) -> None:
        self.tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.tx.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        self.tx.bind(("0.0.0.0", 0))
        self.tx.setblocking(False)
        self.rx: dict[int, socket.socket] = {}

    def rx_for(self, port: int, bind: str) -> socket.socket:
        s = self.rx.get(port)
        if s is None:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            s.bind((bind, port))
            s.setblocking(False)
            self.rx[port] = s
        return s

    def close(self) -> None:
        self.tx.close()
        for s in self.rx.values():
            s.close()
        self.rx.clear()


class _InProcessHal(hal_unix.UnixHal):
    """The unix HAL with the fleet's shared sockets and a log file per node."""

    def __init__(self, flash_dir: str, net: _SharedNet):
        super().__init__(flash_dir, quiet=True)
        self.net = net

    def udp_open(self, port=0, reuse=False, broadcast=False, bind="0.0.0.0"):
        return self.net.tx if port == 0 else self.net.rx_for(port, bind)

    def udp_recv(self, sock):
        return None  # the fleet reads the shared sockets and dispatches

    def log(self, msg):
        with open(os.path.join(self.flash_dir, "node.log"), "a") as f:
            f.write(msg + "\n")

    def close(self):
        pass  # shared sockets belong to the fleet


class _Member(NodeProcess):
    """One node of the fleet and its boots (a process, or an in-process Node)."""

    def __init__(self, node_id: int, flash: Path, heapsize: str):
        super().__init__(node_id, flash, "core", "node", heapsize)
        self.node: fw_node.Node | None = None


class Fleet:
    """N simulated nodes plus impairment relays (see the module docstring).

    Args:
        nodes: how many nodes; ids are first_id, first_id + 1, ... unless node_ids given.
        runtime: "micropython" (one process per node) or "cpython" (in-process).
        bases: static base addresses [(host, port)], sent everything from boot.
        discovery_port: nodes also listen for ANNOUNCEs on this UDP port (None: off).
        rate: readings per second per node (split over the sensors).
        sensors: sensor specs (firmware/config.py); a spec without period_ms gets one
            from `rate`. Default: default_sensors(rate).
        loss, dup, reorder, delay_ms, jitter_ms, impair_status: relay settings; any
            non-zero one puts a relay in front of every static base.
        seed: seeds the relays and the reboot schedule.
        keys: {node_id: hex key}; those nodes sign everything.
        status_every_ms, max_events, batch_ms, float32, host_clock: node.json values
            (float32 defaults to True: readings rounded as on a board).
        workdir: where flash directories go (default: a temporary directory, removed
            by stop() unless keep_workdir).
        reboot_every: seconds between reboots of a random node (None: never).
        heapsize: MicroPython heap per node process.
        extra_config: more node.json keys for every node.
    """

    def __init__(self, nodes: int = 3, *, runtime: str = "micropython",
                 bases: Iterable[tuple[str, int]] = (("127.0.0.1", 5684),),
                 discovery_port: int | None = None, rate: float = 1.0,
                 sensors: list[dict[str, Any]] | None = None,
                 loss: float = 0.0, dup: float = 0.0, reorder: float = 0.0,
                 delay_ms: float = 0.0, jitter_ms: float = 0.0, impair_status: bool = False,
                 seed: int = 0, keys: dict[int, str] | None = None, first_id: int = 1,
                 node_ids: Iterable[int] | None = None, status_every_ms: int = 1000,
                 max_events: int | None = None, batch_ms: int = 0, float32: bool = True,
                 host_clock: bool = True, workdir: str | os.PathLike | None = None,
                 keep_workdir: bool = False, reboot_every: float | None = None,
                 heapsize: str = "256K", extra_config: dict[str, Any] | None = None):
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
        self.runtime = runtime
        self.node_ids = list(node_ids) if node_ids is not None else list(range(first_id, first_id + nodes))
        if len(set(self.node_ids)) != len(self.node_ids):
            raise ValueError("node ids must be unique")
        self.bases = [(str(h), int(p)) for h, p in bases]
        self.discovery_port = discovery_port
        if not self.bases and discovery_port is None:
            raise ValueError("a fleet needs static bases or a discovery port")
        self.rate = rate
        self.sensors = with_rate(sensors, rate) if sensors is not None else default_sensors(rate)
        self.impairment: dict[str, Any] = dict(loss=loss, dup=dup, reorder=reorder, delay_ms=delay_ms,
                                               jitter_ms=jitter_ms, impair_status=impair_status)
        self.use_relays = bool(loss or dup or reorder or delay_ms or jitter_ms)
        self.seed = seed
        self.keys = {int(k): v for k, v in (keys or {}).items()}
        self.status_every_ms = status_every_ms
        self.max_events = max_events
        self.batch_ms = batch_ms
        self.float32 = float32
        self.host_clock = host_clock
        self.extra_config = dict(extra_config or {})
        self.reboot_every = reboot_every
        self.heapsize = heapsize
        self._own_workdir = workdir is None
        self.keep_workdir = keep_workdir
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="starling-fleet-"))
        self.relays: list[Relay] = []
        self.members = {nid: _Member(nid, self.workdir / f"node-{nid}", heapsize)
                        for nid in self.node_ids}
        self.reboots = 0
        self._rng = random.Random(seed)
        self._net: _SharedNet | None = None
        self._driver: asyncio.Task | None = None
        self._rebooter: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None
        self._started = False
        self._stopped = False
        self._t0 = 0.0
        self._t1 = 0.0

    # --- set-up ------------------------------------------------------------------------------
    def node_config(self, node_id: int) -> dict[str, Any]:
        """The node.json a node gets (bases already pointed at relays when started)."""
        targets = [r.address for r in self.relays] if self.use_relays else self.bases
        cfg: dict[str, Any] = {
            "node": node_id, "transport": "udp", "sensors": self.sensors,
            "bases": [[h, p] for h, p in targets],
            "discovery": {"port": self.discovery_port} if self.discovery_port is not None else None,
            "key": self.keys.get(node_id), "status_every_ms": self.status_every_ms,
            "firmware": fw_config.FIRMWARE_VERSION, "batch_ms": self.batch_ms,
            "float32": self.float32, "host_clock": self.host_clock,
        }
        if self.max_events is not None:
            cfg["max_events"] = self.max_events
        cfg.update(self.extra_config)
        fw_config.from_dict(json.loads(json.dumps(cfg)))  # fail here, not in 100 logs
        return cfg

    def flash_dir(self, node_id: int) -> Path:
        return self.members[node_id].flash

    def relay_for(self, base: tuple[str, int]) -> Relay | None:
        """The relay in front of a static base, if impairments are on."""
        for r in self.relays:
            if tuple(r.target) == tuple(base):
                return r
        return None

    async def start(self, boot_timeout: float = 10.0) -> None:
        """Start relays and nodes; return when every node has booted (sockets open,
        first STATUS sent). Raises RuntimeError if a node does not boot in time."""
        if self._started:
            raise RuntimeError("fleet already started")
        if self.runtime != "cpython":
            ensure_fd_limit(len(self.members))
        self._started = True
        self._t0 = time.monotonic()
        if self.use_relays:
            for i, base in enumerate(self.bases):
                relay = Relay(base, seed=self.seed * 1000 + i, **self.impairment)
                await relay.start()
                self.relays.append(relay)
        for m in self.members.values():
            m.flash.mkdir(parents=True, exist_ok=True)
            (m.flash / "node.json").write_text(json.dumps(self.node_config(m.node_id), indent=1))
        if self.runtime == "cpython":
            self._net = _SharedNet()
            self._wake = asyncio.Event()
            loop = asyncio.get_running_loop()
            for i, m in enumerate(self.members.values()):
                self._boot_inprocess(m)
                if i % 32 == 31:
                    await asyncio.sleep(0)  # let relays / an in-process base read
            for port, sock in self._net.rx.items():
                loop.add_reader(sock.fileno(), self._on_discovery, sock)
            self._driver = asyncio.create_task(self._drive())
        else:
            await asyncio.gather(*(m.spawn() for m in self.members.values()))
            await asyncio.gather(*(m.wait_booted(boot_timeout) for m in self.members.values()))
        if self.reboot_every:
            self._rebooter = asyncio.create_task(self._reboot_loop())

    # --- in-process nodes ----------------------------------------------------------------------
    def _boot_inprocess(self, m: _Member) -> None:
        assert self._net is not None
        hal = _InProcessHal(str(m.flash), self._net)
        cfg = fw_config.load(hal)
        node = fw_node.Node(cfg, hal)
        node.boot()
        m.node = node
        if self._wake is not None:
            self._wake.set()

    def _stop_inprocess(self, m: _Member, crash: bool = False) -> None:
        node = m.node
        if node is None:
            return
        m.node = None
        if crash:
            m.collect(crashed=True)
            return
        node.finish()
        rep = node.report()
        (m.flash / "counters.json").write_text(json.dumps({"report": rep}))
        m.boots.append(rep)

    def _on_discovery(self, sock: socket.socket) -> None:
        for _ in range(64):
            try:
                data, addr = sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            now = None
            for m in self.members.values():
                node = m.node
                if node is not None and node.rx is sock:
                    if now is None:
                        now = node.hal.ticks_ms()
                    node.on_datagram(data, addr, now)
        if self._wake is not None:
            self._wake.set()

    async def _drive(self) -> None:
        # one scheduler for every in-process node: a heap of (due ticks, id)
        assert self._wake is not None
        heap: list[tuple[int, int]] = []
        clock = time.monotonic
        while True:
            now = int(clock() * 1000)
            if self._wake.is_set():
                self._wake.clear()
                heap = [(now, nid) for nid, m in self.members.items() if m.node is not None]
                heapq.heapify(heap)
            steps = 0
            while heap and heap[0][0] <= now:
                _, nid = heapq.heappop(heap)
                node = self.members[nid].node
                if node is None or node.done:
                    continue
                delay = node.step(now)
                heapq.heappush(heap, (now + max(delay, 0), nid))
                steps += 1
                if steps % 32 == 0:
                    # let receivers on this loop (relays, an in-process base) read
                    await asyncio.sleep(0)
                    if self._wake.is_set():
                        break
            wait = (heap[0][0] - now) / 1000.0 if heap else 1.0
            if wait > 0:
                try:
                    await asyncio.wait_for(self._wake.wait(), wait)
                except asyncio.TimeoutError:
                    pass
            else:
                await asyncio.sleep(0)

    # --- reboots -----------------------------------------------------------------------------------
    async def reboot(self, node_id: int, crash: bool = False, forget_epoch: bool = False) -> int:
        """Restart one node; its epoch grows. Graceful by default (final STATUS and
        counters kept, summary stays exact); crash=True kills it without warning;
        forget_epoch=True removes its epoch file first, as erasing a board's flash
        does (it boots at epoch 1 again). Returns the node's new epoch."""
        m = self.members[node_id]
        self.reboots += 1
        if self.runtime == "cpython":
            self._stop_inprocess(m, crash)
            if forget_epoch:
                self._forget_epoch(node_id)
            self._boot_inprocess(m)
            assert m.node is not None
            return m.node.epoch
        await m.stop(crash)
        if forget_epoch:
            self._forget_epoch(node_id)
        await m.spawn()
        await m.wait_booted(10.0)
        return m.boot_epoch

    def _forget_epoch(self, node_id: int) -> None:
        try:
            os.remove(self.flash_dir(node_id) / "epoch")
        except FileNotFoundError:
            pass

    async def _reboot_loop(self) -> None:
        assert self.reboot_every
        while True:
            await asyncio.sleep(self.reboot_every)
            await self.reboot(self._rng.choice(self.node_ids))

    # --- stop and results ---------------------------------------------------------------------------
    async def stop(self) -> dict[str, Any]:
        """Stop every node cleanly, drain and close the relays, return summary()."""
        if self._stopped:
            return self.summary()
        self._stopped = True
        if self._rebooter is not None:
            self._rebooter.cancel()
            try:
                await self._rebooter
            except (asyncio.CancelledError, Exception):
                pass
        if self.runtime == "cpython":
            if self._driver is not None:
                self._driver.cancel()
                try:
                    await self._driver
                except asyncio.CancelledError:
                    pass
            for i, m in enumerate(self.members.values()):
                self._stop_inprocess(m)
                if i % 32 == 31:
                    await asyncio.sleep(0)  # let relays / an in-process base read
            if self._net is not None:
                loop = asyncio.get_running_loop()
                for sock in self._net.rx.values():
                    loop.remove_reader(sock.fileno())
                await asyncio.sleep(0)
                self._net.close()
        else:
            await asyncio.gather(*(m.stop() for m in self.members.values()))
            for m in self.members.values():
                m.close_log()
        self._t1 = time.monotonic()
        for r in self.relays:
            await r.drain()
        summary = self.summary()
        for r in self.relays:
            r.close()
        if self._own_workdir and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return summary

    def summary(self) -> dict[str, Any]:
        """Per node: published (from the nodes, all boots), dropped_by_sim and
        duplicated_by_sim (from the relays), boots, epochs, exact; plus totals.

        `since` maps each base id subscribed at the end of a boot to the sum, over
        those boots, of the seqs the node published before that base subscribed
        (0 for static bases, whose ids are "static:HOST:PORT"). So the readings meant
        for a base are published - since[base_id], which equals, at the base,
        received + lost + skipped (a lapsed lease mid-boot is not covered)."""
        nodes: dict[str, Any] = {}
        totals = {"published": 0, "dropped_by_sim": 0, "duplicated_by_sim": 0, "forwarded": 0}
        for nid, m in sorted(self.members.items()):
            boots = list(m.boots)
            if m.node is not None:  # still running in process: live numbers
                boots.append(m.node.report())
            published = sum(b.get("published") or 0 for b in boots)
            entry: dict[str, Any] = {
                "published": published, "dropped_by_sim": 0, "duplicated_by_sim": 0,
                "forwarded": 0, "reordered": 0,
                "boots": len(boots), "epochs": [b.get("epoch") for b in boots],
                "exact": m.exact and (m.proc is None),
                "dropped": sum(b.get("dropped") or 0 for b in boots),
                "rate_shed": sum(b.get("rate_shed") or 0 for b in boots),
                "send_errors": sum(b.get("send_errors") or 0 for b in boots),
                "rx_bad": sum(b.get("rx_bad") or 0 for b in boots),
                "last_seq": boots[-1].get("last_seq") if boots else None,
                "since": {},
            }
            for b in boots:
                for base, since in (b.get("since") or {}).items():
                    entry["since"][base] = entry["since"].get(base, 0) + since
            for r in self.relays:
                s = r.nodes.get(nid)
                if s:
                    for k in ("dropped_by_sim", "duplicated_by_sim", "forwarded", "reordered"):
                        entry[k] += s[k]
            for k in totals:
                totals[k] += entry[k]
            nodes[str(nid)] = entry
        return {
            "runtime": self.runtime, "nodes": nodes, "totals": totals,
            "reboots": self.reboots,
            "duration_s": round((self._t1 or time.monotonic()) - self._t0, 3) if self._t0 else 0.0,
            "bases": ["%s:%d" % b for b in self.bases],
            "discovery_port": self.discovery_port,
            "relays": [r.stats() for r in self.relays],
            "workdir": str(self.workdir),
        }
