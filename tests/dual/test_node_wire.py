# The node's wire path: protocol/nodewire.py (EventWriter, StatusWriter, ANNOUNCE
# parsing) and firmware/node.py publishing through it. Every datagram a node sends
# must be byte-identical to the generic encoding (protocol.messages), signed or not,
# and a publish must not allocate on MicroPython.
# Plain functions with bare asserts: pytest runs them on CPython and
# tests/test_dual_on_micropython.py under the MicroPython unix port.
import sys

from protocol import cbor, codes, messages, nodewire
from protocol.auth import Key, verify
from protocol.messages import Event, Status, Batch, Announce
from firmware import config
from firmware.node import Node
from spec_vectors import load

from test_firmware_node import FakeHal, run_for, announce, STATIC

_MP = sys.implementation.name == "micropython"
KEYS = (codes.CTR_PUBLISHED, codes.CTR_DROPPED, codes.CTR_QUEUE, codes.CTR_FREE_MEM,
        codes.CTR_RATE_SHED, codes.CTR_RX_BAD, codes.CTR_SEND_ERRORS)


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
                    vals = [v, 1, 2, 3, 4, 5, v]
                    n = w.status(3, last, 2, 1, v, tb, 17, vals, hop)
                    ctr = dict(zip(w.keys, vals))
                    want = Status(4000000000, 3, last, 2, 1, v, tb, "0.1.0-test", 17, ctr, hop).encode()
                    assert n == len(want) and bytes(w.view()) == want, (last, tb, hop, v)
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
        sw.status(m.epoch, m.last_seq, m.skip, m.since, m.uptime, m.time_base, m.caps, vals, m.hop)
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


def test_parse_announce_checks_like_messages():
    good = Announce("b", "10.0.0.1", 6000, ["a/+", "#"], 5, 30, 1767225600000)
    assert nodewire.parse_announce(good.encode()) == (
        "b", "10.0.0.1", 6000, ["a/+", "#"], 5, 30, 1767225600000)
    assert nodewire.parse_announce(Event(1, 1, 1, 1, "x", 1).encode()) is None
    for bad in (b"", b"\x80", cbor.dumps({"a": 1}), cbor.dumps([4, "b"]),
                cbor.dumps([0x44, "b", "", 6000, ["#"], 0, 30, None]),
                cbor.dumps([4, "", "", 6000, ["#"], 0, 30, None]),
                cbor.dumps([4, "b", "", 70000, ["#"], 0, 30, None]),
                cbor.dumps([4, "b", "", 6000, ["a/#/b"], 0, 30, None]),
                cbor.dumps([True, "b", "", 6000, ["#"], 0, 30, None])):
        try:
            nodewire.parse_announce(bad)
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
    assert (nodewire._KIND_EVENT, nodewire._KIND_STATUS, nodewire._KIND_ANNOUNCE) == (
        codes.KIND_EVENT, codes.KIND_STATUS, codes.KIND_ANNOUNCE)
    assert nodewire._MAX_DATAGRAM == codes.MAX_DATAGRAM == node_mod._MAX_DATAGRAM
    assert node_mod._MAX_BODY == codes.MAX_DATAGRAM - 9
    assert node_mod._HEAD_BATCH == messages.head(codes.KIND_BATCH)
    assert (node_mod._CAP_UDP, node_mod._CAP_AUTH, node_mod._CAP_TIME, node_mod._CAP_BATCH) == (
        codes.CAP_UDP, codes.CAP_AUTH, codes.CAP_TIME, codes.CAP_BATCH)
    assert node_mod._STATUS_KEYS == (
        codes.CTR_PUBLISHED, codes.CTR_DROPPED, codes.CTR_QUEUE, codes.CTR_FREE_MEM,
        codes.CTR_RATE_SHED, codes.CTR_RX_BAD, codes.CTR_SEND_ERRORS)
    assert list(node_mod._STATUS_KEYS) == sorted(node_mod._STATUS_KEYS)
    assert node_mod._BATCH_MAX == config.BATCH_MAX
