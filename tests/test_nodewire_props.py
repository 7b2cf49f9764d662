"""Property tests of the node's own CBOR reading (protocol/cbor_lite.py) and writing
(protocol/nodewire.py), against protocol.cbor and protocol.messages (the generic path
a UDP node no longer imports).

Reading: cbor_lite.parse_announce must give what the generic path gives (cbor.loads, the
message array and head checks, then announce_fields) on every valid ANNOUNCE, preferred
encoding or not, with any well-formed extra fields; and on mutated, truncated or
arbitrary bytes it must return the same result or raise ProtocolError exactly when the
generic path does, and never raise anything else.

Writing: write_value and BatchWriter give the bytes cbor.dumps gives for every value a
node publishes.
"""

import cbor2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import cbor, cbor_lite, nodewire
from protocol.messages import Announce, Batch, Event, Status

SETTINGS = settings(max_examples=500, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def reference(data):
    """The node's ANNOUNCE parsing through protocol.cbor (what parse_announce was)."""
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
    if h & 31 != 4:
        return None
    if len(values) < 8:
        raise nodewire.ProtocolError("fields")
    return nodewire.announce_fields(values[1:])


def outcome(fn, data):
    try:
        return ("ok", fn(data))
    except nodewire.ProtocolError:
        return ("refused", None)


def agree(data):
    want = outcome(reference, data)
    got = outcome(cbor_lite.parse_announce, data)   # anything but ProtocolError fails the test
    assert got == want, (data.hex(), got, want)
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
       st.integers(0, 2**32 - 1), st.integers(0, 86400), wall,
       st.lists(anything, max_size=3))
def test_valid_announces_read_as_the_generic_path(base, host, port, flt, rate, lease, wall_ms,
                                                  extra):
    a = Announce(base, host, port, flt, rate, lease, wall_ms)
    data = a.encode() if not extra else announce_bytes(a.to_fields()[1:], extra)
    got = agree(data)
    if len(base) <= 64 and len(host) <= 64:
        assert got == ("ok", (base, host, port, flt, rate, lease, wall_ms))
    # cbor2's encoding (not always preferred: other float widths, other key order)
    assert agree(cbor2.dumps([4, base, host, port, flt, rate, lease, wall_ms])) == got


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
