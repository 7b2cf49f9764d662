# Starling messages: the kinds in protocol/codes.py as plain objects, their CBOR
# field layout, and validation of everything that arrives from a peer.
#
# Theory of operation
# -------------------
# A message is one CBOR array: [head, field1, field2, ...] with
# head = (version - 1) * 32 + kind. `from_fields()` takes the decoded array (from
# protocol.cbor on a node, from cbor2 on the base station) and returns a message
# object, checking every field's type and range: a bad field raises ProtocolError
# naming the kind and the field. Fields after the ones this version knows are
# counted in `msg.extra` and ignored; a kind this version does not know comes back
# as `Unknown` so receivers can count and skip it. Optional trailing fields (the
# `skip` of EVENT and BATCH) are omitted on the wire when they hold their default,
# which keeps a single float reading at 20 bytes or less.
#
# Times are integers: `t` is milliseconds since the node booted (never a float, so
# single-precision boards lose nothing), and STATUS carries `time_base`, the Unix
# time in milliseconds at uptime 0 once the node has learned it, so the base turns
# any `t` of that boot epoch into wall-clock time.
from protocol import cbor
from protocol import codes
from protocol.topics import valid_topic
# the node's part of the wire format (EventWriter, StatusWriter, ANNOUNCE checks) lives
# in protocol/nodewire.py so a node can import it alone; re-exported here
from protocol.nodewire import (ProtocolError, head, _is_int, _uint, _opt_uint, _text,  # noqa: F401
                               announce_fields, EventWriter, StatusWriter, MAX_TEXT, MAX_FILTERS)

_MAX_U64 = 18446744073709551615
_MAX_U32 = 4294967295
MAX_BYTES_VALUE = 256  # a byte-string reading
MAX_MAP_VALUE = 16     # entries in a map reading
MAX_BATCH = 128        # readings in one BATCH


def _kind_name(kind):
    return KIND_NAMES.get(kind, "kind %d" % kind)


def _topic(v, what):
    if not valid_topic(v):
        raise ProtocolError("%s: invalid topic %r" % (what, v))
    return v


def _scalar_ok(v):
    if isinstance(v, bool) or _is_int(v):
        return True if isinstance(v, bool) else -_MAX_U64 - 1 <= v <= _MAX_U64
    if isinstance(v, float):
        return True
    if isinstance(v, str):
        return len(v) <= MAX_BYTES_VALUE
    if isinstance(v, (bytes, bytearray)):
        return len(v) <= MAX_BYTES_VALUE
    return False


def check_value(v, what="value"):
    """A reading's value: int, float, bool, text, bytes, or a small map of those."""
    if _scalar_ok(v):
        return v
    if isinstance(v, dict) and len(v) <= MAX_MAP_VALUE:
        for k in v:
            if not (isinstance(k, str) and 0 < len(k) <= MAX_TEXT) or not _scalar_ok(v[k]):
                raise ProtocolError("%s: map readings hold text keys and scalar values, got %r: %r" % (what, k, v[k]))
        return v
    raise ProtocolError("%s: unsupported reading value %r" % (what, v))


def _array(v, what, limit):
    if not isinstance(v, (list, tuple)) or len(v) > limit:
        raise ProtocolError("%s: expected an array of at most %d items" % (what, limit))
    return v


class Message:
    __slots__ = ("extra",)
    kind = 0
    # names of the fields after the head, in wire order; the trailing `optional`
    # ones may be missing (default value) on the wire
    fields = ()  # type: tuple
    optional = 0

    def to_fields(self):
        out = [head(self.kind)]
        for name in self.fields:
            out.append(getattr(self, name))
        # drop trailing optional fields that hold their default
        drop = 0
        while drop < self.optional:
            name = self.fields[len(self.fields) - 1 - drop]
            if getattr(self, name) != self.defaults()[name]:
                break
            drop += 1
        if drop:
            out = out[: len(out) - drop]
        return out

    def defaults(self):
        return {}

    def encode(self):
        return cbor.dumps(self.to_fields())

    def __eq__(self, other):
        if type(other) is not type(self):
            return False
        for name in self.fields:
            if getattr(self, name) != getattr(other, name):
                return False
        return True

    def __repr__(self):
        parts = []
        for name in self.fields:
            parts.append("%s=%r" % (name, getattr(self, name)))
        return "%s(%s)" % (type(self).__name__, ", ".join(parts))


class Event(Message):
    """One reading. `skip` counts this node's sequence numbers just before `seq`
    that were deliberately not sent to this receiver (topic filter or rate cap)."""
    __slots__ = ("node", "epoch", "seq", "t", "topic", "value", "skip")
    kind = codes.KIND_EVENT
    fields = ("node", "epoch", "seq", "t", "topic", "value", "skip")
    optional = 1

    def __init__(self, node, epoch, seq, t, topic, value, skip=0):
        self.node = node
        self.epoch = epoch
        self.seq = seq
        self.t = t
        self.topic = topic
        self.value = value
        self.skip = skip
        self.extra = 0

    def defaults(self):
        return {"skip": 0}

    @classmethod
    def _from(cls, f):
        return cls(
            _uint(f[0], "EVENT node", _MAX_U32),
            _uint(f[1], "EVENT epoch", _MAX_U32),
            _uint(f[2], "EVENT seq"),
            _uint(f[3], "EVENT t"),
            _topic(f[4], "EVENT topic"),
            check_value(f[5], "EVENT value"),
            _uint(f[6], "EVENT skip") if len(f) > 6 else 0,
        )


class Batch(Message):
    """Readings with consecutive sequence numbers seq0, seq0+1, ...; `readings` is a
    list of (t, topic, value) and goes on the wire flattened as [dt, topic, value]*
    where dt is the time since the previous reading (the first one's since t0)."""
    __slots__ = ("node", "epoch", "seq0", "t0", "readings", "skip")
    kind = codes.KIND_BATCH
    fields = ("node", "epoch", "seq0", "t0", "readings", "skip")
    optional = 1

    def __init__(self, node, epoch, seq0, readings, skip=0, t0=None):
        self.node = node
        self.epoch = epoch
        self.seq0 = seq0
        self.readings = readings
        self.t0 = t0 if t0 is not None else (readings[0][0] if readings else 0)
        self.skip = skip
        self.extra = 0

    def defaults(self):
        return {"skip": 0}

    def to_fields(self):
        flat = []
        prev = self.t0
        for reading in self.readings:
            t = reading[0]
            if t < prev:
                raise ProtocolError("BATCH readings must be in time order")
            flat.append(t - prev)
            flat.append(reading[1])
            flat.append(reading[2])
            prev = t
        out = [head(self.kind), self.node, self.epoch, self.seq0, self.t0, flat]
        if self.skip:
            out.append(self.skip)
        return out

    def __eq__(self, other):
        return (type(other) is Batch and self.node == other.node and self.epoch == other.epoch
                and self.seq0 == other.seq0 and self.skip == other.skip
                and [tuple(r) for r in self.readings] == [tuple(r) for r in other.readings])

    def events(self):
        """The readings as Event objects (the first carries the batch's skip)."""
        out = []
        seq = self.seq0
        skip = self.skip
        for t, topic, value in self.readings:
            out.append(Event(self.node, self.epoch, seq, t, topic, value, skip))
            seq += 1
            skip = 0
        return out

    @classmethod
    def _from(cls, f):
        node = _uint(f[0], "BATCH node", _MAX_U32)
        epoch = _uint(f[1], "BATCH epoch", _MAX_U32)
        seq0 = _uint(f[2], "BATCH seq0")
        t0 = _uint(f[3], "BATCH t0")
        flat = _array(f[4], "BATCH readings", 3 * MAX_BATCH)
        if len(flat) % 3 or not flat:
            raise ProtocolError("BATCH readings: expected 1..%d [dt, topic, value] triples, got %d items" % (MAX_BATCH, len(flat)))
        readings = []
        t = t0
        for i in range(0, len(flat), 3):
            t += _uint(flat[i], "BATCH reading %d dt" % (i // 3))
            readings.append((t, _topic(flat[i + 1], "BATCH reading %d topic" % (i // 3)),
                             check_value(flat[i + 2], "BATCH reading %d value" % (i // 3))))
        skip = _uint(f[5], "BATCH skip") if len(f) > 5 else 0
        return cls(node, epoch, seq0, readings, skip, t0)


class Status(Message):
    """Node health and stream bounds for this receiver. `last_seq` is the newest
    sequence number published in this epoch (None before the first), `skip` how
    many of the newest ones were not for this receiver, and `since` the first
    sequence number of this receiver's subscription (0 when it existed from boot),
    so a base knows exactly which sequence numbers it should have received, trailing
    ones included. `hop` is the node's position on a serial chain (None over UDP);
    `instance` the ANNOUNCE instance of the subscription this STATUS reports on (None:
    a static base, a chain, or a base that gave none)."""
    __slots__ = ("node", "epoch", "last_seq", "skip", "since", "uptime", "time_base",
                 "firmware", "caps", "counters", "hop", "instance")
    kind = codes.KIND_STATUS
    fields = ("node", "epoch", "last_seq", "skip", "since", "uptime", "time_base",
              "firmware", "caps", "counters", "hop", "instance")
    optional = 2

    def __init__(self, node, epoch, last_seq, skip, since, uptime, time_base, firmware,
                 caps, counters, hop=None, instance=None):
        self.node = node
        self.epoch = epoch
        self.last_seq = last_seq
        self.skip = skip
        self.since = since
        self.uptime = uptime
        self.time_base = time_base
        self.firmware = firmware
        self.caps = caps
        self.counters = counters
        self.hop = hop
        self.instance = instance
        self.extra = 0

    def defaults(self):
        return {"hop": None, "instance": None}

    @classmethod
    def _from(cls, f):
        counters = f[9]
        if not isinstance(counters, dict) or len(counters) > 64:
            raise ProtocolError("STATUS counters: expected a map of at most 64 entries")
        for k in counters:
            _uint(k, "STATUS counter key", 65535)
            _uint(counters[k], "STATUS counter %r" % (k,))
        return cls(
            _uint(f[0], "STATUS node", _MAX_U32),
            _uint(f[1], "STATUS epoch", _MAX_U32),
            _opt_uint(f[2], "STATUS last_seq"),
            _uint(f[3], "STATUS skip"),
            _uint(f[4], "STATUS since"),
            _uint(f[5], "STATUS uptime"),
            _opt_uint(f[6], "STATUS time_base"),
            _text(f[7], "STATUS firmware"),
            _uint(f[8], "STATUS caps"),
            counters,
            _opt_uint(f[10], "STATUS hop", 255) if len(f) > 10 else None,
            _opt_uint(f[11], "STATUS instance", _MAX_U32) if len(f) > 11 else None,
        )


class Announce(Message):
    """A base station: send events matching `filters` to host:port (host "" means
    the address this ANNOUNCE came from), at most `max_rate` events/s (0: no cap),
    for `lease` seconds; `wall_ms` is the base's Unix time in ms (None if unknown);
    `instance` a number the base process picked when it started (None: not given), so
    a node tells a restarted base from the one it subscribed before."""
    __slots__ = ("base", "host", "port", "filters", "max_rate", "lease", "wall_ms", "instance")
    kind = codes.KIND_ANNOUNCE
    fields = ("base", "host", "port", "filters", "max_rate", "lease", "wall_ms", "instance")
    optional = 1

    def __init__(self, base, host, port, filters, max_rate, lease, wall_ms, instance=None):
        self.base = base
        self.host = host
        self.port = port
        self.filters = filters
        self.max_rate = max_rate
        self.lease = lease
        self.wall_ms = wall_ms
        self.instance = instance
        self.extra = 0

    def defaults(self):
        return {"instance": None}

    @classmethod
    def _from(cls, f):
        return cls(*announce_fields(f))


class Ack(Message):
    """Serial link acknowledgement: every link sequence number below `cumulative`
    arrived; bit i of `sack` says cumulative + 1 + i arrived too; `window` is how
    many more frames the receiver can take."""
    __slots__ = ("cumulative", "sack", "window")
    kind = codes.KIND_ACK
    fields = ("cumulative", "sack", "window")

    def __init__(self, cumulative, sack, window):
        self.cumulative = cumulative
        self.sack = sack
        self.window = window
        self.extra = 0

    @classmethod
    def _from(cls, f):
        return cls(_uint(f[0], "ACK cumulative"), _uint(f[1], "ACK sack"),
                   _uint(f[2], "ACK window", 65535))


class Data(Message):
    """Serial link: one encoded message (`payload`) with link sequence number `seq`."""
    __slots__ = ("seq", "payload")
    kind = codes.KIND_DATA
    fields = ("seq", "payload")

    def __init__(self, seq, payload):
        self.seq = seq
        self.payload = payload
        self.extra = 0

    @classmethod
    def _from(cls, f):
        payload = f[1]
        if not isinstance(payload, (bytes, bytearray)) or len(payload) > codes.MAX_FRAME:
            raise ProtocolError("DATA payload: expected at most %d bytes" % codes.MAX_FRAME)
        return cls(_uint(f[0], "DATA seq"), bytes(payload))


class Hello(Message):
    """Serial link: a side (re)starts its link session. `session` is random per
    start; `node` is the sender's id (0 for a base station); `hop` its chain index."""
    __slots__ = ("session", "node", "hop", "reply")
    kind = codes.KIND_HELLO
    fields = ("session", "node", "hop", "reply")

    def __init__(self, session, node, hop, reply):
        self.session = session
        self.node = node
        self.hop = hop
        self.reply = reply
        self.extra = 0

    @classmethod
    def _from(cls, f):
        return cls(_uint(f[0], "HELLO session", _MAX_U32), _uint(f[1], "HELLO node", _MAX_U32),
                   _uint(f[2], "HELLO hop", 255), _uint(f[3], "HELLO reply", _MAX_U32))


class Enumerate(Message):
    """Base -> chain: every node answers with a STATUS carrying its hop index."""
    __slots__ = ("request",)
    kind = codes.KIND_ENUMERATE
    fields = ("request",)

    def __init__(self, request):
        self.request = request
        self.extra = 0

    @classmethod
    def _from(cls, f):
        return cls(_uint(f[0], "ENUMERATE request", _MAX_U32))


class DeadLetter(Message):
    """Node -> base: events that exceeded their retry budget, by (epoch, seq)."""
    __slots__ = ("node", "count", "ids")
    kind = codes.KIND_DEADLETTER
    fields = ("node", "count", "ids")

    def __init__(self, node, count, ids):
        self.node = node
        self.count = count
        self.ids = ids
        self.extra = 0

    @classmethod
    def _from(cls, f):
        ids = _array(f[2], "DEADLETTER ids", 64)
        out = []
        for pair in ids:
            p = _array(pair, "DEADLETTER id", 2)
            if len(p) != 2:
                raise ProtocolError("DEADLETTER id: expected [epoch, seq]")
            out.append((_uint(p[0], "DEADLETTER epoch", _MAX_U32), _uint(p[1], "DEADLETTER seq")))
        return cls(_uint(f[0], "DEADLETTER node", _MAX_U32), _uint(f[1], "DEADLETTER count"), out)

    def to_fields(self):
        return [head(self.kind), self.node, self.count, [[e, s] for e, s in self.ids]]


class Signed(Message):
    """Any message, encoded, with a truncated HMAC-SHA256 `mac` under the key of
    `key_id` (a node id). See protocol/auth.py."""
    __slots__ = ("key_id", "inner", "mac")
    kind = codes.KIND_SIGNED
    fields = ("key_id", "inner", "mac")

    def __init__(self, key_id, inner, mac):
        self.key_id = key_id
        self.inner = inner
        self.mac = mac
        self.extra = 0

    @classmethod
    def _from(cls, f):
        inner = f[1]
        mac = f[2]
        if not isinstance(inner, (bytes, bytearray)) or len(inner) > 65535:
            raise ProtocolError("SIGNED inner: expected a byte string")
        if not isinstance(mac, (bytes, bytearray)) or len(mac) != codes.MAC_LEN:
            raise ProtocolError("SIGNED mac: expected %d bytes" % codes.MAC_LEN)
        return cls(_uint(f[0], "SIGNED key_id", _MAX_U32), bytes(inner), bytes(mac))


class Unknown(Message):
    """A kind this version does not know: receivers count it and move on."""
    __slots__ = ("unknown_kind", "values")
    fields = ("unknown_kind", "values")

    def __init__(self, unknown_kind, values):
        self.unknown_kind = unknown_kind
        self.values = values
        self.extra = 0


KINDS = {  # type: dict
    codes.KIND_EVENT: Event,
    codes.KIND_BATCH: Batch,
    codes.KIND_STATUS: Status,
    codes.KIND_ANNOUNCE: Announce,
    codes.KIND_ACK: Ack,
    codes.KIND_DATA: Data,
    codes.KIND_HELLO: Hello,
    codes.KIND_ENUMERATE: Enumerate,
    codes.KIND_DEADLETTER: DeadLetter,
    codes.KIND_SIGNED: Signed,
}
KIND_NAMES = {
    codes.KIND_EVENT: "EVENT",
    codes.KIND_BATCH: "BATCH",
    codes.KIND_STATUS: "STATUS",
    codes.KIND_ANNOUNCE: "ANNOUNCE",
    codes.KIND_ACK: "ACK",
    codes.KIND_DATA: "DATA",
    codes.KIND_HELLO: "HELLO",
    codes.KIND_ENUMERATE: "ENUMERATE",
    codes.KIND_DEADLETTER: "DEADLETTER",
    codes.KIND_SIGNED: "SIGNED",
}
# how many fields each kind requires (its optional trailing ones excluded)
_REQUIRED = {}
for _k in KINDS:
    _cls = KINDS[_k]
    _REQUIRED[_k] = len(_cls.fields) - _cls.optional


def from_fields(values):
    """Turn a decoded CBOR array into a message; raise ProtocolError if invalid."""
    if not isinstance(values, (list, tuple)) or not values:
        raise ProtocolError("a message is a non-empty CBOR array, got %s" % type(values).__name__)
    h = values[0]
    if not _is_int(h) or h < 0:
        raise ProtocolError("message head: expected an unsigned integer, got %r" % (h,))
    version = (h >> codes.KIND_BITS) + 1
    kind = h & codes.KIND_MASK
    if version != codes.VERSION:
        raise ProtocolError("unsupported protocol version %d (this side speaks %d)" % (version, codes.VERSION))
    cls = KINDS.get(kind)
    if cls is None:
        return Unknown(kind, list(values[1:]))
    f = values[1:]
    required = _REQUIRED[kind]
    if len(f) < required:
        raise ProtocolError("%s: expected at least %d fields, got %d" % (_kind_name(kind), required, len(f)))
    known = len(cls.fields)
    msg = cls._from(f)
    if len(f) > known:
        msg.extra = len(f) - known
    return msg


def decode(data):
    """Decode one message from bytes (CBOR errors become ProtocolError)."""
    try:
        values = cbor.loads(data)
    except cbor.CBORDecodeError as e:
        raise ProtocolError("not CBOR: %s" % e)
    return from_fields(values)


def encode(msg):
    return msg.encode()


def encode_event_into(enc, node, epoch, seq, t, topic, value, skip=0):
    """Node hot path: write an EVENT into a reused cbor.Encoder (no message object,
    no list). Returns the encoded length; the bytes are enc.view()."""
    enc.reset()
    enc.array(8 if skip else 7)
    enc.uint(codes.KIND_EVENT)
    enc.uint(node)
    enc.uint(epoch)
    enc.uint(seq)
    enc.uint(t)
    enc.text(topic)
    enc.encode(value)
    if skip:
        enc.uint(skip)
    return enc.length
