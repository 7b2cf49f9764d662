# The part of the Starling wire format a UDP node needs, without the rest of
# protocol/messages.py (which imports and re-exports everything here):
#
#   EventWriter    EVENTs written into one preallocated buffer (the publish hot path)
#   BatchWriter    BATCHes the same way: byte-identical to messages.Batch's encoding
#   StatusWriter   STATUS the same way: byte-identical to messages.Status.encode()
#   announce_fields  ANNOUNCE checked field by field, as a tuple (protocol/cbor_lite.py
#                  reads it from a datagram: parse_announce)
#   deadletter     a DEADLETTER's bytes: byte-identical to messages.DeadLetter's encoding
#   text           a str as CBOR text (topics, at boot)
#   ProtocolError, EncodeError, head
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
# Values (write_value): int (64-bit heads, either sign), float (the shortest of half,
# single, double that holds it exactly, NaN as f97e00), bool, null, text, bytes, and
# maps with text keys and such scalar values (the EVENT value of docs/PROTOCOL.md:
# keys in canonical order, length first). That is every value a sensor publishes, so
# a UDP node never imports protocol.cbor; anything else (arrays, nested maps, other
# keys: a chain node's application may publish them) goes to cbor.dumps_into,
# imported on first use. The output is the same bytes as protocol.cbor's.
#
# Reading: protocol/cbor_lite.py (parse_announce; parse_control and event_ids for a
# serial chain node). It is a module of its own because the publish path here looks
# up module-level names on every call, and on MicroPython that got slower with more
# of them: the same EventWriter.body with 20 more functions in this module took
# ~0.5 us longer per EVENT, and a single name more (a function or a constant) past
# this module's count ~0.1 us of its ~1.9 us (unix port, measured): deadletter came
# in with `struct` going out.
#
# Memory: importing this module costs ~11 KB from .mpy files (~6 KB from ROMFS) on
# the 64-bit unix port, against ~24 KB for protocol.messages and ~20 KB for
# protocol.cbor (bench/node.py's RAM table); a UDP node needs neither unless it signs
# (protocol.auth).
# pack_into only, not `struct`: one module-level name fewer (see Reading above)
from struct import pack_into as _pack_into

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
_KIND_BATCH = const(2)
_KIND_STATUS = const(3)
_KIND_ANNOUNCE = const(4)
_KIND_DEADLETTER = const(9)
_MAX_DATAGRAM = const(1400)
_ROOM = const(16)    # write_value's room after its start (fixed-size items unchecked)

_MAX_U64 = 18446744073709551615
_MAX_U32 = 4294967295
_MIN_N64 = -18446744073709551616   # the most negative int a CBOR head carries
MAX_TEXT = 64          # firmware version, base id
MAX_FILTERS = 16       # topic filters in one ANNOUNCE
_VIEWS_MAX = const(24)  # cached memoryviews per writer
_NULL = const(0xF6)


class ProtocolError(ValueError):
    """A message from a peer is not valid Starling (bad head, field type or range)."""


class EncodeError(ValueError):
    """A value the wire format cannot carry (an int beyond 64 bits), or a message that
    does not fit its writer's buffer."""


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
    # filters, max_rate, lease, wall_ms, instance); instance None when there are only 7
    # or the 8th is null. Raises ProtocolError naming a bad field.
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
            _uint(f[5], "ANNOUNCE lease", 86400), _opt_uint(f[6], "ANNOUNCE wall_ms"),
            _opt_uint(f[7], "ANNOUNCE instance", _MAX_U32) if len(f) > 7 else None)


def deadletter(node, count, ids):
    """[9, node, count, [[epoch, seq], ...]] as bytes, byte-identical to
    messages.DeadLetter(node, count, ids).encode(); ids: at most 64 (epoch, seq) pairs.
    Allocates a bytearray for the longest such message (22 + 19 per id) and the
    result. EncodeError: more ids, an int beyond 64 bits."""
    n = len(ids)
    if n > 64:
        raise EncodeError("DEADLETTER: at most 64 ids, got %d" % n)
    buf = bytearray(22 + 19 * n)   # heads of at most 9 bytes, the ids' array head 2
    buf[0] = 0x84
    buf[1] = head(_KIND_DEADLETTER)
    p = _put_int(buf, _put_int(buf, 2, node), count)
    n = _put_uint(buf, p, n)
    buf[p] |= 0x80
    for e in ids:
        buf[n] = 0x82
        n = _put_int(buf, _put_int(buf, n + 1, e[0]), e[1])
    return bytes(memoryview(buf)[:n])


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


# --- writing values ---------------------------------------------------------------------
# write_value(buf, p, v) -> end, like protocol.cbor.dumps_into(buf, v, p) and the same
# bytes. Fixed-size items are written without bounds checks: write_value needs 16
# bytes of room after p (EncodeError otherwise), and a message writer keeps that much
# spare after its limit; strings are checked against the buffer's end.


def text(s):
    """s (str) as CBOR text: topics and the firmware version, encoded once."""
    b = s.encode()
    buf = bytearray(len(b) + 9)
    return bytes(buf[:_put_str(buf, 0, b, 0x60)])


def write_value(buf, p, v):
    """v at buf[p]; returns the end (EncodeError: it does not fit, or an int beyond
    64 bits). Arrays, nested maps and other keys: protocol.cbor, imported here."""
    if p + _ROOM > len(buf):
        raise EncodeError("buffer full at offset %d" % p)
    t = type(v)
    if t is int:
        if 0 <= v < 4294967296:   # no big-int comparison on the common path
            return _put_uint(buf, p, v)
        return _put_int(buf, p, v)
    if t is float:
        return _put_float(buf, p, v)
    if t is bool or v is None:
        buf[p] = _NULL if v is None else 0xF5 if v else 0xF4
        return p + 1
    if t is str:
        return _put_str(buf, p, v.encode(), 0x60)
    if t is bytes or t is bytearray:
        return _put_str(buf, p, v, 0x40)
    if t is dict and _scalar_map(v):
        return _put_map(buf, p, v)
    from protocol import cbor   # not a value a sensor publishes: the generic encoder
    return cbor.dumps_into(buf, v, p)


def _put_int(buf, p, n):
    if n < 0:
        if n < _MIN_N64:
            raise EncodeError("%d does not fit in a 64-bit head" % n)
        q = _put_uint(buf, p, -1 - n)
        buf[p] |= 0x20
        return q
    if n > _MAX_U64:
        raise EncodeError("%d does not fit in a 64-bit head" % n)
    return _put_uint(buf, p, n)


def _put_str(buf, p, b, mt):
    # a text (mt 0x60) or byte (0x40) string of the bytes b
    q = _put_uint(buf, p, len(b))
    buf[p] |= mt
    p = q + len(b)
    if p > len(buf):
        raise EncodeError("%d bytes: does not fit" % p)
    buf[q:p] = b
    return p


def _put_float(buf, p, x):
    # the shortest exact form (half, single, double), as protocol.cbor's _float: the
    # double's bits go to buf[p+1..p+8] and are classified byte by byte (small ints
    # only); x is reused for the top 23 mantissa bits (small frames: no heap per call)
    _pack_into(">d", buf, p + 1, x)
    x = ((buf[p + 1] & 0x7F) << 4) | (buf[p + 2] >> 4)   # biased exponent
    if x == 0 or x == 0x7FF or (buf[p + 5] & 0x1F) | buf[p + 6] | buf[p + 7] | buf[p + 8]:
        return _float_other(buf, p, x)
    return _float_short(buf, p, x - 1023, ((buf[p + 2] & 15) << 19) | (buf[p + 3] << 11)
                        | (buf[p + 4] << 3) | (buf[p + 5] >> 5))


def _float_short(buf, p, ex, m):
    # a normal double with at most 23 mantissa bits m and unbiased exponent ex
    if m & 0x1FFF == 0 and -24 <= ex <= 15:   # at most 10 mantissa bits, half's range
        if ex >= -14:
            h = ((ex + 15) << 10) | (m >> 13)
        else:   # half subnormal: exact if no bit is shifted out
            h = 1024 | (m >> 13)
            h = -1 if h & ((1 << (-14 - ex)) - 1) else h >> (-14 - ex)
        if h >= 0:
            buf[p] = 0xF9
            buf[p + 1] = (buf[p + 1] & 0x80) | (h >> 8)
            buf[p + 2] = h & 255
            return p + 3
    if -126 <= ex <= 127:
        ex += 127
        buf[p + 1] = (buf[p + 1] & 0x80) | (ex >> 1)
        buf[p + 2] = ((ex & 1) << 7) | (m >> 16)
    elif -149 <= ex < -126 and (m | 0x800000) & ((1 << (-126 - ex)) - 1) == 0:
        m = (m | 0x800000) >> (-126 - ex)   # single subnormal, exact
        buf[p + 1] &= 0x80
        buf[p + 2] = m >> 16
    else:
        buf[p] = 0xFB
        return p + 9
    buf[p] = 0xFA
    buf[p + 3] = (m >> 8) & 255
    buf[p + 4] = m & 255
    return p + 5


def _float_other(buf, p, e):
    # ±0, inf, NaN (f97e00: payload and sign dropped) as half; the rest as double
    s = buf[p + 1] & 0x80
    m = (buf[p + 2] & 15) | buf[p + 3] | buf[p + 4] | buf[p + 5] | buf[p + 6] \
        | buf[p + 7] | buf[p + 8]
    if e == 0x7FF:
        s = 0x7E if m else s | 0x7C
    elif e or m:
        buf[p] = 0xFB
        return p + 9
    buf[p] = 0xF9
    buf[p + 1] = s
    buf[p + 2] = 0
    return p + 3


def _scalar_map(m):
    # an EVENT map value: at most 23 text keys, scalar values (bool, None included)
    if len(m) > 23:
        return False
    for k in m:
        t = type(m[k])
        if type(k) is not str or not (t is int or t is float or t is str or t is bool
                                      or t is bytes or t is bytearray or m[k] is None):
            return False
    return True


def _put_map(buf, p, m):
    # keys in canonical order (encoded length, then bytes: for text keys, UTF-8 length
    # then UTF-8 bytes, which is code point order)
    ks = []
    for k in m:
        b = k.encode()
        ks.append((len(b), b, k))
    ks.sort()
    buf[p] = 0xA0 | len(ks)
    p += 1
    for e in ks:
        if p + _ROOM > len(buf):
            raise EncodeError("buffer full at offset %d" % p)
        p = write_value(buf, _put_str(buf, p, e[1], 0x60), m[e[2]])
    return p


class _Views:
    # view(): a memoryview of buffer[:length], one cached per length
    def view(self):
        n = self.length
        v = self._views.get(n)
        if v is None:
            v = self._mv[:n]
            if len(self._views) >= _VIEWS_MAX:
                # lengths of the first minutes (seq and t heads still growing) must not
                # hold the slots for good: start over and settle on today's lengths
                self._views.clear()
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
        tb = text(topic)
        if len(self._topics) < self._max_topics:
            self._topics[topic] = tb
        return tb

    def event(self, seq, t, topic, value, skip=0):
        """Write one EVENT; return its length (the bytes are view())."""
        tb = self._topics.get(topic)
        if tb is None:
            tb = self._topic(topic)
        p = self.body(seq, t, tb, value)
        if skip:
            return self.set_skip(skip)
        return p   # body() wrote the no-skip head and length

    def body(self, seq, t, tb, value):
        """Write an EVENT without skip, its topic already encoded (`tb`, CBOR text);
        return its length. set_skip() then gives the same body another skip."""
        buf = self.buffer
        buf[0] = 0x87
        s = self._start
        if 65536 <= t < 4294967296 and 256 <= seq < 4294967296:
            # the steady state (a minute after boot, past the 256th event): both heads
            # in one call, uint16 or uint32 seq then uint32 t
            if seq < 65536:
                _pack_into(">BHBI", buf, s, 25, seq, 26, t)
                p = s + 8
            else:
                _pack_into(">BIBI", buf, s, 26, seq, 26, t)
                p = s + 10
        else:
            p = _put_uint(buf, _put_uint(buf, s, seq), t)
        e = p + len(tb)
        self._mv[p:e] = tb
        if type(value) is float:
            # fast path: a normal value exact in half precision (most sensor readings:
            # 21.5, 0.25, 1013.0), read off its double bits; everything else (single,
            # double, subnormal, inf, NaN) goes to the general writer
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
                p = _put_float(buf, e, value)
        elif type(value) is int and value >= 0 and value < 4294967296:
            p = _put_uint(buf, e, value)   # the common int reading: no further dispatch
        else:
            p = write_value(buf, e, value)
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


class BatchWriter(_Views):
    """BATCHes of one node and boot epoch, written into one preallocated buffer:
    [2, node, epoch, seq0, t0, [dt, topic, value, ...], ?skip], byte-identical to
    messages.Batch's encoding. begin(), add() per reading (its topic already encoded,
    as for EventWriter.body), end() -> length, the bytes are view(). A BATCH longer
    than `size` raises EncodeError (from add() or end()); so does a value that cannot
    be written: the caller splits the run or drops the reading."""

    def __init__(self, node, epoch, size=_MAX_DATAGRAM):
        self.limit = size
        self.buffer = bytearray(size + _ROOM + 9)   # room for the item after the limit
        self._mv = memoryview(self.buffer)
        self._views = {}
        self.buffer[1] = head(_KIND_BATCH)
        self._start = _put_uint(self.buffer, _put_uint(self.buffer, 2, node), epoch)
        self._skip = 0
        self._prev = 0
        self.length = 0

    def begin(self, seq0, t0, n, skip=0):
        """Start a BATCH of n readings from seq0, the first taken at t0."""
        self.buffer[0] = 0x87 if skip else 0x86
        self._skip = skip
        self._prev = t0
        skip = _put_uint(self.buffer, _put_uint(self.buffer, self._start, seq0), t0)
        self.length = _put_uint(self.buffer, skip, 3 * n)
        self.buffer[skip] |= 0x80        # the readings' array head
        # (locals reused: frames of at most 11 words stay off MicroPython's heap)

    def add(self, t, tb, value):
        """One reading: its time t (>= the previous one's), topic `tb` (CBOR text)."""
        p = _put_uint(self.buffer, self.length, t - self._prev)
        self._prev = t
        t = p + len(tb)
        if t > self.limit:
            raise EncodeError("BATCH over %d bytes" % self.limit)
        self._mv[p:t] = tb
        p = write_value(self.buffer, t, value)
        if p > self.limit:
            raise EncodeError("BATCH over %d bytes" % self.limit)
        self.length = p

    def end(self):
        """Close the BATCH (its skip); returns its length."""
        p = self.length
        if self._skip:
            p = _put_uint(self.buffer, p, self._skip)
            if p > self.limit:
                raise EncodeError("BATCH over %d bytes" % self.limit)
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
        self._fw = text(firmware)
        # head 2, node 5, epoch 5, 5 uints of 9, firmware, caps 9, map 1 + 10 per entry,
        # hop 2, instance 5
        size = 2 + 5 + 5 + 45 + len(self._fw) + 9 + 1 + 10 * len(ks) + 2 + 5 + 9
        self.buffer = bytearray(size)
        self._mv = memoryview(self.buffer)
        self._views = {}
        self.buffer[1] = head(_KIND_STATUS)
        self._start = _put_uint(self.buffer, 2, node)
        self.length = 0

    def status(self, epoch, last_seq, skip, since, uptime, time_base, caps, values, hop=None,
               instance=None):
        """Write one STATUS; return its length (the bytes are view())."""
        buf = self.buffer
        buf[0] = 0x8D if instance is not None else 0x8B if hop is None else 0x8C
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
        if instance is not None:
            if hop is None:
                buf[p] = _NULL
                p += 1
            else:
                p = _put_uint(buf, p, hop)
            p = _put_uint(buf, p, instance)
        elif hop is not None:
            p = _put_uint(buf, p, hop)
        self.length = p
        return p
