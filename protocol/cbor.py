# CBOR (RFC 8949) codec shared by the nodes (MicroPython) and the base station (CPython).
#
# Why our own codec: one implementation gives one wire dialect and one set of bounds on both
# ends, runs unchanged on MicroPython (unix port, ESP32, RP2) and CPython 3.11, and is small
# enough to freeze into node firmware. cbor2 is only the tests' reference.
#
# Theory of operation
# -------------------
# Encoding writes into a bytearray and never grows it: Encoder(size) keeps one preallocated
# buffer for the node's hot path (a write that does not fit raises CBOREncodeError), dumps()
# retries with a bigger scratch buffer. Output is preferred serialization (RFC 8949 §4.2.1):
# shortest heads, each float in the shortest of half/single/double that holds it exactly,
# NaN as f97e00, map keys sorted by their encoding length first, then bytewise (the order
# cbor2 6.2.1 uses for canonical=True), so our bytes equal cbor2.dumps(x, canonical=True).
#
# Decoding treats its input as hostile: each declared length is checked against the bytes
# left BEFORE anything is allocated (a string needs n bytes, an array item at least one, a
# map pair at least two); nesting is capped by max_depth (default 16; two small frames per
# level, ~0.95 KB of C stack each on the x86-64 unix port, whose 80 KB limit fits 85
# levels; an overflow trips MicroPython's stack check and is reported as CBORDecodeError,
# so a board with a small stack refuses deep data, it does not crash); indefinite items
# must be closed by a break; string chunks must be definite strings
# of the parent's type; text must be valid UTF-8 (checked strictly on MicroPython too, whose
# str() lets overlong forms and surrogates through). Every failure is a CBORDecodeError
# "offset N: problem": no IndexError, struct error, UnicodeError or RecursionError escapes,
# and no input makes it loop longer than its length.
#
# Decoded types: ints -> int; byte strings -> bytes; text -> str; arrays -> list; maps ->
# dict (a repeated key: the last one wins; an unhashable key, e.g. an array, is an error);
# tags -> Tag(tag, value), never interpreted (a bignum stays Tag(2, b'...')); false/true/
# null -> False/True/None; undefined -> `undefined`; other simple values -> Simple(n);
# half/single/double -> float (rounded to float32 on boards that have no double).
#
# MicroPython notes: type(True) is bool on both interpreters, so dispatch uses `type(x) is`.
# Floats are classified from their IEEE double bits with small-int arithmetic only (no
# bigints on 31-bit small-int boards, no reliance on struct range checks; float32 builds
# widen exactly to double). Python calls dominate the cost there, so common cases are
# inlined, and functions on the hot paths keep arguments + locals + stack within 11 words:
# MicroPython puts a bigger frame on the heap at every call (VM_MAX_STATE_ON_STACK), a
# multi-block allocation whose first-fit search grows with the garbage on the heap;
# tests/test_cbor_props.py checks the frame sizes in the compiled .mpy.
# Measured on the unix port (MicroPython 1.29, x86-64; valgrind instruction counts are
# stable where wall time on a shared machine is not) for [1, 7, 3, 1234, 3600000, "temp",
# 21.5]: Encoder.encode 51k instructions (json.dumps, in C: 13k), loads 54k (json.loads:
# 28k); best wall times ~6 us each (json ~1.2 and ~2 us). Heap per Encoder.encode: 32 bytes
# (str.encode); per loads: 384 bytes, the decoded objects and the 3-item state list.
import struct

# the float classification beyond the inline half case: one copy, protocol/nodewire.py's
# (the node writes its EVENTs without this module)
from protocol.nodewire import _float_short, _float_other

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore[no-redef, misc]
        return x

DEFAULT_MAX_DEPTH = const(16)  # nested arrays/maps/tags accepted by loads() and written by dumps()

# Major types, shifted into the initial byte (RFC 8949 §3.1).
_MT_UINT = const(0x00)
_MT_NINT = const(0x20)
_MT_BYTES = const(0x40)
_MT_TEXT = const(0x60)
_MT_ARRAY = const(0x80)
_MT_MAP = const(0xA0)
_MT_TAG = const(0xC0)
_MT_SIMPLE = const(0xE0)
# Major type 7 initial bytes (RFC 8949 §3.3).
_FALSE = const(0xF4)
_TRUE = const(0xF5)
_NULL = const(0xF6)
_UNDEFINED = const(0xF7)
_SIMPLE8 = const(0xF8)
_HALF = const(0xF9)
_SINGLE = const(0xFA)
_DOUBLE = const(0xFB)
_BREAK = const(0xFF)

_pack_into = struct.pack_into
_unpack_from = struct.unpack_from
_U64_LIMIT = 18446744073709551616  # 2**64: a head carries at most a 64-bit argument
_NAMES = ("unsigned int", "negative int", "byte string", "text string",
          "array", "map", "tag", "simple/float")


class CBORError(ValueError):
    """Root of this layer's errors."""


class CBORDecodeError(CBORError):
    """The peer sent bytes that are not one well-formed CBOR item we accept.

    The message reads "offset N: problem"; `offset` holds N.
    """
    offset = None


class CBOREncodeError(CBORError):
    """Our caller asked for something CBOR cannot carry here (an int beyond 64 bits, an
    unsupported type, nesting beyond max_depth), or an Encoder's fixed buffer is full."""


class _Full(CBOREncodeError):
    # The fixed buffer is too small; dumps() catches this and retries with a bigger one.
    pass


def _derr(offset, problem):
    e = CBORDecodeError("offset %d: %s" % (offset, problem))
    e.offset = offset
    return e


class Tag:
    """A tagged item (major type 6), uninterpreted: Tag(1, 1363896240)."""

    def __init__(self, tag, value):
        self.tag = tag
        self.value = value

    def __eq__(self, other):
        return isinstance(other, Tag) and self.tag == other.tag and self.value == other.value

    def __ne__(self, other):
        return not self.__eq__(other)

    def __hash__(self):
        # TypeError for an unhashable value, which makes such a map key a decode error.
        return hash((self.tag, self.value))

    def __repr__(self):
        return "Tag(%d, %r)" % (self.tag, self.value)


class Simple:
    """A simple value other than false/true/null/undefined: 0..19 or 32..255."""

    def __init__(self, value):
        self.value = value

    def __eq__(self, other):
        return isinstance(other, Simple) and self.value == other.value

    def __ne__(self, other):
        return not self.__eq__(other)

    def __hash__(self):
        return hash(self.value) ^ 0x5A5A

    def __repr__(self):
        return "Simple(%d)" % self.value


class UndefinedType:
    """Type of the `undefined` singleton (CBOR undefined, 0xf7); falsy like None."""

    def __repr__(self):
        return "undefined"

    def __bool__(self):
        return False

    def __hash__(self):
        return 0xF7


undefined = UndefinedType()
Undefined = undefined


# ---------------------------------------------------------------------------------------
# Encoding. Each writer takes (buf, pos, ...) and returns the new position. It checks room
# before writing, so a full buffer raises _Full and never touches bytes before `pos`.

def _full(pos, need, cap):
    return _Full("buffer full: %d bytes needed at offset %d, capacity %d" % (need, pos, cap))


def _head(buf, pos, mt, n):
    # Initial byte with major type `mt` and argument n, in the shortest form (§4.2.1).
    if n < 24:
        if n < 0:
            raise CBOREncodeError("negative argument %d" % n)
        if pos >= len(buf):
            raise _full(pos, 1, len(buf))
        buf[pos] = mt | n
        return pos + 1
    if n < 256:
        if pos + 2 > len(buf):
            raise _full(pos, 2, len(buf))
        buf[pos] = mt | 24
        buf[pos + 1] = n
        return pos + 2
    if n < 65536:
        if pos + 3 > len(buf):
            raise _full(pos, 3, len(buf))
        buf[pos] = mt | 25
        buf[pos + 1] = n >> 8
        buf[pos + 2] = n & 255
        return pos + 3
    return _head_long(buf, pos, mt, n)


def _head_long(buf, pos, mt, n):
    if n < 4294967296:
        if pos + 5 > len(buf):
            raise _full(pos, 5, len(buf))
        _pack_into(">BI", buf, pos, mt | 26, n)
        return pos + 5
    if n < _U64_LIMIT:
        if pos + 9 > len(buf):
            raise _full(pos, 9, len(buf))
        _pack_into(">BQ", buf, pos, mt | 27, n)
        return pos + 9
    if mt == _MT_NINT:
        n = -1 - n
    raise CBOREncodeError("%d does not fit in a 64-bit head (ints: -2**64 .. 2**64-1)" % n)


def _int(buf, pos, n):
    if n >= 0:
        return _head(buf, pos, _MT_UINT, n)
    return _head(buf, pos, _MT_NINT, -1 - n)


def _byte(buf, pos, b):
    if pos >= len(buf):
        raise _full(pos, 1, len(buf))
    buf[pos] = b
    return pos + 1


def _raw(buf, pos, b):
    end = pos + len(b)
    if end > len(buf):
        raise _full(pos, len(b), len(buf))
    buf[pos:end] = b
    return end


def _str(buf, pos, s):
    s = s.encode()  # 32 heap bytes on MicroPython: the only allocation of a typical event
    n = len(s)
    if n < 24 and pos + 1 + n <= len(buf):  # short text: head inline
        buf[pos] = _MT_TEXT | n
        buf[pos + 1:pos + 1 + n] = s
        return pos + 1 + n
    pos = _head(buf, pos, _MT_TEXT, n)
    return _raw(buf, pos, s)


def _bytes(buf, pos, b):
    pos = _head(buf, pos, _MT_BYTES, len(b))
    return _raw(buf, pos, b)


def _float(buf, pos, x):
    # Shortest exact float (§4.2.2). The IEEE double bits go to buf[pos+1..pos+8] (a double
    # would be written there anyway) and are classified byte by byte; ±0, inf, NaN, double
    # subnormals and values with more than 23 mantissa bits go to _float_other. A half or
    # single leaves up to 6 scratch bytes after its end (inside the buffer, past `length`).
    if pos + 9 > len(buf):
        return _float_tight(buf, pos, x)
    _pack_into(">d", buf, pos + 1, x)
    e = ((buf[pos + 1] & 0x7F) << 4) | (buf[pos + 2] >> 4)  # biased exponent
    if e == 0 or e == 0x7FF or (buf[pos + 5] & 0x1F) | buf[pos + 6] | buf[pos + 7] | buf[pos + 8]:
        return _float_other(buf, pos, e)
    e -= 1023
    # x is reused (a small frame) for the top 23 mantissa bits; the rest are zero
    x = ((buf[pos + 2] & 15) << 19) | (buf[pos + 3] << 11) | (buf[pos + 4] << 3) | (buf[pos + 5] >> 5)
    if -14 <= e <= 15 and x & 0x1FFF == 0:  # a normal half: the common case, inline
        x = ((e + 15) << 10) | (x >> 13)
        buf[pos] = _HALF
        buf[pos + 1] = (buf[pos + 1] & 0x80) | (x >> 8)
        buf[pos + 2] = x & 255
        return pos + 3
    return _float_short(buf, pos, e, x)


# write_float(buf, pos, x) -> end: x at buf[pos] in its shortest exact form, for callers
# that lay out their own messages. Needs room for 9 bytes or raises CBOREncodeError.
write_float = _float


def _float_tight(buf, pos, x):
    # Fewer than 9 bytes left: encode into a scratch array, then copy what fits.
    tmp = bytearray(9)
    x = _float(tmp, 0, x)
    return _raw(buf, pos, memoryview(tmp)[:x])


def _enc(buf, pos, obj, left):
    # Any value; `left` = how many more containers may be opened (the depth budget).
    t = type(obj)
    if t is int:
        if obj >= 0:
            return _head(buf, pos, _MT_UINT, obj)
        return _head(buf, pos, _MT_NINT, -1 - obj)
    if t is str:
        return _str(buf, pos, obj)
    if t is float:
        return _float(buf, pos, obj)
    if t is list or t is tuple:
        return _array(buf, pos, obj, left)
    return _enc_other(buf, pos, obj, left)


def _array(buf, pos, obj, left):
    if left <= 0:
        raise CBOREncodeError("nesting deeper than max_depth")
    left -= 1
    i = len(obj)
    pos = _head(buf, pos, _MT_ARRAY, i)
    i = -i  # obj[-n] .. obj[-1]: no iterator, no length local (small frame)
    while i:
        v = obj[i]
        i += 1
        if type(v) is int and v >= 0:  # the common cases inline: saves a call each
            if v < 24 and pos < len(buf):
                buf[pos] = v
                pos += 1
            else:
                pos = _head(buf, pos, _MT_UINT, v)
        elif type(v) is float:
            pos = _float(buf, pos, v)
        elif type(v) is str:
            pos = _str(buf, pos, v)
        else:
            pos = _enc(buf, pos, v, left)
    return pos


def _enc_other(buf, pos, obj, left):
    t = type(obj)
    if t is dict:
        return _map(buf, pos, obj, left)
    if t is bytes or t is bytearray or t is memoryview:
        if t is memoryview and getattr(obj, "format", "B") != "B":
            obj = bytes(obj)  # CPython memoryview of wider items: len() counts items
        return _bytes(buf, pos, obj)
    if obj is None:
        return _byte(buf, pos, _NULL)
    if obj is True:
        return _byte(buf, pos, _TRUE)
    if obj is False:
        return _byte(buf, pos, _FALSE)
    if t is Tag:
        return _tag(buf, pos, obj, left)
    if obj is undefined:
        return _byte(buf, pos, _UNDEFINED)
    if t is Simple:
        return _simple(buf, pos, obj.value)
    return _enc_subclass(buf, pos, obj, left)


def _tag(buf, pos, obj, left):
    if left <= 0:
        raise CBOREncodeError("nesting deeper than max_depth")
    if type(obj.tag) is not int or obj.tag < 0:
        raise CBOREncodeError("tag number must be a non-negative int, not %r" % (obj.tag,))
    pos = _head(buf, pos, _MT_TAG, obj.tag)
    return _enc(buf, pos, obj.value, left - 1)


def _enc_subclass(buf, pos, obj, left):
    # Subclasses (IntEnum, OrderedDict, str subclasses...). bool cannot be subclassed.
    if isinstance(obj, int):
        return _int(buf, pos, int(obj))
    if isinstance(obj, str):
        return _str(buf, pos, str(obj))
    if isinstance(obj, float):
        return _float(buf, pos, float(obj))
    if isinstance(obj, (list, tuple)):
        return _array(buf, pos, list(obj), left)
    if isinstance(obj, dict):
        return _map(buf, pos, obj, left)
    if isinstance(obj, (bytes, bytearray)):
        return _bytes(buf, pos, bytes(obj))
    raise CBOREncodeError("cannot encode an object of type %s" % type(obj).__name__)


def _simple(buf, pos, v):
    if type(v) is not int or not (0 <= v < 20 or 32 <= v < 256):
        raise CBOREncodeError("simple value must be 0..19 or 32..255, not %r" % (v,))
    if v < 20:
        return _byte(buf, pos, _MT_SIMPLE | v)
    return _byte(buf, _byte(buf, pos, _SIMPLE8), v)


def _key_order(kv):
    return (len(kv[0]), kv[0])


def _map(buf, pos, obj, left):
    # Keys in canonical order: encoded length first, then bytewise. When every key is a
    # non-negative int that is numeric order, which needs no key encoding.
    if left <= 0:
        raise CBOREncodeError("nesting deeper than max_depth")
    left -= 1
    pos = _head(buf, pos, _MT_MAP, len(obj))
    for k in obj:
        if type(k) is not int or k < 0:
            return _map_sorted(buf, pos, obj, left)
    for k in sorted(obj):
        pos = _head(buf, pos, _MT_UINT, k)
        pos = _enc(buf, pos, obj[k], left)
    return pos


def _map_sorted(buf, pos, obj, left):
    items = [(dumps(k, left), v) for k, v in obj.items()]
    items.sort(key=_key_order)
    for kb, v in items:
        pos = _raw(buf, pos, kb)
        pos = _enc(buf, pos, v, left)
    return pos


def _enc_fit(buf, obj, max_depth):
    try:
        return _enc(buf, 0, obj, max_depth)
    except _Full:
        return -1
    except RuntimeError:  # C stack exhausted (MicroPython) or recursion limit (CPython)
        raise CBOREncodeError("nesting too deep for this interpreter's stack")


def dumps(obj, max_depth=DEFAULT_MAX_DEPTH):
    """Encode `obj` in preferred serialization and return bytes.

    Raises CBOREncodeError for an unsupported type, an int outside -2**64..2**64-1, a bad
    Tag/Simple, or nesting deeper than `max_depth` (which also stops cyclic lists).
    """
    size = 64
    while True:
        buf = bytearray(size)
        n = _enc_fit(buf, obj, max_depth)
        if n >= 0:
            return bytes(memoryview(buf)[:n])
        size *= 4


def dumps_into(buf, obj, offset=0, max_depth=DEFAULT_MAX_DEPTH):
    """Encode `obj` into the bytearray (or writable memoryview) `buf` at `offset` and return
    the end offset. Raises CBOREncodeError if it does not fit. Bytes before `offset` are
    never touched; up to 8 bytes after the returned end may be overwritten (float scratch)."""
    return _enc(buf, offset, obj, max_depth)


class Encoder:
    """Writes CBOR items into one preallocated bytearray: allocation-light encoding.

        enc = Encoder(256)
        enc.reset(); enc.array(3); enc.uint(1); enc.text("temp"); enc.float(21.5)
        sock.send(enc.view())

    The buffer never grows: a write that does not fit raises CBOREncodeError and leaves
    `length` where it was, so the items written before stay valid. The typed writers keep
    no nesting state: after array(n) / map(n) / tag(t) the caller writes the n items / n
    key-value pairs (keys in canonical order) / the tagged item; encode() takes any value.
    Heap per call, MicroPython 1.29 unix port (gc.mem_alloc delta with gc disabled): 0
    bytes for ints, floats, bools, bytes; 32 for text (str.encode). reset() + encode() of
    [1, 7, 3, 1234, 3600000, "temp", 21.5]: 32 bytes (tests/dual/test_cbor.py checks <= 64).
    """

    def __init__(self, size=256, max_depth=DEFAULT_MAX_DEPTH):
        self.buffer = bytearray(size)
        self._mv = memoryview(self.buffer)
        self.length = 0
        self.max_depth = max_depth

    def reset(self):
        self.length = 0

    def encode(self, obj):
        """Append any encodable value (maps in canonical key order)."""
        if type(obj) is list:  # the usual message: skip a dispatch
            self.length = _array(self.buffer, self.length, obj, self.max_depth)
        else:
            self.length = _enc(self.buffer, self.length, obj, self.max_depth)

    def array(self, n):
        self.length = _head(self.buffer, self.length, _MT_ARRAY, n)

    def map(self, n):
        self.length = _head(self.buffer, self.length, _MT_MAP, n)

    def tag(self, t):
        self.length = _head(self.buffer, self.length, _MT_TAG, t)

    def uint(self, n):
        if 0 <= n < 24 and self.length < len(self.buffer):  # inline the one-byte case
            self.buffer[self.length] = n
            self.length += 1
        else:
            self.length = _head(self.buffer, self.length, _MT_UINT, n)

    def int(self, n):
        self.length = _int(self.buffer, self.length, n)

    def float(self, x):
        self.length = _float(self.buffer, self.length, x)

    def text(self, s):
        self.length = _str(self.buffer, self.length, s)

    def bytes(self, b):
        self.length = _raw(self.buffer, _head(self.buffer, self.length, _MT_BYTES, len(b)), b)

    def bool(self, v):
        self.length = _byte(self.buffer, self.length, _TRUE if v else _FALSE)

    def null(self):
        self.length = _byte(self.buffer, self.length, _NULL)

    def undefined(self):
        self.length = _byte(self.buffer, self.length, _UNDEFINED)

    def raw(self, b):
        """Append bytes that already are encoded CBOR."""
        self.length = _raw(self.buffer, self.length, b)

    def view(self):
        """A memoryview of the bytes written (valid until the next write or reset)."""
        return self._mv[:self.length]

    def getvalue(self):
        """A bytes copy of the bytes written."""
        return bytes(self._mv[:self.length])


# ---------------------------------------------------------------------------------------
# Decoding. The state of one decode is a list st = [data, read position, len(data)] (a
# list, not an object: cheaper to make and to index on MicroPython). _item(st, left)
# decodes the item at st[_P] and moves st[_P] past it: small ints inline, the rest through
# the handler of its major type in _MAJOR, called as handler(st, n, left, p0) with n = the
# head's argument (-1 for indefinite length), left = containers that may still be opened,
# p0 = the head's offset. Nesting costs two small frames per level (_item and the
# container's handler); MicroPython's stack check turns an overflow into a RuntimeError,
# reported as CBORDecodeError.
_D = const(0)
_P = const(1)
_END = const(2)


def _item(st, left):
    p = st[_P]
    if p >= st[_END]:
        raise _derr(p, "data ended where an item was expected")
    ib = st[_D][p]
    if ib < 24:  # small unsigned int: the common case, inline
        st[_P] = p + 1
        return ib
    if ib & 31 < 24:  # argument in the initial byte: inline too
        st[_P] = p + 1
        return _MAJOR[ib >> 5](st, ib & 31, left, p)
    return _MAJOR[ib >> 5](st, _arg(st, ib), left, p)


def _arg(st, ib):
    # The argument of the head at st[_P] (initial byte ib); moves st[_P] past the head.
    ai = ib & 31
    p = st[_P] + 1
    if ai < 24:
        st[_P] = p
        return ai
    if ai < 28:
        if p + (1 << (ai - 24)) > st[_END]:
            raise _derr(p - 1, "head needs %d more bytes, %d left" % (1 << (ai - 24), st[_END] - p))
        d = st[_D]
        if ai == 24:
            st[_P] = p + 1
            return d[p]
        if ai == 25:
            st[_P] = p + 2
            return (d[p] << 8) | d[p + 1]
        if ai == 26:
            st[_P] = p + 4
            return (((d[p] << 8) | d[p + 1]) << 16) | (d[p + 2] << 8) | d[p + 3]
        st[_P] = p + 8
        return _unpack_from(">Q", d, p)[0]
    if ai == 31:
        st[_P] = p
        return -1
    raise _derr(p - 1, "reserved additional information %d in initial byte 0x%02x" % (ai, ib))


def _no_indefinite(p, mt):
    return _derr(p, "additional information 31 is not allowed for major type %d (%s)"
                 % (mt, _NAMES[mt]))


def _array_room(st, n, p, left):
    # Before allocating an array of n items: each item takes at least one byte.
    if left <= 0 or n > st[_END] - st[_P]:
        raise _room_error(st, n, p, left, "array of %d items")


def _map_room(st, n, p, left):
    # Before filling a map of n pairs: each pair takes at least two bytes.
    if left <= 0 or n > (st[_END] - st[_P]) >> 1:
        raise _room_error(st, n, p, left, "map of %d pairs")


def _room_error(st, n, p, left, what):
    if left <= 0:
        return _derr(p, "nesting deeper than max_depth")
    return _derr(p, (what + " exceeds the %d bytes left") % (n, st[_END] - st[_P]))


def _string_too_long(st, n, p):
    return _derr(p, "declared length %d exceeds the %d bytes left" % (n, st[_END] - st[_P]))


def _d_uint(st, n, left, p):
    if n < 0:
        raise _no_indefinite(p, 0)
    return n


def _d_nint(st, n, left, p):
    if n < 0:
        raise _no_indefinite(p, 1)
    return -1 - n


def _d_bytes(st, n, left, p):
    if n < 0:
        return _indef_string(st, 2)
    if n > st[_END] - st[_P]:
        raise _string_too_long(st, n, p)
    p = st[_P]
    st[_P] = p + n
    return bytes(st[_D][p:p + n])


def _d_text(st, n, left, p):
    if n < 0:
        return _indef_string(st, 3)
    if n > st[_END] - st[_P]:
        raise _string_too_long(st, n, p)
    left = st[_P]  # reused: where the text starts (a small frame)
    st[_P] = left + n
    if _CHECK_UTF8:
        return _utf8_mp(st[_D], left, n, p)
    return _utf8(st[_D][left:left + n], p)


def _utf8_mp(d, q, n, p):
    s = _utf8(d[q:q + n], p)
    if len(s) != n:  # not ASCII: finish the check that MicroPython's str() left undone
        _utf8_strict(d, q, q + n, p)
    return s


def _utf8(b, p):
    try:
        return str(b, "utf-8")
    except UnicodeError:  # CPython UnicodeDecodeError; MicroPython bare UnicodeError
        raise _derr(p, "text string is not valid UTF-8")


def _d_array(st, n, left, p):
    if n < 0:
        return _indef_array(st, left, p)
    _array_room(st, n, p, left)
    a = [None] * n
    left -= 1
    p = 0  # reused as the index (a small frame)
    while p < n:
        a[p] = _item(st, left)
        p += 1
    return a


def _d_map(st, n, left, p):
    if n < 0:
        return _indef_map(st, left, p)
    _map_room(st, n, p, left)
    m = {}
    left -= 1
    while n:
        p = st[_P]
        k = _item(st, left)
        if type(k) is not int and type(k) is not str:
            _hashable(k, p)
        m[k] = _item(st, left)
        n -= 1
    return m


def _hashable(k, p):
    try:
        hash(k)
    except TypeError:
        raise _derr(p, "map key of type %s is not hashable" % type(k).__name__)


def _d_tag(st, n, left, p):
    if n < 0:
        raise _no_indefinite(p, 6)
    if left <= 0:
        raise _derr(p, "nesting deeper than max_depth")
    return Tag(n, _item(st, left - 1))


def _d_simple(st, n, left, p):
    ai = st[_D][p] & 31
    if ai < 20:
        return Simple(ai)
    if ai < 24:
        return (False, True, None, undefined)[ai - 20]
    if ai == 24:
        if n < 32:
            raise _derr(p, "two-byte simple value %d < 32 is not well-formed" % n)
        return Simple(n)
    if ai == 25:
        if _HAVE_E:
            return _unpack_from(">e", st[_D], p + 1)[0]
        return _half_manual(n)
    if ai == 26:
        return _unpack_from(">f", st[_D], p + 1)[0]
    if ai == 27:
        return _unpack_from(">d", st[_D], p + 1)[0]
    raise _derr(p, "break outside an indefinite-length item")


_MAJOR = (_d_uint, _d_nint, _d_bytes, _d_text, _d_array, _d_map, _d_tag, _d_simple)


def _at_break(st):
    # True (and consumes it) if a break comes next; raises if the data ended.
    p = st[_P]
    if p >= st[_END]:
        raise _derr(p, "data ended inside an indefinite-length item")
    if st[_D][p] == _BREAK:
        st[_P] = p + 1
        return True
    return False


def _indef_array(st, left, p):
    if left <= 0:
        raise _derr(p, "nesting deeper than max_depth")
    a = []
    left -= 1
    while not _at_break(st):
        a.append(_item(st, left))
    return a


def _indef_map(st, left, p):
    if left <= 0:
        raise _derr(p, "nesting deeper than max_depth")
    m = {}
    left -= 1
    while not _at_break(st):
        p = st[_P]
        k = _item(st, left)
        if type(k) is not int and type(k) is not str:
            _hashable(k, p)
        if st[_P] < st[_END] and st[_D][st[_P]] == _BREAK:
            raise _derr(st[_P], "break where a map value was expected")
        m[k] = _item(st, left)
    return m


def _indef_string(st, mt):
    # Chunks up to the break, each a definite string of the parent's major type (§3.2.3).
    chunks = []
    while not _at_break(st):
        p = st[_P]
        b = st[_D][p]
        if b >> 5 != mt:
            raise _derr(p, "%s chunk inside an indefinite-length %s" % (_NAMES[b >> 5], _NAMES[mt]))
        if b & 31 == 31:
            raise _derr(p, "nested indefinite-length string chunk")
        chunks.append(_item(st, 0))  # a definite string: no nesting
    if mt == 2:
        return b"".join(chunks)
    return "".join(chunks)


def _utf8_strict_probe():
    try:
        str(b"\xed\xa0\x80", "utf-8")  # an encoded UTF-16 surrogate: invalid UTF-8
    except UnicodeError:
        return False
    return True


_CHECK_UTF8 = _utf8_strict_probe()  # True on MicroPython, whose str() is lax


def _utf8_strict(d, p, end, p0):
    # Runs where str() already accepted the bytes (so lead/continuation structure is right)
    # and rejects what MicroPython lets through but RFC 3629 forbids: overlong forms (C0,
    # C1, E0 80..9F, F0 80..8F), surrogates (ED A0..BF), code points above U+10FFFF.
    while p < end:
        c = d[p]
        if c < 0x80:
            p += 1
            continue
        if c < 0xC2 or c > 0xF4 or p + 1 >= end:
            raise _derr(p0, "text string is not valid UTF-8")
        c2 = d[p + 1]
        if c == 0xE0 and c2 < 0xA0 or c == 0xED and c2 > 0x9F \
                or c == 0xF0 and c2 < 0x90 or c == 0xF4 and c2 > 0x8F:
            raise _derr(p0, "text string is not valid UTF-8")
        p += 2 if c < 0xE0 else 3 if c < 0xF0 else 4


def _half_manual(h):
    # IEEE 754 binary16 bits -> float, for struct modules without 'e' (MicroPython < 1.23).
    e = (h >> 10) & 31
    m = h & 1023
    if e == 0:
        v = m * 5.960464477539063e-08  # m * 2**-24
    elif e == 31:
        v = float("nan") if m else float("inf")
    else:
        v = (1024 + m) * 2.0 ** (e - 25)
    return -v if h & 0x8000 else v


try:
    struct.calcsize(">e")
    _HAVE_E = True
except Exception:  # no 'e' in this struct module
    _HAVE_E = False


def _as_buffer(data):
    if type(data) is bytes:
        return data
    if isinstance(data, str):
        raise TypeError("CBOR decodes bytes, not str")
    mv = memoryview(data)
    if getattr(mv, "format", "B") != "B":  # CPython memoryview of wider items
        mv = mv.cast("B")
    return mv


def _decode(st, max_depth):
    try:
        return _item(st, max_depth)
    except RuntimeError:  # C stack exhausted (MicroPython) or recursion limit (CPython)
        raise _derr(st[_P], "nesting too deep for this interpreter's stack")
    except IndexError:  # defensive: every read is bounds-checked first
        raise _derr(st[_P], "truncated item")


def decode_one(data, offset=0, max_depth=DEFAULT_MAX_DEPTH):
    """Decode the item that starts at `offset`; return (value, end offset). Bytes after the
    item are left alone, so this walks a sequence of items. Error offsets count from the
    start of `data`. Raises CBORDecodeError."""
    d = _as_buffer(data)
    if not 0 <= offset <= len(d):
        raise ValueError("offset %d outside the data" % offset)
    st = [d, offset, len(d)]
    return _decode(st, max_depth), st[_P]


def loads(data, max_depth=DEFAULT_MAX_DEPTH):
    """Decode exactly one CBOR item that fills all of `data` (bytes, bytearray or
    memoryview). Raises CBORDecodeError for malformed, truncated, too deeply nested or
    trailing data, and never another exception for bad input."""
    if type(data) is not bytes:
        data = _as_buffer(data)
    st = [data, 0, len(data)]
    v = _decode(st, max_depth)
    if st[_P] != st[_END]:
        raise _derr(st[_P], "%d trailing bytes after the item" % (st[_END] - st[_P]))
    return v
