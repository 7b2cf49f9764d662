# Messages (protocol/messages.py) against the vectors of docs/PROTOCOL.md, each tested
# whole, one byte short, with trailing data, and re-encoded byte for byte.
from protocol import auth, cbor, codes, messages as m
from spec_vectors import load

VECTORS = load()

EVENT = m.Event(7, 3, 1234, 3600000, "temp", 21.5)
EXPECTED = {
    "event-float": EVENT,
    "event-skip": m.Event(7, 3, 1240, 3606000, "door/open", True, 5),
    "event-map": m.Event(12, 1, 0, 250, "imu", {"x": 0.5, "y": -1.25, "z": 9.8125}),
    "event-text": m.Event(300, 70000, 70000, 5000000000, "state", "ok"),
    "event-bytes": m.Event(1, 0, 0, 0, "raw", b"\x01\x02"),
    "batch": m.Batch(7, 3, 1300, [(3700000, "temp", 21.5), (3700100, "temp", 21.75),
                                  (3700200, "hum", 40)]),
    "status": m.Status(7, 3, 1302, 0, 0, 3700250, 1795459200000, "0.1.0",
                       codes.CAP_UDP | codes.CAP_TIME,
                       {codes.CTR_PUBLISHED: 1303, codes.CTR_DROPPED: 0, codes.CTR_FREE_MEM: 61440}),
    "status-instance": m.Status(7, 3, 1302, 0, 0, 3700250, 1795459200000, "0.1.0",
                                codes.CAP_UDP | codes.CAP_TIME,
                                {codes.CTR_PUBLISHED: 1303, codes.CTR_DROPPED: 0,
                                 codes.CTR_FREE_MEM: 61440}, None, 3735928559),
    "status-chain": m.Status(9, 1, None, 0, 0, 1200, None, "0.1.0",
                             codes.CAP_SERIAL | codes.CAP_DURABLE, {}, 2),
    "announce": m.Announce("base-a", "", 5684, ["#"], 0, 60, 1795459200000),
    "announce-instance": m.Announce("base-a", "", 5684, ["#"], 0, 60, 1795459200000, 3735928559),
    "announce-filtered": m.Announce("lab", "127.0.0.1", 6000, ["sensors/+/temp", "alarm/#"],
                                    50, 30, None),
    "ack": m.Ack(17, 5, 8),
    "data": m.Data(16, EVENT.encode()),
    "hello": m.Hello(0x1234ABCD, 7, 1, 0),
    "enumerate": m.Enumerate(1),
    "deadletter": m.DeadLetter(7, 2, [(3, 17), (3, 18)]),
}
KEY = auth.Key(bytes(range(16)))


def _raises_protocol_error(data):
    try:
        m.decode(data)
    except m.ProtocolError:
        return True
    return False


def test_every_kind_has_a_vector():
    for kind in m.KINDS:
        name = m.KIND_NAMES[kind].lower()
        assert [v for v in VECTORS if v.startswith(name)], name


def test_vectors_decode_to_their_messages():
    for name in EXPECTED:
        assert m.decode(VECTORS[name]) == EXPECTED[name], name


def test_messages_encode_to_their_vectors():
    for name in EXPECTED:
        assert EXPECTED[name].encode() == VECTORS[name], name


def test_vectors_truncated_or_with_trailing_bytes_are_errors():
    for name in VECTORS:
        data = VECTORS[name]
        for cut in range(len(data)):
            assert _raises_protocol_error(data[:cut]), (name, cut)
        assert _raises_protocol_error(data + b"\x00"), name


def test_signed_vector_verifies_with_its_key():
    msg = m.decode(VECTORS["signed"])
    assert isinstance(msg, m.Signed)
    assert msg.key_id == 7
    assert auth.verify(msg, {7: KEY}) == VECTORS["event-float"]
    assert auth.sign(7, KEY, EVENT.encode()) == VECTORS["signed"]


def test_single_float_event_is_at_most_20_bytes():
    assert len(VECTORS["event-float"]) <= 20


def test_batch_readings_become_events():
    batch = m.decode(VECTORS["batch"])
    events = batch.events()
    assert [e.seq for e in events] == [1300, 1301, 1302]
    assert [e.t for e in events] == [3700000, 3700100, 3700200]
    assert events[2].topic == "hum" and events[2].value == 40


def test_unknown_kind_is_returned_for_counting():
    msg = m.from_fields([20, 1, 2, 3])
    assert isinstance(msg, m.Unknown)
    assert msg.unknown_kind == 20


def test_extra_trailing_fields_are_counted_and_ignored():
    fields = EVENT.to_fields() + [0, "future", [1, 2]]
    msg = m.from_fields(fields)
    assert msg.extra == 2  # the 0 is the optional skip field
    assert msg.topic == "temp" and msg.skip == 0
    status = m.from_fields(EXPECTED["status-chain"].to_fields() + [None, "x"])
    assert status.extra == 1 and status.hop == 2 and status.instance is None
    status = m.from_fields(EXPECTED["status-chain"].to_fields() + [7, "x", 1])
    assert status.extra == 2 and status.instance == 7
    ann = m.from_fields(EXPECTED["announce"].to_fields() + [None, "x"])
    assert ann.extra == 1 and ann.instance is None and ann.wall_ms == 1795459200000


def test_other_protocol_versions_are_rejected():
    fields = EVENT.to_fields()
    fields[0] = 32 + codes.KIND_EVENT  # version 2
    try:
        m.from_fields(fields)
    except m.ProtocolError as e:
        assert "version 2" in str(e)
    else:
        assert False, "accepted version 2"


def _invalid(fields, words):
    try:
        m.from_fields(fields)
    except m.ProtocolError as e:
        for w in words:
            assert w in str(e), (str(e), w)
    else:
        assert False, "accepted %r" % (fields,)


def test_invalid_fields_raise_protocol_errors_that_name_them():
    _invalid([1, -7, 3, 1, 2, "temp", 1], ["EVENT node"])
    _invalid([1, 7, 3, 1.5, 2, "temp", 1], ["EVENT seq"])
    _invalid([1, 7, 3, 1, 2, "a/+", 1], ["EVENT topic"])
    _invalid([1, 7, 3, 1, 2, "", 1], ["EVENT topic"])
    _invalid([1, 7, 3, 1, 2, "temp", [1, 2]], ["EVENT value"])
    _invalid([1, 7, 3, 1, 2, "temp", None], ["EVENT value"])
    _invalid([1, 7, 3, 1, 2, "temp", {"a": [1]}], ["EVENT value"])
    _invalid([1, 7, 3, 1, 2, "temp", b"x" * 300], ["EVENT value"])
    _invalid([1, 7, 3, 1, 2, "temp"], ["EVENT", "fields"])
    _invalid([1, True, 3, 1, 2, "temp", 1], ["EVENT node"])
    _invalid([2, 7, 3, 1, 2, [0, "temp"]], ["BATCH readings"])
    _invalid([2, 7, 3, 1, 2, []], ["BATCH readings"])
    _invalid([4, "", "", 1, ["#"], 0, 60, None], ["ANNOUNCE base"])
    _invalid([4, "b", "", 70000, ["#"], 0, 60, None], ["ANNOUNCE port"])
    _invalid([4, "b", "", 1, ["a/#/b"], 0, 60, None], ["ANNOUNCE filters"])
    _invalid([15, 7, b"x", b"short"], ["SIGNED mac"])
    _invalid([3, 7, 3, None, 0, 0, 1, None, "fw", 0, {1: -1}], ["STATUS counter"])
    _invalid("not an array", ["array"])
    _invalid([], ["array"])
    _invalid(["x"], ["head"])


def test_garbage_bytes_are_protocol_errors():
    for data in (b"", b"\xff", b"\x1b", b"\x9f\x01", b"hello", b"\xa1\x01"):
        assert _raises_protocol_error(data), data


def test_skip_field_is_omitted_when_zero():
    assert len(m.Event(7, 3, 1, 1, "t", 1).to_fields()) == 7
    assert len(m.Event(7, 3, 1, 1, "t", 1, 4).to_fields()) == 8


def test_round_trip_through_cbor_module():
    for name in EXPECTED:
        msg = EXPECTED[name]
        assert m.from_fields(cbor.loads(cbor.dumps(msg.to_fields()))) == msg


def test_event_writer_matches_the_generic_encoder():
    w = m.EventWriter(7, 3)
    values = [21.5, 0.25, -3.75, 65504.0, 65520.0, 0.1, 1e-7, 3.0e38, -0.0, 0.0, 2.0 ** -14,
              2.0 ** -24, 1.0e300, 0, 23, 24, -1, 70000, True, False, "on", b"\x00\x01",
              {"x": 1.5, "y": -2}]
    seqs = [0, 23, 24, 255, 256, 65535, 65536, 4294967295, 4294967296]
    for v in values:
        for seq in seqs:
            for skip in (0, 3):
                n = w.event(seq, seq * 3, "temp", v, skip)
                want = m.Event(7, 3, seq, seq * 3, "temp", v, skip).encode()
                assert n == len(want) and bytes(w.view()) == want, (v, seq, skip)


def test_event_writer_allocates_nothing_per_event_on_micropython():
    import sys
    if sys.implementation.name != "micropython":
        return  # heap accounting is a MicroPython measurement
    import gc
    w = m.EventWriter(7, 3)
    w.event(1, 1, "temp", 21.5)
    w.event(1, 1, "temp", 3)
    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    for seq in range(100):
        w.event(seq, 1000 + seq, "temp", 21.5)
        w.event(seq, 1000 + seq, "temp", 215)
    used = gc.mem_alloc() - before
    gc.enable()
    assert used <= 64, used  # target: at most 64 heap bytes per event; measured 0
