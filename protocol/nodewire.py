# The part of the Starling wire format a UDP node needs, without the rest of
# protocol/messages.py (which imports and re-exports everything here):
#
#   EventWriter    EVENTs written into one preallocated buffer (the publish hot path)
#   StatusWriter   STATUS the same way: byte-identical to messages.Status.encode()
#   announce_fields / parse_announce   ANNOUNCE checked field by field, as a tuple
#   ProtocolError, head
#
# Theory of operation
# -------------------
# A message is one CBOR array [head, field1, ...] (protocol/messages.py). The writers
# keep what never changes (array head, kind, node id, epoch, firmware text, counter
# keys) in their buffer and write only the fields that change, with inline CBOR
# heads (_put_uint) and no bounds checks: each buffer is sized for the largest
# message it can hold. view() hands out a memoryview of the written bytes; one is
# cached per length (a node sends a handful of lengths), so a steady publish
# allocates nothing. Those views alias the buffer: use one before the next write.
#
# Memory: importing this module costs a few KB against ~20 KB for protocol.messages
# (bench/node.py's RAM table); the node needs nothing else of messages unless it signs.
import struct

from protocol import cbor
from protocol.topics import valid_topic, valid_filter

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore
        return x

# protocol/codes.py's values, private here so a node need not keep that module (4 KB)
# in RAM; tests/dual/test_node_wire.py checks they agree
_VERSION = const(1)
_KIND_BITS = const(5)
_KIND_MASK = const(31)
_KIND_EVENT = const(1)
_KIND_STATUS = const(3)
_KIND_ANNOUNCE = const(4)
_MAX_DATAGRAM = const(1400)

_pack_into = struct.pack_into
_MAX_U64 = 18446744073709551615
_MAX_U32 = 4294967295
MAX_TEXT = 64          # firmware version, base id
MAX_FILTERS = 16       # topic filters in one ANNOUNCE
_VIEWS_MAX = 24        # cached memoryviews per writer
_NULL = 0xF6


class ProtocolError(ValueError):
    """A message from a peer is not valid Starling (bad head, field type or range)."""


def head(kind):
    return (_VERSION - 1) * 32 + kind


def _is_int(v):
    # bool is an int on CPython but not on MicroPython: exclude it on both
    return isinstance(v, int) and not isinstance(v, bool)


def _uint(v, what, limit=_MAX_U64):
    if not _is_int(v) or v < 0 or v > limit:
        raise ProtocolError("%s: expected an unsigned integer <= %d, got %r" % (what, limit, v))
    return v


def _opt_uint(v, what, limit=_MAX_U64):
    if v is None:
        return None
    return _uint(v, what, limit)


def _text(v, what, limit=MAX_TEXT):
    if not isinstance(v, str) or len(v) > limit:
        raise ProtocolError("%s: expected text of at most %d characters, got %r" % (what, limit, v))
    return v


def announce_fields(f):
    # The fields of an ANNOUNCE after its head (at least 7) -> (base, host, port,
    # filters, max_rate, lease, wall_ms); raises ProtocolError naming a bad field.
    base = _text(f[0], "ANNOUNCE base")
    if not base:
        raise ProtocolError("ANNOUNCE base: empty base id")
    filters = f[3]
    if not isinstance(filters, (list, tuple)) or len(filters) > MAX_FILTERS:
        raise ProtocolError("ANNOUNCE filters: expected an array of at most %d items" % MAX_FILTERS)
    for pattern in filters:
        if not valid_filter(pattern):
            raise ProtocolError("ANNOUNCE filters: invalid filter %r" % (pattern,))
    return (base, _text(f[1], "ANNOUNCE host"), _uint(f[2], "ANNOUNCE port", 65535),
            list(filters), _uint(f[4], "ANNOUNCE max_rate", _MAX_U32),
            _uint(f[5], "ANNOUNCE lease", 86400), _opt_uint(f[6], "ANNOUNCE wall_ms"))


def parse_announce(data):
    # A received datagram -> announce_fields() tuple, or None for a message of another
    # kind (not checked further: a node acts on ANNOUNCEs only). Raises ProtocolError
    # for anything that is not a Starling message of this version or a bad ANNOUNCE.
    try:
        values = cbor.loads(data)
    except cbor.CBORDecodeError as e:
        raise ProtocolError("not CBOR: %s" % e)
    if not isinstance(values, list) or not values:
        raise ProtocolError("a message is a non-empty CBOR array")
    h = values[0]
    if not _is_int(h) or h < 0:
        raise ProtocolError("message head: expected an unsigned integer, got %r" % (h,))
    version = (h >> _KIND_BITS) + 1
    if version != _VERSION:
        raise ProtocolError("unsupported protocol version %d (this side speaks %d)" % (version, _VERSION))
    if h & _KIND_MASK != _KIND_ANNOUNCE:
        return None
    if len(values) < 8:
        raise ProtocolError("ANNOUNCE: expected at least 7 fields, got %d" % (len(values) - 1))
    return announce_fields(values[1:])


def _put_uint(buf, p, n):
    # an unsigned CBOR head, inline for the hot path (no bounds checks: callers own a
    # buffer sized for the largest message)
    if n < 24:
        buf[p] = n
        return p + 1
    if n < 256:
        buf[p] = 24
        buf[p + 1] = n
        return p + 2
    if n < 65536:
        buf[p] = 25
        buf[p + 1] = n >> 8
        buf[p + 2] = n & 255
        return p + 3
    if n < 4294967296:
        buf[p] = 26
        _pack_into(">I", buf, p + 1, n)
        return p + 5
    buf[p] = 27
    _pack_into(">Q", buf, p + 1, n)
    return p + 9


class _Views:
    # view(): a memoryview of buffer[:length], one cached per length
    def view(self):
        n = self.length
        v = self._views.get(n)
        if v is None:
            v = self._mv[:n]
            if len(self._views) < _VIEWS_MAX:
                self._views[n] = v
        return v


class EventWriter(_Views):
    """Node hot path: EVENTs of one node and boot epoch, written into one preallocated
    buffer. The array head, kind, node and epoch are written once; topics are encoded
    once and cached (up to `max_topics`); a float value is classified without heap.
    Measured heap per event on the MicroPython unix port: 0 bytes for int and float
    readings of a cached topic, view() included (bench/codec.py, bench/node.py)."""

    def __init__(self, node, epoch, size=_MAX_DATAGRAM, max_topics=32):
        self.buffer = bytearray(size)
        self._mv = memoryview(self.buffer)
        self._views = {}
        self.buffer[1] = head(_KIND_EVENT)
        self._start = _put_uint(self.buffer, _put_uint(self.buffer, 2, node), epoch)
        self._topics = {}
        self._max_topics = max_topics
        self._body = 0
        self.length = 0

    def _topic(self, topic):
        if not valid_topic(topic):
            raise ValueError("invalid topic %r" % (topic,))
        tb = cbor.dumps(topic)
        if len(self._topics) < self._max_topics:
            self._topics[topic] = tb
        return tb

    def event(self, seq, t, topic, value, skip=0):
        """Write one EVENT; return its length (the bytes are view())."""
        tb = self._topics.get(topic)
        if tb is None:
            tb = self._topic(topic)
        self.body(seq, t, tb, value)
        return self.set_skip(skip)

    def body(self, seq, t, tb, value):
        """Write an EVENT without skip, its topic already encoded (`tb`, CBOR text);
        return its length. set_skip() then gives the same body another skip."""
        buf = self.buffer
        buf[0] = 0x87
        p = _put_uint(buf, _put_uint(buf, self._start, seq), t)
        e = p + len(tb)
        self._mv[p:e] = tb
        if type(value) is float:
            # fast path: a normal value exact in half precision (most sensor readings:
            # 21.5, 0.25, 1013.0), read off its double bits; everything else (single,
            # double, subnormal, inf, NaN) goes to the codec's general writer
            _pack_into(">d", buf, e + 1, value)
            ex = (((buf[e + 1] & 0x7F) << 4) | (buf[e + 2] >> 4)) - 1008  # half's biased exponent
            if 0 < ex < 31 and not ((buf[e + 3] & 3) | buf[e + 4] | buf[e + 5] | buf[e + 6]
                                    | buf[e + 7] | buf[e + 8]):
                h = (ex << 10) | ((buf[e + 2] & 15) << 6) | (buf[e + 3] >> 2)
                buf[e] = 0xF9
                buf[e + 1] = (buf[e + 1] & 0x80) | (h >> 8)
                buf[e + 2] = h & 255
                p = e + 3
            else:
                p = cbor.write_float(buf, e, value)
        else:
            p = cbor.dumps_into(buf, value, e)
        self._body = p
        self.length = p
        return p

    def set_skip(self, skip):
        """The last body() with this skip (0: none); returns the length."""
        p = self._body
        if skip:
            self.buffer[0] = 0x88
            p = _put_uint(self.buffer, p, skip)
        else:
            self.buffer[0] = 0x87
        self.length = p
        return p


class StatusWriter(_Views):
    """STATUS of one node into one preallocated buffer, byte-identical to
    messages.Status(...).encode() with `keys` as the counter map's keys (any order
    given; written in CBOR's canonical order, ascending). status() takes the counter
    values as a list in the order of `self.keys` (sorted), so a node fills one list
    in place instead of building a dict per STATUS."""

    def __init__(self, node, firmware, keys):
        ks = sorted(keys)
        if len(ks) > 23:
            raise ValueError("STATUS: at most 23 counters")
        for k in ks:
            if not 0 <= k < 24:   # one-byte keys: every CTR_* code
                raise ValueError("STATUS counter key %r: expected 0..23" % (k,))
        self.keys = ks
        self._fw = cbor.dumps(firmware)
        # head 2, node 5, epoch 5, 5 uints of 9, firmware, caps 9, map 1 + 10 per entry, hop 2
        size = 2 + 5 + 5 + 45 + len(self._fw) + 9 + 1 + 10 * len(ks) + 2 + 9
        self.buffer = bytearray(size)
        self._mv = memoryview(self.buffer)
        self._views = {}
        self.buffer[1] = head(_KIND_STATUS)
        self._start = _put_uint(self.buffer, 2, node)
        self.length = 0

    def status(self, epoch, last_seq, skip, since, uptime, time_base, caps, values, hop=None):
        """Write one STATUS; return its length (the bytes are view())."""
        buf = self.buffer
        buf[0] = 0x8B if hop is None else 0x8C
        p = _put_uint(buf, self._start, epoch)
        if last_seq is None:
            buf[p] = _NULL
            p += 1
        else:
            p = _put_uint(buf, p, last_seq)
        p = _put_uint(buf, _put_uint(buf, _put_uint(buf, p, skip), since), uptime)
        if time_base is None:
            buf[p] = _NULL
            p += 1
        else:
            p = _put_uint(buf, p, time_base)
        e = p + len(self._fw)
        self._mv[p:e] = self._fw
        p = _put_uint(buf, e, caps)
        ks = self.keys
        n = len(ks)
        buf[p] = 0xA0 | n   # map head: at most 23 entries
        p += 1
        for i in range(n):
            buf[p] = ks[i]
            p = _put_uint(buf, p + 1, values[i])
        if hop is not None:
            p = _put_uint(buf, p, hop)
        self.length = p
        return p
