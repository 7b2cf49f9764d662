# The CBOR a node reads, without protocol/cbor.py: parse_announce(datagram) for a UDP
# node; parse_control(message) and event_ids(message) for a serial chain node; and
# item_end() / byte_chunks(), the walks protocol/link.py needs for indefinite lengths.
#
# Theory of operation
# -------------------
# A UDP node acts on ANNOUNCE only (docs/PROTOCOL.md 3.4); a chain node also on ENUMERATE,
# and it dead-letters lower nodes' EVENTs and BATCHes by their ids. One walk (_msg) reads
# the message's array head, its head (version and kind), and only the fields asked for:
# the seven ANNOUNCE fields as uint / text / null / one array of those (_field; any
# other item there would fail nodewire.announce_fields(), so it is refused at once); the
# ENUMERATE request, the node, epoch and seq of an EVENT or BATCH as uints within
# protocol.messages' limits (_uint); the number of items of a BATCH's readings array
# (1..128 triples). Every other item (extra fields, the other fields of these kinds,
# the fields of other kinds) is walked over without being built (_skip) and checked to
# be well-formed CBOR as protocol.cbor.loads() checks it: nesting depth 16, declared
# lengths against the bytes left before anything is read, indefinite lengths closed by
# a break, string chunks of the parent's type, strict UTF-8 (RFC 3629, also on
# MicroPython, whose str() is lax), two-byte simple values >= 32, no reserved
# additional information, map keys that decode to hashable values, no trailing bytes.
# Any well-formed CBOR is accepted, preferred serialization or not (indefinite-length
# message, filters and text included). A message with fewer fields than its kind
# requires (protocol.messages.from_fields) is refused when its fields are read.
#
# Hostile input: a message that protocol.cbor + protocol.messages would refuse for the
# reasons above raises ProtocolError (the node counts it as rx_bad), nothing else
# escapes; no input makes it loop longer than its length. Allocation is bounded by the
# message: the decoded strings (at most the message's bytes, twice over: bytes then
# text), at most MAX_FILTERS filters, the result and an error message; items that are
# only walked allocate nothing.
# tests/test_nodewire_props.py checks agreement with protocol.cbor + protocol.messages
# on valid, mutated, truncated and arbitrary bytes; tests/dual/test_node_wire.py runs
# the spec's vectors and hostile messages on both interpreters.
#
# Memory: a module of its own, beside protocol/nodewire.py (whose module-level names
# the publish path looks up), costing a few KB where protocol.cbor costs ~20 KB.
from protocol.nodewire import ProtocolError, announce_fields, MAX_FILTERS

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore
        return x

# protocol/codes.py's values (tests/dual/test_node_wire.py checks they agree)
_VERSION = const(1)
_KIND_BITS = const(5)
_KIND_MASK = const(31)
_KIND_EVENT = const(1)
_KIND_BATCH = const(2)
_KIND_ANNOUNCE = const(4)
_KIND_ENUMERATE = const(8)
_NULL = const(0xF6)
_D = const(0)        # the state list: data, read position, end
_P = const(1)
_END = const(2)
_DEPTH = const(16)   # nested arrays, maps and tags accepted, as protocol.cbor.loads()
_MAX_U32 = 4294967295
_MAX_U64 = 18446744073709551615


def parse_announce(data):
    # A received datagram -> announce_fields() tuple, or None for a well-formed message
    # of another kind (its fields are not checked: a node acts on ANNOUNCEs only).
    # Raises ProtocolError for anything that is not one well-formed CBOR array with a
    # head of this version, or a bad ANNOUNCE. Reads only what it needs (see above).
    return _msg(data, 0)[1]


def parse_control(data):
    # A message from upstream -> (kind, fields): fields is the announce_fields() tuple
    # for an ANNOUNCE, the request (int) for an ENUMERATE, None for another kind (its
    # fields are only walked). Raises ProtocolError as parse_announce, and for a bad
    # ENUMERATE as protocol.messages does.
    return _msg(data, 1)


def event_ids(data):
    # An EVENT -> (node, epoch, seq, 1), a BATCH -> (node, epoch, seq0, its number of
    # readings); None for another kind. Raises ProtocolError for anything that is not
    # one well-formed CBOR array with a head of this version, and for an EVENT or BATCH
    # with too few fields, a node, epoch or seq that protocol.messages would refuse, or
    # (BATCH) readings that are not an array of 1..128 triples; their other fields
    # (t, topic, value, t0, the readings' items, skip) are only walked.
    return _msg(data, 2)[1]


def _msg(data, want):
    # the walk of one message -> (kind, fields or None); want: 0 ANNOUNCE, 1 ANNOUNCE and
    # ENUMERATE, 2 EVENT and BATCH (the kinds whose fields are read; see above)
    d = data if type(data) is bytes else bytes(data)
    st = [d, 0, len(d)]
    if not d or d[0] >> 5 != 4:
        raise ProtocolError("a message is a non-empty CBOR array")
    n = _arg(st)
    if n == 0 or n > st[_END] - st[_P] or (n < 0 and _brk(st)):
        raise _bad(st, "a message is a non-empty CBOR array")
    p = st[_P]
    if p >= st[_END] or d[p] >> 5:
        raise ProtocolError("message head: expected an unsigned integer")
    k = _arg(st)
    if k < 0:
        raise _bad(st, "indefinite length for an unsigned integer")
    if k >> _KIND_BITS:
        raise ProtocolError("unsupported protocol version %d (this side speaks %d)"
                            % ((k >> _KIND_BITS) + 1, _VERSION))
    # f: the fields read; r: fields 1 .. r - 1 are required, and read here (or walked:
    # EVENT t, topic, value; BATCH t0)
    r = 1
    f = None
    if want < 2:
        if k == _KIND_ANNOUNCE:
            f = [None] * 8        # the 8th, instance, is optional
            r = 8
        elif want and k == _KIND_ENUMERATE:
            f = [0]
            r = 2
    elif k == _KIND_EVENT or k == _KIND_BATCH:
        f = [0, 0, 0, 1]
        r = 8 - k               # EVENT: 6 fields, BATCH: 5
    i = 1
    while i < n if n > 0 else not _brk(st):
        if k == _KIND_ANNOUNCE and f is not None and i <= 8:
            f[i - 1] = _field(st, 1)
        elif i >= r:
            _skip(st, _DEPTH - 1)     # inside the message's array: one level used
        elif i < 4:                   # ENUMERATE request; node, epoch, seq
            f[i - 1] = _uint(st, _MAX_U64 if i == 3 else _MAX_U32)
        elif i == 5 and k == _KIND_BATCH:
            p = st[_P]                # readings: an array of 1..128 triples
            f[3] = _skip(st, _DEPTH - 1)
            if d[p] >> 5 != 4 or f[3] % 3 or not 0 < f[3] <= 384:
                raise ProtocolError("BATCH readings: expected an array of 1..128 triples")
            f[3] //= 3
        else:                         # EVENT t, topic, value; BATCH t0: walked
            _skip(st, _DEPTH - 1)
        i += 1
    if st[_P] != st[_END]:
        raise _bad(st, "%d trailing bytes after the item" % (st[_END] - st[_P]))
    if i < r:
        raise ProtocolError("kind %d: %d fields, at least %d expected" % (k, i - 1, r - 1))
    if f is None:
        return k, None
    if k == _KIND_ANNOUNCE:
        return k, announce_fields(f)
    return k, f[0] if k == _KIND_ENUMERATE else tuple(f)


# --- reading ---------------------------------------------------------------------------
# One decode's state: st = [data (bytes), read position, end]; each reader starts at
# st[_P] and moves it past what it read; every read is bounds-checked first.


def _bad(st, problem):
    return ProtocolError("not CBOR: offset %d: %s" % (st[_P], problem))


def _arg(st):
    # the argument of the head at st[_P] (-1: indefinite length); moves past the head
    d = st[_D]
    p = st[_P]
    if p >= st[_END]:
        raise _bad(st, "data ended where an item was expected")
    ai = d[p] & 31
    if ai < 24 or ai == 31:
        st[_P] = p + 1
        return -1 if ai == 31 else ai
    if ai > 27:
        raise _bad(st, "reserved additional information %d" % ai)
    e = p + 1 + (1 << (ai - 24))
    if e > st[_END]:
        raise _bad(st, "head needs %d more bytes" % (e - p - 1))
    n = 0
    p += 1
    while p < e:
        n = (n << 8) | d[p]
        p += 1
    st[_P] = e
    return n


def _brk(st):
    # True (and consumes it) if a break comes next; raises if the data ended
    p = st[_P]
    if p >= st[_END]:
        raise _bad(st, "data ended inside an indefinite-length item")
    if st[_D][p] == 0xFF:
        st[_P] = p + 1
        return True
    return False


def _span(st, n, mt):
    # a definite string of n bytes (major type mt) after its head: moves past it,
    # checks text for UTF-8; returns where its bytes start
    p = st[_P]
    if n > st[_END] - p:
        raise _bad(st, "declared length %d exceeds the %d bytes left" % (n, st[_END] - p))
    if mt == 3 and not _utf8(st[_D], p, p + n):
        raise _bad(st, "text string is not valid UTF-8")
    st[_P] = p + n
    return p


def _chunks(st, mt):
    # the chunks of an indefinite-length string up to its break: definite strings of
    # the same major type
    d = st[_D]
    while not _brk(st):
        b = d[st[_P]]
        if b >> 5 != mt or b & 31 == 31:
            raise _bad(st, "bad chunk in an indefinite-length string")
        _span(st, _arg(st), mt)


def _utf8(d, p, end):
    # strict UTF-8 (RFC 3629: no overlong forms, surrogates or code points above
    # U+10FFFF), without allocating: MicroPython's str() lets those through
    while p < end:
        c = d[p]
        if c < 0x80:
            p += 1
            continue
        if c < 0xC2 or c > 0xF4:
            return False
        k = p + (1 if c < 0xE0 else 2 if c < 0xF0 else 3)
        if k >= end:
            return False
        b = d[p + 1]
        if (b < (0xA0 if c == 0xE0 else 0x90 if c == 0xF0 else 0x80)
                or b > (0x9F if c == 0xED else 0x8F if c == 0xF4 else 0xBF)):
            return False
        p += 2
        while p <= k:
            if d[p] & 0xC0 != 0x80:
                return False
            p += 1
    return True


def _skip(st, left):
    # walk over one well-formed item without building it; left: how many more arrays,
    # maps and tags may be opened
    d = st[_D]
    p = st[_P]
    if p >= st[_END]:
        raise _bad(st, "data ended where an item was expected")
    b = d[p]
    mt = b >> 5
    n = _arg(st)
    if mt == 7:
        if b == 0xFF:
            raise _bad(st, "break outside an indefinite-length item")
        if b == 0xF8 and n < 32:
            raise _bad(st, "two-byte simple value %d < 32" % n)
        return
    if n < 0 and (mt < 2 or mt == 6):
        raise _bad(st, "indefinite length for major type %d" % mt)
    if mt < 2:
        return
    if mt < 4:
        if n < 0:
            _chunks(st, mt)
        else:
            _span(st, n, mt)
        return
    if left <= 0:
        raise _bad(st, "nesting deeper than %d" % _DEPTH)
    if mt == 6:
        _skip(st, left - 1)
        return
    if mt == 5:
        n *= 2          # a map: n keys and n values
    if n > st[_END] - st[_P]:
        raise _bad(st, "%d items exceed the %d bytes left" % (n, st[_END] - st[_P]))
    i = 0
    while i < n if n >= 0 else (i & 1 and mt == 5) or not _brk(st):
        p = st[_P]
        _skip(st, left - 1)
        if mt == 5 and not i & 1:
            _key(st, p)
        i += 1
    return i


def _uint(st, limit):
    # an unsigned integer <= limit (a definite head of major type 0), or ProtocolError
    p = st[_P]
    if p < st[_END] and st[_D][p] >> 5 == 0:
        n = _arg(st)
        if 0 <= n <= limit:
            return n
    raise ProtocolError("offset %d: expected an unsigned integer <= %d" % (p, limit))


def _key(st, p):
    # a map key must decode to a hashable value (as protocol.cbor.loads() requires):
    # not an array or map, also not under tags
    d = st[_D]
    while d[p] >> 5 == 6:
        ai = d[p] & 31
        p += 1 if ai < 24 else 1 + (1 << (ai - 24))
    if d[p] >> 5 in (4, 5):
        raise _bad(st, "map key is not hashable")


def _field(st, left):
    # an ANNOUNCE field: uint, text, null, or (left > 0) an array of at most
    # MAX_FILTERS of those. Any other item makes announce_fields() fail: raised here.
    d = st[_D]
    p = st[_P]
    if p >= st[_END]:
        raise _bad(st, "data ended where an item was expected")
    if d[p] == _NULL:
        st[_P] = p + 1
        return None
    mt = d[p] >> 5
    n = _arg(st)
    if mt == 0 and n >= 0:
        return n
    if mt == 3:
        if n >= 0:
            p = _span(st, n, 3)
            return str(d[p:p + n], "utf-8")
        _chunks(st, 3)
        return str(_join(d, p + 1, st[_P] - 1), "utf-8")
    if mt == 4 and left and n <= MAX_FILTERS:
        a = []
        while len(a) < n if n >= 0 else not _brk(st):
            if len(a) == MAX_FILTERS:
                break
            a.append(_field(st, 0))
        else:
            return a
    raise ProtocolError("ANNOUNCE: unexpected CBOR item (major type %d) at offset %d" % (mt, p))


def item_end(data, pos, end, left):
    # Offset just past the item at data[pos] (bytes up to end), or -1 unless it is one
    # well-formed item that protocol.cbor.loads() accepts with `left` more levels of
    # arrays, maps and tags allowed (protocol/link.py walks indefinite lengths with it)
    st = [data, pos, end]
    try:
        _skip(st, left)
    except ProtocolError:
        return -1
    return st[_P]


def byte_chunks(data, pos, end):
    # An indefinite-length byte string whose head ends at pos: (offset past its break,
    # its bytes joined), or ProtocolError (protocol/link.py's DATA payload)
    st = [data, pos, end]
    _chunks(st, 2)
    return st[_P], bytes(_join(data, pos, st[_P] - 1))


def _join(d, p, end):
    # the bytes of checked definite chunks d[p:end] (a bytearray), copied byte by byte
    # (a slice per chunk would allocate per chunk)
    st = [d, p, end]
    n = 0
    while st[_P] < end:      # first the length
        k = _arg(st)
        n += k
        st[_P] += k
    b = bytearray(n)
    st[_P] = p
    n = 0
    while st[_P] < end:
        k = _arg(st)
        p = st[_P]
        st[_P] = p + k
        while p < st[_P]:
            b[n] = d[p]
            n += 1
            p += 1
    return b
