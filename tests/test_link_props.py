"""Property tests of protocol/link.py on CPython (hypothesis), using the deterministic
channel simulator of tests/dual/test_link.py.

Invariants: within a session every offered message is delivered exactly once and in
order whatever the loss / duplication / corruption / reordering pattern; across a peer
reboot at least once (exactly once after deduplication); random bytes fed to a link never
raise; the link's CBOR item walker agrees with the decoder. Plus the efficiency figures:
on a clean simulated 115200 Bd line, window 8, 20-byte events use >= 90 % of the line.
"""

import re
from pathlib import Path

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import test_link as sim_mod  # tests/dual is on sys.path (conftest.py)
from protocol import cbor, messages
from protocol.framing import encode_frame
from protocol.link import Link, item_end
from test_link import Sim, Side, dedupe, event, make_pair

ROOT = Path(__file__).resolve().parent.parent
BAUD = 115200
SLOW = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


def messages_strategy(max_size=300):
    # unique EVENTs with byte-string readings of 0..max_size bytes (0 = a float reading)
    return st.lists(st.integers(0, max_size), min_size=1, max_size=120).map(
        lambda sizes: [event(i, s) for i, s in enumerate(sizes)])


@SLOW
@given(seed=st.integers(1, 2**31 - 1),
       loss=st.integers(0, 400), dup=st.integers(0, 200), corrupt=st.integers(0, 150),
       reorder=st.integers(0, 200), window=st.sampled_from([1, 2, 3, 8, 16, 64]),
       max_payload=st.sampled_from([40, 100, 300, 1016]),
       latency=st.integers(0, 30000),
       ma=messages_strategy(), nb=st.integers(0, 40))
def test_exactly_once_in_order_within_a_session(seed, loss, dup, corrupt, reorder, window,
                                                max_payload, latency, ma, nb):
    ma = [m for m in ma if len(m) <= max_payload] or [event(0)]
    mb = [event(10000 + i) for i in range(nb)]
    a, b = make_pair(seed, window=window, max_payload=max_payload, max_retries=1000,
                     dead_after_ms=60000, keepalive_ms=1000)
    sim = Sim(a, b, seed=seed, loss=loss, dup=dup, corrupt=corrupt, reorder=reorder,
              latency=latency)

    def check(s):
        for link in s.links:
            assert len(link._out) <= window
            assert len(link._ready) <= window

    sim.check = check
    assert sim.transfer(ma, mb, limit_ms=3_600_000)
    assert sim.sides[1].received == ma
    assert sim.sides[0].received == mb
    assert sim.sides[0].acked == list(range(len(ma)))
    assert sim.sides[1].acked == list(range(len(mb)))
    for link in (a, b):
        assert link.resyncs == 0 and link.dead == 0 and link.malformed == 0


@SLOW
@given(pattern=st.lists(st.booleans(), min_size=1, max_size=400),
       window=st.sampled_from([1, 4, 8]), n=st.integers(1, 150))
def test_any_drop_pattern(pattern, window, n):
    # frame i (counted over both directions) is dropped when pattern[i] is True; after the
    # pattern the line is clean. (A periodic pattern is not used: an adversary that picks
    # which frames pass can starve any protocol, e.g. let only one side's HELLOs through.)
    counter = [0]

    def drop(p):
        i = counter[0]
        counter[0] += 1
        return i < len(pattern) and pattern[i]

    a, b = make_pair(window=window, max_payload=60, max_retries=10_000,
                     dead_after_ms=10**9, keepalive_ms=1000)
    sim = Sim(a, b, drop=drop)
    msgs = [event(i) for i in range(n)]
    assert sim.transfer(msgs, limit_ms=10**6)
    assert sim.sides[1].received == msgs
    assert a.resyncs == 0 and b.resyncs == 0


@SLOW
@given(seed=st.integers(1, 2**31 - 1), at=st.integers(0, 200), which=st.sampled_from([0, 1]),
       loss=st.integers(0, 100))
def test_reboot_at_least_once(seed, at, which, loss):
    a, b = make_pair(seed, max_payload=100)
    sim = Sim(a, b, seed=seed, loss=loss)
    msgs = [event(i) for i in range(250)]
    sim.sides[0].msgs = msgs
    sim.run_until(lambda s: len(s.sides[1].received) >= at, 600_000)
    received = list(sim.sides[1].received)
    if which == 1:  # the receiver reboots
        sim.links[1] = Link(node=7, hop=1, session=(seed % 0xFFFF) + 1, max_payload=100)
        sim.sides[1] = Side()
    else:           # the sender reboots; its outbox re-offers what was not acknowledged
        old = sim.sides[0]
        new = Side(msgs)
        new.next = old.first_unacked()
        new.acked = list(old.acked)
        sim.sides[0] = new
        sim.links[0] = Link(node=0, hop=0, session=(seed % 0xFFFF) + 0x10001, max_payload=100)
    assert sim.run_until(lambda s: len(dedupe(received + s.sides[1].received)) == len(msgs)
                         and len(set(s.sides[0].acked)) == len(msgs), 600_000)
    assert dedupe(received + sim.sides[1].received) == msgs


@settings(max_examples=300, deadline=None)
@given(frames=st.lists(st.binary(max_size=80), max_size=20), established=st.booleans())
def test_random_frames_never_raise(frames, established):
    a, b = make_pair()
    if established:
        sim = Sim(a, b)
        assert sim.run_until(lambda s: a.up and b.up, 5000)
    now = 12345
    before = b.frames_received + b.malformed
    for f in frames:
        b.feed(f, now)
        b.poll_received()
        b.poll_acked()
        b.poll_transmit(now)
        b.next_wake(now)
    assert b.frames_received + b.malformed == before + len(frames)


# hypothesis values that protocol.cbor encodes canonically
cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64 - 1)
    | st.floats(width=32, allow_nan=False)
    | st.text(max_size=20) | st.binary(max_size=40),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=20)


@settings(max_examples=400, deadline=None)
@given(values=st.lists(cbor_values, min_size=1, max_size=5), tail=st.binary(max_size=5))
def test_item_end_walks_sequences(values, tail):
    data = b"".join(cbor2.dumps(v, canonical=True) for v in values)
    p = 0
    for v in values:
        q = item_end(data, p)
        assert q > p
        assert cbor2.loads(data[p:q]) == v
        p = q
    assert p == len(data)
    assert item_end(data + tail, 0) == len(cbor2.dumps(values[0], canonical=True))


@settings(max_examples=1000, deadline=None)
@given(data=st.binary(max_size=40))
def test_item_end_agrees_with_decoder(data):
    try:
        _, end = cbor.decode_one(data, 0)
    except cbor.CBORDecodeError:
        end = None
    q = item_end(data, 0)
    if end is not None:
        assert q == end
    else:
        # the walker checks structure only (not UTF-8 or nesting depth)
        assert q == -1 or q <= len(data)


# ------------------------------------------------------------------ efficiency

def ev20(i):
    m = messages.Event(7, 1, 256 + i, 1_000_000 + i, "temp", 21.5).encode()
    assert len(m) == 20
    return m


def line_efficiency(window, latency_us=10_000, n=3000, **kw):
    """Event payload bytes delivered / bytes the line could carry in the elapsed time,
    and / bytes actually sent on the data direction (framing included)."""
    a, b = make_pair(window=window, **kw)
    sim = Sim(a, b, baud=BAUD, latency=latency_us)
    assert sim.run_until(lambda s: a.up and b.up, 5000)
    t0 = sim.t
    sent0 = sim.wires[0].line_bytes
    msgs = [ev20(i) for i in range(n)]
    assert sim.transfer(msgs)
    assert sim.sides[1].received == msgs
    payload = 20 * n
    capacity = (sim.t - t0) / 1e6 * BAUD / 10
    return payload / capacity, payload / (sim.wires[0].line_bytes - sent0)


def test_efficiency_window_8_at_least_90_percent():
    by_time, by_bytes = line_efficiency(8)
    assert by_time >= 0.9, by_time
    assert by_bytes >= 0.95, by_bytes
    # also with a slow node loop (30 ms before a frame is handled)
    assert line_efficiency(8, latency_us=30_000)[0] >= 0.9


def test_efficiency_window_1_much_lower():
    w8 = line_efficiency(8)[0]
    w1 = line_efficiency(1)[0]
    assert w1 < w8 - 0.15, (w1, w8)
    # stop-and-wait with small frames is worse still
    assert line_efficiency(1, max_payload=200)[0] < 0.7


def test_data_frame_overhead_matches_doc():
    # a full DATA frame of 20-byte events: 50 events, 1008-byte payload, framed size
    a, b = make_pair()
    sim = Sim(a, b)
    sim.run_until(lambda s: a.up and b.up, 5000)
    for i in range(60):
        assert a.offer(ev20(i))
    a._peer_wnd = 8
    frames = a.poll_transmit(sim.now_ms())
    data = [f for f in frames if f[1] == 6]
    first = bytes(data[0])
    assert len(first) == 1008 and len(encode_frame(first)) <= 1008 + 4 + 5 + 2
    assert messages.decode(first).payload == b"".join(ev20(i) for i in range(50))


# ------------------------------------------------------------------ the document

def _doc():
    return (ROOT / "docs" / "PROTOCOL.md").read_text()


def _norm(hexstr):
    return " ".join(hexstr.split()).lower()


@pytest.mark.parametrize("name", ["DOC_EVENT_1", "DOC_EVENT_2", "DOC_DATA", "DOC_DATA_FRAME",
                                  "DOC_ACK", "DOC_ACK_FRAME", "DOC_HELLO_NODE",
                                  "DOC_HELLO_BASE", "DOC_HELLO_NODE2"])
def test_doc_vectors_appear_in_document(name):
    doc = " ".join(re.sub(r"[`|]", " ", _doc()).split()).lower()
    assert _norm(getattr(sim_mod, name)) in doc, name


def test_doc_vectors_agree_with_cbor2():
    h = bytes.fromhex
    e1 = h(sim_mod.DOC_EVENT_1.replace(" ", ""))
    e2 = h(sim_mod.DOC_EVENT_2.replace(" ", ""))
    assert cbor2.loads(e1) == [1, 7, 1, 41, 120000, "temp", 21.5]
    assert cbor2.dumps([6, 0xD123, e1 + e2], canonical=True) == h(sim_mod.DOC_DATA.replace(" ", ""))
    assert cbor2.dumps([5, 0xD124, 0, 8], canonical=True) == h(sim_mod.DOC_ACK.replace(" ", ""))
    assert cbor2.dumps([7, 0xBEEF, 7, 1, 0], canonical=True) == h(sim_mod.DOC_HELLO_NODE.replace(" ", ""))
