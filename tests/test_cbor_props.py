"""Property tests of protocol/cbor.py against cbor2 (the reference), on CPython and,
through tests/mp_cbor_agree.py, on the MicroPython unix port.

Properties: our encoding is byte-identical to cbor2.dumps(x, canonical=True); we decode
whatever cbor2 writes (canonical or not) to the value it came from; decode(encode(x)) == x;
and arbitrary or mutated bytes decode or raise CBORDecodeError, nothing else. The
MicroPython side must re-encode cbor2's output to cbor2's canonical bytes and must give
the same outcome, line for line, as CPython on fuzzed input.
"""

import binascii
import random
import struct
import subprocess
from pathlib import Path

import cbor2
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from conftest import ROOT, micropython_command
from mp_cbor_agree import outcome
from protocol import cbor

SETTINGS = settings(max_examples=400, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

# --- strategies ---------------------------------------------------------------------
ints = st.integers(min_value=-2**64, max_value=2**64 - 1)
floats = st.floats() | st.floats(width=32) | st.floats(width=16)
simples = (st.integers(0, 19) | st.integers(32, 255)).map(cbor.Simple)
scalars = (ints | floats | st.text() | st.binary() | st.booleans() | st.none()
           | st.just(cbor.undefined) | simples)
keys = ints | st.text(max_size=6)


def _containers(children):
    return (st.lists(children, max_size=5)
            | st.lists(children, max_size=3).map(tuple)
            | st.dictionaries(keys, children, max_size=5)
            | st.builds(cbor.Tag, st.integers(0, 2**64 - 1), children))


values = st.recursive(scalars, _containers, max_leaves=16)


def depth(v):
    if isinstance(v, (list, tuple)):
        return 1 + max((depth(x) for x in v), default=0)
    if isinstance(v, dict):
        return 1 + max((depth(x) for x in v.values()), default=0)
    if isinstance(v, cbor.Tag):
        return 1 + depth(v.value)
    return 0


def to_cbor2(v):
    if isinstance(v, cbor.Tag):
        return cbor2.CBORTag(v.tag, to_cbor2(v.value))
    if isinstance(v, cbor.Simple):
        return cbor2.CBORSimpleValue(v.value)
    if v is cbor.undefined:
        return cbor2.undefined
    if isinstance(v, (list, tuple)):
        return [to_cbor2(x) for x in v]
    if isinstance(v, dict):
        return {k: to_cbor2(x) for k, x in v.items()}
    return v


def same(a, b):
    """Equality that tells 1 from True from 1.0 and -0.0 from 0.0, with NaN == NaN and
    tuples read back as lists."""
    if isinstance(a, tuple):
        a = list(a)
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (a != a and b != b) or struct.pack(">d", a) == struct.pack(">d", b)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, cbor.Tag):
        return a.tag == b.tag and same(a.value, b.value)
    return a == b


def decodes_or_raises(data):
    try:
        cbor.loads(data)
    except cbor.CBORDecodeError as e:
        assert str(e).startswith("offset "), str(e)


# --- CPython properties ---------------------------------------------------------------
@SETTINGS
@given(values)
def test_dumps_equals_cbor2_canonical(x):
    assume(depth(x) <= cbor.DEFAULT_MAX_DEPTH)
    assert cbor.dumps(x) == cbor2.dumps(to_cbor2(x), canonical=True)


@SETTINGS
@given(values)
def test_loads_reads_what_cbor2_writes(x):
    assume(depth(x) <= cbor.DEFAULT_MAX_DEPTH)
    for canonical in (True, False):
        assert same(x, cbor.loads(cbor2.dumps(to_cbor2(x), canonical=canonical)))


@SETTINGS
@given(values)
def test_round_trip_and_encoder_agree(x):
    assume(depth(x) <= cbor.DEFAULT_MAX_DEPTH)
    data = cbor.dumps(x)
    assert same(x, cbor.loads(data))
    enc = cbor.Encoder(len(data))
    enc.encode(x)
    assert enc.getvalue() == data
    if len(data) > 1:  # one byte short: refused, never grown
        small = cbor.Encoder(len(data) - 1)
        with pytest.raises(cbor.CBOREncodeError):
            small.encode(x)
        assert len(small.buffer) == len(data) - 1


@SETTINGS
@given(values)
def test_every_proper_prefix_is_rejected(x):
    assume(depth(x) <= cbor.DEFAULT_MAX_DEPTH)
    data = cbor.dumps(x)
    for n in range(len(data)):
        with pytest.raises(cbor.CBORDecodeError):
            cbor.loads(data[:n])
    with pytest.raises(cbor.CBORDecodeError):
        cbor.loads(data + b"\x00")


@SETTINGS
@given(st.floats(width=32))
def test_float32_values_never_need_a_double(x):
    # A board's floats are binary32: they must always fit in 3 or 5 bytes.
    data = cbor.dumps(x)
    assert len(data) in (3, 5)
    assert same(cbor.loads(data), x)


@SETTINGS
@given(st.binary(max_size=64))
def test_random_bytes_decode_or_raise_decode_error(data):
    decodes_or_raises(data)


@SETTINGS
@given(values, st.data())
def test_mutated_encodings_decode_or_raise_decode_error(x, data):
    enc = bytearray(cbor2.dumps(to_cbor2(x), canonical=data.draw(st.booleans())))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(enc)))
        op = data.draw(st.sampled_from(["set", "insert", "delete"]))
        b = data.draw(st.sampled_from([0x00, 0x18, 0x1B, 0x5F, 0x7F, 0x9F, 0xBF, 0xFF, 0xFB])
                      | st.integers(0, 255))
        if op == "insert":
            enc.insert(i, b)
        elif i < len(enc):
            if op == "set":
                enc[i] = b
            else:
                del enc[i]
    decodes_or_raises(bytes(enc))


# --- MicroPython agreement -------------------------------------------------------------
BOUNDARIES = [0, 1, 23, 24, 255, 256, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1, 2**32,
              2**53, 2**63, 2**64 - 1]


def random_float(rng):
    kind = rng.randrange(6)
    if kind == 0:
        return struct.unpack(">d", rng.randbytes(8))[0]
    if kind == 1:
        return struct.unpack(">f", rng.randbytes(4))[0]
    if kind == 2:
        return struct.unpack(">e", rng.randbytes(2))[0]
    if kind == 3:
        return rng.choice([0.0, -0.0, float("inf"), float("-inf"), float("nan"), 21.5, 1.1,
                           65504.0, 65520.0, 2.0**-24, 2.0**-149, 3.4028234663852886e+38])
    if kind == 4:  # a sensor value as a board holds it (float32)
        return struct.unpack("<f", struct.pack("<f", rng.uniform(-50, 150)))[0]
    return round(rng.uniform(-1000, 1000), rng.randrange(4))


def random_text(rng):
    alphabet = "az AZ09\u00e9\u00fc\u6c34\U00010151\U0010ffff\x00\x7f\u0800\ud7ff\ue000"
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(12)))


def random_value(rng, level=0):
    kind = rng.randrange(14 if level < 6 else 10)
    if kind == 0:
        return rng.randrange(24)
    if kind == 1:
        n = rng.choice(BOUNDARIES) + rng.choice([-1, 0, 0, 1])
        n = min(max(n, 0), 2**64 - 1)
        return n if rng.randrange(2) else -1 - n
    if kind == 2:
        return rng.randrange(-2**64, 2**64)
    if kind == 3:
        return random_float(rng)
    if kind == 4:
        return random_text(rng)
    if kind == 5:
        return rng.randbytes(rng.choice([0, 1, 5, 23, 24, 300]))
    if kind == 6:
        return rng.choice([True, False, None, cbor.undefined])
    if kind == 7:
        return cbor.Simple(rng.choice([0, 16, 19, 32, 100, 255]))
    if kind == 8:
        return rng.randrange(-1000, 1000)
    if kind == 9:
        return rng.choice(["temp", "", "a" * 30])
    if kind in (10, 11):
        return [random_value(rng, level + 1) for _ in range(rng.choice([0, 1, 3, 7, 25]))]
    if kind == 12:
        out = {}
        for _ in range(rng.randrange(6)):
            k = rng.choice([rng.randrange(-300, 70000), random_text(rng), rng.randrange(2**64)])
            out[k] = random_value(rng, level + 1)
        return out
    return cbor.Tag(rng.choice([0, 1, 2, 23, 24, 32, 255, 256, 65536, 2**32, 2**64 - 1]),
                    random_value(rng, level + 1))


def run_micropython(lines, tmp_path):
    path = tmp_path / "cases.hex"
    path.write_text("".join(binascii.hexlify(b).decode() + "\n" for b in lines))
    proc = subprocess.run(
        [micropython_command(), "-X", "heapsize=8M", str(ROOT / "tests" / "mp_cbor_agree.py"),
         str(ROOT), str(path)],
        capture_output=True, text=True, timeout=300, cwd=str(ROOT),
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout.splitlines()
    assert len(out) == len(lines), proc.stdout[-2000:] + proc.stderr[-2000:]
    return out


def test_micropython_reencodes_cbor2_output_byte_for_byte(tmp_path):
    rng = random.Random(8949)
    cases = [random_value(rng) for _ in range(400)]
    inputs, wanted = [], []
    for x in cases:
        canonical = cbor2.dumps(to_cbor2(x), canonical=True)
        for data in (canonical, cbor2.dumps(to_cbor2(x))):  # preferred and not
            inputs.append(data)
            wanted.append("OK " + canonical.hex())
    got = run_micropython(inputs, tmp_path)
    for data, w, g in zip(inputs, wanted, got):
        assert g == w, (data.hex(), g, w)
    # the CPython codec gives the same answers
    assert [outcome(d) for d in inputs] == wanted


def test_micropython_agrees_with_cpython_on_fuzzed_input(tmp_path):
    rng = random.Random(7049)
    inputs = []
    for _ in range(300):  # random bytes, biased towards interesting initial bytes
        inputs.append(bytes(rng.choice([rng.randrange(256), 0x9F, 0xBF, 0x5F, 0x7F, 0xFF,
                                        0x1B, 0xF9, 0x81, 0xA1, 0xC1, 0x62, 0xED, 0xC3])
                            for _ in range(rng.randrange(1, 16))))
    for _ in range(500):  # valid items, mutated
        data = bytearray(cbor2.dumps(to_cbor2(random_value(rng)), canonical=rng.random() < 0.5))
        for _ in range(rng.randrange(1, 4)):
            i = rng.randrange(len(data) + 1)
            op = rng.randrange(3)
            if op == 0:
                data.insert(i, rng.randrange(256))
            elif i < len(data):
                if op == 1:
                    data[i] = rng.randrange(256)
                else:
                    del data[i]
        inputs.append(bytes(data))
    for _ in range(100):  # valid items, truncated
        data = cbor.dumps(random_value(rng))
        inputs.append(data[:rng.randrange(len(data))])
    inputs += [b"\x81" * 10000, b"\x9b" + b"\xff" * 8, b"\x62\xc0\x80", b"\x63\xed\xa0\x80"]
    got = run_micropython(inputs, tmp_path)
    want = [outcome(d) for d in inputs]
    assert not [g for g in got if g.startswith("BAD")], [g for g in got if g.startswith("BAD")]
    assert not [w for w in want if w.startswith("BAD")]
    for data, w, g in zip(inputs, want, got):
        assert g == w, (data.hex(), g, w)
    kinds = {line.split(" ")[0] for line in got}
    assert kinds == {"OK", "ERR"}


# --- MicroPython frame sizes ------------------------------------------------------------
# MicroPython puts a function's frame on the heap, at every call, when its arguments +
# locals + stack (n_state) and 3 words per active try block exceed 11 words
# (VM_MAX_STATE_ON_STACK in py/objfun.c). That is an allocation per call and, on a
# fragmented heap, 10x the call time. Every function must stay under it except these,
# which run once per map or per dumps() call, on errors, or for unusual values:
COLD = {"_map", "_map_sorted", "<listcomp>", "_enc_fit", "_enc_subclass", "_hashable",
        "_room_error", "_utf8_strict_probe", "_half_manual"}
VM_MAX_STATE_ON_STACK = 11  # words


def _mpy_frames(data):
    """(function name, n_state, n_exc_stack) for every bytecode function of a .mpy v6."""
    pos = 4  # header: 'M', version, flags, small-int bits

    def uint():
        nonlocal pos
        v = 0
        while True:
            b = data[pos]
            pos += 1
            v = (v << 7) | (b & 0x7F)
            if not b & 0x80:
                return v

    assert data[0] == ord("M") and data[1] == 6, "unknown .mpy version"
    n_qstr, n_obj = uint(), uint()
    qstrs = []
    for _ in range(n_qstr):
        n = uint()
        if n & 1:
            qstrs.append(None)  # static qstr: a built-in name
        else:
            qstrs.append(data[pos:pos + (n >> 1)].decode())
            pos += (n >> 1) + 1

    def skip_obj():
        nonlocal pos
        kind = data[pos]
        pos += 1
        if kind <= 4:  # fun table, None, False, True, Ellipsis
            return
        n = uint()
        if kind == 10:  # tuple
            for _ in range(n):
                skip_obj()
        else:
            pos += n + (1 if kind in (5, 6) else 0)  # str/bytes carry a NUL

    for _ in range(n_obj):
        skip_obj()
    out = []

    def raw_code():
        nonlocal pos
        kind_len = uint()
        body = data[pos:pos + (kind_len >> 3)]
        pos += kind_len >> 3
        if kind_len & 3 == 0:  # bytecode: prelude signature xSSSSEAA, then xFSSKAED...
            i = 1
            z = body[0]
            s, e = (z >> 3) & 15, (z >> 2) & 1
            n = 0
            while z & 0x80:
                z = body[i]
                i += 1
                s |= (z & 0x30) << (2 * n)
                e |= (z & 0x02) << n
                n += 1
            while body[i] & 0x80:  # prelude size
                i += 1
            i += 1
            name = 0
            while True:  # function name: qstr index
                b = body[i]
                i += 1
                name = (name << 7) | (b & 0x7F)
                if not b & 0x80:
                    break
            out.append((qstrs[name] if name < len(qstrs) else None, s + 1, e))
        if kind_len & 4:
            for _ in range(uint()):
                raw_code()

    raw_code()
    return out


def test_hot_functions_keep_their_micropython_frames_on_the_c_stack(tmp_path):
    mpy = tmp_path / "cbor.mpy"
    subprocess.run([str(Path(micropython_command()).parent / "mpy-cross"), "-o", str(mpy),
                    str(ROOT / "protocol" / "cbor.py")], check=True)
    frames = _mpy_frames(mpy.read_bytes())
    names = {name for name, _, _ in frames}
    assert {"_item", "_float", "_array"} <= names, "could not read the .mpy"
    too_big = [(name, n_state, exc) for name, n_state, exc in frames
               if name not in COLD and n_state + 3 * exc > VM_MAX_STATE_ON_STACK]
    assert not too_big, "frames that MicroPython would allocate on the heap: %r" % too_big
