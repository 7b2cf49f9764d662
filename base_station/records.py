"""What the base station hands to sinks and subscribers.

A `Block` is the unit of delivery: consecutive, new (never duplicate) readings of one
node's epoch that arrived in one datagram, kept as columns (ts, topics, values, the
lists the decoder produced) so a BATCH of 20..128 readings costs sinks one call and no
per-reading objects. `Reading` is the friendly per-reading record for subscribers,
callbacks and exports; it is built only when someone asks for it.
"""

from __future__ import annotations

from typing import Any, Iterator


class Reading:
    """One reading.

    Attributes:
        node, epoch, seq: identity of the reading (unique per node and boot epoch).
        topic, value: what was measured (int, float, bool, str, bytes or a small map).
        t: milliseconds since the node booted (node clock).
        time: Unix seconds (float) from the node's time base, None while unknown.
        arrival: Unix seconds (float) when the datagram reached the base.
    """

    __slots__ = ("node", "epoch", "seq", "topic", "value", "t", "time", "arrival")

    def __init__(self, node: int, epoch: int, seq: int, topic: str, value: Any, t: int,
                 time: float | None, arrival: float):
        self.node = node
        self.epoch = epoch
        self.seq = seq
        self.topic = topic
        self.value = value
        self.t = t
        self.time = time
        self.arrival = arrival

    def as_dict(self) -> dict:
        return {"node": self.node, "epoch": self.epoch, "seq": self.seq, "topic": self.topic,
                "value": self.value, "t": self.t, "time": self.time, "arrival": self.arrival}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Reading) and self.as_dict() == other.as_dict()

    def __repr__(self) -> str:
        return "Reading(node=%d, epoch=%d, seq=%d, topic=%r, value=%r, t=%d)" % (
            self.node, self.epoch, self.seq, self.topic, self.value, self.t)


class Block:
    """New readings seq0, seq0+1, ... of (node, epoch), delivered together, as columns:
    `ts` (ms since boot), `topics`, `values`, all of the same length. `time_base` is the
    node's Unix ms at uptime 0 for this epoch (None while unknown), so a reading's
    time = (time_base + t) / 1000. Treat the lists as read-only: they are shared.
    """

    __slots__ = ("node", "epoch", "seq0", "ts", "topics", "values", "time_base", "arrival")

    def __init__(self, node: int, epoch: int, seq0: int, ts: list, topics: list, values: list,
                 time_base: int | None, arrival: float):
        self.node = node
        self.epoch = epoch
        self.seq0 = seq0
        self.ts = ts
        self.topics = topics
        self.values = values
        self.time_base = time_base
        self.arrival = arrival

    @classmethod
    def from_readings(cls, node: int, epoch: int, seq0: int, readings: list,
                      time_base: int | None, arrival: float) -> "Block":
        """From a list of (t, topic, value)."""
        return cls(node, epoch, seq0, [r[0] for r in readings], [r[1] for r in readings],
                   [r[2] for r in readings], time_base, arrival)

    def __len__(self) -> int:
        return len(self.ts)

    @property
    def readings(self) -> list:
        """The readings as (t, topic, value) tuples."""
        return list(zip(self.ts, self.topics, self.values))

    def times(self) -> list:
        """Unix seconds per reading (None each while the time base is unknown)."""
        tb = self.time_base
        if tb is None:
            return [None] * len(self.ts)
        return [(tb + t) / 1000.0 for t in self.ts]

    def records(self) -> Iterator[Reading]:
        node, epoch, seq, arrival = self.node, self.epoch, self.seq0, self.arrival
        for t, topic, value, when in zip(self.ts, self.topics, self.values, self.times()):
            yield Reading(node, epoch, seq, topic, value, t, when, arrival)
            seq += 1

    def __repr__(self) -> str:
        return "Block(node=%d, epoch=%d, seq0=%d, n=%d)" % (
            self.node, self.epoch, self.seq0, len(self.ts))
