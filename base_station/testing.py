"""A scriptable test node: builds real Starling datagrams (protocol.messages encoded
with cbor2, optionally SIGNED) and sends them over UDP. For tests and benchmarks of
the base station, and for anyone feeding a station by hand.

It does not model a node's subscriber table, rate cap or clock: the caller says which
seq, skip and t each message carries (by default the next seq, skip 0, t = 10 ms per
reading), so tests can produce loss, duplicates, reordering and skips exactly.
"""

from __future__ import annotations

import socket
import time
from typing import Any, Iterable

import cbor2

from protocol import codes
from protocol.auth import Key
from protocol.messages import Batch, Event, Message, Status, head


class TestNode:
    """Args:
        node: node id; epoch: boot epoch; key: a protocol.auth.Key to sign with.
        target: (host, port) for send(); None: build only.
    """

    __test__ = False   # not a pytest test class

    def __init__(self, node: int = 1, epoch: int = 0, key: Key | None = None,
                 target: tuple[str, int] | None = None, time_base: int | None = None):
        self.node = node
        self.epoch = epoch
        self.key = key
        self.target = target
        self.seq = 0
        self.t = 0
        self.time_base = time_base
        self.sock: socket.socket | None = None

    # -- building -----------------------------------------------------------------------
    def wrap(self, msg: Message, key_id: int | None = None) -> bytes:
        data = cbor2.dumps(msg.to_fields())
        if self.key is None:
            return data
        return cbor2.dumps([head(codes.KIND_SIGNED), self.node if key_id is None else key_id,
                            data, self.key.tag(data)])

    def event(self, topic: str = "sensors/1/temp", value: Any = 21.5, seq: int | None = None,
              skip: int = 0, t: int | None = None) -> bytes:
        """An EVENT with the next seq (or `seq`), advancing the node's counters."""
        if seq is None:
            seq = self.seq
        self.seq = max(self.seq, seq + 1)
        if t is None:
            t = self.t = self.t + 10
        return self.wrap(Event(self.node, self.epoch, seq, t, topic, value, skip))

    def batch(self, readings: Iterable[tuple[str, Any]], seq0: int | None = None, skip: int = 0) -> bytes:
        """A BATCH of (topic, value) readings from the next seq (or `seq0`)."""
        if seq0 is None:
            seq0 = self.seq
        rs = []
        for topic, value in readings:
            self.t += 10
            rs.append((self.t, topic, value))
        self.seq = max(self.seq, seq0 + len(rs))
        return self.wrap(Batch(self.node, self.epoch, seq0, rs, skip))

    def status(self, last_seq: int | None | str = "auto", skip: int = 0, since: int = 0,
               counters: dict | None = None, instance: int | None = None) -> bytes:
        """A STATUS; last_seq "auto" = the newest seq built so far; instance: the
        ANNOUNCE instance of the subscription it reports on."""
        if last_seq == "auto":
            last_seq = self.seq - 1 if self.seq else None
        return self.wrap(Status(self.node, self.epoch, last_seq, skip, since, self.t,
                                self.time_base, "test-0.1", codes.CAP_UDP,
                                counters or {codes.CTR_PUBLISHED: self.seq}, None, instance))

    def reboot(self) -> None:
        self.epoch += 1
        self.seq = 0
        self.t = 0

    # -- sending ------------------------------------------------------------------------
    def send(self, *datagrams: bytes) -> None:
        assert self.target is not None, "TestNode has no target"
        if self.sock is None:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for d in datagrams:
            self.sock.sendto(d, self.target)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def now_ms() -> int:
    return int(time.time() * 1000)
