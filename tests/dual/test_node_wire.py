# The node's wire path: protocol/nodewire.py (EventWriter, StatusWriter, DEADLETTER),
# protocol/cbor_lite.py (ANNOUNCE parsing; a chain node's control messages and event
# ids) and firmware/node.py publishing through them. Every datagram a node sends
# must be byte-identical to the generic encoding (protocol.messages), signed or not,
# and a publish must not allocate on MicroPython.
# Plain functions with bare asserts: pytest runs them on CPython and
# tests/test_dual_on_micropython.py under the MicroPython unix port.
import sys

from protocol import cbor, cbor_lite, codes, messages, nodewire
from protocol.auth import Key, verify
from protocol.messages import Event, Status, Batch, Announce, Enumerate, DeadLetter
from firmware import config
from firmware.node import Node
from spec_vectors import load

from test_firmware_node import FakeHal, run_for, announce, STATIC

_MP = sys.implementation.name == "micropython"
KEYS = (codes.CTR_PUBLISHED, codes.CTR_DROPPED, codes.CTR_QUEUE, codes.CTR_FREE_MEM,
        codes.CTR_RATE_SHED, codes.CTR_RX_BAD, codes.CTR_SEND_ERRORS, codes.CTR_RESUBSCRIBED)


def _regenerated(data):
    # the generic encoding of what `data` decodes to
    msg = messages.decode(data)
    if isinstance(msg, Batch):
        return cbor.dumps(msg.to_fields())
    return msg.encode()


def _node(sensors, **kw):
    d = {"node": 7, "bases": [list(STATIC)], "status_every_ms": 700, "sensors": sensors}
    for k in kw:
        d[k] = kw[k]
    hal = FakeHal()
    node = Node(config.from_dict(d), hal)
    node.boot()
    return node, hal


SENSORS = [{"topic": "n", "kind": "counter", "period_ms": 50, "start": 20, "step": 1},
           {"topic": "big", "kind": "counter", "period_ms": 70, "start": 4294967290, "step": 3},
           {"topic": "neg", "kind": "counter", "period_ms": 90, "start": -30, "step": 7},
           {"topic": "wave/sin", "kind": "sine", "period_ms": 60},
           {"topic": "wave/saw", "kind": "sawtooth", "period_ms": 80, "low": -2.0, "high": 7.5},
           {"topic": "half", "kind": "constant", "period_ms": 110, "value": 21.5},
           {"topic": "single", "kind": "constant", "period_ms": 130, "value": 0.1},
           {"topic": "flag", "kind": "constant", "period_ms": 150, "value": True},
           {"topic": "off", "kind": "constant", "period_ms": 170, "value": False},
           {"topic": "text", "kind": "constant", "period_ms": 190, "value": "on, 21.5 °C"},
           {"topic": "imu", "kind": "imu", "period_ms": 230}]


def test_node_datagrams_are_the_generic_encoding():
    node, hal = _node(SENSORS)
    announce(node, hal, base="f", filters=["wave/#", "flag"], port=6001)   # skips
    announce(node, hal, base="r", filters=["#"], rate=5, port=6002)        # rate cap
    run_for(node, hal, 5000)
    kinds = {}
    for addr, data in hal.sent:
        assert data == _regenerated(data), (addr, data)
        m = messages.decode(data)
        kinds[type(m).__name__] = kinds.get(type(m).__name__, 0) + 1
        if isinstance(m, Event) and m.topic == "text":
            assert m.value == "on, 21.5 °C"
    assert kinds["Event"] > 300 and kinds["Status"] >= 21
    evs = [messages.decode(d) for a, d in hal.sent if a == ("10.0.0.9", 6001)]
    assert max([e.skip for e in evs if isinstance(e, Event)]) > 0          # skips written
    vals = [type(messages.decode(d).value).__name__ for a, d in hal.sent
            if a == STATIC and isinstance(messages.decode(d), Event)]
    for t in ("int", "float", "bool", "str", "dict"):
        assert t in vals, t


def test_batch_and_signed_datagrams_are_the_generic_encoding():
    key = "00112233445566778899aabbccddeeff"
    node, hal = _node(SENSORS[:6], key=key, batch_ms=200)
    announce(node, hal, base="f", filters=["wave/#"], port=6001)
    run_for(node, hal, 3000)
    k = Key(bytes(bytearray(range(0x00, 0x100, 0x11))))
    n = 0
    for addr, data in hal.sent:
        inner = verify(messages.decode(data), {7: k})
        assert inner == _regenerated(inner)
        n += 1
    assert n > 20
    # signed single events too
    node, hal = _node(SENSORS, key=key)
    run_for(node, hal, 1000)
    for addr, data in hal.sent:
        inner = verify(messages.decode(data), {7: k})
        assert inner == _regenerated(inner)


def test_status_writer_matches_status_encode():
    w = nodewire.StatusWriter(4000000000, "0.1.0-test", KEYS)
    assert w.keys == sorted(KEYS)
    big = [0, 23, 24, 255, 256, 65535, 65536, 4294967295, 4294967296, 18446744073709551615]
    for last in (None, 0, 24, 70000, 4294967296):
        for tb in (None, 0, 1767225600000):
            for hop in (None, 0, 30, 255):
                for v in big:
                    vals = [v] + list(range(1, len(w.keys) - 1)) + [v]
                    n = w.status(3, last, 2, 1, v, tb, 17, vals, hop)
                    ctr = dict(zip(w.keys, vals))
                    want = Status(4000000000, 3, last, 2, 1, v, tb, "0.1.0-test", 17, ctr, hop).encode()
                    assert n == len(want) and bytes(w.view()) == want, (last, tb, hop, v)
    # with the subscription's ANNOUNCE instance (hop null before it when there is none)
    for inst in (0, 23, 65536, 4294967295):
        for hop in (None, 2):
            for v in (0, 4294967296, 18446744073709551615):
                vals = [v] + list(range(1, len(w.keys) - 1)) + [v]
                n = w.status(3, 70000, 2, 1, v, 1767225600000, 17, vals, hop, inst)
                want = Status(4000000000, 3, 70000, 2, 1, v, 1767225600000, "0.1.0-test", 17,
                              dict(zip(w.keys, vals)), hop, inst).encode()
                assert n == len(want) and bytes(w.view()) == want, (inst, hop, v)
    # the spec's STATUS vectors (docs/PROTOCOL.md) come out of the writer byte for byte
    seen = 0
    for name, raw in load().items():
        try:
            m = messages.decode(raw)
        except messages.ProtocolError:
            continue
        if not isinstance(m, Status) or m.extra or len(m.counters) > 23:
            continue
        if m.firmware != m.firmware.strip() or raw != m.encode():
            continue
        sw = nodewire.StatusWriter(m.node, m.firmware, list(m.counters))
        vals = [m.counters[k] for k in sw.keys]
        sw.status(m.epoch, m.last_seq, m.skip, m.since, m.uptime, m.time_base, m.caps, vals, m.hop,
                  m.instance)
        assert bytes(sw.view()) == raw, name
        seen += 1
    assert seen >= 1


def test_event_writer_skip_and_views():
    w = nodewire.EventWriter(7, 3)
    tb = cbor.dumps("temp")
    body = w.body(300, 1000, tb, 21.5)
    assert w.set_skip(0) == body and bytes(w.view()) == Event(7, 3, 300, 1000, "temp", 21.5).encode()
    w.set_skip(70000)
    assert bytes(w.view()) == Event(7, 3, 300, 1000, "temp", 21.5, 70000).encode()
    assert w.set_skip(0) == body and bytes(w.view()) == Event(7, 3, 300, 1000, "temp", 21.5).encode()
    v1 = w.view()
    assert w.view() is v1                              # one memoryview per length, reused
    w.body(301, 1001, tb, 22.5)
    assert bytes(v1) == Event(7, 3, 301, 1001, "temp", 22.5).encode()


def test_view_cache_settles_on_the_lengths_in_use():
    # the early lengths (short seq and t heads, every topic) fill the cache; the lengths
    # of the steady state must still end up cached, or every publish allocates a view
    w = nodewire.EventWriter(7, 3)
    for k in range(40):                                # 40 lengths, more than the cache holds
        w.event(k, k, "t" * (k + 1), 1)
        w.view()
    assert len(w._views) <= 24
    topic = "room/" + "x" * 50                         # a length none of the above had
    w.event(70000, 5000000, topic, 21.5)
    v = w.view()
    w.event(70001, 5000100, topic, 22.5)
    assert w.view() is v                               # cached again
    assert bytes(v) == Event(7, 3, 70001, 5000100, topic, 22.5).encode()


def test_parse_announce_checks_like_messages():
    good = Announce("b", "10.0.0.1", 6000, ["a/+", "#"], 5, 30, 1767225600000)
    assert cbor_lite.parse_announce(good.encode()) == (
        "b", "10.0.0.1", 6000, ["a/+", "#"], 5, 30, 1767225600000, None)
    again = Announce("b", "10.0.0.1", 6000, ["a/+", "#"], 5, 30, 1767225600000, 4000000000)
    assert cbor_lite.parse_announce(again.encode())[7] == 4000000000
    assert cbor_lite.parse_announce(Event(1, 1, 1, 1, "x", 1).encode()) is None
    for bad in (b"", b"\x80", cbor.dumps({"a": 1}), cbor.dumps([4, "b"]),
                cbor.dumps([0x44, "b", "", 6000, ["#"], 0, 30, None]),
                cbor.dumps([4, "", "", 6000, ["#"], 0, 30, None]),
                cbor.dumps([4, "b", "", 70000, ["#"], 0, 30, None]),
                cbor.dumps([4, "b", "", 6000, ["a/#/b"], 0, 30, None]),
                cbor.dumps([True, "b", "", 6000, ["#"], 0, 30, None]),
                cbor.dumps([4, "b", "", 6000, ["#"], 0, 30, None, 2**32]),
                cbor.dumps([4, "b", "", 6000, ["#"], 0, 30, None, -1]),
                cbor.dumps([4, "b", "", 6000, ["#"], 0, 30, None, "1"])):
        try:
            cbor_lite.parse_announce(bad)
            assert False, bad
        except nodewire.ProtocolError:
            pass
        try:
            messages.decode(bad)
            assert False, bad
        except messages.ProtocolError:
            pass
    assert messages.ProtocolError is nodewire.ProtocolError


def test_subscriber_match_flags_follow_filters():
    node, hal = _node(SENSORS[:4])
    announce(node, hal, base="f", filters=["wave/#", "big"], port=6001)
    sub = node.subs.find("f")
    assert list(sub.want) == [0, 1, 0, 1]
    announce(node, hal, base="f", filters=["n"], port=6001)           # refreshed filters
    assert list(node.subs.find("f").want) == [1, 0, 0, 0]
    assert list(node.subs.entries[0].want) == [1, 1, 1, 1]            # static: "#"


def _heap_per_publish(sensor, value, subs):
    import gc
    bases = []
    for i in range(subs):
        bases.append(["127.0.0.1", 5684 + i])
    d = {"node": 7, "bases": bases, "status_every_ms": 86400000, "sensors": [sensor]}
    hal = FakeHal()
    hal.udp_send = lambda sock, addr, data: True
    node = Node(config.from_dict(d), hal)
    node.boot()
    for i in range(30):
        node._publish(0, value, 1000 + i)
    gc.collect()
    gc.disable()
    a = gc.mem_alloc()
    for i in range(200):
        node._publish(0, value, 2000 + i)
    b = gc.mem_alloc()
    gc.enable()
    return (b - a) / 200


def test_publish_allocates_nothing_on_micropython():
    if not _MP:
        return   # heap accounting is a MicroPython measurement
    c = {"topic": "temp", "kind": "counter", "period_ms": 10}
    assert _heap_per_publish(c, 1234, 1) == 0
    assert _heap_per_publish(c, 1234, 3) == 0
    assert _heap_per_publish(c, 21.5, 1) == 0          # half-exact float: the fast path
    assert _heap_per_publish(c, True, 2) == 0


def test_status_allocates_little_on_micropython():
    if not _MP:
        return
    import gc
    node, hal = _node(SENSORS[:1])
    hal.udp_send = lambda sock, addr, data: True
    sub = node.subs.entries[0]
    node.next_seq = 1000
    for _ in range(5):
        node._send_status(sub)
    gc.collect()
    gc.disable()
    a = gc.mem_alloc()
    for _ in range(100):
        node._send_status(sub)
    b = gc.mem_alloc()
    gc.enable()
    # the old path built a Status, a field list and a counters dict: ~1 KB each
    assert (b - a) / 100 <= 16, (b - a) / 100


def test_private_constants_agree_with_codes():
    if _MP:
        return   # const() names starting with "_" are not module attributes there
    from firmware import node as node_mod
    assert (nodewire._VERSION, nodewire._KIND_BITS, nodewire._KIND_MASK) == (
        codes.VERSION, codes.KIND_BITS, codes.KIND_MASK)
    assert (nodewire._KIND_EVENT, nodewire._KIND_BATCH, nodewire._KIND_STATUS,
            nodewire._KIND_ANNOUNCE) == (codes.KIND_EVENT, codes.KIND_BATCH, codes.KIND_STATUS,
                                         codes.KIND_ANNOUNCE)
    assert (cbor_lite._VERSION, cbor_lite._KIND_BITS, cbor_lite._KIND_MASK,
            cbor_lite._KIND_ANNOUNCE) == (codes.VERSION, codes.KIND_BITS, codes.KIND_MASK,
                                          codes.KIND_ANNOUNCE)
    assert (cbor_lite._KIND_EVENT, cbor_lite._KIND_BATCH, cbor_lite._KIND_ENUMERATE) == (
        codes.KIND_EVENT, codes.KIND_BATCH, codes.KIND_ENUMERATE)
    assert cbor_lite._MAX_U32 == nodewire._MAX_U32 == 2**32 - 1
    assert cbor_lite._MAX_U64 == nodewire._MAX_U64 == 2**64 - 1
    assert nodewire._KIND_DEADLETTER == codes.KIND_DEADLETTER
    assert nodewire._MAX_DATAGRAM == codes.MAX_DATAGRAM == node_mod._MAX_DATAGRAM
    assert node_mod._MAX_BODY == codes.MAX_DATAGRAM - 9
    assert nodewire.head(nodewire._KIND_BATCH) == messages.head(codes.KIND_BATCH)
    assert (node_mod._CAP_UDP, node_mod._CAP_AUTH, node_mod._CAP_TIME, node_mod._CAP_BATCH) == (
        codes.CAP_UDP, codes.CAP_AUTH, codes.CAP_TIME, codes.CAP_BATCH)
    assert node_mod._STATUS_KEYS == (
        codes.CTR_PUBLISHED, codes.CTR_DROPPED, codes.CTR_QUEUE, codes.CTR_FREE_MEM,
        codes.CTR_RATE_SHED, codes.CTR_RX_BAD, codes.CTR_SEND_ERRORS, codes.CTR_RESUBSCRIBED)
    assert list(node_mod._STATUS_KEYS) == sorted(node_mod._STATUS_KEYS)
    assert node_mod._BATCH_MAX == config.BATCH_MAX


# --- writing without protocol.cbor: values and BATCH --------------------------------------

F32 = 0.10000000149011612      # exact in single precision
VALUES = [0, 1, 23, 24, 255, 256, 65535, 65536, 4294967295, 4294967296, 18446744073709551615,
          -1, -24, -25, -256, -257, -65537, -4294967297, -18446744073709551616,
          0.0, -0.0, 21.5, -21.5, 1.5, 65504.0, 65520.0, 5.960464477539063e-08, 6.0e-08,
          1e-7, F32, 0.1, 3.4028234663852886e+38, 1e39, 1.401298464324817e-45, 1e-300, 5e-324,
          float("inf"), float("-inf"), float("nan"),
          True, False, None, "", "a", "on, 21.5 °C", "x" * 23, "x" * 24, "€" * 100,
          b"", b"\x00\xff", bytearray(b"raw"), b"y" * 256,
          {}, {"x": 0.5, "y": -1, "z": 70000}, {"t": 2150, "rh": 4500},
          {"b": 1, "aa": 2, "a": 3, "é": 4, "z": "text", "n": None, "f": False, "by": b"\x01"},
          # not EVENT values (protocol.cbor writes these, imported on first use)
          [1, 2.5, "x"], {"m": {"n": 1}}, {1: "a", 2: "b"}, {"a": [1]}]


def test_write_value_is_the_generic_encoding():
    buf = bytearray(700)
    for v in VALUES:
        for p in (0, 3):
            n = nodewire.write_value(buf, p, v)
            assert bytes(buf[p:n]) == cbor.dumps(v), (v, bytes(buf[p:n]))
    assert nodewire.text("temp") == cbor.dumps("temp")
    assert nodewire.text("é" * 30) == cbor.dumps("é" * 30)
    for v in (18446744073709551616, -18446744073709551617):
        try:
            nodewire.write_value(buf, 0, v)
            assert False, v
        except nodewire.EncodeError:
            pass
    for v in ("x" * 700, b"x" * 700, {"a": "x" * 700}):   # does not fit: EncodeError
        try:
            nodewire.write_value(buf, 0, v)
            assert False, v
        except nodewire.EncodeError:
            pass
    try:
        nodewire.write_value(buf, 690, 1)                    # less than 16 bytes left
        assert False
    except nodewire.EncodeError:
        pass


def _batch(readings, node=7, epoch=3, seq0=100, skip=0, size=1400):
    # readings: (t, topic, value) -> the BatchWriter's bytes
    w = nodewire.BatchWriter(node, epoch, size)
    w.begin(seq0, readings[0][0], len(readings), skip)
    for t, topic, value in readings:
        w.add(t, cbor.dumps(topic), value)
    n = w.end()
    assert n == w.length == len(w.view())
    return bytes(w.view())


def test_batch_writer_is_the_generic_encoding_for_every_value_type():
    readings = []
    t = 5000
    for i in range(len(VALUES)):
        readings.append((t, "s/%d" % (i % 7), VALUES[i]))
        t += i * 37
    for skip in (0, 1, 24, 70000):
        for node, epoch, seq0 in ((7, 3, 100), (4000000000, 70000, 4294967296)):
            got = _batch(readings, node, epoch, seq0, skip)
            want = Batch(node, epoch, seq0, readings, skip)
            assert got == cbor.dumps(want.to_fields()), (skip, node)
            f = cbor.loads(got)     # null, arrays...: CBOR, not all of them valid readings
            assert f[0] == codes.KIND_BATCH and f[3] == seq0 and len(f[5]) == 3 * len(readings)
            assert f[6:] == ([skip] if skip else [])
    # every count up to the readings array's 2-byte head, one value type each
    for n in (1, 7, 8, 60):
        rs = [(1000 + 3 * i, "t", VALUES[i % len(VALUES)]) for i in range(n)]
        assert _batch(rs, seq0=0) == cbor.dumps(Batch(7, 3, 0, rs).to_fields())


def test_batch_writer_refuses_what_does_not_fit():
    rs = [(1000 + i, "temp/%d" % i, 21.5 + i) for i in range(40)]
    full = cbor.dumps(Batch(7, 3, 0, rs).to_fields())
    for size in (len(full), len(full) - 1, 100):
        try:
            got = _batch(rs, seq0=0, size=size)
            assert size == len(full) and got == full, size
        except nodewire.EncodeError:
            assert size < len(full), size
    try:
        _batch([(0, "t", "x" * 2000)])
        assert False
    except nodewire.EncodeError:
        pass
    try:   # the skip does not fit
        _batch(rs, seq0=0, skip=70000, size=len(full) + 2)
        assert False
    except nodewire.EncodeError:
        pass


def test_node_batches_with_every_value_type_are_the_generic_encoding():
    node, hal = _node(SENSORS, batch_ms=300)
    announce(node, hal, base="f", filters=["wave/#", "flag", "text", "imu"], port=6001)
    announce(node, hal, base="r", filters=["#"], rate=7, port=6002)
    run_for(node, hal, 4000)
    node.finish()
    types = {}
    batches = 0
    for addr, data in hal.sent:
        assert data == _regenerated(data), (addr, data)
        m = messages.decode(data)
        if isinstance(m, Batch):
            batches += 1
            for r in m.readings:
                types[type(r[2]).__name__] = 1
    assert batches > 30
    for t in ("int", "float", "bool", "str", "dict"):
        assert t in types, t
    assert node.dropped == 0 and node.send_errors == 0


def test_node_splits_a_batch_too_big_for_a_datagram():
    big = "x" * 200
    sensors = []
    for i in range(8):
        sensors.append({"topic": "t%d" % i, "kind": "constant", "period_ms": 50, "value": big})
    node, hal = _node(sensors, batch_ms=10000)
    run_for(node, hal, 200)      # 20 readings of ~205 bytes: 1,400 bytes hold 6
    node.finish()
    seqs = []
    for addr, data in hal.sent:
        assert len(data) <= 1400
        assert data == _regenerated(data)
        m = messages.decode(data)
        if isinstance(m, Batch):
            seqs.extend(range(m.seq0, m.seq0 + len(m.readings)))
    assert seqs == list(range(node.published)) and node.dropped == 0


# --- reading ANNOUNCE without protocol.cbor -----------------------------------------------

def test_parse_announce_reads_the_spec_vectors():
    seen = 0
    for name, raw in load().items():
        try:
            m = messages.decode(raw)
        except messages.ProtocolError:
            m = None
        if isinstance(m, Announce):
            assert cbor_lite.parse_announce(raw) == (m.base, m.host, m.port, list(m.filters),
                                                    m.max_rate, m.lease, m.wall_ms,
                                                    m.instance), name
            assert cbor_lite.parse_announce(bytearray(raw)) == cbor_lite.parse_announce(raw)
            assert cbor_lite.parse_announce(memoryview(raw)) == cbor_lite.parse_announce(raw)
            seen += 1
        elif m is not None:
            assert cbor_lite.parse_announce(raw) is None, name    # another kind: ignored
        else:
            _refused(raw)
    assert seen >= 2


def _refused(raw):
    try:
        cbor_lite.parse_announce(raw)
    except nodewire.ProtocolError:
        return
    assert False, raw


# hex: each is refused by protocol.cbor.loads() or by the ANNOUNCE checks
HOSTILE = [
    "", "80", "9f", "9fff", "00", "a0", "1b", "88", "881c", "9b0000000000000001",
    "9bffffffffffffffff04", "82047bffffffffffffffff", "8204", "8220",   # head: negative
    "8204f5", "82f504", "8218ff", "821820", "8204ff", "82047f", "82047f61ff",
    "82047f6161", "82047f626161ff", "82047f616140ff", "82045f4161ff",
    "8204c1", "8204dc00", "8204f818", "8204fc", "82049f", "8204bf61", "8204bf6161ff",
    "8204a1818080", "8204a1c1a000", "8204a26161", "8204626180", "820461c0", "8204eda080",
    "8204" + "81" * 15 + "00", "9f04" + "9f" * 20, "8204" + "c1" * 20 + "00",
    "880461626019177081612300183cf6ff",            # trailing byte
    "870461626019177081612300183c",                # 6 fields
    "880461626019177081612300183cf9",              # wall_ms: truncated float
    "880461626019177081612300183cf93c00",          # wall_ms: a float
    "880461626019177081612300183c20",              # wall_ms: negative
    "8804616260191770816123001a00015181f6",        # lease > 86400
    "88046162601a0001000081612300183cf6",          # port > 65535
    "8804606019177081612300183cf6",                # empty base
    "88046162601917709161236123612361236123612361236123612361236123612361236123612361"
    "23612300183cf6",                                 # 17 filters
    "88046162601917709f6123612361236123612361236123612361236123612361236123612361236123"
    "6123ff00183cf6",                                 # 17 filters, indefinite
    "88046162601917708161a500183cf6",              # a filter that is not UTF-8
    "8804616260191770816361232f6100183cf6",        # filter "#/a"
    "88046162601917708181612300183cf6",            # a filter inside an array
    "8804a06019177081612300183cf6",                # base: a map
    "890461626019177081612300183cf6c0",            # instance: a tag without item
    "890461626019177081612300183cf6a1808080",      # instance: a map with an array key
    "890461626019177081612300183cf681f6",          # instance: an array
    "8a0461626019177081612300183cf6f6c0",          # extra field: a tag without item
    "8a0461626019177081612300183cf6f6a1808080",    # extra field: map with array key
]


def test_parse_announce_refuses_hostile_datagrams():
    import binascii
    for h in HOSTILE:
        _refused(binascii.unhexlify(h))
    # deep nesting in an extra field: 16 levels with the message's array are accepted,
    # 17 refused (as protocol.cbor.loads())
    ok = "8a0461626019177081612300183cf6f6"         # instance null, then the extra field
    for t in ("81", "c1", "a16161"):
        assert cbor_lite.parse_announce(binascii.unhexlify(ok + t * 15 + "00"))[0] == "b"
        _refused(binascii.unhexlify(ok + t * 16 + "00"))
    # well-formed extras of any type are ignored; other kinds are ignored
    extra = cbor.dumps([4, "b", "", 6000, ["#"], 0, 30, None, 17, {"k": [1.5, None]},
                        cbor.Tag(1, 2), -5, b"x", cbor.Simple(99), {1: 2}, "é"])
    assert cbor_lite.parse_announce(extra) == ("b", "", 6000, ["#"], 0, 30, None, 17)
    assert cbor_lite.parse_announce(cbor.dumps([9, {"a": [1, 2]}, 1.5])) is None
    # indefinite-length message, filters and text (any well-formed CBOR is accepted)
    indef = binascii.unhexlify("9f047f6162ff60191770" "9f7f6123ff612bff" "0000f6ff")
    assert cbor_lite.parse_announce(indef) == ("b", "", 6000, ["#", "+"], 0, 0, None, None)
    # non-preferred heads
    long = binascii.unhexlify("88" "1804" "7801" "62" "5800" "1a00001770" "8161" "23"
                              "1b0000000000000000" "1900" "1e" "1b000001a209b53400")
    long = long.replace(b"\x58\x00", b"\x78\x00")
    assert cbor_lite.parse_announce(long) == ("b", "", 6000, ["#"], 0, 30, 1795459200000, None)


def test_parse_announce_allocates_little_on_hostile_input():
    if not _MP:
        return
    import binascii
    import gc
    worst = 0
    datagrams = [binascii.unhexlify(h) for h in HOSTILE]
    datagrams.append(b"\x88\x04\x7f" + b"\x60" * 1300 + b"\xff")           # 1,300 empty chunks
    datagrams.append(b"\x88\x04\x7f" + b"\x61a" * 450 + b"\xff" + b"\x60\x01\x81\x61#\x00\x00\xf6")
    datagrams.append(b"\x82\x04\x9b\x00\x00\x00\x00\xff\xff\xff\xff")      # 4 G items declared
    datagrams.append(b"\x82\x04\x7b\x00\x00\x00\x00\xff\xff\xff\xff")      # 4 GB of text declared
    for d in datagrams:
        gc.collect()
        gc.disable()
        a = gc.mem_alloc()
        try:
            cbor_lite.parse_announce(d)
        except nodewire.ProtocolError:
            pass
        b = gc.mem_alloc()
        gc.enable()
        worst = max(worst, b - a - 2 * len(d))
    # the decoded strings (at most the datagram twice over: bytes, then text), at most 16
    # filters and an error message with the bad value
    assert worst <= 3072, worst


# --- a chain node's reading without protocol.messages: control messages, event ids -------

def _fails(fn, raw):
    try:
        fn(raw)
    except nodewire.ProtocolError:
        return
    assert False, (fn, raw)


def _uhex(h):
    import binascii
    return binascii.unhexlify(h.replace(" ", ""))


def test_parse_control_and_event_ids_read_the_spec_vectors():
    kinds = {}
    for name, raw in load().items():
        m = messages.decode(raw)        # every vector of the spec is a valid message
        k = raw[1]
        kinds[k] = 1
        ctl = cbor_lite.parse_control(raw)
        ids = cbor_lite.event_ids(raw)
        assert cbor_lite.parse_control(bytearray(raw)) == ctl
        assert cbor_lite.event_ids(memoryview(raw)) == ids
        if isinstance(m, Announce):
            assert ctl == (4, (m.base, m.host, m.port, list(m.filters), m.max_rate, m.lease,
                               m.wall_ms, m.instance)), name
            assert ctl[1] == cbor_lite.parse_announce(raw)
        elif isinstance(m, Enumerate):
            assert ctl == (codes.KIND_ENUMERATE, m.request), name
            assert cbor_lite.parse_announce(raw) is None
        else:
            assert ctl == (k, None), name
        if isinstance(m, Event):
            assert ids == (m.node, m.epoch, m.seq, 1), name
        elif isinstance(m, Batch):
            assert ids == (m.node, m.epoch, m.seq0, len(m.readings)), name
        else:
            assert ids is None, name
    for k in (1, 2, 4, 8):
        assert k in kinds, k


def test_parse_control_checks_enumerate_as_messages_does():
    good = [("820801", 1), ("82081a ffffffff", 4294967295), ("820800", 0),
            ("8208 1b 00000000 00000005", 5),           # not preferred: accepted
            ("8308 17 f6", 23), ("8408 18 18 81 00 a0", 24),   # extra fields: ignored
            ("9f 08 19 0100 ff", 256), ("9f 08 01 9f ff 7f ff ff", 1)]
    bad = ["8108", "9f08ff",                             # no request
           "8208 1b 0000000100000000",                 # > uint32
           "8208 20", "8208 f5", "8208 f6", "8208 f93c00", "8208 6131", "8208 4101",
           "8208 80", "8208 c1 01",                    # tagged: a Tag, not an int
           "8208 1f", "8208 1c", "8208 1a ffff",       # indefinite, reserved, short head
           "8208 01 00", "8308 01", "8308 01 7f", "9f 08 01", "8308 01 ff",
           "82 18 28 01",                              # version 2
           "8308 01 f8 10"]                            # two-byte simple value < 32
    for h, req in good:
        raw = _uhex(h)
        assert cbor_lite.parse_control(raw) == (8, req), h
        assert messages.decode(raw).request == req, h
        assert cbor_lite.parse_announce(raw) is None
        assert cbor_lite.event_ids(raw) is None
    for h in bad:
        raw = _uhex(h)
        _fails(cbor_lite.parse_control, raw)
        try:
            messages.decode(raw)
            assert False, h
        except messages.ProtocolError:
            pass
    # parse_announce does not check an ENUMERATE's fields (it never did)
    assert cbor_lite.parse_announce(_uhex("8108")) is None
    assert cbor_lite.parse_announce(_uhex("8208 f5")) is None
    _fails(cbor_lite.parse_announce, _uhex("8208 01 00"))       # but it is still CBOR
    # other kinds: walked, not checked; the ANNOUNCE's checks are parse_announce's
    assert cbor_lite.parse_control(cbor.dumps([5, "not", "an", "ack"])) == (5, None)
    assert cbor_lite.parse_control(cbor.dumps([31])) == (31, None)
    assert cbor_lite.parse_control(_uhex("8101")) == (1, None)      # an EVENT: not read
    for h in HOSTILE:
        _fails(cbor_lite.parse_control, _uhex(h))


def test_event_ids_reads_node_epoch_and_seq():
    U64 = 18446744073709551615
    for args in ((0, 0, 0), (7, 3, 300), (4294967295, 4294967295, U64), (24, 256, 65536)):
        raw = Event(args[0], args[1], args[2], 1000, "temp", 21.5).encode()
        assert cbor_lite.event_ids(raw) == args + (1,)
        raw = Event(args[0], args[1], args[2], 0, "a/b", {"x": 1}, 5).encode()
        assert cbor_lite.event_ids(raw) == args + (1,)
        for n in (1, 7, 8, 128):
            rs = [(1000 + i, "t", i) for i in range(n)]
            raw = cbor.dumps(Batch(args[0], args[1], args[2], rs, 3).to_fields())
            assert cbor_lite.event_ids(raw) == args + (n,)
            assert cbor_lite.event_ids(_batch(rs, args[0], args[1], args[2])) == args + (n,)
    # only node, epoch, seq (and the readings' count) are checked: the rest is walked
    ok = [("87 01 07 03 18 2a 00 f6 f6", (7, 3, 42, 1)),            # topic and value: null
          ("8a 01 07 03 01 20 80 a0 c1 00 f9 3c00 f7", (7, 3, 1, 1)),   # odd t, extras
          ("9f 01 07 03 01 00 61 61 00 ff", (7, 3, 1, 1)),            # indefinite message
          ("86 02 07 03 01 f6 83 f6 f6 f6", (7, 3, 1, 1)),            # t0, reading: null
          ("87 02 07 03 05 00 9f 00 61 61 00 00 61 61 00 ff 20", (7, 3, 5, 2)),
          ("86 02 1a ffffffff 00 1b ffffffffffffffff 00 83 00 61 61 00", (4294967295, 0, U64, 1))]
    for h, want in ok:
        assert cbor_lite.event_ids(_uhex(h)) == want, h
    bad = ["86 01 07 03 01 00 61 61",                 # EVENT: 5 fields
           "85 02 07 03 01 00",                       # BATCH: 4 fields
           "87 01 1b 0000000100000000 03 01 00 61 61 00",   # node > uint32
           "87 01 07 1b 0000000100000000 01 00 61 61 00",   # epoch > uint32
           "87 01 07 03 20 00 61 61 00",              # seq < 0
           "87 01 07 03 f9 3c00 00 61 61 00",         # seq: a float
           "87 01 07 03 c1 01 00 61 61 00",           # seq: a tag
           "87 01 f5 03 01 00 61 61 00",              # node: true
           "87 01 07 f6 01 00 61 61 00",              # epoch: null
           "87 01 07 03 1f 00 61 61 00",              # seq: indefinite
           "86 02 07 03 01 00 80",                    # no readings
           "86 02 07 03 01 00 84 00 61 61 00 00",     # 4 items
           "86 02 07 03 01 00 a1 00 00",              # readings: a map
           "86 02 07 03 01 00 63 616161",             # readings: text
           "86 02 07 03 01 00 9f 00 61 61 ff",        # 2 items, indefinite
           "86 02 07 03 01 00 83 00 61 61",           # truncated
           "86 02 07 03 01 00 83 00 61 61 00 00",     # trailing byte
           "86 02 07 03 01 00 83 00 61 ff 00",        # text not UTF-8
           "88 01 07 03 01 00 61 61 00 1c",           # reserved additional information
           "87 18 21 07 03 01 00 61 61 00",           # version 2
           "88 01 07 03 01 00 61 61 00 c1"]           # a tag without its item
    for h in bad:
        _fails(cbor_lite.event_ids, _uhex(h))
    big = b"\x86\x02\x07\x03\x01\x00\x99\x01\x83" + b"\x00\x61a\x00" * 129     # 129 readings
    _fails(cbor_lite.event_ids, big)
    assert cbor_lite.event_ids(b"\x86\x02\x07\x03\x01\x00\x99\x01\x80" + b"\x00\x61a\x00" * 128
                               ) == (7, 3, 1, 128)
    deep = "87 01 07 03 01 00 61 61"
    assert cbor_lite.event_ids(_uhex(deep + "81" * 15 + "00")) == (7, 3, 1, 1)
    _fails(cbor_lite.event_ids, _uhex(deep + "81" * 16 + "00"))
    # other kinds: None, still walked
    assert cbor_lite.event_ids(_uhex("820801")) is None
    assert cbor_lite.event_ids(cbor.dumps([3, "not", "a", "status"])) is None
    _fails(cbor_lite.event_ids, _uhex("8203 7f 61 ff"))
    for h in HOSTILE:     # not CBOR, not a message: refused; a bad ANNOUNCE: None
        raw = _uhex(h)
        try:
            v = cbor.loads(raw)
            kind = v[0] if type(v) is list and v and type(v[0]) is int and 0 <= v[0] < 32 else -1
        except cbor.CBORDecodeError:
            kind = -1
        if kind < 0:
            _fails(cbor_lite.event_ids, raw)
        else:
            assert kind == 4 and cbor_lite.event_ids(raw) is None, h


def test_deadletter_is_the_generic_encoding():
    assert nodewire.deadletter(7, 2, [(3, 17), (3, 18)]) == load()["deadletter"]
    U64 = 18446744073709551615
    for node, count in ((0, 0), (7, 2), (24, 255), (4294967295, U64)):
        for n in (0, 1, 23, 24, 64):
            ids = [(i * 977 % 4294967296, i * 65537 * 131071) for i in range(n)]
            if n == 64:
                ids[-1] = (4294967295, U64)
            got = nodewire.deadletter(node, count, ids)
            assert type(got) is bytes
            assert got == DeadLetter(node, count, ids).encode(), (node, count, n)
            m = messages.decode(got)
            assert (m.node, m.count, m.ids) == (node, count, ids)
    assert nodewire.deadletter(1, 1, [[3, 4]]) == DeadLetter(1, 1, [(3, 4)]).encode()
    for args in ((1, 1, [(1, 1)] * 65), (U64 + 1, 1, []), (1, 1, [(1, U64 + 1)])):
        try:
            nodewire.deadletter(args[0], args[1], args[2])
            assert False, args
        except nodewire.EncodeError:
            pass


def _alloc(fn, arg):
    import gc
    gc.collect()
    gc.disable()
    a = gc.mem_alloc()
    try:
        fn(arg)
    except nodewire.ProtocolError:
        pass
    b = gc.mem_alloc()
    gc.enable()
    return b - a


def test_chain_reading_allocates_little_on_micropython():
    if not _MP:
        return
    ids = [(3, 4000000000 + i) for i in range(64)]
    want = len(DeadLetter(7, 64, ids).encode())
    # the buffer for the longest such message, a view of it and the result
    assert _alloc(lambda a: nodewire.deadletter(7, 64, a), ids) <= 22 + 19 * 64 + want + 256
    # valid messages: the walk's state, the fields read and the result
    valid = [_uhex("8208 01"), Event(7, 3, 300, 1000, "temp", 21.5).encode(),
             cbor.dumps(Batch(7, 3, 5, [(1000 + i, "t/%d" % i, {"x": i}) for i in range(128)]
                              ).to_fields()),
             b"\x86\x02\x07\x03\x01\x00\x9f" + b"\x00\x60\x00" * 128 + b"\xff"]
    assert cbor_lite.event_ids(valid[3]) == (7, 3, 1, 128)
    for d in valid:
        assert cbor_lite.parse_control(d)[0] == d[1]
        for fn in (cbor_lite.event_ids, cbor_lite.parse_control):
            n = _alloc(fn, d)
            assert n <= 512, (fn, len(d), n)
    # hostile ones: an error message besides; event_ids builds no strings, parse_control
    # those of an ANNOUNCE (see test_parse_announce_allocates_little_on_hostile_input)
    hostile = [_uhex(h) for h in HOSTILE]
    hostile.append(b"\x82\x02\x9b\x00\x00\x00\x00\xff\xff\xff\xff")      # 4 G items declared
    hostile.append(b"\x87\x02\x07\x03\x01\x00\x9f" + b"\x00\x60\x00" * 300 + b"\xff")
    hostile.append(b"\x86\x02\x07\x03\x01\x00\x9f" + b"\x00\x60\x00" * 300 + b"\x00\xff")
    hostile.append(b"\x82\x08\x9f" + b"\x60" * 1300 + b"\xff")
    for d in hostile:
        assert _alloc(cbor_lite.event_ids, d) - 2 * len(d) <= 1024, d
        assert _alloc(cbor_lite.parse_control, d) - 2 * len(d) <= 3072, d
