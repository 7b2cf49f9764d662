"""Datagram bytes -> validated Starling message, fast, for the base station.

Theory of operation
-------------------
`decode(data)` parses one whole datagram with cbor2 (C speed), requires the CBOR item
to fill the datagram exactly (as protocol.cbor.loads does: trailing bytes are an
error), then validates the array. Validation is protocol.messages.from_fields, the one
place for the rules, with one shortcut: EVENT and BATCH, the hot kinds, first go
through `fast_event` / `fast_batch`, which check the same rules with bulk operations
(type sets, min/max, a cache of topics already found valid) and build the message
without a per-reading Python call. A shortcut never decides that something is invalid:
when anything looks unusual (maps, big integers, a topic not seen before, a bad field)
it returns None and from_fields decides and words the error. `event_fields` is the
EVENT shortcut without a message object (the base station's path for single-event
datagrams; fast_event wraps it). tests/test_base_wire.py
checks with random field lists that the shortcuts accept exactly what from_fields
accepts, with equal results.

Every failure is a `DecodeError` (a protocol.messages.ProtocolError) with a short
`reason` used as a counter name: not_cbor, trailing_bytes, bad_version, invalid.
cbor2 decodes a few tags (dates, bignums, ...) that protocol.cbor leaves as Tag
objects; such values fail validation either way, except a bignum tag that fits the
range of a plain integer, which cbor2 turns into an int and we accept.
"""

from __future__ import annotations

import io
import random
from itertools import accumulate
from typing import Any

import cbor2

from protocol import codes
from protocol.messages import (Batch, Event, Message, ProtocolError, from_fields, head)
from protocol.topics import valid_topic

MAX_DEPTH = 16          # nesting accepted, as protocol.cbor.DEFAULT_MAX_DEPTH
_U32 = 4294967295
_U64 = 18446744073709551615
_I_MIN = -_U64 - 1
_MAX_STR = 256          # protocol.messages.MAX_BYTES_VALUE
_MAX_FLAT = 3 * 128     # protocol.messages.MAX_BATCH triples
HEAD_EVENT = _HEAD_EVENT = head(codes.KIND_EVENT)
HEAD_BATCH = _HEAD_BATCH = head(codes.KIND_BATCH)
_TOPIC_CACHE_MAX = 4096

_valid_topics: set[str] = set()   # topics already found valid (bounded, cleared when full)
_NONCE = (1 << 63) | random.getrandbits(63)
_SENTINEL = cbor2.dumps(_NONCE)
_cbor_loads = cbor2.loads


class DecodeError(ProtocolError):
    """A datagram is not a valid Starling message; `reason` names the counter."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def loads(data: bytes) -> Any:
    """Decode exactly one CBOR item filling `data`. Raises DecodeError.

    Fast path: cbor2.loads (which ignores trailing bytes) on the array [data, NONCE]
    built by wrapping the datagram as b"\\x82" + data + encoded NONCE, a random 64-bit
    integer >= 2**63 drawn at start-up. Only when the item fills `data` exactly does
    the second element decode to NONCE: trailing bytes become (or swallow part of) the
    second element, and a truncated item eats into the nonce's 9 bytes so fewer than
    9 are left for it (no shorter encoding, bignum tags included, reaches 2**63).
    Anything else takes the exact path, a stream decoder that reports the offset."""
    try:
        pair = _cbor_loads(b"\x82" + data + _SENTINEL, max_depth=MAX_DEPTH + 1)
        tail = pair[1]
        if tail == _NONCE and type(tail) is int:
            return pair[0]
    except Exception:  # cbor2 raises CBORDecodeError, and ValueError/TypeError on odd input
        pass
    return _loads_exact(data)


def _loads_exact(data: bytes) -> Any:
    fp = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(fp, max_depth=MAX_DEPTH).decode()
    except Exception as e:
        raise DecodeError("not_cbor", "not CBOR: %s" % e) from None
    if fp.tell() != len(data):
        raise DecodeError("trailing_bytes", "%d trailing bytes after the message"
                          % (len(data) - fp.tell()))
    return value


def decode(data: bytes) -> Message:
    """Bytes of one datagram or frame -> message (Unknown for kinds we don't know).
    Raises DecodeError."""
    return decode_fields(loads(data))


def decode_fields(values: Any) -> Message:
    """A decoded CBOR array -> message, with the EVENT/BATCH shortcuts."""
    if type(values) is list and values:
        h = values[0]
        msg: Message | None = None
        if h == _HEAD_BATCH and type(h) is int:
            msg = fast_batch(values)
        elif h == _HEAD_EVENT and type(h) is int:
            msg = fast_event(values)
        if msg is not None:
            return msg
    try:
        return from_fields(values)
    except ProtocolError as e:
        reason = "bad_version" if "version" in str(e) and "unsupported" in str(e) else "invalid"
        raise DecodeError(reason, str(e)) from None
    except Exception as e:  # a validator tripping over an odd type is still the peer's fault
        raise DecodeError("invalid", "invalid message: %r" % (e,)) from None


def encode(msg: Message) -> bytes:
    """Encode a message with cbor2 (the base station's encoder)."""
    return cbor2.dumps(msg.to_fields())


def _topics_ok(topics) -> bool:
    """Every topic (all str) is valid; remembers the valid ones."""
    cache = _valid_topics
    for topic in set(topics):
        if topic not in cache:
            if not valid_topic(topic):
                return False
            if len(cache) >= _TOPIC_CACHE_MAX:
                cache.clear()
            cache.add(topic)
    return True


_SCALARS_SIMPLE = frozenset((float, bool))
_INT_ONLY = {int}
_STR_ONLY = {str}


def _values_ok(values: list) -> bool:
    """True when every value is a scalar reading from_fields accepts (no maps)."""
    types = set(map(type, values))
    if types <= _SCALARS_SIMPLE:
        return True
    for ty in types:
        if ty is int:
            ints = [v for v in values if type(v) is int]
            if min(ints) < _I_MIN or max(ints) > _U64:
                return False
        elif ty is str or ty is bytes:
            if max(len(v) for v in values if type(v) is ty) > _MAX_STR:
                return False
        elif ty is not float and ty is not bool:
            return False
    return True


def event_fields(values: list) -> tuple | None:
    """EVENT shortcut without a message object: (node, epoch, seq, t, topic, value,
    skip, extra) when `values` (a decoded EVENT array, head included) is plainly
    valid, else None (then from_fields decides). The base station's hot path for
    single-event datagrams."""
    n = len(values)
    if n == 7:
        _, node, epoch, seq, t, topic, value = values
        skip = 0
    elif n > 7:
        node, epoch, seq, t, topic, value, skip = values[1:8]
        if type(skip) is not int or not 0 <= skip <= _U64:
            return None
    else:
        return None
    if not (type(node) is int and type(epoch) is int and type(seq) is int and type(t) is int
            and 0 <= node <= _U32 and 0 <= epoch <= _U32 and 0 <= seq <= _U64 and 0 <= t <= _U64
            and type(topic) is str):
        return None
    if topic not in _valid_topics and not _topics_ok((topic,)):
        return None
    ty = type(value)
    if ty is float or ty is bool:
        pass
    elif ty is int:
        if not _I_MIN <= value <= _U64:
            return None
    elif ty is str or ty is bytes:
        if len(value) > _MAX_STR:
            return None
    else:
        return None
    return node, epoch, seq, t, topic, value, skip, (n - 8 if n > 8 else 0)


def fast_event(values: list) -> Event | None:
    """EVENT shortcut: an Event when `values` is plainly valid, else None."""
    f = event_fields(values)
    if f is None:
        return None
    ev = Event(f[0], f[1], f[2], f[3], f[4], f[5], f[6])
    ev.extra = f[7]
    return ev


class FastBatch(Batch):
    """A Batch kept as columns (ts, topics, values) as the shortcut found them;
    `readings` (the list of (t, topic, value) of a Batch) is built on first use."""

    __slots__ = ("ts", "topics", "values", "_readings")

    def __init__(self, node: int, epoch: int, seq0: int, t0: int, ts: list, topics: list,
                 values: list, skip: int):
        self.node = node
        self.epoch = epoch
        self.seq0 = seq0
        self.t0 = t0
        self.ts = ts
        self.topics = topics
        self.values = values
        self.skip = skip
        self.extra = 0
        self._readings: list | None = None

    @property  # type: ignore[override]
    def readings(self) -> list:
        if self._readings is None:
            self._readings = list(zip(self.ts, self.topics, self.values))
        return self._readings


def fast_batch(values: list) -> Batch | None:
    """BATCH shortcut: a FastBatch when `values` is plainly valid, else None."""
    n = len(values)
    if n < 6:
        return None
    node, epoch, seq0, t0, flat = values[1:6]
    if not (type(node) is int and 0 <= node <= _U32 and type(epoch) is int and 0 <= epoch <= _U32
            and type(seq0) is int and 0 <= seq0 <= _U64 and type(t0) is int and 0 <= t0 <= _U64):
        return None
    if type(flat) is not list or not flat or len(flat) > _MAX_FLAT or len(flat) % 3:
        return None
    dts = flat[0::3]
    if set(map(type, dts)) != _INT_ONLY or min(dts) < 0:
        return None
    topics = flat[1::3]
    try:
        known = _valid_topics.issuperset(topics)
    except TypeError:   # an unhashable topic
        return None
    if not known and (set(map(type, topics)) != _STR_ONLY or not _topics_ok(topics)):
        return None
    vals = flat[2::3]
    if not _values_ok(vals):
        return None
    skip = 0
    if n > 6:
        skip = values[6]
        if type(skip) is not int or not 0 <= skip <= _U64:
            return None
    ts = list(accumulate(dts, initial=t0))
    del ts[0]
    if ts[-1] - t0 > _U64 and max(dts) > _U64:   # every dt must be a u64 (rarely checked)
        return None
    b = FastBatch(node, epoch, seq0, t0, ts, topics, vals, skip)
    if n > 7:
        b.extra = n - 7
    return b
