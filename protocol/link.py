# Starling serial link: a sans-I/O reliable endpoint, one per UART side.
#
# Theory of operation
# -------------------
# Two Link objects, one at each end of a UART, exchange three kinds of frame (one CBOR
# message per frame, framed by protocol/framing.py):
#     HELLO [7, session, node, hop, reply]   session handshake, reboot detection, probes
#     DATA  [6, seq, bstr]                   bstr = several whole CBOR messages back to back
#                                            (a CBOR sequence, RFC 8742), at most max_payload
#     ACK   [5, cumulative, sack, window]    cumulative + selective acknowledgement, credit
# Both ends are symmetric: each sends DATA and ACKs for the DATA it receives. The object
# does no I/O and reads no clock; the caller's loop is
#     link.offer(msg, ticket)            -> False when full: keep msg in the outbox
#     for p in decoder.feed(uart.read()): link.feed(p, now_ms)
#     for m in link.poll_received(): take responsibility for m (store / forward)
#     for t in link.poll_acked(): release t from the outbox;  link.poll_dead(): dead letters
#     for p in link.poll_transmit(now_ms): uart.write(encode_frame(p))
#     sleep at most link.next_wake(now_ms) ms, or until the UART has bytes
# Call poll_received() before poll_transmit(): the ACK that poll_transmit() builds tells the
# peer that its responsibility for those messages ended.
#
# Times are ints of milliseconds (time.ticks_ms() on a board). Only differences are used,
# taken modulo 2**30 (_diff), so a clock that wraps at 2**30 (boards) or 2**62 (unix port)
# or never (CPython) all work, as long as no interval exceeds 2**29 ms (6 days).
#
# Session. Each Link has a random 32-bit `session` (never 0). The link session is the PAIR
# (mine, peer's). A side is `established` once it knows the peer's session and has
# received a HELLO whose `reply` is its own session; DATA and ACK are only sent and accepted
# while established. HELLO rules (receiving HELLO [s, node, hop, r]):
#   - s differs from the known peer session: a new pair (peer rebooted or restarted).
#     Both directions restart (see Resync) and we are not established.
#   - r == my session: if not established, become established; send our HELLO if the last
#     one we sent did not already carry reply == s. If already established, answer (at most
#     once per 2 RTO) only because the peer may have lost our confirmation.
#   - r != my session: the peer does not know us: answer with our HELLO at once. If we were
#     established with this pair, the peer lost it: restart both directions.
#   - not established: send HELLO every RTO, doubling up to keepalive_ms. DATA or ACK received
#     while not established also prompt a HELLO (at most once per 2 RTO).
# The handshake takes three HELLOs (four when both sides start at once).
#
# Sequence numbers are 16 bits, compared modulo 2**16 (a window <= 64 << 2**15): at most
# 3 CBOR bytes on the wire and always a small int on a board (an unbounded counter would
# become a heap-allocated bigint after 2**30 frames). The first
# DATA of a pair has seq = (sender session + receiver session) mod 2**16, so a frame or ACK
# left over from an earlier pair almost never lands inside the window (window / 65536).
# The wire never reorders (a UART is a FIFO); that, not the ISN, is what makes a session
# change safe. Within a session reordering is tolerated (costs spurious retransmissions).
#
# Receiver. Accepts DATA with seq in [cumulative, cumulative + credit) where credit =
# window - (frames delivered but not yet taken by poll_received()). In-order frames are
# delivered at once; later ones wait in a ring of `window` slots; older ones are duplicates.
# Every DATA (new, duplicate, out of window) sets "ACK pending": poll_transmit() then sends
# one ACK for everything fed since the last poll (one ACK per burst). ACK fields:
# cumulative = next expected seq, sack bit i = cumulative + 1 + i is held, window = credit.
# When the app frees credit after the last ACK advertised little (< window / 2), a window
# update ACK is sent. The receiver never drops a frame it has SACKed (no reneging).
#
# Sender. offer() queues whole messages (bounded: max_queue messages, max_queue_bytes).
# poll_transmit() packs queued messages, in order, into DATA frames of at most max_payload
# bytes while fewer than min(window, peer credit) frames are unacknowledged. Coalescing
# (Nagle, RFC 896): a frame that is not full waits while any frame is unacknowledged, so
# events that arrive while the line is busy share a frame. A cumulative ACK releases frames
# (their tickets go to poll_acked()); SACKed frames are only excused from retransmission.
# Loss detection:
#   - RACK-style (RFC 8985, without the reorder window): a frame whose last transmission was
#     before that of a frame the peer reports received is lost (the wire is FIFO) and is
#     retransmitted at the next poll.
#   - Retransmission timer (RFC 6298): one timer for the oldest unacknowledged frame,
#     restarted when the cumulative ACK advances; on expiry that frame is retransmitted
#     and the timer backs off (x2, up to rto_max_ms). RTO = SRTT + 4 RTTVAR clamped to
#     [rto_min_ms, rto_max_ms], from frames sent once only (Karn); a sample clears the
#     backoff. Initial RTO rto_ms (1 s: a window of full frames at 115200 bd is ~0.7 s).
#   - Probe (probe_ms > 0, RFC 8985 section 7): when frames are outstanding, none is known
#     lost and nothing new can be sent, no ACK to come can reveal a loss (RACK needs a
#     later transmission to be reported), so the line would stay idle until the timer.
#     The oldest frame is sent again once no ACK came for a probe timeout (PTO) after the
#     latest DATA transmission: 2 SRTT + probe_ms while it was sent once (tail-loss probe,
#     not charged to the retry budget), SRTT + probe_ms once it was retransmitted (stalled
#     window, charged like any retransmission), and min RTT + probe_ms when that latest
#     transmission was itself a probe: a probe leaves on a line that had gone quiet, so
#     its ACK is due within an unqueued round trip, while SRTT also counts the time
#     frames wait in the UART behind a window's worth. Never sooner than min RTT +
#     probe_ms after the latest ACK: ACKs still arriving mean the line is still carrying
#     queued frames. The timer restarts at a probe. In the bench/chain.py model of a line
#     losing about half of its 40-byte frames (115200 Bd, 4 hops, BER 1e-4 and 1 % of
#     bytes dropped) the line was idle 44 % of the time when only a lone frame or a
#     retransmission that was the latest transmission was probed (other stalls waited
#     for the timer), 22 % with these rules.
#   - Retry budget: a retransmission counts against a frame's max_retries only if the peer
#     was heard from since the frame's previous transmission (so a cut cable burns no
#     budget). A frame over budget is dead: its tickets go to poll_dead(), and the link
#     restarts with a new session (the receiver cannot skip a sequence number).
#
# Liveness. While established, an ACK is sent when nothing was sent for keepalive_ms. No
# valid frame for dead_after_ms -> "down": DATA stops, HELLO probes every keepalive_ms;
# the pair is kept. Any valid frame brings the link back up and the oldest unacknowledged
# frame is retransmitted at once; a cable cut therefore costs no duplicate. If the peer
# rebooted meanwhile its HELLO carries a new session and the link resyncs.
#
# Resync (new pair: peer session changed, the peer lost the pairing, or a dead frame):
# sequence numbers restart at the new ISN, the reorder ring is cleared, and the messages of
# every unacknowledged DATA frame (SACKed ones too) go back to the FRONT of the queue in
# their original order (the queue may then exceed its bounds; offer() refuses until it
# drains). Messages the receiver already took but whose ACK was lost are then delivered a
# second time.
#
# Guarantees: within a session every message is delivered exactly once and in offer order;
# across a resync at least once, in order per session. End-to-end exactly-once is restored
# by the application deduplicating events by (node, epoch, seq). An acknowledged ticket
# means the peer took the message; a dead ticket means it was NOT confirmed (it may still
# have arrived).
#
# Memory: queue <= max_queue messages and max_queue_bytes (plus re-queued ones after a
# resync), <= window unacknowledged frames of <= max_payload + 8 bytes, receive ring +
# delivered-not-polled <= window frames. Per frame work, not per byte: messages are copied
# with slice assignment; CBOR item boundaries are found by walking heads (item_end).
# feed() reads the three link messages itself (_parse), head by head, and allocates only
# a DATA frame's payload; it accepts exactly the frames that protocol/messages.py decodes
# as DATA, ACK or HELLO (any CBOR encoding, extra fields), so a node loads neither that
# module nor protocol/cbor.py for its link.
# Measured on the MicroPython 1.29-preview unix port, 20-byte events over one clean hop (both ends,
# no framing): about 167 bytes of heap and 9.5 us per event, most of it the receiver's
# per-message bytes objects and the 1 KB frame buffers shared by 50 events.
from protocol.codes import MAX_FRAME
from protocol.cbor_lite import item_end as _walk, byte_chunks as _byte_chunks

try:
    from micropython import const
except ImportError:  # CPython (a lambda, so mypy accepts the second definition)
    const = lambda x: x  # noqa: E731

SEQ_MASK = const(0xFFFF)        # link sequence numbers are 16 bits
SEQ_HALF = const(0x8000)        # offsets >= this are "before" (old duplicates)
MAX_WINDOW = const(64)          # the SACK bitmap is a CBOR uint of at most 64 bits
DATA_OVERHEAD = const(8)        # 83 06 19xxxx 59xxxx: array, head, seq, bstr head
MAX_PAYLOAD = const(1016)       # codes.MAX_FRAME - DATA_OVERHEAD: a DATA frame fits MAX_FRAME
_TMASK = const(0x3FFFFFFF)      # times compared modulo 2**30 (a board's ticks period)
_THALF = const(0x20000000)
_MAX_BACKOFF = const(10)        # 2**10 x RTO is far past rto_max_ms anyway

_ARRAY3 = const(0x83)
_MT_BYTES = const(0x40)
_H_DATA = const(6)              # head (version 1) of DATA: codes.KIND_DATA
_H_ACK = const(5)
_H_HELLO = const(7)
_BREAK = const(0xFF)
_MAX_DEPTH = const(16)          # nesting that protocol/cbor.py's loads() accepts
_NOTHING = ()                   # what a poll returns when there is nothing: no allocation


class LinkError(ValueError):
    """Our caller misused the link (bad parameter, a message that cannot be sent)."""


def _diff(a, b):
    # a - b in ms for clocks that agree modulo 2**30; small-int arithmetic only.
    d = (a - b) & _TMASK
    if d & _THALF:
        d = d - _TMASK - 1
    return d


def _later(now, ms):
    return (now + ms) & _TMASK


def _random32():
    try:
        import os
        b = os.urandom(4)
        return (b[0] << 24) | (b[1] << 16) | (b[2] << 8) | b[3]
    except Exception:  # no os.urandom: fall back to the random module
        import random
        return random.getrandbits(32)


def isn(sender_session, receiver_session):
    """Initial sequence number of the DATA stream from sender to receiver."""
    return (sender_session + receiver_session) & SEQ_MASK


def _head_len(n):
    if n < 24:
        return 1
    if n < 256:
        return 2
    if n < 65536:
        return 3
    if not n >> 32:
        return 5
    return 9


def _put_head(buf, pos, mt, n):
    # CBOR head (RFC 8949 §3) with major type bits `mt` and argument n, shortest form.
    if n < 24:
        buf[pos] = mt | n
        return pos + 1
    if n < 256:
        buf[pos] = mt | 24
        buf[pos + 1] = n
        return pos + 2
    if n < 65536:
        buf[pos] = mt | 25
        buf[pos + 1] = n >> 8
        buf[pos + 2] = n & 255
        return pos + 3
    if not n >> 32:
        size = 4
        buf[pos] = mt | 26
    else:
        size = 8
        buf[pos] = mt | 27
    i = pos + size
    while i > pos:
        buf[i] = n & 255
        n >>= 8
        i -= 1
    return pos + size + 1


def _encode_uints(first, values):
    # [first, *values] with all unsigned ints: an ACK or a HELLO, canonical CBOR.
    size = 1 + _head_len(first)
    for v in values:
        size += _head_len(v)
    buf = bytearray(size)
    buf[0] = 0x80 | (1 + len(values))
    p = _put_head(buf, 1, 0, first)
    for v in values:
        p = _put_head(buf, p, 0, v)
    return buf


def encode_ack(cumulative, sack, window):
    """ACK [5, cumulative, sack, window] as bytes (equals messages.Ack(...).encode())."""
    return bytes(_encode_uints(_H_ACK, (cumulative, sack, window)))


def encode_hello(session, node, hop, reply):
    """HELLO [7, session, node, hop, reply] as bytes."""
    return bytes(_encode_uints(_H_HELLO, (session, node, hop, reply)))


def item_end(data, pos=0, end=-1):
    """Offset just past the CBOR data item that starts at data[pos], or -1 when the bytes
    from pos (up to end, default len(data)) do not hold one complete well-formed item.

    Definite-length items are walked head by head, without recursion or allocation: a
    counter holds how many items are still to come; text is not checked for valid UTF-8,
    nor nesting depth or map keys (the message decoder does that). An item that uses an
    indefinite length is walked again from its start by protocol.cbor_lite, with every check of
    protocol/cbor.py's decoder."""
    if end < 0:
        end = len(data)
    start = pos
    need = 1
    while need:
        if pos >= end:
            return -1
        ib = data[pos]
        mt = ib >> 5
        ai = ib & 31
        pos += 1
        if ai < 24:
            n = ai
        elif ai == 24:
            if pos >= end:
                return -1
            n = data[pos]
            pos += 1
        elif ai == 25:
            if pos + 2 > end:
                return -1
            n = (data[pos] << 8) | data[pos + 1]
            pos += 2
        elif ai == 26 or ai == 27:
            k = 4 if ai == 26 else 8
            if pos + k > end:
                return -1
            # a length this big cannot fit in a frame: only the low 2 bytes matter
            hi = 0
            for i in range(pos, pos + k - 2):
                hi |= data[i]
            n = end + 1 if hi else (data[pos + k - 2] << 8) | data[pos + k - 1]
            pos += k
        elif ai == 31:
            return _walk(data, start, end, _MAX_DEPTH)
        else:  # 28..30 are reserved (RFC 8949 §3)
            return -1
        need -= 1
        if mt == 2 or mt == 3:
            if n > end - pos:
                return -1
            pos += n
        elif mt == 4:
            need += n
        elif mt == 5:
            need += n + n
        elif mt == 6:
            need += 1
        elif mt == 7 and ai == 24 and n < 32:
            return -1  # two-byte simple value < 32 is not well-formed (§3.3)
        if need > end - pos:  # every item needs at least one byte
            return -1
    return pos


def _be(data, p, k):
    # the k-byte big-endian unsigned int at data[p]
    v = 0
    k += p
    while p < k:
        v = (v << 8) | data[p]
        p += 1
    return v


# fields after the head, by head: ACK 3, DATA 2, HELLO 4
_FIELDS = b"\x00\x00\x00\x00\x00\x03\x02\x04"


def _parse(frame, f):
    """The link message that fills `frame`, into the list f: returns its head, 6 for DATA
    (f[0] seq, f[1] payload as bytes), 5 for ACK (f[0..2] cumulative, sack, window) or 7
    for HELLO (f[0..3] session, node, hop, reply); 0 when frame is anything else.

    Accepts exactly what protocol.messages.decode() turns into a Data, Ack or Hello (with
    seq and cumulative <= SEQ_MASK and a session other than 0): one well-formed CBOR item
    and no trailing bytes; any head lengths (preferred serialization or not) and indefinite
    lengths; uint fields within their limits; extra trailing fields, walked by cbor_lite
    and ignored. The usual frame is read head by head with no allocation but the payload."""
    end = len(frame)
    if end < 4:  # the shortest link message, [6, 0, h''], takes 4 bytes
        return 0
    ib = frame[0]
    if ib >> 5 != 4:  # not an array
        return 0
    n = ib & 31  # items in the array, -1: indefinite
    p = 1
    if n >= 24:
        if n == 31:
            n = -1
        elif n < 28:
            p = 1 + (1 << (n - 24))  # past the count's 1, 2, 4 or 8 bytes
            if p > end:
                return 0
            n = _be(frame, 1, p - 1)
        else:
            return 0
    kind = 0
    i = 0   # items read
    want = 1  # items to read: the head, then the fields its kind requires
    while i < want:
        if p >= end:
            return 0
        ib = frame[p]
        p += 1
        v = ib & 31
        if v >= 24:
            if v == 24:
                if p >= end:
                    return 0
                v = frame[p]
                p += 1
            elif v == 25:
                if p + 2 > end:
                    return 0
                v = (frame[p] << 8) | frame[p + 1]
                p += 2
            elif v < 28:
                v = 1 << (v - 24)
                if p + v > end:
                    return 0
                p += v
                v = _be(frame, p - v, v)
            elif ib == 0x5F and kind == _H_DATA and i == 2:  # indefinite-length payload
                p, f[1] = _byte_chunks(frame, p, end)      # ProtocolError: malformed
                if len(f[1]) > MAX_FRAME:
                    return 0
                i += 1
                continue
            else:
                return 0
        if ib < 0x20:  # unsigned int
            if i == 0:
                if v < _H_ACK or v > _H_HELLO:  # another kind, or another version
                    return 0
                kind = v
                want = 1 + _FIELDS[v]
                if 0 <= n < want:
                    return 0
            elif kind == _H_DATA and i == 2:
                return 0
            else:
                f[i - 1] = v
        elif ib >> 5 == 2 and kind == _H_DATA and i == 2:  # the payload
            if v > end - p or v > MAX_FRAME:
                return 0
            if type(frame) is bytes:
                f[1] = frame[p:p + v]
            else:  # one copy, not two (a bytearray slice, then bytes)
                f[1] = bytes(memoryview(frame)[p:p + v])
            p += v
        else:
            return 0
        i += 1
    if kind == _H_DATA:
        if f[0] > SEQ_MASK:
            return 0
    elif kind == _H_ACK:
        if f[0] > SEQ_MASK or f[2] > 0xFFFF:
            return 0
    elif (not 0 < f[0] <= 0xFFFFFFFF or f[1] > 0xFFFFFFFF or f[2] > 255
          or f[3] > 0xFFFFFFFF):
        return 0
    if n < 0:
        while True:  # extra fields up to the break
            if p >= end:
                return 0
            if frame[p] == _BREAK:
                p += 1
                break
            p = _walk(frame, p, end, _MAX_DEPTH - 1)
            if p < 0:
                return 0
    else:
        n -= want  # extra fields
        if n > end - p:
            return 0
        while n:
            p = _walk(frame, p, end, _MAX_DEPTH - 1)
            if p < 0:
                return 0
            n -= 1
    return kind if p == end else 0


class _Frame:
    # One DATA frame sent and not yet cumulatively acknowledged.
    __slots__ = ("seq", "buf", "start", "tickets", "count", "sent", "txn", "tx",
                 "retries", "sacked", "lost", "timed")

    def __init__(self, seq, buf, start, tickets, count):
        self.seq = seq
        self.buf = buf          # the encoded DATA message, sent as is on every transmission
        self.start = start      # offset of the first carried message in buf
        self.tickets = tickets  # one per message, or None when all were None
        self.count = count      # messages carried
        self.sent = 0           # time of the last transmission
        self.txn = 0            # transmission ordinal of the last transmission (RACK)
        self.tx = 0             # transmissions so far
        self.retries = 0        # retransmissions charged against max_retries
        self.sacked = False
        self.lost = False       # to be retransmitted at the next poll
        self.timed = False      # an ACK for it is a valid RTT sample (Karn: sent once)


class Link:
    """One end of a Starling serial link. See the theory of operation above.

    Args:
        node, hop: this side's node id (0 for a base station) and chain index, sent in HELLO.
        window: unacknowledged DATA frames allowed, and frames this side buffers (1..64).
        max_payload: bytes of messages per DATA frame (1..MAX_PAYLOAD).
        rto_ms, rto_min_ms, rto_max_ms: initial, smallest and largest retransmission timeout.
        keepalive_ms: an ACK (or a HELLO probe when down) after this long without sending.
        dead_after_ms: no valid frame for this long -> down.
        max_queue, max_queue_bytes: bounds of the send queue (messages, bytes).
        max_retries: retransmissions charged to a frame before it is declared dead.
        coalesce: hold a part-filled frame while frames are unacknowledged (Nagle).
        probe_ms: probes (0: off). When frames are outstanding, none is known lost and
            nothing new can be sent, the oldest is sent again after 2 x SRTT + probe_ms
            (sent once: tail-loss probe, RFC 8985 section 7) or SRTT + probe_ms
            (retransmitted: stalled window) without an ACK since the latest DATA
            transmission, min RTT + probe_ms after a probe, and never sooner than min
            RTT + probe_ms after the latest ACK, instead of waiting for the
            retransmission timeout. Set it to at least one full frame's line time.
        session: this side's first session id (1..2**32-1); default random.
        rng: a function returning a random 32-bit int, for later session ids.
    Raises LinkError for out-of-range arguments.
    """

    def __init__(self, node=0, hop=0, window=8, max_payload=MAX_PAYLOAD, rto_ms=1000,
                 rto_min_ms=100, rto_max_ms=4000, keepalive_ms=1000, dead_after_ms=3000,
                 max_queue=64, max_queue_bytes=4096, max_retries=8, coalesce=True,
                 session=None, rng=None, probe_ms=0):
        if not 1 <= window <= MAX_WINDOW:
            raise LinkError("window must be 1..%d" % MAX_WINDOW)
        if not 1 <= max_payload <= MAX_PAYLOAD:
            raise LinkError("max_payload must be 1..%d" % MAX_PAYLOAD)
        if not 1 <= rto_min_ms <= rto_ms <= rto_max_ms:
            raise LinkError("need 1 <= rto_min_ms <= rto_ms <= rto_max_ms")
        if not 1 <= keepalive_ms < dead_after_ms:
            raise LinkError("need 1 <= keepalive_ms < dead_after_ms")
        if max_queue < 1 or max_queue_bytes < max_payload:
            raise LinkError("need max_queue >= 1 and max_queue_bytes >= max_payload")
        if max_retries < 0:
            raise LinkError("max_retries must be >= 0")
        if probe_ms < 0:
            raise LinkError("probe_ms must be >= 0")
        if not 0 <= node <= 0xFFFFFFFF or not 0 <= hop <= 255:
            raise LinkError("node is 0..2**32-1, hop 0..255")
        self.node = node
        self.hop = hop
        self.window = window
        self.max_payload = max_payload
        self.rto_min_ms = rto_min_ms
        self.rto_max_ms = rto_max_ms
        self.keepalive_ms = keepalive_ms
        self.dead_after_ms = dead_after_ms
        self.max_queue = max_queue
        self.max_queue_bytes = max_queue_bytes
        self.max_retries = max_retries
        self.coalesce = coalesce
        self.probe_ms = probe_ms
        self._rng = rng if rng is not None else _random32
        if session is None:
            session = self._new_session_id(0)
        if not 1 <= session <= 0xFFFFFFFF:
            raise LinkError("session must be 1..2**32-1")
        self.session = session
        self.peer_session = 0       # 0: not known yet
        self.peer_node = None
        self.peer_hop = None
        self.established = False
        self._paired = False        # this pair was established at some point
        self._alive = False
        # send side
        self._q_msgs = []           # queued messages (bytes), oldest first
        self._q_tix = []            # their tickets
        self._q_bytes = 0
        self._out = []              # _Frame objects, seq order, first one is snd_una
        self._tx_scratch = []       # poll_transmit()'s DATA frames, emptied before it returns
        self._snd_nxt = 0
        self._peer_wnd = 1          # credit until the peer's first ACK
        self._txn = 0
        self._tx_at = 0             # time of the latest DATA transmission
        self._probed = False        # ... and it was a probe
        self._ack_at = None         # time of the latest ACK while frames are outstanding
        self._rack_txn = 0
        self._lost_n = 0
        self._rto_at = None
        self._backoff = 0
        self._srtt8 = 0             # SRTT x 8, RTTVAR x 4 (Jacobson's scaled integers)
        self._rttvar4 = 0
        self._rto = rto_ms
        self._min_rtt = 0
        # receive side
        self._rcv_nxt = 0
        self._ring = [None] * window
        self._rbase = 0
        self._ready = []            # payloads delivered in order, not yet polled
        self._ack_pending = False
        self._adv_last = 0
        self._rx = [0, None, 0, 0]  # fields of the frame being fed (see _parse)
        # timers
        self._last_rx = None
        self._last_tx = None
        self._hello_flag = True     # send a HELLO at the next poll
        self._hello_at = None
        self._hello_ivl = min(rto_ms, keepalive_ms)
        self._last_hello_tx = None
        self._hello_reply_sent = 0  # `reply` of the last HELLO sent
        # results
        self._acked = []
        self._dead = []
        # counters
        self.frames_sent = 0
        self.frames_received = 0
        self.data_sent = 0
        self.data_received = 0
        self.acks_sent = 0
        self.hellos_sent = 0
        self.messages_sent = 0
        self.messages_received = 0
        self.retransmissions = 0
        self.probes = 0
        self.duplicates = 0
        self.out_of_order = 0
        self.out_of_window = 0
        self.crc_errors = 0         # the link sees none; the I/O loop adds framing's here
        self.malformed = 0
        self.ignored = 0
        self.acked = 0
        self.dead = 0
        self.resyncs = 0
        self.downs = 0
        self._new_pair()

    # ---------------------------------------------------------------- public API

    @property
    def up(self):
        """Established with the peer and heard from within dead_after_ms (as of the last
        feed() or poll_transmit())."""
        return self.established and self._alive

    def queued(self):
        """Messages waiting to be sent (not counting unacknowledged frames)."""
        return len(self._q_msgs)

    def in_flight(self):
        """Messages in DATA frames sent and not yet acknowledged."""
        n = 0
        for f in self._out:
            n += f.count
        return n

    def undelivered(self):
        """DATA frames delivered in order but not yet taken by poll_received(). The next
        ACK that poll_transmit() builds covers them (credit = window - undelivered), so an
        application that must store messages before they are acknowledged holds back
        poll_transmit() while this is non-zero and it cannot take them."""
        return len(self._ready)

    def offer(self, message, ticket=None):
        """Queue one encoded CBOR message (bytes) for the peer; `ticket` (any object but
        None) comes back from poll_acked() once the peer acknowledged it, or from
        poll_dead(). Returns False when the queue is full (keep the message and retry).
        Raises LinkError if message is not exactly one CBOR item of 1..max_payload bytes."""
        n = len(message)
        if not 0 < n <= self.max_payload:
            raise LinkError("message of %d bytes: must be 1..%d" % (n, self.max_payload))
        if item_end(message, 0, n) != n:
            raise LinkError("message is not exactly one well-formed CBOR item")
        if len(self._q_msgs) >= self.max_queue or self._q_bytes + n > self.max_queue_bytes:
            return False
        self._q_msgs.append(message)
        self._q_tix.append(ticket)
        self._q_bytes += n
        return True

    def feed(self, frame, now_ms):
        """Handle one frame payload from the framing layer. Never raises on wire data:
        undecodable frames and non-link messages count as `malformed`."""
        f = self._rx
        try:
            kind = _parse(frame, f)
        except Exception:  # not bytes, or no memory for the payload: the frame is lost
            kind = 0
        if not kind:
            f[1] = None
            self.malformed += 1
            return
        self.frames_received += 1
        self._heard(now_ms)
        if kind == _H_HELLO:
            self._on_hello(f[0], f[1], f[2], f[3], now_ms)
        elif not self.established:
            # the peer thinks it has a session with us; it will need our HELLO
            self.ignored += 1
            self._prompt_hello(now_ms)
        elif kind == _H_DATA:
            self._on_data(f[0], f[1])
        else:
            self._on_ack(f[0], f[1], f[2], now_ms)
        f[1] = None  # keeps no payload alive past this call

    def poll_received(self):
        """Messages delivered in order since the last call: a list of bytes, or an empty
        tuple (allocated once) when there are none."""
        ready = self._ready
        if not ready:
            return _NOTHING
        out = []
        for payload in ready:
            end = len(payload)
            p = 0
            while p < end:
                q = item_end(payload, p, end)
                if q < 0:  # the sender's offer() checks items: the peer is broken
                    self.malformed += 1
                    break
                out.append(payload if (p == 0 and q == end) else payload[p:q])
                p = q
        # taken only now: a MemoryError above leaves the frames for the next call
        self._ready = []
        self.messages_received += len(out)
        if self.established and self._adv_last * 2 < self.window:
            self._ack_pending = True  # window update
        return out

    def poll_acked(self):
        """Tickets of messages the peer acknowledged since the last call (a list, or an
        empty tuple)."""
        out = self._acked
        if not out:
            return _NOTHING
        self._acked = []
        return out

    def poll_dead(self):
        """Tickets of messages whose frame exceeded max_retries since the last call (a list,
        or an empty tuple)."""
        out = self._dead
        if not out:
            return _NOTHING
        self._dead = []
        return out

    def poll_transmit(self, now_ms):
        """Frame payloads to send now, in order (HELLO, ACK, retransmissions, new DATA).
        Each is bytes-like (bytes or bytearray; do not modify it). A list, or an empty
        tuple when there is nothing to send."""
        self._tick(now_ms)
        data = self._tx_scratch   # DATA frames gather here: no list per idle call
        if data:
            del data[:]   # left by a call that raised
        if self.established and self._alive:
            self._send_data(now_ms, data)
        out = _NOTHING
        if self._hello_flag or (self._hello_at is not None and _diff(now_ms, self._hello_at) >= 0):
            out = [self._hello_frame(now_ms)]
        if self.established and self._ack_pending:
            if out is _NOTHING:
                out = []
            out.append(self._ack_frame())
        if data:
            if out is _NOTHING:
                out = []
            out.extend(data)
            del data[:]
        if out:
            self.frames_sent += len(out)
            self._last_tx = now_ms
        return out

    def next_wake(self, now_ms):
        """Milliseconds until poll_transmit() has something to do (0: now)."""
        if self._hello_flag:
            return 0
        w = 0x7FFFFFFF
        if self._hello_at is not None:
            w = _diff(self._hello_at, now_ms)
        if self.established:
            if self._ack_pending:
                return 0
            if self._alive:
                if self._lost_n or self._can_send_new():
                    return 0
                if self._rto_at is not None:
                    w = min(w, _diff(self._rto_at, now_ms))
                p = self._probe_at()
                if p is not None:
                    w = min(w, _diff(p, now_ms))
                if self._last_tx is None:
                    return 0
                w = min(w, _diff(_later(self._last_tx, self.keepalive_ms), now_ms))
                w = min(w, _diff(_later(self._last_rx, self.dead_after_ms), now_ms))
        return w if w > 0 else 0

    def restart(self):
        """Start a new session (as after a dead frame): unacknowledged messages are
        re-queued and the peer is told to restart too."""
        self.session = self._new_session_id(self.session)
        if self._paired:
            self.resyncs += 1
        self._new_pair()
        self._unestablish()

    def stats(self):
        return {
            "frames_sent": self.frames_sent,
            "frames_received": self.frames_received,
            "data_sent": self.data_sent,
            "data_received": self.data_received,
            "acks_sent": self.acks_sent,
            "hellos_sent": self.hellos_sent,
            "messages_sent": self.messages_sent,
            "messages_received": self.messages_received,
            "retransmissions": self.retransmissions,
            "probes": self.probes,
            "duplicates": self.duplicates,
            "out_of_order": self.out_of_order,
            "out_of_window": self.out_of_window,
            "crc_errors": self.crc_errors,
            "malformed": self.malformed,
            "ignored": self.ignored,
            "rtt_ms": (self._srtt8 >> 3) if self._srtt8 else None,
            "rto_ms": self._rto_now(),
            "window_in_use": len(self._out),
            "peer_window": self._peer_wnd,
            "queued": len(self._q_msgs),
            "acked": self.acked,
            "dead": self.dead,
            "resyncs": self.resyncs,
            "downs": self.downs,
            "up": self.up,
        }

    # ---------------------------------------------------------------- session

    def _new_session_id(self, old):
        s = self._rng() & 0xFFFFFFFF
        while s == 0 or s == old:
            s = (s + 1) & 0xFFFFFFFF
        return s

    def _guard_ok(self, now):
        # at most one unsolicited HELLO answer per 2 RTO (a negative difference: the last
        # HELLO is more than 2**29 ms old)
        last = self._last_hello_tx
        if last is None:
            return True
        d = _diff(now, last)
        return d < 0 or d >= 2 * self._rto

    def _prompt_hello(self, now):
        if self._guard_ok(now):
            self._hello_flag = True

    def _unestablish(self):
        self.established = False
        self._hello_flag = True
        self._hello_ivl = min(self._rto, self.keepalive_ms)
        self._hello_at = None

    def _new_pair(self):
        # Both directions restart for the pair (self.session, self.peer_session).
        if self._out:
            msgs = []
            tix = []
            for f in self._out:
                buf = f.buf
                end = len(buf)
                p = f.start
                i = 0
                while p < end:
                    q = item_end(buf, p, end)
                    msgs.append(bytes(memoryview(buf)[p:q]))
                    tix.append(f.tickets[i] if f.tickets is not None else None)
                    self._q_bytes += q - p
                    p = q
                    i += 1
            self._q_msgs = msgs + self._q_msgs
            self._q_tix = tix + self._q_tix
            self._out = []
        self._snd_nxt = isn(self.session, self.peer_session)
        self._peer_wnd = 1
        self._rack_txn = 0
        self._lost_n = 0
        self._rto_at = None
        self._backoff = 0
        self._probed = False
        self._ack_at = None
        self._rcv_nxt = isn(self.peer_session, self.session)
        ring = self._ring
        for i in range(len(ring)):
            ring[i] = None
        self._rbase = 0
        self._ack_pending = False
        self._paired = False

    def _on_hello(self, s, node, hop, r, now):
        self.peer_node = node
        self.peer_hop = hop
        if s != self.peer_session:
            if self._paired:
                self.resyncs += 1
            self.peer_session = s
            self._new_pair()
            self._unestablish()
            self._hello_flag = False  # decided below
        if r == self.session:
            if not self.established:
                self.established = True
                self._paired = True
                self._alive = True
                self._hello_at = None
                self._ack_pending = True  # advertise our window
                if self._hello_reply_sent != s:
                    self._hello_flag = True  # the peer needs our confirmation
            elif self._guard_ok(now):
                self._hello_flag = True  # maybe the peer lost our confirmation
        else:
            if self.established:  # the peer lost this pairing
                self.resyncs += 1
                self._new_pair()
                self._unestablish()
            self._hello_flag = True
        if not self.established and self._hello_at is None:
            self._hello_at = _later(now, self._hello_ivl)

    def _hello_frame(self, now):
        self._hello_flag = False
        self._last_hello_tx = now
        self._hello_reply_sent = self.peer_session
        if not self.established:
            self._hello_at = _later(now, self._hello_ivl)
            self._hello_ivl = min(self._hello_ivl * 2, self.keepalive_ms)
        elif not self._alive:
            self._hello_at = _later(now, self.keepalive_ms)
        else:
            self._hello_at = None
        self.hellos_sent += 1
        return _encode_uints(_H_HELLO, (self.session, self.node, self.hop, self.peer_session))

    # ---------------------------------------------------------------- liveness

    def _heard(self, now):
        self._last_rx = now
        if self.established and not self._alive:
            self._alive = True
            self._hello_at = None
            self._rto_at = None  # restarted by the retransmission below
            self._ack_at = None  # from before the outage: says nothing about the line now
            out = self._out
            for f in out:
                f.timed = False  # an ACK across the outage says nothing about the RTT
            if out and not out[0].lost and not out[0].sacked:
                out[0].lost = True  # probe at once instead of waiting for the timer
                self._lost_n += 1

    def _tick(self, now):
        last = self._last_hello_tx
        if last is not None and _diff(now, last) > 2 * self.rto_max_ms:
            self._last_hello_tx = None  # long ago; keeps _diff() within its range
        if self.established and self._alive:
            if _diff(now, self._last_rx) >= self.dead_after_ms:
                self._alive = False
                self.downs += 1
                self._hello_flag = True
                self._hello_ivl = self.keepalive_ms
            elif self._last_tx is None or _diff(now, self._last_tx) >= self.keepalive_ms:
                self._ack_pending = True

    # ---------------------------------------------------------------- receive side

    def _on_data(self, seq, payload):
        self.data_received += 1
        self._ack_pending = True
        off = (seq - self._rcv_nxt) & SEQ_MASK
        if off >= SEQ_HALF:
            self.duplicates += 1
            return
        window = self.window
        if off >= window - len(self._ready):
            self.out_of_window += 1
            return
        ring = self._ring
        if off:
            i = (self._rbase + off) % window
            if ring[i] is not None:
                self.duplicates += 1
            else:
                ring[i] = payload
                self.out_of_order += 1
            return
        ready = self._ready
        ready.append(payload)
        i = (self._rbase + 1) % window
        n = 1
        while ring[i] is not None:
            ready.append(ring[i])
            ring[i] = None
            i = (i + 1) % window
            n += 1
        self._rbase = i
        self._rcv_nxt = (self._rcv_nxt + n) & SEQ_MASK

    def _credit(self):
        return self.window - len(self._ready)

    def _ack_frame(self):
        self._ack_pending = False
        ring = self._ring
        window = self.window
        base = self._rbase
        sack = 0
        for k in range(1, window):
            if ring[(base + k) % window] is not None:
                sack |= 1 << (k - 1)
        credit = self._credit()
        self._adv_last = credit
        self.acks_sent += 1
        return _encode_uints(_H_ACK, (self._rcv_nxt, sack, credit))

    # ---------------------------------------------------------------- send side

    def _rto_now(self):
        rto = self._rto << self._backoff
        return rto if rto < self.rto_max_ms else self.rto_max_ms

    def _rtt_sample(self, r):
        # RFC 6298 §2 with Jacobson's scaled integers (SRTT x 8, RTTVAR x 4).
        if r < 1:
            r = 1
        if not self._srtt8:
            self._srtt8 = r << 3
            self._rttvar4 = r << 1
            self._min_rtt = r
        else:
            err = r - (self._srtt8 >> 3)
            self._srtt8 += err
            if err < 0:
                err = -err
            self._rttvar4 += err - (self._rttvar4 >> 2)
            if r < self._min_rtt:
                self._min_rtt = r
        rto = (self._srtt8 >> 3) + max(1, self._rttvar4)
        if rto < self.rto_min_ms:
            rto = self.rto_min_ms
        elif rto > self.rto_max_ms:
            rto = self.rto_max_ms
        self._rto = rto
        self._backoff = 0

    def _on_ack(self, cum, sack, window, now):
        out = self._out
        d = (cum - (self._snd_nxt - len(out))) & SEQ_MASK
        if d > len(out):
            self.ignored += 1  # acknowledges frames we never sent: stale
            return
        self._peer_wnd = window
        self._ack_at = now if out else None  # (never older than the flight: _diff() range)
        sample = None
        rack = self._rack_txn
        min_rtt = self._min_rtt
        if d:
            acked = self._acked
            for i in range(d):
                f = out[i]
                if f.tickets is not None:
                    for t in f.tickets:
                        if t is not None:
                            acked.append(t)
                self.acked += f.count
                if f.lost:
                    self._lost_n -= 1
                if f.sacked:
                    continue
                if f.timed:
                    if sample is None or _diff(f.sent, sample) > 0:
                        sample = f.sent
                if f.txn > rack and (f.tx == 1 or _diff(now, f.sent) >= min_rtt):
                    rack = f.txn
            del out[:d]
            if out:
                self._rto_at = _later(now, self._rto_now())
            else:
                self._rto_at = None
                self._ack_at = None
        if sack and len(out) > 1:
            for j in range(1, len(out)):
                if (sack >> (j - 1)) & 1:
                    f = out[j]
                    if f.sacked:
                        continue
                    f.sacked = True
                    if f.lost:
                        f.lost = False
                        self._lost_n -= 1
                    if f.timed:
                        if sample is None or _diff(f.sent, sample) > 0:
                            sample = f.sent
                    if f.txn > rack and (f.tx == 1 or _diff(now, f.sent) >= min_rtt):
                        rack = f.txn
        if sample is not None:
            self._rtt_sample(_diff(now, sample))
            if self._rto_at is not None and d:
                self._rto_at = _later(now, self._rto_now())
        if rack > self._rack_txn:
            self._rack_txn = rack
            for f in out:
                if f.txn < rack and not f.sacked and not f.lost:
                    f.lost = True
                    self._lost_n += 1

    def _can_send_new(self):
        if not self._q_msgs:
            return False
        n = len(self._out)
        if n >= self.window or n >= self._peer_wnd:
            return False
        return not (self.coalesce and n and self._q_bytes <= self.max_payload)

    def _probe_at(self):
        # When a probe of the oldest unacknowledged frame is due, or None. Only when no
        # ACK to come can reveal a loss: frames are outstanding, none is known lost (RACK
        # marks a frame lost only when a later transmission is reported received), none
        # new can be sent (a new frame would reveal a loss by itself); and with an RTT
        # known. Due a PTO after the latest DATA transmission, whichever frame that was:
        #   - the oldest frame was sent once: tail-loss probe, 2 SRTT + probe_ms;
        #   - it was retransmitted (a stalled window): SRTT + probe_ms;
        #   - the latest transmission was a probe: min RTT + probe_ms. The probe went out
        #     on a line quiet for a PTO, so its ACK is due within an unqueued round trip;
        #     SRTT also counts frames waiting in the UART behind others of a window.
        # Never sooner than min RTT + probe_ms after the latest ACK: while ACKs still come
        # the line is still delivering queued frames. Skipped when the PTO is not shorter
        # than the RTO (the retransmission timer then comes first anyway).
        out = self._out
        if not self.probe_ms or not self._srtt8 or not out or self._lost_n:
            return None
        f = out[0]
        if f.sacked or self._can_send_new():
            return None
        if f.tx == 1:
            pto = (self._srtt8 >> 3) << 1
        elif self._probed:
            pto = self._min_rtt
        else:
            pto = self._srtt8 >> 3
        pto += self.probe_ms
        if pto >= self._rto_now():
            return None
        at = _later(self._tx_at, pto)
        ack = self._ack_at
        if ack is not None:
            ack = _later(ack, self._min_rtt + self.probe_ms)
            if _diff(ack, at) > 0:
                return ack
        return at

    def _send_data(self, now, data):
        out = self._out
        p = self._probe_at()
        if p is not None and _diff(now, p) >= 0:
            # probe: a frame or an ACK was probably lost. A tail-loss probe is not charged
            # to the retry budget, a probe of a retransmitted frame is (when the peer was
            # heard from since); the retransmission timer restarts from now
            f = out[0]
            if f.tx > 1 and _diff(self._last_rx, f.sent) >= 0:
                f.retries += 1
                if f.retries > self.max_retries:
                    self._kill(f)
                    del data[:]
                    return
            self.probes += 1
            self.retransmissions += 1
            self._rto_at = _later(now, self._rto_now())
            self._transmit(f, now, data)
            self._probed = True
        # retransmission timer: the oldest unacknowledged frame is lost
        if self._rto_at is not None and out and _diff(now, self._rto_at) >= 0:
            if self._backoff < _MAX_BACKOFF:
                self._backoff += 1
            f = out[0]
            if not f.lost:
                f.lost = True
                self._lost_n += 1
            self._rto_at = _later(now, self._rto_now())
        if self._lost_n:
            last_rx = self._last_rx
            for f in out:
                if not f.lost:
                    continue
                if _diff(last_rx, f.sent) >= 0:  # the peer was heard since: charge it
                    f.retries += 1
                    if f.retries > self.max_retries:
                        self._kill(f)
                        del data[:]
                        return
                f.lost = False
                self._lost_n -= 1
                self.retransmissions += 1
                self._transmit(f, now, data)
        while self._can_send_new():
            self._pack(now, data)

    def _transmit(self, f, now, data):
        self._txn += 1
        f.txn = self._txn
        f.tx += 1
        f.timed = f.tx == 1
        f.sent = now
        self._tx_at = now
        self._probed = False
        if self._rto_at is None:
            self._rto_at = _later(now, self._rto_now())
        data.append(f.buf)

    def _pack(self, now, data):
        msgs = self._q_msgs
        limit = self.max_payload
        size = 0
        k = 0
        for m in msgs:
            if size + len(m) > limit:
                break
            size += len(m)
            k += 1
        seq = self._snd_nxt
        buf = bytearray(2 + _head_len(seq) + _head_len(size) + size)
        buf[0] = _ARRAY3
        buf[1] = _H_DATA
        p = _put_head(buf, 2, 0, seq)
        p = _put_head(buf, p, _MT_BYTES, size)
        start = p
        for i in range(k):
            m = msgs[i]
            q = p + len(m)
            buf[p:q] = m
            p = q
        tickets = None
        tix = self._q_tix
        for i in range(k):
            if tix[i] is not None:
                tickets = tix[:k]
                break
        del msgs[:k]
        del tix[:k]
        self._q_bytes -= size
        f = _Frame(seq, buf, start, tickets, k)
        self._out.append(f)
        self._snd_nxt = (seq + 1) & SEQ_MASK
        self.data_sent += 1
        self.messages_sent += k
        self._transmit(f, now, data)

    def _kill(self, f):
        # f exceeded its retry budget: report its messages, restart the session
        if f.tickets is not None:
            for t in f.tickets:
                if t is not None:
                    self._dead.append(t)
        self.dead += f.count
        self._out.remove(f)
        self.restart()
