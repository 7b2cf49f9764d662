# The outbox of a serial-chain node: accepted messages waiting for the next hop's
# acknowledgement, an optional flash log that makes them survive a reboot, and the
# dead-letter list.
#
# Theory of operation
# -------------------
# Queue: a bounded FIFO ring of entries. An entry is one encoded Starling message (bytes)
# plus its ids (epoch, seq: an own EVENT's identity; a queue made with ids=False, the
# forward queue, keeps none), its log position (a queue made with positions=False keeps
# none: no log) and a retry count. Entries move WAITING -> OFFERED -> DONE:
#     q.peek() -> msg; link.offer(msg, q.ticket()) succeeded -> q.commit()
#     link.poll_acked() ticket -> q.done(ticket)   (dead tickets too, after dead-lettering)
# WAITING entries are always a suffix of the ring (entries are offered in order), so the
# first waiting one is at relative index `w`. Once offered, an entry's message bytes are
# released: the link holds them until its peer acknowledges (or re-queues them itself on a
# resync). DONE entries leave from the front; one in the middle (a dead frame that was not
# the oldest) waits there until the ones before it are done.
# Tickets are small ints: (serial << 2) | queue id, serial modulo 2**24 (no bigints on
# boards; a ticket only has to be unique among the entries in the link, <= a few hundred).
#
# When full (`max` entries, or `max_bytes` of waiting message bytes):
#   "block":       put() returns False (refused), nothing is shed; the caller may wait
#   "drop_newest": put() returns False, the new message is shed (counted `dropped`)
#   "drop_oldest": the oldest WAITING entry is shed (counted `dropped`) until the new one
#                  fits; entries already in the link cannot be recalled, so when only those
#                  are left the new message is shed instead. The eviction shifts the few
#                  offered entries in front of it by one slot (O(entries in the link)).
# Counters: accepted (put() True), refused (put() False under block), dropped (shed by a
# policy), evicted (the drop_oldest part of dropped).
#
# Log (durable mode): an append-only log on flash in segment files <prefix><n> (n modulo
# 2**14), each record
#     len u16 BE | crc32 u32 LE | kind u8 | epoch u32 BE | seq u32 BE | message
# with len = 9 + len(message) and the CRC over kind..message (a torn or damaged tail is
# detected and ignored). A position is (segment << 16) | offset, a small int compared
# modulo 2**30 like ticks. Appends go to a RAM buffer and reach flash (append + close,
# which commits on littlefs) when `flush_records` records or `flush_ms` have accumulated,
# before a segment rolls over, and at every sync(): littlefs erases a block for a small
# flushed append, so batching is what keeps the flash alive.
# The cursor file <prefix>cur holds "cursor head": the position of the oldest record not
# yet done (everything before it is acknowledged or dead-lettered) and the newest segment.
# It is rewritten (temporary file + rename: atomic on littlefs) after `cursor_acks`
# acknowledgements or `cursor_ms`, and at every sync(); segments wholly before the cursor
# are then deleted. When everything is acknowledged and the segment holds at least
# `compact_bytes`, the log rolls to a fresh segment so the old one can go (compaction).
# At boot, open() replays every record from the cursor to the newest segment, in order,
# with its original kind, epoch and seq; new records go to a fresh segment after them.
#
# What a power loss can lose (durable mode):
#   - records still in the RAM buffer: messages accepted since the last flush, at most
#     flush_records records or flush_ms of them. A message is *durable* once sync() (or
#     publish(..., wait=True) on the node) returned, or once the next automatic flush ran.
#     The chain node flushes forwarded messages before its ACK for them leaves, so a lower
#     node's message is never acknowledged before it is on flash.
#   - nothing else: an acknowledgement whose cursor was not saved yet only makes those
#     records replay again (a duplicate, removed by the base's (node, epoch, seq) dedupe).
# A torn record (power lost mid-append) ends its segment's replay; it was never reported
# durable.
#
# RAM (32-bit board; the unix port's 64-bit pointers take 4 more bytes a slot): a Queue
# preallocates max + slack slots of 22 bytes (a list of messages, four u32 arrays, one u16)
# and holds only WAITING messages' bytes (max_bytes at most, plus ~16 bytes of object
# header each); a Log holds one buffer of LOG_BUF bytes, and during open() one segment
# file (segment_bytes) at a time.
import binascii
import struct
from array import array

from protocol.link import _diff
from protocol.nodewire import deadletter

try:
    from micropython import const
except ImportError:  # CPython
    const = lambda x: x  # noqa: E731

WAITING = const(0)
OFFERED = const(1)
DONE = const(2)
POLICIES = ("block", "drop_oldest", "drop_newest")

Q_OWN = const(0)        # ticket queue ids (ticket & 3)
Q_FWD = const(1)
Q_STATUS = const(2)     # not a queue: the node's STATUS
Q_DEAD = const(3)       # not a queue: a DEADLETTER in flight

KIND_OWN = const(1)     # log record kinds
KIND_FWD = const(2)

_SERIAL_MASK = const(0xFFFFFF)
SEG_WRAP = const(1 << 14)     # segment numbers are modulo this (positions stay small ints)
_HDR = const(6)               # len u16 + crc32
_META = const(9)              # kind u8 + epoch u32 + seq u32
REC_OVERHEAD = const(15)
LOG_BUF = const(2048)         # the log's RAM buffer: a flush happens before it overflows


def _zeros(code, n, size):
    # a preallocated array of n zeros (typecode code, size bytes an item)
    try:
        return array(code, bytes(n * size))   # MicroPython: a buffer gives the raw items
    except TypeError:                         # CPython
        return array(code, [0]) * n


class OutboxError(ValueError):
    # our caller misused the outbox (bad bound, unknown policy, message too long)
    pass


# a - b for log positions: modulo 2**30 like ticks, so the link's arithmetic
pdiff = _diff


class Queue:
    def __init__(self, qid, max_entries, max_bytes, policy="block", slack=0, keep=False,
                 ids=True, positions=True):
        if policy not in POLICIES:
            raise OutboxError("policy must be one of %s, got %r" % (", ".join(POLICIES), policy))
        if max_entries < 1 or max_bytes < 1:
            raise OutboxError("max and max_bytes must be >= 1")
        self.qid = qid
        self.max = max_entries
        self.max_bytes = max_bytes
        self.policy = policy
        self.keep = keep              # keep offered messages until done (forward queue)
        cap = max_entries + slack     # slack: room for replay beyond the publish bound
        self.cap = cap
        self._msg = [None] * cap
        # ids and log positions only where they are used: 8 and 4 bytes an entry
        self._epoch = _zeros("I", cap, 4) if ids else None
        self._seq = _zeros("I", cap, 4) if ids else None
        self._pos = _zeros("I", cap, 4) if positions else None   # log position
        self._tk = _zeros("I", cap, 4)    # ticket
        self._st = _zeros("H", cap, 2)    # state | tries << 2 (tries saturate at 16383)
        self._h = 0                   # ring index of the oldest entry
        self.n = 0                    # entries in the ring (all states)
        self.w = 0                    # relative index of the first WAITING entry
        self.bytes = 0                # message bytes held (WAITING; OFFERED too with keep)
        self._serial = 0
        self.live = 0                 # entries not DONE
        self.accepted = 0
        self.refused = 0
        self.dropped = 0
        self.evicted = 0
        self.offered_epoch = -1       # (epoch, seq) of the newest entry handed to the link
        self.offered_seq = 0

    # --- adding ------------------------------------------------------------------------
    def room(self, size):
        return self.n < self.max and self.bytes + size <= self.max_bytes

    def put(self, msg, epoch=0, seq=0, pos=0, tries=0, force=False):
        # Accept msg at the tail. Returns True when accepted. force (replay): ignore max and
        # max_bytes up to the ring's capacity (shed beyond it).
        size = len(msg)
        if force:
            if self.n >= self.cap:
                self.dropped += 1
                return False
        elif not self.room(size):
            p = self.policy
            if p == "block":
                self.refused += 1
                return False
            if p == "drop_newest":
                self.dropped += 1
                return False
            while not self.room(size):
                if self.w >= self.n:      # only entries in the link: shed the new one
                    self.dropped += 1
                    return False
                self._evict()
        i = (self._h + self.n) % self.cap
        self._msg[i] = msg
        if self._epoch is not None:
            self._epoch[i] = epoch
            self._seq[i] = seq
        if self._pos is not None:
            self._pos[i] = pos
        self._serial = (self._serial + 1) & _SERIAL_MASK
        self._tk[i] = (self._serial << 2) | self.qid
        self._st[i] = WAITING | (min(tries, 0x3FFF) << 2)
        self.n += 1
        self.live += 1
        self.bytes += size
        self.accepted += 1
        return True

    def _evict(self):
        # shed the oldest WAITING entry (relative index w): shift the w entries before it
        # (offered or done) one slot towards the tail and advance the head
        cap = self.cap
        h = self._h
        j = (h + self.w) % cap
        self.bytes -= len(self._msg[j])
        k = self.w
        ep, sq, ps = self._epoch, self._seq, self._pos
        while k > 0:
            dst = (h + k) % cap
            src = (h + k - 1) % cap
            self._msg[dst] = self._msg[src]
            if ep is not None:
                ep[dst] = ep[src]
                sq[dst] = sq[src]
            if ps is not None:
                ps[dst] = ps[src]
            self._tk[dst] = self._tk[src]
            self._st[dst] = self._st[src]
            k -= 1
        self._msg[h] = None
        self._h = (h + 1) % cap
        self.n -= 1
        self.live -= 1
        self.dropped += 1
        self.evicted += 1

    # --- offering ----------------------------------------------------------------------
    def waiting(self):
        return self.n - self.w

    def peek(self):
        # the first WAITING message, or None
        if self.w >= self.n:
            return None
        return self._msg[(self._h + self.w) % self.cap]

    def ticket(self):
        return self._tk[(self._h + self.w) % self.cap]

    def commit(self):
        # the peeked message was accepted by the link: it is OFFERED; release its bytes
        # (unless keep: a forwarded message is kept to dead-letter its events if need be)
        i = (self._h + self.w) % self.cap
        if not self.keep:
            self.bytes -= len(self._msg[i])
            self._msg[i] = None
        self._st[i] = OFFERED | (min((self._st[i] >> 2) + 1, 0x3FFF) << 2)
        if self._epoch is not None:
            self.offered_epoch = self._epoch[i]
            self.offered_seq = self._seq[i]
        self.w += 1

    # --- completion --------------------------------------------------------------------
    def find(self, tk):
        # relative index of the offered entry with ticket tk, or -1
        cap = self.cap
        h = self._h
        for k in range(self.w):
            if self._tk[(h + k) % cap] == tk:
                return k
        return -1

    def set_tail_pos(self, pos):
        # the log position of the newest entry (known only after it was accepted)
        if self._pos is None:
            raise OutboxError("this queue keeps no log positions")
        self._pos[(self._h + self.n - 1) % self.cap] = pos

    def message(self, k):
        # the message of entry k (None once released)
        return self._msg[(self._h + k) % self.cap]

    def ids(self, k):
        # (epoch, seq) of entry k; (0, 0) in a queue that keeps no ids
        if self._epoch is None:
            return 0, 0
        i = (self._h + k) % self.cap
        return self._epoch[i], self._seq[i]

    def tries(self, k):
        return self._st[(self._h + k) % self.cap] >> 2

    def done(self, tk):
        # ticket tk was acknowledged (or dead-lettered): DONE; pop done entries from the
        # front. Returns the number of entries that left the ring (0 when tk is unknown:
        # e.g. a stale ticket after a reboot).
        k = self.find(tk)
        if k < 0:
            return 0
        cap = self.cap
        i = (self._h + k) % cap
        if self._st[i] & 3 == DONE:
            return 0
        self._st[i] = DONE | (self._st[i] & ~3)
        self.live -= 1
        m = self._msg[i]
        if m is not None:     # kept (forward queue)
            self.bytes -= len(m)
            self._msg[i] = None
        gone = 0
        while self.n and self._st[self._h] & 3 == DONE:
            self._msg[self._h] = None
            self._h = (self._h + 1) % cap
            self.n -= 1
            self.w -= 1
            gone += 1
        return gone

    def front_pos(self):
        # log position of the oldest entry that is not done, or None when empty (or
        # when the queue keeps no positions)
        if not self.n or self._pos is None:
            return None
        return self._pos[self._h]

    def stats(self):
        return {"depth": self.live, "waiting": self.waiting(), "bytes": self.bytes,
                "accepted": self.accepted, "refused": self.refused, "dropped": self.dropped,
                "evicted": self.evicted}


class Log:
    def __init__(self, hal, prefix="ob", segment_bytes=4096, flush_records=16, flush_ms=200,
                 cursor_acks=32, cursor_ms=1000, compact_bytes=1024):
        if not 2048 <= segment_bytes <= 65535:
            raise OutboxError("segment_bytes must be 2048..65535")
        self.hal = hal
        self.prefix = prefix
        self.segment_bytes = segment_bytes
        self.flush_records = flush_records
        self.flush_ms = flush_ms
        self.cursor_acks = cursor_acks
        self.cursor_ms = cursor_ms
        self.compact_bytes = compact_bytes
        self._buf = bytearray(LOG_BUF)
        self._mv = memoryview(self._buf)
        self._fill = 0
        self._recs = 0              # records in the buffer
        self._since = 0             # ticks of the oldest buffered record
        self.seg = 0                # segment being appended to
        self.off = 0                # its length, buffer included
        self.cursor = 0             # position of the oldest record not done (newest known)
        self._saved = -1            # cursor in the cursor file
        self._low = 0               # oldest segment that may still exist
        self._acks = 0              # acknowledgements since the cursor was saved
        self._acks_since = 0
        # counters
        self.appended = 0
        self.flushes = 0
        self.flash_errors = 0     # appends and cursor writes that failed (survived)
        self.failing = False      # the last flush failed
        self.flushed_bytes = 0
        self.cursor_writes = 0
        self.segments_deleted = 0
        self.replayed = 0
        self.torn = 0

    def name(self, seg):
        return "%s%d" % (self.prefix, seg % SEG_WRAP)

    def _cur_name(self):
        return self.prefix + "cur"

    def position(self):
        # where the next record goes
        return ((self.seg % SEG_WRAP) << 16) | self.off

    # --- boot ----------------------------------------------------------------------------
    def open(self, sink):
        # Replay every record from the saved cursor, in order: sink(kind, epoch, seq, msg,
        # pos) for each. Then appends start in a fresh segment. Returns records replayed.
        hal = self.hal
        cursor = 0
        head = None
        raw = hal.read_file(self._cur_name())
        if raw:
            try:
                parts = raw.split()
                cursor = int(parts[0])
                head = int(parts[1]) if len(parts) > 1 else None
            except (ValueError, IndexError):
                hal.log("log cursor unreadable (%r): replaying from 0" % (raw,))
                cursor = 0
        c_seg = cursor >> 16
        # segments before the cursor's are acknowledged (a crash between the cursor save
        # and their deletion leaves some behind)
        s = (c_seg - 1) % SEG_WRAP
        for _ in range(64):
            if hal.read_file(self.name(s)) is None:
                break
            hal.remove_file(self.name(s))
            self.segments_deleted += 1
            s = (s - 1) % SEG_WRAP
        if head is None:
            head = c_seg
        n = 0
        s = c_seg
        span = (head - c_seg) % SEG_WRAP
        if span > 1024:  # a damaged cursor file: do not walk the whole ring
            hal.log("log head %d far from cursor segment %d" % (head, c_seg))
            span = 1024
        for step in range(span + 1):
            data = hal.read_file(self.name(s))
            if data is not None:
                start = (cursor & 0xFFFF) if step == 0 else 0
                n += self._replay(data, s, start, sink)
                data = None
            s = (s + 1) % SEG_WRAP
        self.replayed = n
        self._low = c_seg
        self.seg = (head + 1) % SEG_WRAP
        self.off = 0
        self.cursor = cursor
        self._save(cursor)
        return n

    def _replay(self, data, seg, p, sink):
        n = 0
        end = len(data)
        mv = memoryview(data)
        while p + _HDR + _META <= end:
            ln = (data[p] << 8) | data[p + 1]
            q = p + _HDR + ln
            if ln < _META or q > end:
                self.torn += 1
                break
            crc = data[p + 2] | (data[p + 3] << 8) | (data[p + 4] << 16) | (data[p + 5] << 24)
            if binascii.crc32(mv[p + _HDR:q]) != crc:
                self.torn += 1
                break
            b = p + _HDR
            epoch, seq = struct.unpack_from(">II", data, b + 1)
            sink(data[b], epoch, seq, bytes(mv[b + _META:q]), ((seg % SEG_WRAP) << 16) | p)
            n += 1
            p = q
        return n

    # --- appending -----------------------------------------------------------------------
    def append(self, kind, epoch, seq, msg, now):
        # Buffer one record; returns its position. Flushes first when the buffer or the
        # segment would overflow. Raises OutboxError for a message too long for a record.
        size = REC_OVERHEAD + len(msg)
        if size > LOG_BUF or size > self.segment_bytes:
            raise OutboxError("message of %d bytes too long for the log" % len(msg))
        if self.off + size > self.segment_bytes or self._fill + size > LOG_BUF:
            if not self.flush():
                raise OSError("log: the buffer is full and flash cannot be written")
            if self.off + size > self.segment_bytes:
                self._roll()
        buf = self._buf
        p = self._fill
        ln = size - _HDR
        buf[p] = ln >> 8
        buf[p + 1] = ln & 255
        b = p + _HDR
        buf[b] = kind
        struct.pack_into(">II", buf, b + 1, epoch, seq)
        self._mv[b + _META:b + _META + len(msg)] = msg
        struct.pack_into("<I", buf, p + 2, binascii.crc32(self._mv[b:p + size]))
        pos = self.position()
        self._fill = p + size
        self.off += size
        if not self._recs:
            self._since = now
        self._recs += 1
        self.appended += 1
        return pos

    def unflushed(self):
        return self._recs

    def flush(self):
        # write the buffered records to flash (one append, committed on close); False
        # when the write failed (flash full or worn): the buffer is kept for a retry
        if not self._fill:
            return True
        try:
            self.hal.append_file(self.name(self.seg), self._mv[:self._fill])
        except OSError as e:
            self._failed(e)
            self.failing = True
            return False
        self.failing = False
        self.flushes += 1
        self.flushed_bytes += self._fill
        self._fill = 0
        self._recs = 0
        return True

    def _failed(self, e):
        self.flash_errors += 1
        if self.flash_errors <= 3:
            self.hal.log("flash write failed (%d): %s" % (self.flash_errors, e))

    def flush_due(self, now, ticks_diff):
        return self._recs and (self._recs >= self.flush_records
                               or ticks_diff(now, self._since) >= self.flush_ms)

    def flush_wake(self, now, ticks_diff):
        # ms until flush_due() becomes true (None: nothing buffered)
        if not self._recs:
            return None
        d = self.flush_ms - ticks_diff(now, self._since)
        return d if d > 0 else 0

    def _roll(self):
        # the next record starts a new segment; the cursor file learns the new head first,
        # so a boot never misses a segment
        self.seg = (self.seg + 1) % SEG_WRAP
        self.off = 0
        self._save(self.cursor)

    # --- the cursor ----------------------------------------------------------------------
    def advance(self, cursor, acks, now):
        # cursor: position of the oldest record not done (None: all done); acks: how many
        # records were completed since the last call
        if cursor is None:
            cursor = self.position()
        self.cursor = cursor
        if acks:
            if not self._acks:
                self._acks_since = now
            self._acks += acks

    def cursor_due(self, now, ticks_diff):
        return self._acks and (self._acks >= self.cursor_acks
                               or ticks_diff(now, self._acks_since) >= self.cursor_ms)

    def cursor_wake(self, now, ticks_diff):
        if not self._acks:
            return None
        d = self.cursor_ms - ticks_diff(now, self._acks_since)
        return d if d > 0 else 0

    def save_cursor(self, all_done=False):
        # persist the cursor; compact when everything is done; delete passed segments
        if all_done and self.off >= self.compact_bytes:
            # everything buffered is acknowledged too: it never needs to reach flash
            self._fill = 0
            self._recs = 0
            self.seg = (self.seg + 1) % SEG_WRAP
            self.off = 0
            self.cursor = self.position()
        self._acks = 0
        if self.cursor != self._saved:
            self._save(self.cursor)
        self._delete_passed()

    def _save(self, cursor):
        try:
            self.hal.write_file_atomic(self._cur_name(),
                                       ("%d %d" % (cursor, self.seg % SEG_WRAP)).encode())
        except OSError as e:   # tried again at the next cursor save
            self._failed(e)
            return
        self._saved = cursor
        self.cursor_writes += 1

    def _delete_passed(self):
        c_seg = (self._saved >> 16) % SEG_WRAP
        while self._low != c_seg:
            name = self.name(self._low)
            if self._low != self.seg:
                try:
                    self.hal.remove_file(name)
                    self.segments_deleted += 1
                except OSError:
                    pass
            self._low = (self._low + 1) % SEG_WRAP

    def sync(self):
        # everything accepted so far reaches flash; the cursor is saved
        self.flush()
        if self._acks or self.cursor != self._saved:
            self.save_cursor()

    def stats(self):
        return {"appended": self.appended, "flushes": self.flushes,
                "flushed_bytes": self.flushed_bytes, "cursor_writes": self.cursor_writes,
                "segments_deleted": self.segments_deleted, "replayed": self.replayed,
                "torn": self.torn, "unflushed": self._recs}


# The dead-letter file: CBOR [[node, count, [[epoch, seq], ...]], ...], definite lengths,
# unsigned ints only (what protocol.cbor.dumps writes for that list). Written and read
# here, so a chain node needs no generic CBOR codec for it. An entry is the body of the
# DEADLETTER message nodewire.deadletter() writes, [9, node, count, ids], under an
# array head of 3 instead of that message's 4 and its kind.
def _write_dead(nodes):
    # at most DeadLetters.MAX_NODES (< 24) entries: a one-byte array head
    parts = [bytes([0x80 | len(nodes)])]
    for e in nodes:
        parts.append(b"\x83")
        parts.append(deadletter(e[0], e[1], e[2])[2:])
    return b"".join(parts)


def _head(raw, st, mt):
    # the argument of the definite CBOR head of major type mt (its bits, e.g. 0x80) at
    # raw[st[0]], moving st[0] past it; ValueError for anything else
    p = st[0]
    if p >= len(raw) or raw[p] >> 5 != mt >> 5:
        raise ValueError("unexpected byte at %d" % p)
    ai = raw[p] & 31
    p += 1
    if ai < 24:
        st[0] = p
        return ai
    if ai > 27:
        raise ValueError("bad head at %d" % (p - 1))
    k = 1 << (ai - 24)
    if p + k > len(raw):
        raise ValueError("truncated")
    n = 0
    for i in range(k):
        n = (n << 8) | raw[p + i]
    st[0] = p + k
    return n


def _read_ids(raw, st, ids, room):
    # an array of [epoch, seq] pairs into ids (at most `room` of them); returns how many
    # were left out
    left = 0
    for _ in range(_head(raw, st, 0x80)):
        if _head(raw, st, 0x80) != 2:
            raise ValueError("bad id")
        pair = (_head(raw, st, 0), _head(raw, st, 0))
        if len(ids) < room:
            ids.append(pair)
        else:
            left += 1
    return left


def _read_dead(raw, max_nodes, max_ids):
    # -> the DeadLetters.nodes list; ValueError for anything but the layout above
    st = [0]
    nodes = []
    held = 0
    try:
        for _ in range(_head(raw, st, 0x80)):
            if _head(raw, st, 0x80) != 3 or len(nodes) >= max_nodes:
                raise ValueError("bad entry")
            node = _head(raw, st, 0)
            count = _head(raw, st, 0)
            ids = []
            if _read_ids(raw, st, ids, max_ids - held):
                raise ValueError("more than %d ids" % max_ids)
            held += len(ids)
            nodes.append([node, count, ids])
        if st[0] != len(raw):
            raise ValueError("trailing bytes")
    except ValueError as e:
        raise ValueError("dead-letter file: %s" % e)
    return nodes


_DEADLETTER_HEAD = const(9)     # protocol/codes.py KIND_DEADLETTER, version 1


def read_report(data):
    # A DEADLETTER message as nodewire.deadletter() writes it -> (node, count, ids);
    # None for another kind; ValueError for one in another encoding
    if len(data) < 2 or data[0] != 0x84 or data[1] != _DEADLETTER_HEAD:
        return None
    st = [2]
    node = _head(data, st, 0)
    count = _head(data, st, 0)
    ids = []
    if _read_ids(data, st, ids, 64) or st[0] != len(data):
        raise ValueError("DEADLETTER: not as nodewire writes it")
    return node, count, ids


class DeadLetters:
    # Events that exceeded the link's retry budget, for the DEADLETTER message. Bounded:
    # at most MAX_IDS ids are remembered (the message carries at most 64), and counts for
    # at most MAX_NODES nodes (a node's own events and those of lower nodes forwarded by
    # it); beyond that they are only counted in `lost_ids`. Durable mode keeps the list in
    # a file rewritten (temporary file + rename) on every change: dead letters are rare.
    MAX_IDS = 64
    MAX_NODES = 8

    def __init__(self, hal=None, name=None):
        self.hal = hal
        self.name = name
        self.nodes = []       # [node, count, [(epoch, seq), ...]] per node, oldest first
        self.total = 0        # every dead-lettered event
        self.lost_ids = 0     # ids not remembered (bounds)
        self.sent = 0         # DEADLETTER messages acknowledged upstream
        self.inflight = None  # (node, count, n_ids) of the DEADLETTER in the link
        self.dirty = False    # changed since the last save()

    def load(self):
        if self.hal is None or self.name is None:
            return
        raw = self.hal.read_file(self.name)
        if not raw:
            return
        try:
            self.nodes = _read_dead(raw, self.MAX_NODES, self.MAX_IDS)
        except Exception as e:  # a damaged file: forget it (counted by the log line)
            self.hal.log("dead-letter file unreadable: %s" % (e,))
            self.nodes = []

    def save(self):
        # write the list if it changed (durable mode)
        if not self.dirty:
            return
        self.dirty = False
        if self.hal is None or self.name is None:
            return
        try:
            self.hal.write_file_atomic(self.name, _write_dead(self.nodes))
        except OSError as e:   # the list stays in RAM; the next change writes it again
            self.hal.log("dead-letter file not written: %s" % (e,))

    def _ids_held(self):
        n = 0
        for e in self.nodes:
            n += len(e[2])
        return n

    def add(self, node, ids, count=None):
        # ids: list of (epoch, seq) of one node's dead events. count: a DEADLETTER report
        # carried again (a lower node's, which died on our up link): it accounts for
        # `count` events, its ids and those not remembered, counted by that node already
        n = len(ids)
        if count is None:
            self.total += n
        else:
            n = count
        entry = None
        for e in self.nodes:
            if e[0] == node:
                entry = e
                break
        if entry is None:
            if len(self.nodes) >= self.MAX_NODES:
                self.lost_ids += n
                return
            entry = [node, 0, []]
            self.nodes.append(entry)
        entry[1] += n
        held = self._ids_held()
        for pair in ids:
            if held < self.MAX_IDS:
                entry[2].append(pair)
                held += 1
            else:
                self.lost_ids += 1
        self.dirty = True

    def pending(self):
        return bool(self.nodes) and self.inflight is None

    def message(self, limit=1016):
        # the DEADLETTER for the oldest node with dead letters, at most `limit` bytes, as
        # many ids as fit; marks it in flight. `count` is how many dead events this message
        # accounts for: its ids, and in the node's last part also those not remembered, so
        # the counts of all DEADLETTERs add up to the dead events.
        e = self.nodes[0]
        k = min(len(e[2]), 64)
        while True:
            count = e[1] if k == len(e[2]) else k
            data = deadletter(e[0], count, e[2][:k])
            if len(data) <= limit or not k:
                break
            k = k * limit // len(data) if k > 1 else 0
        self.inflight = (e[0], count, k)
        return data

    def acked(self):
        # the DEADLETTER in flight was acknowledged: forget what it reported
        if self.inflight is None:
            return
        node, count, nids = self.inflight
        self.inflight = None
        for i in range(len(self.nodes)):
            e = self.nodes[i]
            if e[0] == node:
                e[1] -= count
                del e[2][:nids]
                if e[1] <= 0 and not e[2]:
                    self.nodes.pop(i)
                break
        self.sent += 1
        self.dirty = True

    def failed(self):
        # the DEADLETTER itself died: send it again later
        self.inflight = None
