# protocol/link.py on both interpreters: plain test functions, bare asserts, only imports
# MicroPython has. Run under MicroPython by tests/mp_runner.py; tests/test_link_props.py
# reuses the simulator below (Lcg, Wire, Sim, events) on CPython with hypothesis.
import binascii
import sys

from protocol import cbor
from protocol import codes
from protocol import messages
from protocol.framing import FrameDecoder, encode_frame
from protocol.link import (Link, LinkError, encode_ack, encode_hello, isn, item_end,
                           DATA_OVERHEAD, MAX_PAYLOAD, SEQ_MASK)
from dual_helpers import Lcg


def h(text):
    return binascii.unhexlify(text.replace(" ", ""))


def hx(data):
    return binascii.hexlify(bytes(data)).decode()



def _is_data_or_ack(payload):
    return len(payload) > 1 and payload[1] in (5, 6)


class Wire:
    """One direction of a simulated UART (times in microseconds).

    Models: serialisation at `baud` with 10 bits per byte of the real framed bytes (both
    delimiters, COBS, CRC), frames queued one after another on the line, a fixed `latency`
    after the last byte (the receiving node's loop), loss, duplication, corruption (a
    flipped bit, then real framing decides: normally a CRC error, so the frame is gone),
    cut periods, and reordering of DATA/ACK frames by an extra random delay (a UART never
    reorders; the link only promises to survive it within a session). `drop(payload)` can
    discard chosen frames. Does not model: byte-level splitting of frames, UART buffer
    overflow, baud-rate error, half-duplex turnaround, or processing time in the links.
    """

    def __init__(self, rng, baud=115200, latency=2000, loss=0, dup=0, corrupt=0,
                 reorder=0, reorder_us=20000, drop=None):
        self.rng = rng
        self.baud = baud
        self.latency = latency
        self.loss = loss
        self.dup = dup
        self.corrupt = corrupt
        self.reorder = reorder
        self.reorder_us = reorder_us
        self.drop = drop
        self.cuts = []            # (start_us, end_us)
        self.free = 0             # when the line is idle again
        self.queue = []           # [arrival_us, order, payload]
        self.order = 0
        self.line_bytes = 0
        self.frames = 0
        self.crc_errors = 0
        self.log = []             # (send time us, payload) when log_frames is set
        self.log_frames = False

    def send(self, t, payload):
        wire = encode_frame(payload)
        n = len(wire)
        start = t if t > self.free else self.free
        self.free = start + n * 10 * 1000000 // self.baud
        self.line_bytes += n
        self.frames += 1
        if self.log_frames:
            self.log.append((t, bytes(payload)))
        for c in self.cuts:
            if c[0] <= start < c[1]:
                return
        if self.drop is not None and self.drop(payload):
            return
        rng = self.rng
        if rng.per_mille(self.loss):
            return
        if rng.per_mille(self.corrupt):
            bad = bytearray(wire)
            i = 1 + rng.below(n - 2)
            bad[i] ^= 1 << rng.below(8)
            dec = FrameDecoder()
            got = dec.feed(bytes(bad))
            self.crc_errors += dec.crc_errors + dec.malformed
            if not got:
                return
            payload = got[0]
        arrival = self.free + self.latency
        if self.reorder and _is_data_or_ack(payload) and rng.per_mille(self.reorder):
            arrival += 1 + rng.below(self.reorder_us)
        self.order += 1
        self.queue.append([arrival, self.order, payload])
        if rng.per_mille(self.dup):
            self.order += 1
            self.queue.append([arrival + 1, self.order, payload])

    def next_arrival(self):
        best = None
        for e in self.queue:
            if best is None or e[0] < best:
                best = e[0]
        return best

    def due(self, t):
        if not self.queue:
            return []
        ready = [e for e in self.queue if e[0] <= t]
        if not ready:
            return []
        self.queue = [e for e in self.queue if e[0] > t]
        ready.sort(key=lambda e: (e[0], e[1]))
        return [e[2] for e in ready]


def event(i, size=0):
    # A Starling EVENT, optionally with a byte-string value of `size` bytes (zeros included)
    if size:
        value = bytes([(i + k) & 0xFF for k in range(size)])
    else:
        value = 21.5
    return messages.Event(7, 1, i, 1000 * i, "temp", value).encode()


class Side:
    # The application on one end: an outbox of messages to offer (tickets are indexes),
    # what was received, acked and dead-lettered.
    def __init__(self, msgs=None):
        self.msgs = msgs or []
        self.next = 0
        self.received = []
        self.acked = []
        self.dead = []
        self.paused_until = None  # the app stops polling poll_received until then (ms)

    def pump(self, link):
        msgs = self.msgs
        while self.next < len(msgs) and link.offer(msgs[self.next], self.next):
            self.next += 1

    def first_unacked(self):
        # an outbox that survives a reboot re-offers from its first unacknowledged message
        done = {}
        for t in self.acked:
            done[t] = True
        i = 0
        while i in done:
            i += 1
        return i


class Sim:
    """Two links joined by two Wires, a shared clock in microseconds (the links see ms).
    `clock_base` offsets the ms clock and wraps it at 2**30 like a board's ticks_ms."""

    def __init__(self, a, b, seed=1, clock_base=0, **wire_kw):
        self.rng = Lcg(seed)
        self.links = [a, b]
        self.wires = [Wire(self.rng, **wire_kw), Wire(self.rng, **wire_kw)]  # a->b, b->a
        self.sides = [Side(), Side()]
        self.t = 0
        self.clock_base = clock_base
        self.check = None        # called after every step with the Sim
        self.max_in_flight = [0, 0]
        self.steps = 0
        self.stop_at = None      # never step past this time (us)

    def now_ms(self):
        return (self.t // 1000 + self.clock_base) & 0x3FFFFFFF

    def step(self):
        # one instant: deliver arrivals, let the apps poll and offer, transmit
        now = self.now_ms()
        for i in (0, 1):
            link = self.links[i]
            side = self.sides[i]
            for p in self.wires[1 - i].due(self.t):
                link.feed(p, now)
            if side.paused_until is None or self.t // 1000 >= side.paused_until:
                side.received.extend(link.poll_received())
            side.acked.extend(link.poll_acked())
            side.dead.extend(link.poll_dead())
            side.pump(link)
        for i in (0, 1):
            link = self.links[i]
            for p in link.poll_transmit(now):
                self.wires[i].send(self.t, p)
            n = len(link._out)
            if n > self.max_in_flight[i]:
                self.max_in_flight[i] = n
        if self.check is not None:
            self.check(self)
        self.steps += 1

    def advance(self):
        # move the clock to the next event: an arrival or a link's timer
        now = self.now_ms()
        nxt = None
        for w in self.wires:
            a = w.next_arrival()
            if a is not None and (nxt is None or a < nxt):
                nxt = a
        base = self.t // 1000
        for i in (0, 1):
            link = self.links[i]
            w = link.next_wake(now)
            if self.sides[i].paused_until is not None and base < self.sides[i].paused_until:
                w = min(w, self.sides[i].paused_until - base)
            at = (base + (w if w > 0 else 1)) * 1000
            if nxt is None or at < nxt:
                nxt = at
        if self.stop_at is not None and nxt > self.stop_at:
            nxt = self.stop_at
        self.t = nxt if nxt > self.t else self.t + 1

    def run_until(self, done, limit_ms):
        end = limit_ms * 1000
        while self.t < end:
            self.step()
            if done(self):
                return True
            self.advance()
        return False

    def run_for(self, ms):
        end = self.t + ms * 1000
        self.stop_at = end
        while self.t < end:
            self.step()
            self.advance()
        self.stop_at = None

    def transfer(self, msgs_a=None, msgs_b=None, limit_ms=600000):
        # offer msgs from each side; run until everything is received and acknowledged
        if msgs_a is not None:
            self.sides[0].msgs = msgs_a
        if msgs_b is not None:
            self.sides[1].msgs = msgs_b

        def done(sim):
            for i in (0, 1):
                s = sim.sides[i]
                if len(s.acked) + len(s.dead) < len(s.msgs):
                    return False
                if len(sim.sides[1 - i].received) < len(s.msgs):
                    return False
            return True

        return self.run_until(done, limit_ms)


def make_pair(seed=1, sa=0x1234, sb=0xBEEF, **kw):
    rng = Lcg(seed * 7 + 3)
    a = Link(node=0, hop=0, session=sa, rng=rng.u32, **kw)
    b = Link(node=7, hop=1, session=sb, rng=rng.u32, **kw)
    return a, b


def dedupe(msgs):
    seen = {}
    out = []
    for m in msgs:
        if m not in seen:
            seen[m] = True
            out.append(m)
    return out


# ------------------------------------------------------------------ CBOR item boundaries

def test_item_end_definite_items():
    items = [0, 23, 24, 255, 256, 65535, 65536, 4294967296, -1, -500, b"", b"abc",
             "temp", 1.5, 21.299999237060547, 1e300, True, None, [], [1, [2, [3, "x"]]],
             {"a": 1, "b": [1, 2]}, {1: b"\x00\x00"}, cbor.Tag(1, 1363896240),
             [1, 7, 1, 41, 120000, "temp", 21.5]]
    for v in items:
        enc = cbor.dumps(v)
        assert item_end(enc) == len(enc), v
        assert item_end(enc + b"\x01\x02", 0) == len(enc), v   # trailing data left alone
        assert item_end(b"\x00" + enc, 1) == len(enc) + 1, v  # from an offset
        for cut in range(len(enc)):                           # truncated: -1
            assert item_end(enc[:cut]) == -1, (v, cut)


def test_item_end_sequence_and_malformed():
    seq = cbor.dumps([1, 2]) + cbor.dumps("x") + cbor.dumps(b"\x00")
    p = 0
    found = []
    while p < len(seq):
        q = item_end(seq, p)
        assert q > p
        found.append(cbor.loads(seq[p:q]))
        p = q
    assert found == [[1, 2], "x", b"\x00"]
    assert item_end(b"\x1c") == -1          # reserved additional information
    assert item_end(b"\xff") == -1          # a break on its own
    assert item_end(b"\xf8\x10") == -1      # two-byte simple value < 32
    assert item_end(b"\x9a\x00\x01\x00\x00\x01") == -1  # array of 65536 items in 6 bytes
    assert item_end(b"\x5b\x00\x00\x00\x01\x00\x00\x00\x00") == -1
    assert item_end(b"") == -1
    # an item with an indefinite length is walked with every check of cbor's decoder
    assert item_end(b"\x9f\x01\x02\xff\x00") == 4
    assert item_end(b"\x5f\x41\x61\xff") == 4
    assert item_end(b"\x9f\x01\x02") == -1
    assert item_end(b"\x82\x9f\xff\x01", 0) == 4
    assert item_end(b"\x82\x9f\xff\x01", 0, 3) == -1
    assert item_end(b"\xbf\x01\x02\x03\xff") == -1    # break where a value is due
    assert item_end(b"\x5f\x61\x61\xff") == -1        # text chunk in a byte string
    assert item_end(b"\x5f\x5f\xff\xff") == -1        # nested indefinite chunk
    assert item_end(b"\x7f\x62\xc3\xa9\xff") == 5
    assert item_end(b"\x7f\x61\xc3\x61\xa9\xff") == -1  # a character split between chunks
    assert item_end(b"\x82\x62\xc3\x28\x9f\xff") == -1  # invalid UTF-8 before it
    assert item_end(b"\x82\x62\xc3\x28\x80") == 5        # (not checked without one)
    assert item_end(b"\x82\xa1\x80\x00\x9f\xff") == -1  # an array as a map key
    assert item_end(b"\x81" * 15 + b"\x9f\xff") == 17
    assert item_end(b"\x81" * 16 + b"\x9f\xff") == -1    # nested deeper than cbor's 16
    for data in (b"\x9f\x01\x02\xff\x00", b"\xbf\x01\x02\x03\xff", b"\x7f\x62\xc3\xa9\xff",
                 b"\x81" * 16 + b"\x9f\xff", b"\x82\xa1\x80\x00\x9f\xff", b"\xc1\x5f\x40\xff"):
        try:
            end = cbor.decode_one(data, 0)[1]
        except cbor.CBORDecodeError:
            end = -1
        assert item_end(data) == end, data


# ------------------------------------------------------------------ wire encodings

def test_control_frames_match_messages():
    for cum, sack, wnd in ((0, 0, 8), (23, 1, 1), (65535, 127, 64), (300, (1 << 63) | 1, 0)):
        assert encode_ack(cum, sack, wnd) == messages.Ack(cum, sack, wnd).encode()
        assert messages.decode(encode_ack(cum, sack, wnd)) == messages.Ack(cum, sack, wnd)
    for s, n, hop, r in ((1, 0, 0, 0), (0xFFFFFFFF, 7, 255, 0x12345678), (24, 65536, 3, 23)):
        assert encode_hello(s, n, hop, r) == messages.Hello(s, n, hop, r).encode()
    assert isn(0x1234, 0xBEEF) == (0x1234 + 0xBEEF) & 0xFFFF
    # a full DATA frame fits the framing layer's limit
    assert MAX_PAYLOAD == codes.MAX_FRAME - DATA_OVERHEAD
    full = messages.Data(SEQ_MASK, bytes(MAX_PAYLOAD)).encode()
    assert len(full) == codes.MAX_FRAME
    assert isn(0xFFFFFFFF, 0xFFFFFFFF) == 0xFFFE


# The worked example of docs/PROTOCOL.md section 7: node 7 (session 0x0000BEEF) sends two EVENTs
# to the base (session 0x00001234) in the first DATA frame of the session (seq = ISN =
# 0xBEEF + 0x1234 = 0xD123), the base acknowledges it. tests/test_link_props.py checks that
# these hex strings appear in the document.
DOC_EVENT_1 = "87 01 07 01 18 29 1a 00 01 d4 c0 64 74 65 6d 70 f9 4d 60"
DOC_EVENT_2 = "87 01 07 01 18 2a 1a 00 01 d8 a8 64 74 65 6d 70 f9 4d 70"
DOC_DATA = ("83 06 19 d1 23 58 26 "
            "87 01 07 01 18 29 1a 00 01 d4 c0 64 74 65 6d 70 f9 4d 60 "
            "87 01 07 01 18 2a 1a 00 01 d8 a8 64 74 65 6d 70 f9 4d 70")
DOC_DATA_FRAME = ("00 0f 83 06 19 d1 23 58 26 87 01 07 01 18 29 1a 13 01 d4 c0 64 74 65 6d "
                  "70 f9 4d 60 87 01 07 01 18 2a 1a 10 01 d8 a8 64 74 65 6d 70 f9 4d 70 "
                  "0e be 74 9a 00")
DOC_ACK = "84 05 19 d1 24 00 08"
DOC_ACK_FRAME = "00 06 84 05 19 d1 24 06 08 2d cd 7f 73 00"
DOC_HELLO_NODE = "85 07 19 be ef 07 01 00"
DOC_HELLO_BASE = "85 07 19 12 34 00 00 19 be ef"
DOC_HELLO_NODE2 = "85 07 19 be ef 07 01 19 12 34"


def test_doc_worked_example():
    e1 = messages.Event(7, 1, 41, 120000, "temp", 21.5).encode()
    e2 = messages.Event(7, 1, 42, 121000, "temp", 21.75).encode()
    assert e1 == h(DOC_EVENT_1) and e2 == h(DOC_EVENT_2)
    base = Link(node=0, hop=0, session=0x1234)
    node = Link(node=7, hop=1, session=0xBEEF)
    hello = node.poll_transmit(0)
    assert hello == [h(DOC_HELLO_NODE)]
    base.feed(hello[0], 1)
    reply = base.poll_transmit(1)
    assert reply == [h(DOC_HELLO_BASE)]
    node.feed(reply[0], 2)
    assert node.up
    assert node.offer(e1, "e41") and node.offer(e2, "e42")
    out = node.poll_transmit(2)
    # the confirming HELLO, the ACK advertising the node's window, then the DATA frame
    assert out[0] == h(DOC_HELLO_NODE2)
    assert out[1] == h("84 05 19 d1 23 00 08")
    assert out[2] == h(DOC_DATA)
    assert encode_frame(out[2]) == h(DOC_DATA_FRAME)
    for p in out:
        base.feed(p, 3)
    assert base.up
    assert base.poll_received() == [e1, e2]
    ack = base.poll_transmit(3)
    assert ack == [h(DOC_ACK)]
    assert encode_frame(ack[0]) == h(DOC_ACK_FRAME)
    node.feed(ack[0], 4)
    assert node.poll_acked() == ["e41", "e42"]
    assert node.hellos_sent + base.hellos_sent == 3
    d = messages.decode(h(DOC_DATA))
    assert d.seq == 0xD123 and d.payload == e1 + e2


# ------------------------------------------------------------------ receiving frames

def _decoded(frame):
    # what feed() must make of a frame: protocol.messages' verdict, None when malformed
    try:
        msg = messages.decode(frame)
    except Exception:
        return None
    if type(msg) is messages.Data and msg.seq <= SEQ_MASK:
        return ("DATA", msg.seq, msg.payload)
    if type(msg) is messages.Ack and msg.cumulative <= SEQ_MASK:
        return ("ACK", msg.cumulative, msg.sack, msg.window)
    if type(msg) is messages.Hello and msg.session:
        return ("HELLO", msg.session, msg.node, msg.hop, msg.reply)
    return None


class _Recorder(Link):
    # established; its handlers only record what feed() passes them
    def _on_data(self, seq, payload):
        self.got = ("DATA", seq, payload)

    def _on_ack(self, cumulative, sack, window, now):
        self.got = ("ACK", cumulative, sack, window)

    def _on_hello(self, session, node, hop, reply, now):
        self.got = ("HELLO", session, node, hop, reply)


def _fed(link, frame):
    link.got = None
    malformed = link.malformed
    link.feed(frame, 0)
    if link.malformed != malformed:
        assert link.got is None
        return None
    assert link.got is not None
    if link.got[0] == "DATA":
        assert type(link.got[2]) is bytes
    return link.got


# link frames in encodings the link itself never sends, and near misses
FRAME_VECTORS = [
    ("83 06 00 40", ("DATA", 0, b"")),
    ("83 18 06 19 ff ff 41 00", ("DATA", 0xFFFF, b"\x00")),
    ("83 1b 00 00 00 00 00 00 00 06 1a 00 00 00 05 5f 41 61 40 42 62 63 ff", ("DATA", 5, b"abc")),
    ("9f 06 01 5f ff ff", ("DATA", 1, b"")),
    ("98 04 06 01 41 01 f6", ("DATA", 1, b"\x01")),
    ("9b 00 00 00 00 00 00 00 05 05 00 1b ff ff ff ff ff ff ff ff 19 ff ff f6",
     ("ACK", 0, 0xFFFFFFFFFFFFFFFF, 0xFFFF)),
    ("85 07 1a ff ff ff ff 00 18 ff 00", ("HELLO", 0xFFFFFFFF, 0, 255, 0)),
    ("9f 05 01 02 03 a2 01 02 01 03 c1 c2 00 ff", ("ACK", 1, 2, 3)),
    ("85 05 01 02 03 7f 62 c3 a9 ff", ("ACK", 1, 2, 3)),
    ("86 07 01 02 03 04 " + "81 " * 14 + "80", ("HELLO", 1, 2, 3, 4)),
    ("86 07 01 02 03 04 " + "d8 20 " * 15 + "00", ("HELLO", 1, 2, 3, 4)),
    ("86 07 01 02 03 04 " + "81 " * 15 + "80", None),  # nested deeper than cbor's 16
    ("86 07 01 02 03 04 " + "9f " * 16 + "ff " * 16, None),
    ("83 06 00 5a 00 00 04 01 " + "00 " * 1025, None),  # payload over codes.MAX_FRAME
    ("83 06 00 5f 59 04 00 " + "00 " * 1024 + "41 00 ff", None),
    ("83 06 00 5f 61 61 ff", None), ("83 06 00 c2 40", None), ("83 06 00 40 00", None),
    ("83 26 00 40", None), ("84 05 20 00 00", None), ("84 05 00 00 f4", None),
    ("85 07 01 02 19 01 00 03", None), ("85 07 1b 00 00 00 01 00 00 00 00 01 02 03", None),
    ("85 05 01 02 03 62 c3 28", None), ("85 05 01 02 03 63 ed a0 80", None),
    ("85 05 01 02 03 a1 81 00 00", None), ("85 05 01 02 03 a1 c1 a0 00", None),
    ("85 05 01 02 03 bf 00 ff", None), ("85 05 01 02 03 f8 1f", None),
    ("9f 05 01 02 03", None), ("9f 05 01 02 03 ff 00", None),
    ("98 03 06 01 41 01", ("DATA", 1, b"\x01")),
    ("86 07 01 02 03 04 " + "9f " * 15 + "ff " * 15, ("HELLO", 1, 2, 3, 4)),
    ("", None), ("83 06 00", None), ("82 06 00", None), ("80", None), ("a0", None),
    ("9f 06 00 40", None), ("83 06 1a 00 01 00 00 40", None),       # seq > SEQ_MASK
    ("83 06 00 5f 5f ff ff", None), ("84 05 00 00 1a 00 01 00 00", None),
    ("85 07 00 01 02 03", None), ("85 07 01 02 03", None), ("85 05 01 02 03 ff", None),
    ("86 07 01 02 03 04 " + "d8 20 " * 16 + "00", None),           # 16 tags
]


def test_feed_parses_link_frames_in_any_encoding():
    link = _Recorder(session=0x1234)
    link.established = True
    for text, want in FRAME_VECTORS:
        frame = h(text)
        assert _decoded(frame) == want, text
        assert _fed(link, frame) == want, text
        assert _fed(link, bytearray(frame)) == want, text
    # the same verdict as protocol.messages for frames mutated at random
    rng = Lcg(99)
    frames = [h(t) for t, _ in FRAME_VECTORS if len(t) < 200]
    frames += [encode_ack(1, 2, 3), encode_hello(1, 2, 3, 4), messages.Data(7, event(1)).encode()]
    agreed = accepted = 0
    for _ in range(1500):
        frame = bytearray(frames[rng.below(len(frames))])
        for _ in range(1 + rng.below(2)):
            i = rng.below(len(frame) + 1)
            op = rng.below(4)
            if op == 0:
                frame = frame[:i]
            elif op == 1 and i < len(frame):
                frame[i] = rng.below(256)
            elif op == 2:
                frame = frame[:i] + bytes([rng.below(256)]) + frame[i:]
            elif i < len(frame):
                frame = frame[:i] + frame[i + 1:]
        frame = bytes(frame)
        want = _decoded(frame)
        assert _fed(link, frame) == want, hx(frame)
        agreed += 1
        accepted += want is not None
    assert agreed == 1500 and accepted > 50


# ------------------------------------------------------------------ session handshake

def test_handshake_simultaneous_start():
    # both sides start at once: their first HELLOs cross, each answers once (4 HELLOs);
    # one side first takes 3 (test_doc_worked_example)
    a, b = make_pair()
    sim = Sim(a, b)
    assert sim.run_until(lambda s: a.up and b.up, 10000)
    assert a.peer_session == 0xBEEF and b.peer_session == 0x1234
    assert a.peer_node == 7 and a.peer_hop == 1 and b.peer_node == 0
    assert a.hellos_sent == 2 and b.hellos_sent == 2
    sim.run_for(5000)  # idle: keepalive ACKs only, no HELLO ping-pong
    assert a.up and b.up and a.hellos_sent + b.hellos_sent == 4
    assert a.acks_sent >= 4 and b.acks_sent >= 4
    assert a.resyncs == 0 and b.resyncs == 0 and a.downs == 0


def test_handshake_with_lost_hellos():
    for seed in range(1, 9):
        a, b = make_pair(seed)
        # lose the first three HELLOs whatever their direction
        lost = [0]

        def drop(p, lost=lost):
            if p[1] == 7 and lost[0] < 3:
                lost[0] += 1
                return True
            return False

        sim = Sim(a, b, seed=seed, drop=drop)
        assert sim.run_until(lambda s: a.up and b.up, 20000), seed
        assert sim.transfer([event(i) for i in range(20)], [event(100 + i) for i in range(5)])
        assert sim.sides[1].received == [event(i) for i in range(20)]
        assert sim.sides[0].received == [event(100 + i) for i in range(5)]


def test_lost_confirmation_recovered():
    # the last HELLO of the handshake is lost: the node stays unestablished until the base
    # answers one of its repeated HELLOs; DATA sent meanwhile is ignored, then retransmitted
    a, b = make_pair()
    count = [0]

    def drop(p):
        if p[1] == 7:
            count[0] += 1
            return count[0] == 3
        return False

    sim = Sim(a, b, drop=drop)
    msgs = [event(i) for i in range(10)]
    assert sim.transfer(msgs)
    assert sim.sides[1].received == msgs
    assert a.resyncs == 0 and b.resyncs == 0


# ------------------------------------------------------------------ delivery

def test_clean_transfer_both_directions():
    a, b = make_pair()
    sim = Sim(a, b)
    ma = [event(i, i % 40) for i in range(400)]
    mb = [event(1000 + i) for i in range(150)]
    assert sim.transfer(ma, mb)
    assert sim.sides[1].received == ma
    assert sim.sides[0].received == mb
    assert sim.sides[0].acked == list(range(400))
    assert sim.sides[1].acked == list(range(150))
    for link in (a, b):
        s = link.stats()
        assert s["retransmissions"] == 0 and s["duplicates"] == 0 and s["out_of_order"] == 0
        assert s["malformed"] == 0 and s["ignored"] == 0 and s["resyncs"] == 0
        assert s["window_in_use"] == 0 and s["queued"] == 0
        assert s["rtt_ms"] is not None
    assert a.stats()["acked"] == 400 and b.stats()["messages_received"] == 400
    # packing: far fewer DATA frames than messages
    assert a.data_sent * 5 < 400


def test_polls_with_nothing_to_return_allocate_nothing():
    # a chain node polls both links every step: an idle line must not churn the heap
    import gc
    a, b = make_pair()
    sim = Sim(a, b)
    assert sim.transfer([event(i) for i in range(20)], [event(100)])
    for link in (a, b):
        assert not link.poll_received() and not link.poll_acked() and not link.poll_dead()
    if sys.implementation.name != "micropython":
        return   # heap accounting is a MicroPython measurement
    links = (a, b)
    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    for _ in range(100):
        for link in links:
            for _m in link.poll_received():
                pass
            for _t in link.poll_acked():
                pass
            for _t in link.poll_dead():
                pass
    used = gc.mem_alloc() - before
    gc.enable()
    assert used == 0, used


def test_lossy_channel_exactly_once_in_order():
    for seed in (2, 3, 5):
        a, b = make_pair(seed, max_retries=50, max_payload=100)
        sim = Sim(a, b, seed=seed, loss=100, dup=50, corrupt=50, reorder=50)
        ma = [event(i, (i * 7) % 60) for i in range(250)]
        mb = [event(5000 + i) for i in range(60)]
        assert sim.transfer(ma, mb), seed
        assert sim.sides[1].received == ma, seed
        assert sim.sides[0].received == mb, seed
        assert sim.sides[0].acked == list(range(250))
        assert a.resyncs == 0 and b.resyncs == 0 and a.dead == 0
        assert a.retransmissions > 0 and b.duplicates + a.duplicates > 0
        assert sim.wires[0].crc_errors > 0


def test_window_respected():
    for window in (1, 2, 8):
        a, b = make_pair(window=window, max_payload=100)
        sim = Sim(a, b, latency=15000, loss=50)

        def check(s, window=window):
            for link in s.links:
                assert link.stats()["window_in_use"] <= window
                assert len(link._ready) <= window

        sim.check = check
        msgs = [event(i) for i in range(120)]
        assert sim.transfer(msgs)
        assert sim.sides[1].received == msgs
        assert sim.max_in_flight[0] == window


def test_stop_and_wait():
    a, b = make_pair(window=1, max_retries=50)
    sim = Sim(a, b, loss=150, dup=100, corrupt=50)
    msgs = [event(i, i % 30) for i in range(150)]
    back = [event(900 + i) for i in range(30)]
    assert sim.transfer(msgs, back)
    assert sim.sides[1].received == msgs and sim.sides[0].received == back
    assert sim.max_in_flight == [1, 1]


def test_sequence_numbers_wrap():
    # sessions chosen so the first seq is 65531: the stream crosses 65535 -> 0
    a, b = make_pair(sa=0xFFF0, sb=0x000B, max_payload=60)
    assert isn(a.session, b.session) == 65531
    sim = Sim(a, b, loss=50)
    msgs = [event(i) for i in range(200)]
    assert sim.transfer(msgs)
    assert sim.sides[1].received == msgs
    assert a.data_sent > 20


def test_clock_wraps_like_ticks_ms():
    # a board's ticks_ms wraps at 2**30: start half a second before the wrap
    a, b = make_pair(max_payload=60)
    sim = Sim(a, b, clock_base=(1 << 30) - 500, loss=100)
    msgs = [event(i) for i in range(300)]
    assert sim.transfer(msgs)
    assert sim.sides[1].received == msgs
    assert sim.now_ms() < 100000  # really wrapped
    assert a.downs == 0 and b.downs == 0 and a.resyncs == 0


def test_coalescing_packs_trickled_events():
    # events offered one at a time while frames are in flight share frames
    a, b = make_pair(window=8)
    sim = Sim(a, b, latency=20000)
    assert sim.run_until(lambda s: a.up and b.up, 5000)
    msgs = [event(i) for i in range(200)]
    for i in range(200):
        sim.sides[0].msgs.append(msgs[i])
        sim.run_for(1)
    assert sim.transfer()
    assert sim.sides[1].received == msgs
    assert a.data_sent < 40
    # without coalescing every event goes out alone as long as the window has room
    a2, b2 = make_pair(window=64, coalesce=False)
    sim2 = Sim(a2, b2, latency=20000)
    assert sim2.run_until(lambda s: a2.up and b2.up, 5000)
    for i in range(200):
        sim2.sides[0].msgs.append(msgs[i])
        sim2.run_for(1)
    assert sim2.transfer()
    assert sim2.sides[1].received == msgs
    assert a2.data_sent > 3 * a.data_sent


# ------------------------------------------------------------------ loss recovery

def test_retransmission_backoff_and_dead_letter():
    # the node's DATA never arrives but the base is alive (keepalive ACKs): the frame is
    # retransmitted with exponential backoff, then declared dead and the session restarts
    a, b = make_pair(rto_ms=200, rto_min_ms=200, rto_max_ms=1600, max_retries=4,
                     keepalive_ms=500, dead_after_ms=100000)
    dropping = [True]
    sim = Sim(a, b, drop=lambda p: dropping[0] and p[1] == 6)
    sim.wires[0].log_frames = True
    assert sim.run_until(lambda s: a.up and b.up, 5000)
    old_session = a.session
    sim.sides[0].msgs = [event(1), event(2)]
    assert sim.run_until(lambda s: len(s.sides[0].dead) == 2, 60000)
    times = [t // 1000 for t, p in sim.wires[0].log if p[1] == 6]
    gaps = [times[i + 1] - times[i] for i in range(len(times) - 1)]
    assert len(times) == 5  # first transmission + max_retries
    assert gaps[:4] == [200, 400, 800, 1600], gaps
    assert sim.sides[0].dead == [0, 1] and a.dead == 2 and a.resyncs == 1
    assert a.session != old_session
    assert a.retransmissions == 4
    assert sim.run_until(lambda s: a.up and b.up, 5000)
    assert b.resyncs == 1
    # the link works again in the new session
    dropping[0] = False
    sim.sides = [Side(), Side()]
    assert sim.transfer([event(3), event(4)] + [event(5)])
    assert sim.sides[1].received == [event(3), event(4), event(5)]


def _lone_frame_lost(probe, lost):
    # A link pair with probe_ms = probe: one frame gives an RTT sample, then a second
    # lone frame is sent while the DATA transmissions numbered in `lost` are dropped
    # (2: that frame's first transmission, 3: its first retransmission). Returns the
    # sender, the ms the second transfer took and the SRTT.
    a, b = make_pair(rto_ms=1000, rto_min_ms=1000, probe_ms=probe)
    n = [0]

    def drop(p):
        if p[1] == 6:
            n[0] += 1
            return n[0] in lost
        return False

    sim = Sim(a, b, drop=drop)
    assert sim.run_until(lambda s: a.up and b.up, 5000)
    assert sim.transfer([event(1)])
    srtt = a.stats()["rtt_ms"]
    assert srtt is not None
    sim.sides = [Side(), Side()]
    start = sim.t
    assert sim.transfer([event(2)])
    assert sim.sides[1].received == [event(2)]
    return a, (sim.t - start) // 1000, srtt


def test_tail_loss_probe_resends_a_lone_lost_frame_before_the_timeout():
    # one frame in flight, lost, nothing else to send: with probe_ms it is sent again
    # after 2 x SRTT + probe_ms, long before the retransmission timeout; without, after it
    took = {}
    for probe in (0, 20):
        a, took[probe], srtt = _lone_frame_lost(probe, (2,))
        assert a.probes == (1 if probe else 0) and a.retransmissions == 1
        if probe:
            assert took[probe] <= 2 * srtt + probe + 3 * srtt + 5, (took, srtt)
    assert took[0] >= 1000 and took[20] < 200, took


def test_stalled_window_probe_resends_a_lost_retransmission_before_the_timeout():
    # a lone frame is lost, its tail-loss probe is lost too: nothing newer was sent, so
    # no ACK can reveal the second loss. With probe_ms the retransmission is probed again
    # after SRTT + probe_ms (charged to the retry budget), not after the timeout.
    took = {}
    for probe in (0, 20):
        a, took[probe], srtt = _lone_frame_lost(probe, (2, 3))
        assert a.retransmissions == 2
        if probe:
            assert a.probes == 2 and a.dead == 0       # the tail-loss probe, then the stall probe
            # 2 SRTT + probe, then SRTT + probe, then the frame's trip
            assert took[probe] <= (2 * srtt + probe) + (srtt + probe) + 3 * srtt + 10, (took, srtt)
    assert took[0] >= 2000 and took[20] < 300, took


def _window_lost(probe, lost, n, warm=1):
    # A link pair with probe_ms = probe: `warm` frames sent at once give RTT samples (the
    # later ones waited on the line behind the others: SRTT above the smallest RTT), then
    # n frames are sent at once (one event each) while the DATA transmissions numbered in
    # `lost` (from 1, counted from the first of the n frames) are dropped. Returns the
    # sender, the ms the transfer took, the SRTT and the send times (ms) of its DATA
    # transmissions.
    a, b = make_pair(rto_ms=1000, rto_min_ms=1000, probe_ms=probe, max_payload=30,
                     coalesce=False)
    k = [-1]

    def drop(p):
        if p[1] == 6 and k[0] >= 0:
            k[0] += 1
            return k[0] in lost
        return False

    sim = Sim(a, b, drop=drop)
    sim.wires[0].log_frames = True
    assert sim.run_until(lambda s: a.up and b.up, 5000)
    assert sim.transfer([event(100 + i) for i in range(warm)])
    srtt = a.stats()["rtt_ms"]
    assert srtt is not None
    sim.sides = [Side(), Side()]
    start = sim.t
    k[0] = 0
    msgs = [event(10 + i) for i in range(n)]
    assert sim.transfer(msgs)
    assert sim.sides[1].received == msgs
    times = [t // 1000 for t, p in sim.wires[0].log if p[1] == 6 and t >= start]
    return a, (sim.t - start) // 1000, srtt, times


def test_tail_loss_probe_when_the_last_frames_of_a_window_are_lost():
    # three frames sent at once, the last two lost: the ACK of the first reveals nothing
    # (nothing later was reported), and the oldest outstanding frame is not the latest
    # transmission. It is probed 2 x SRTT + probe_ms after that latest transmission;
    # the probe's ACK then reveals the third loss (RACK). Without probes: the timeout.
    took = {}
    for probe in (0, 20):
        a, took[probe], srtt, times = _window_lost(probe, (2, 3), 3)
        assert a.dead == 0
        if probe:
            # (a second probe when the first one's ACK comes sooner than the smallest RTT
            # seen, which RACK takes for the ACK of the first transmission)
            assert 1 <= a.probes <= 2
            assert times[3] - times[2] <= 2 * srtt + probe + 1, (times, srtt)
        else:
            assert a.retransmissions == 2
    assert took[0] >= 1000 and took[20] < 200, took


def test_stalled_window_probe_when_the_oldest_frame_is_not_the_latest_transmission():
    # four frames at once; the 1st and 3rd are lost, the SACKs of the 2nd and the 4th have
    # them retransmitted (RACK), and both retransmissions are lost: the window waits for
    # the oldest frame, whose retransmission is not the latest DATA transmission (the 3rd
    # frame's is). It is probed SRTT + probe_ms after that one; the first probe is lost
    # too, the second follows min RTT + probe_ms after it (a probe travels alone on a
    # quiet line, SRTT here also counts frames that waited behind others). Without
    # probes: the timeout.
    took = {}
    for probe in (0, 20):
        # DATA transmissions: 1-4 the frames, 5-6 the retransmissions of the 1st and
        # 3rd, 7 the first probe
        a, took[probe], srtt, times = _window_lost(probe, (1, 3, 5, 6, 7), 4, warm=8)
        assert a.dead == 0
        if probe:
            # (a third probe when one's ACK comes sooner than the smallest RTT seen, which
            # RACK takes for the ACK of an earlier transmission)
            assert 2 <= a.probes <= 3 and a.retransmissions == 5
            min_rtt = a._min_rtt
            assert min_rtt + 5 < srtt, (min_rtt, srtt)
            assert times[6] - times[5] <= srtt + probe + 1, (times, srtt)
            assert times[7] - times[6] <= min_rtt + probe + 1, (times, min_rtt)
    assert took[0] >= 1000 and took[20] < 200, took


def test_probe_waits_while_acks_still_arrive():
    # a window of frames queued on a slow line (9600 Bd, ~190 ms each): their ACKs keep
    # arriving one frame time apart, long after 2 x SRTT (learned from a short frame) +
    # probe_ms (one full frame's line time) since the latest transmission. No probe is
    # sent while they come, not even when one frame is left: every frame crosses once.
    a, b = make_pair(rto_ms=4000, rto_min_ms=4000, rto_max_ms=8000, probe_ms=220,
                     max_payload=200, coalesce=False, dead_after_ms=10000)
    sim = Sim(a, b, baud=9600)
    assert sim.run_until(lambda s: a.up and b.up, 5000)
    assert sim.transfer([event(1)])
    srtt = a.stats()["rtt_ms"]
    sim.sides = [Side(), Side()]
    start = sim.t
    msgs = [event(10 + i, 150) for i in range(8)]
    assert sim.transfer(msgs)
    assert sim.sides[1].received == msgs
    assert (sim.t - start) // 1000 > 2 * srtt + 220 + 1000, (sim.t - start, srtt)
    assert a.probes == 0 and a.retransmissions == 0 and b.duplicates == 0


def test_fast_retransmit_from_sack():
    # one DATA frame lost in the middle of a window: recovered from the SACK long before
    # the retransmission timeout
    a, b = make_pair(max_payload=40, rto_ms=1000, rto_min_ms=1000)
    n = [0]

    def drop(p):
        if p[1] == 6:
            n[0] += 1
            return n[0] == 3
        return False

    sim = Sim(a, b, drop=drop)
    assert sim.run_until(lambda s: a.up and b.up, 5000)
    start = sim.t
    msgs = [event(i) for i in range(16)]
    assert sim.transfer(msgs)
    assert sim.sides[1].received == msgs
    assert a.retransmissions == 1 and b.out_of_order >= 1
    assert (sim.t - start) // 1000 < 200


def test_ack_loss_needs_no_data_retransmission_of_sacked_frames():
    a, b = make_pair(max_payload=40)
    n = [0]

    def drop(p):
        if p[1] == 5:
            n[0] += 1
            return n[0] % 2 == 0
        return False

    sim = Sim(a, b, drop=drop)
    msgs = [event(i) for i in range(100)]
    assert sim.transfer(msgs)
    assert sim.sides[1].received == msgs
    assert b.duplicates <= a.retransmissions


# ------------------------------------------------------------------ resync

def test_receiver_reboot_resyncs_without_loss():
    a, b = make_pair(max_payload=80)
    sim = Sim(a, b, loss=30)
    msgs = [event(i) for i in range(300)]
    sim.sides[0].msgs = msgs
    assert sim.run_until(lambda s: len(s.sides[1].received) >= 100, 60000)
    before = list(sim.sides[1].received)
    # the base reboots: a fresh Link, a new session, an empty receive state
    sim.links[1] = Link(node=7, hop=1, session=0x5151, max_payload=80)
    sim.sides[1] = Side()
    assert sim.run_until(lambda s: len(s.sides[0].acked) == 300, 60000)
    after = sim.sides[1].received
    assert a.resyncs == 1
    got = before + after
    assert dedupe(got) == msgs  # at least once, exactly once after deduplication
    assert sim.sides[0].acked == list(range(300))
    # within each session: in order, no duplicates
    assert before == msgs[:len(before)]
    first = msgs.index(after[0])
    assert after == msgs[first:]
    assert first <= len(before)


def test_sender_reboot_outbox_reoffers():
    a, b = make_pair(max_payload=80)
    sim = Sim(a, b, loss=30)
    msgs = [event(i) for i in range(300)]
    sim.sides[0].msgs = msgs
    assert sim.run_until(lambda s: len(s.sides[0].acked) >= 100, 60000)
    # the node reboots; its durable outbox re-offers from the first unacknowledged event
    old = sim.sides[0]
    new = Side(msgs)
    new.next = old.first_unacked()
    new.acked = list(old.acked)
    sim.sides[0] = new
    sim.links[0] = Link(node=0, hop=0, session=0x7777, max_payload=80)
    assert sim.transfer()
    got = sim.sides[1].received
    assert dedupe(got) == msgs
    assert b.resyncs == 1
    assert len(got) - len(msgs) <= 8 * 80  # duplicates bounded by what was in flight


def test_cut_cable_down_then_up_no_duplicates():
    a, b = make_pair(keepalive_ms=300, dead_after_ms=1000, max_payload=80)
    sim = Sim(a, b)
    msgs = [event(i) for i in range(400)]
    sim.sides[0].msgs = msgs
    sim.sides[1].msgs = [event(9000 + i) for i in range(100)]
    assert sim.run_until(lambda s: len(s.sides[1].received) >= 100, 60000)
    t0 = sim.t
    for w in sim.wires:
        w.cuts.append((t0, t0 + 2000000))
    saw_down = [False]

    def check(s):
        if not s.links[0].up and not s.links[1].up:
            saw_down[0] = True

    sim.check = check
    assert sim.transfer()
    assert saw_down[0]
    assert a.downs == 1 and b.downs == 1
    assert a.up and b.up
    assert a.resyncs == 0 and b.resyncs == 0 and a.dead == 0
    assert sim.sides[1].received == msgs  # same session: exactly once
    assert sim.sides[0].received == [event(9000 + i) for i in range(100)]


def test_restart_requeues_in_order():
    a, b = make_pair(max_payload=60)
    sim = Sim(a, b, latency=30000)
    msgs = [event(i) for i in range(100)]
    sim.sides[0].msgs = msgs
    assert sim.run_until(lambda s: a.in_flight() > 10, 60000)
    a.restart()
    assert a.in_flight() == 0 and not a.up and a.resyncs == 1
    assert sim.transfer()
    got = sim.sides[1].received
    assert dedupe(got) == msgs
    assert b.resyncs == 1


# ------------------------------------------------------------------ bounds and bad input

def test_offer_bounds_and_errors():
    link = Link(max_queue=5, max_queue_bytes=4096)
    n = 0
    while link.offer(event(n)):
        n += 1
    assert n == 5 and link.queued() == 5
    link = Link(max_queue=1000, max_queue_bytes=1016)
    n = 0
    while link.offer(event(n, 80)):
        n += 1
    assert n == 1016 // len(event(0, 80))
    for bad in (b"", b"\x82\x01", b"\x01\x02", b"\xff", bytes(MAX_PAYLOAD + 1)):
        try:
            link.offer(bad)
        except LinkError:
            pass
        else:
            assert False, bad
    for kw in ({"window": 0}, {"window": 65}, {"max_payload": 2000}, {"session": 0},
               {"keepalive_ms": 3000, "dead_after_ms": 3000}, {"rto_ms": 10, "rto_min_ms": 20}):
        try:
            Link(**kw)
        except LinkError:
            pass
        else:
            assert False, kw


def test_malformed_frames_counted_never_raise():
    a, b = make_pair()
    sim = Sim(a, b)
    assert sim.run_until(lambda s: a.up and b.up, 5000)
    now = sim.now_ms()
    junk = [b"", b"\xff", b"\x83\x06", b"not cbor at all", b"\x81\x00",      # bad CBOR / head
            b"\x83\x06\x1a\x00\x01\x00\x00\x40",                           # seq > 65535
            b"\x84\x05\x1a\x00\x01\x00\x00\x00\x08",                       # cumulative > 65535
            b"\x83\x06\x00\x01",                                          # payload not bytes
            b"\x84\x05\x00\x00",                                          # ACK missing a field
            messages.Event(7, 1, 1, 1, "temp", 1).encode(),               # not a link message
            b"\x82\x1f\x00",                                              # unknown kind
            b"\x82\x21\x00",                                              # version 2
            encode_hello(0, 1, 1, 0x1234)]                                # session 0
    for j in junk:
        b.feed(j, now)
    assert b.malformed == len(junk)
    assert b.up
    # the link still works
    msgs = [event(i) for i in range(10)]
    assert sim.transfer(msgs)
    assert sim.sides[1].received == msgs


def test_receive_buffers_bounded():
    a, b = make_pair(window=4)
    sim = Sim(a, b)
    assert sim.run_until(lambda s: a.up and b.up, 5000)
    now = sim.now_ms()
    base = b._rcv_nxt
    # frames far ahead of the window are dropped; within the window they wait in the ring
    for off in (1, 2, 3, 4, 100, 40000):
        b.feed(messages.Data((base + off) & SEQ_MASK, event(off)).encode(), now)
    assert b.out_of_order == 3 and b.out_of_window == 2 and b.duplicates == 1  # 40000: "old"
    b.feed(messages.Data(base, event(0)).encode(), now)
    assert b.poll_received() == [event(0), event(1), event(2), event(3)]
    # the app stops polling: at most `window` frames wait, the sender is throttled
    sim2a, sim2b = make_pair(window=4, max_payload=40)
    sim2 = Sim(sim2a, sim2b)
    sim2.sides[1].paused_until = 3000
    msgs = [event(i) for i in range(60)]
    sim2.sides[0].msgs = msgs
    sim2.run_for(2500)
    assert len(sim2b._ready) <= 4 and sim2.sides[1].received == []
    assert sim2b.stats()["peer_window"] >= 0
    assert sim2.transfer()
    assert sim2.sides[1].received == msgs
    assert sim2a.dead == 0 and sim2a.resyncs == 0


def test_stale_ack_and_data_ignored():
    a, b = make_pair()
    sim = Sim(a, b)
    msgs = [event(i) for i in range(20)]
    assert sim.transfer(msgs)
    now = sim.now_ms()
    a.feed(encode_ack((a._snd_nxt + 100) & SEQ_MASK, 0, 8), now)  # acks the future
    assert a.ignored == 1
    # DATA before the handshake is ignored and prompts a HELLO
    c = Link(session=99)
    c.feed(messages.Data(5, event(1)).encode(), 0)
    assert c.ignored == 1 and not c.poll_received()
    out = c.poll_transmit(0)
    assert len(out) == 1 and out[0][1] == 7


def test_next_wake_and_keepalive():
    a, b = make_pair(keepalive_ms=400, dead_after_ms=1300)
    assert a.next_wake(0) == 0
    sim = Sim(a, b)
    assert sim.run_until(lambda s: a.up and b.up, 5000)
    sim.run_for(100)
    now = sim.now_ms()
    w = a.next_wake(now)
    assert 0 <= w <= 400
    # silence the peer entirely: down after dead_after_ms, then HELLO probes
    for wire in sim.wires:
        wire.cuts.append((sim.t, sim.t + 10 ** 9))
    sim.run_for(1500)
    assert not a.up and not b.up and a.downs == 1
    probes = a.hellos_sent
    sim.run_for(2000)
    assert a.hellos_sent >= probes + 4
    assert a.next_wake(sim.now_ms()) <= 400
