"""A UDP impairment relay: nodes send to the relay, the relay forwards to one base.

The relay sits between unmodified nodes and one base station address and applies,
per datagram and with a seeded RNG (so a run can be repeated):

* loss P: the datagram is not forwarded;
* duplication P: it is forwarded twice;
* reordering P: it is held back and released right after the next datagram is
  forwarded, or after `reorder_hold_ms` if nothing follows;
* delay: a fixed delay plus a uniform jitter in [0, jitter_ms] (jitter alone also
  reorders datagrams that are closer together than the jitter).

It decodes every datagram (cbor2 + protocol.messages.from_fields, unwrapping SIGNED
envelopes without checking their tags) to count, per node, the *readings* it
forwarded, dropped and duplicated: an EVENT is one reading, a BATCH counts its
readings. These counts are what make loss accounting exact in tests: readings the
base received (deduplicated) + `dropped_by_sim` == readings the nodes published.

By default only EVENT and BATCH datagrams are dropped, duplicated or reordered;
STATUS (and any other decodable kind) is forwarded intact and in order with the
fixed delay + jitter only, because STATUS carries the stream bounds the base needs
for exact accounting. `impair_status=True` applies the impairments to them too (and
counts them under `status_dropped` / `status_duplicated`). Datagrams that do not
decode are forwarded untouched and counted as `undecodable`.

What can go wrong: the relay is one-way (node -> base); datagrams arriving from the
base address itself are counted (`from_target`) and discarded. Delivery to the base
is still loopback UDP: if the base's socket buffer overflows the kernel drops
datagrams that the relay counted as forwarded. `drain()` must be awaited before the
counts are final when a delay or reordering is configured.
"""

from __future__ import annotations

import asyncio
import random
import socket
from typing import Any

import cbor2

from protocol import messages


def classify(data: bytes) -> tuple[int | None, str, int]:
    """Return (node id, kind name, readings) of a datagram.

    kind is "event", "batch", "status", "other" or "undecodable"; readings is the
    number of readings it carries (1 for an EVENT, len(readings) for a BATCH, else 0).
    """
    try:
        msg = messages.from_fields(cbor2.loads(data))
        if isinstance(msg, messages.Signed):
            msg = messages.from_fields(cbor2.loads(msg.inner))
    except Exception:  # anything a garbled datagram can make cbor2 or from_fields raise
        return None, "undecodable", 0
    if isinstance(msg, messages.Event):
        return msg.node, "event", 1
    if isinstance(msg, messages.Batch):
        return msg.node, "batch", len(msg.readings)
    if isinstance(msg, messages.Status):
        return msg.node, "status", 0
    return getattr(msg, "node", None), "other", 0


def _node_stats() -> dict[str, int]:
    return {"forwarded": 0, "dropped_by_sim": 0, "duplicated_by_sim": 0, "reordered": 0,
            "status_forwarded": 0, "status_dropped": 0, "status_duplicated": 0}


class Relay:
    """One impairment relay in front of one base address (see the module docstring).

    Args:
        target: (host, port) of the base station.
        loss, dup, reorder: probabilities in [0, 1].
        delay_ms, jitter_ms: every datagram waits delay_ms + uniform(0, jitter_ms).
        seed: RNG seed (same seed, same arrival order of datagrams: same decisions).
        impair_status: also drop/duplicate/reorder STATUS and other kinds.
        listen: (host, port) to bind; port 0 picks a free one (see `address`).
        reorder_hold_ms: longest time a held-back datagram waits for a successor.
    """

    def __init__(self, target: tuple[str, int], *, loss: float = 0.0, dup: float = 0.0,
                 reorder: float = 0.0, delay_ms: float = 0.0, jitter_ms: float = 0.0,
                 seed: int = 0, impair_status: bool = False,
                 listen: tuple[str, int] = ("127.0.0.1", 0), reorder_hold_ms: float = 50.0):
        for name, p in (("loss", loss), ("dup", dup), ("reorder", reorder)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        if delay_ms < 0 or jitter_ms < 0:
            raise ValueError("delay_ms and jitter_ms must be >= 0")
        self.target = target
        self.loss, self.dup, self.reorder = loss, dup, reorder
        self.delay_ms, self.jitter_ms = delay_ms, jitter_ms
        self.impair_status = impair_status
        self.listen = listen
        self.reorder_hold_ms = reorder_hold_ms
        self.rng = random.Random(seed)
        self.nodes: dict[int, dict[str, int]] = {}
        self.undecodable = 0
        self.from_target = 0
        self.datagrams_in = 0
        self.datagrams_out = 0
        self._sock: socket.socket | None = None
        self._address: tuple[str, int] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.send_errors = 0
        self._target_addr: tuple[str, int] | None = None
        self._held: list[bytes] = []
        self._pending = 0
        self._idle: asyncio.Event | None = None

    # --- lifecycle --------------------------------------------------------------------
    async def start(self) -> "Relay":
        loop = asyncio.get_running_loop()
        info = await loop.getaddrinfo(self.target[0], self.target[1], type=socket.SOCK_DGRAM)
        self._target_addr = (str(info[0][4][0]), int(info[0][4][1]))
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            # room for bursts while the event loop is busy elsewhere (capped by the
            # kernel's rmem_max)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            sock.bind(self.listen)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._address = (sock.getsockname()[0], sock.getsockname()[1])
        self._loop = loop
        # a plain reader that empties the socket on every wake-up: asyncio's datagram
        # transport reads one datagram per loop iteration, too few for a fleet's bursts
        loop.add_reader(sock.fileno(), self._read_ready)
        self._idle = asyncio.Event()
        self._idle.set()
        return self

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) nodes should send to."""
        assert self._address is not None, "start() the relay first"
        return self._address

    def _read_ready(self) -> None:
        sock = self._sock
        for _ in range(1024):
            if sock is None:
                return
            try:
                data, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. ECONNREFUSED reported for an earlier send
                continue
            self.datagram_received(data, addr)

    async def drain(self, timeout: float = 5.0, quiet_ms: float = 100.0) -> bool:
        """Wait until datagrams stopped arriving for quiet_ms (so what the nodes sent
        last has been read from the socket) and nothing is delayed or held back any
        more. Returns False on timeout."""
        if self._idle is None:
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        seen = -1
        while loop.time() < deadline:
            if seen == self.datagrams_in:
                if self._held:
                    self._release_held()
                if self._idle.is_set():
                    return True
            seen = self.datagrams_in
            await asyncio.sleep(quiet_ms / 1000.0)
        return False

    def close(self) -> None:
        if self._sock is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    # --- counting -------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        return {"listen": "%s:%d" % self._address if self._address else None,
                "target": "%s:%d" % (self.target[0], self.target[1]),
                "loss": self.loss, "dup": self.dup, "reorder": self.reorder,
                "delay_ms": self.delay_ms, "jitter_ms": self.jitter_ms,
                "impair_status": self.impair_status,
                "datagrams_in": self.datagrams_in, "datagrams_out": self.datagrams_out,
                "undecodable": self.undecodable, "from_target": self.from_target,
                "send_errors": self.send_errors,
                "nodes": {str(k): dict(v) for k, v in sorted(self.nodes.items())}}

    def _stats_for(self, node: int | None) -> dict[str, int]:
        key = -1 if node is None else node
        s = self.nodes.get(key)
        if s is None:
            s = self.nodes[key] = _node_stats()
        return s

    # --- datagrams -------------------------------------------------------------------------
    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self._target_addr is not None and addr[:2] == self._target_addr:
            self.from_target += 1
            return
        self.datagrams_in += 1
        node, kind, readings = classify(data)
        if kind == "undecodable":
            self.undecodable += 1
            self._schedule(data, False)
            return
        stats = self._stats_for(node)
        is_reading = kind in ("event", "batch")
        impair = is_reading or self.impair_status
        rng = self.rng
        if impair and self.loss and rng.random() < self.loss:
            if is_reading:
                stats["dropped_by_sim"] += readings
            else:
                stats["status_dropped"] += 1
            return
        copies = 1
        if impair and self.dup and rng.random() < self.dup:
            copies = 2
            if is_reading:
                stats["duplicated_by_sim"] += readings
            else:
                stats["status_duplicated"] += 1
        if is_reading:
            stats["forwarded"] += readings
        else:
            stats["status_forwarded"] += 1
        for _ in range(copies):
            hold = bool(impair and self.reorder and rng.random() < self.reorder)
            if hold:
                stats["reordered"] += 1
            self._schedule(data, hold)

    def _schedule(self, data: bytes, hold: bool) -> None:
        delay = self.delay_ms
        if self.jitter_ms:
            delay += self.rng.uniform(0.0, self.jitter_ms)
        self._pending += 1
        if self._idle is not None:
            self._idle.clear()
        if delay <= 0:
            self._deliver(data, hold)
        else:
            asyncio.get_running_loop().call_later(delay / 1000.0, self._deliver, data, hold)

    def _deliver(self, data: bytes, hold: bool) -> None:
        if hold:
            self._held.append(data)
            asyncio.get_running_loop().call_later(self.reorder_hold_ms / 1000.0, self._release_one, data)
            return
        self._send(data)
        self._release_held()

    def _release_one(self, data: bytes) -> None:
        # hold timeout: nothing came after it
        for i, d in enumerate(self._held):
            if d is data:
                del self._held[i]
                self._send(d)
                return

    def _release_held(self) -> None:
        held, self._held = self._held, []
        for d in held:
            self._send(d)

    def _send(self, data: bytes) -> None:
        self._pending -= 1
        if self._sock is not None and self._target_addr is not None:
            try:
                self._sock.sendto(data, self._target_addr)
                self.datagrams_out += 1
            except OSError:  # buffer full, base unreachable: lost, and counted here
                self.send_errors += 1
        if self._pending == 0 and self._idle is not None:
            self._idle.set()
