"""base_station.wire: the fast decoder accepts exactly what protocol.messages accepts,
and whole-datagram CBOR decoding rejects trailing bytes and truncation."""

import cbor2
import pytest
from hypothesis import given, settings, strategies as st

from protocol import codes
from protocol.messages import Batch, Event, ProtocolError, Status, from_fields, head
from base_station import wire

EV = head(codes.KIND_EVENT)
BA = head(codes.KIND_BATCH)


def reference(values):
    try:
        return from_fields(values)
    except ProtocolError:
        return None
    except Exception:      # a validator tripping on an odd type: the peer's fault too
        return None


def check(values):
    ref = reference(values)
    try:
        got = wire.decode_fields(values)
    except wire.DecodeError:
        got = None
    assert (ref is None) == (got is None), (values, ref, got)
    if ref is not None:
        # compare encodings: NaN != NaN as objects, but encodes the same
        assert cbor2.dumps(ref.to_fields()) == cbor2.dumps(got.to_fields())
        assert type(got) in (type(ref), wire.FastBatch) and ref.extra == got.extra
        if isinstance(ref, (Event, Batch)):
            assert ref.skip == got.skip
        if isinstance(ref, Batch):
            assert [tuple(r) for r in ref.readings] == [tuple(r) for r in got.readings]
            assert ref.t0 == got.t0


U64 = 2**64 - 1
ints = st.one_of(st.integers(-5, 300), st.sampled_from([U64, U64 + 1, -U64 - 1, -U64 - 2, 2**32 - 1, 2**32]))
scalars = st.one_of(ints, st.floats(allow_nan=False), st.booleans(), st.none(),
                    st.text(max_size=3), st.text(min_size=256, max_size=258),
                    st.binary(max_size=3), st.binary(min_size=256, max_size=257))
topics = st.one_of(st.sampled_from(["a", "a/b", "sensors/1/temp", "x" * 64, "x" * 65, "", "a/+",
                                    "#", "a\x00b", 5, None, b"a"]), st.text(max_size=6))
values = st.one_of(scalars, st.dictionaries(st.text(min_size=0, max_size=3), scalars, max_size=3),
                   st.lists(ints, max_size=2))
fields_any = st.one_of(ints, st.none(), st.text(max_size=2), st.floats(allow_nan=False), st.booleans())
good_scalars = st.one_of(st.integers(-2**64, 2**64 - 1), st.floats(), st.booleans(),
                         st.text(max_size=8), st.binary(max_size=8))
good_triple = st.tuples(st.integers(0, 2**20), st.sampled_from(["a", "a/b", "sensors/1/temp", "x" * 64]),
                        good_scalars)
any_triple = st.tuples(st.one_of(ints, fields_any), topics, values)
# mostly plausible readings, now and then a bad one
triple = st.one_of(good_triple, good_triple, good_triple, good_triple, any_triple)
# node, epoch, seq, t: mostly valid so the interesting cases are the readings
valid4 = st.lists(st.integers(0, 2**33), min_size=4, max_size=4)
head4 = st.one_of(valid4, valid4, valid4, st.lists(st.one_of(ints, fields_any), min_size=4, max_size=4))


@settings(max_examples=400, deadline=None)
@given(st.lists(triple, min_size=0, max_size=6), head4,
       st.one_of(st.none(), ints, fields_any), st.lists(fields_any, max_size=2))
def test_fast_batch_agrees_with_from_fields(triples, head_fields, skip, extra):
    flat = [x for t in triples for x in t]
    values = [BA] + head_fields + [flat]
    if skip is not None:
        values.append(skip)
        values += extra
    check(values)


@settings(max_examples=400, deadline=None)
@given(head4, st.one_of(topics, st.just("sensors/1/temp")), st.one_of(values, good_scalars),
       st.one_of(st.none(), ints, fields_any), st.lists(fields_any, max_size=2))
def test_fast_event_agrees_with_from_fields(head_fields, topic, value, skip, extra):
    values = [EV] + head_fields + [topic, value]
    if skip is not None:
        values.append(skip)
        values += extra
    check(values)


def test_valid_batch_is_fast_and_columnar():
    b = Batch(1, 2, 3, [(10, "a/b", 1.5), (15, "a/c", 2), (15, "a/b", "x")], skip=4)
    got = wire.decode(cbor2.dumps(b.to_fields()))
    assert type(got) is wire.FastBatch
    assert got == b and got.ts == [10, 15, 15] and got.topics == ["a/b", "a/c", "a/b"]
    assert got.values == [1.5, 2, "x"] and got.skip == 4
    assert got.events()[1] == Event(1, 2, 4, 15, "a/c", 2)


def test_batch_with_map_values_goes_through_from_fields():
    b = Batch(1, 0, 0, [(1, "m", {"x": 1, "y": b"\x00"})])
    got = wire.decode(cbor2.dumps(b.to_fields()))
    assert got == b and type(got) is Batch


def test_trailing_bytes_and_truncation_are_rejected():
    data = cbor2.dumps(Status(1, 0, 5, 0, 0, 100, None, "fw", 1, {1: 6}).to_fields())
    assert isinstance(wire.decode(data), Status)
    for tail in (b"\x00", b"\xff", b"\xf6", data, b"\x1b" + b"\x00" * 8, b"\xc2\x41\x01"):
        with pytest.raises(wire.DecodeError) as e:
            wire.decode(data + tail)
        assert e.value.reason in ("trailing_bytes", "not_cbor")
    for k in range(len(data)):
        with pytest.raises(wire.DecodeError):
            wire.decode(data[:k])


def test_sentinel_cannot_be_hit_by_a_truncated_message():
    # truncate inside a uint64 / float64: the decoder eats into the sentinel's 9 bytes
    for msg in ([EV, 1, 0, 2**40, 0, "t", 1.1], [EV, 1, 0, 0, 0, "t", 2**63 + 1]):
        data = cbor2.dumps(msg)
        assert wire.decode(data).seq in (2**40, 0)
        for k in range(1, 9):
            with pytest.raises(wire.DecodeError):
                wire.decode(data[:-k])


def test_reasons():
    cases = {
        b"\xff\xff": "not_cbor",
        cbor2.dumps([0x20 + 1, 1]): "bad_version",
        cbor2.dumps([EV, 1]): "invalid",
        cbor2.dumps("text"): "invalid",
        cbor2.dumps([EV, 1, 0, 0, 0, "t", 1]) + b"\x01": "trailing_bytes",
        b"\x81" * 40 + b"\x01": "not_cbor",          # nested deeper than 16
    }
    for data, reason in cases.items():
        with pytest.raises(wire.DecodeError) as e:
            wire.decode(data)
        assert e.value.reason == reason, data


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=80))
def test_random_bytes_give_a_message_or_decode_error(data):
    try:
        wire.decode(data)
    except wire.DecodeError:
        pass


def test_unknown_kind_and_extra_fields():
    u = wire.decode(cbor2.dumps([head(25), "whatever", 1]))
    assert type(u).__name__ == "Unknown" and u.unknown_kind == 25
    e = wire.decode(cbor2.dumps([EV, 1, 0, 0, 0, "t", 1, 0, "future"]))
    assert e.extra == 1
