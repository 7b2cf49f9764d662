# firmware/outbox.py on both interpreters: queue policies and counters, the durable log
# (batched appends and cursor writes, replay, compaction, torn records) on a fake flash,
# and the dead-letter list.
from protocol import messages
from dual_helpers import DictFlash
from firmware.outbox import (Queue, Log, DeadLetters, OutboxError, pdiff, Q_OWN, Q_FWD,
                             KIND_OWN, KIND_FWD, SEG_WRAP)


Flash = DictFlash   # a dict as flash; appends and renames commit at once


def td(a, b):
    return a - b


def ev(seq, epoch=1, node=7):
    return messages.Event(node, epoch, seq, 1000 + seq, "temp", seq).encode()


def offer_all(q, link_taken):
    # what the chain node does with a link that takes everything: peek/ticket/commit
    while True:
        m = q.peek()
        if m is None:
            return
        link_taken.append((q.ticket(), m))
        q.commit()


# ------------------------------------------------------------------------ queue

def test_drop_oldest_sheds_the_oldest_waiting_entry_not_those_in_the_link():
    q = Queue(Q_OWN, 4, 10000, "drop_oldest")
    for s in range(3):
        assert q.put(ev(s), 1, s)
    taken = []
    offer_all(q, taken)                    # seq 0..2 are in the link
    assert q.waiting() == 0 and q.live == 3
    assert q.put(ev(3), 1, 3)              # now full: 4 entries
    assert q.put(ev(4), 1, 4)              # evicts seq 3, the only waiting one
    assert q.evicted == 1 and q.dropped == 1 and q.live == 4
    assert q.ids(3) == (1, 4)              # entries 0..2 still those in the link
    assert [q.ids(k) for k in range(3)] == [(1, 0), (1, 1), (1, 2)]
    offer_all(q, taken)
    assert not q.put(ev(5), 1, 5)          # everything is in the link: the new one is shed
    assert q.dropped == 2 and q.evicted == 1
    # acknowledgements complete entries by ticket, in order
    for tk, m in taken:
        q.done(tk)
    assert q.n == 0 and q.live == 0 and q.bytes == 0
    assert q.accepted == 5


def test_a_queue_without_ids_or_positions_keeps_its_messages_in_order():
    # the forward queue keeps no ids, a RAM-only node's queues no log positions: the
    # ring works the same (eviction shifts, keep, done from the front) without them
    q = Queue(Q_FWD, 3, 10000, "drop_oldest", 0, True, False, False)
    assert q.put(ev(0), 1, 0, 123) and q.put(ev(1), 1, 1, 456)
    taken = []
    offer_all(q, taken)
    assert q.offered_epoch == -1               # no ids: nothing to say what was offered
    assert q.put(ev(2)) and q.put(ev(3))       # full: evicts ev(2), the only waiting one
    assert q.evicted == 1 and q.message(2) == ev(3)
    assert [q.message(k) for k in range(2)] == [ev(0), ev(1)]   # kept while in the link
    assert q.ids(0) == (0, 0) and q.front_pos() is None
    try:
        q.set_tail_pos(7)
        raise AssertionError("set_tail_pos without positions")
    except OutboxError:
        pass
    offer_all(q, taken)
    assert [m for _, m in taken] == [ev(0), ev(1), ev(3)]
    for tk, _ in taken:
        q.done(tk)
    assert q.n == 0 and q.live == 0 and q.bytes == 0
    # ids without positions (an own queue without a log): ids kept, no positions
    o = Queue(Q_OWN, 2, 10000, "block", 0, False, True, False)
    assert o.put(ev(5), 1, 5, 99) and o.ids(0) == (1, 5) and o.front_pos() is None


def test_drop_newest_and_block_count_differently():
    q = Queue(Q_OWN, 2, 10000, "drop_newest")
    assert q.put(ev(0)) and q.put(ev(1))
    assert not q.put(ev(2))
    assert q.dropped == 1 and q.refused == 0 and q.peek() == ev(0)
    b = Queue(Q_OWN, 2, 10000, "block")
    assert b.put(ev(0)) and b.put(ev(1))
    assert not b.put(ev(2))
    assert b.refused == 1 and b.dropped == 0
    st = b.stats()
    assert st["depth"] == 2 and st["refused"] == 1


def test_byte_bound_and_policy_name():
    size = len(ev(0))
    q = Queue(Q_OWN, 100, 3 * size, "drop_oldest")
    for s in range(3):
        assert q.put(ev(s), 1, s)
    assert q.bytes == 3 * size
    assert q.put(ev(3), 1, 3) and q.evicted == 1 and q.bytes == 3 * size
    assert q.ids(0) == (1, 1)
    taken = []
    offer_all(q, taken)
    assert q.bytes == 0                    # offered messages live in the link
    try:
        Queue(Q_OWN, 1, 1, "oldest")
        raise AssertionError("no OutboxError")
    except OutboxError:
        pass


def test_forward_queue_keeps_messages_until_done_and_dead_in_the_middle_waits():
    q = Queue(Q_FWD, 10, 10000, "block", 0, True)
    for s in range(4):
        q.put(ev(s, node=9))
    taken = []
    offer_all(q, taken)
    assert q.bytes == 4 * len(ev(0))       # keep: still held
    assert q.message(2) == ev(2, node=9)
    q.done(taken[2][0])                    # a dead frame in the middle
    assert q.n == 4 and q.live == 3
    q.done(taken[2][0])                    # a second completion is ignored
    assert q.live == 3
    q.done(taken[0][0])
    q.done(taken[1][0])                    # the front pops through the done entry
    assert q.n == 1 and q.live == 1 and q.bytes == len(ev(3))
    assert q.done(999) == 0                # an unknown ticket (stale, after a reboot)
    assert taken[0][0] & 3 == Q_FWD


def test_ring_wraps_many_times():
    q = Queue(Q_OWN, 5, 100000, "drop_oldest")
    taken = []
    for s in range(200):
        assert q.put(ev(s), 1, s)
        if s % 3 == 2:
            offer_all(q, taken)
            for tk, m in taken:
                q.done(tk)
            taken = []
    assert q.accepted == 200 and q.dropped == 0


# ------------------------------------------------------------------------ log

def _records(flash, prefix="ob"):
    out = []
    log = Log(flash, prefix)
    log.open(lambda kind, e, s, m, pos: out.append((kind, e, s, m)))
    return out


def test_log_batches_appends_and_replays_only_flushed_records():
    fl = Flash()
    log = Log(fl, flush_records=4, flush_ms=200)
    assert log.open(lambda *a: None) == 0
    w0 = fl.renames                         # open() writes the cursor file (new head)
    for s in range(3):
        log.append(KIND_OWN, 1, s, ev(s), 0)
        assert not log.flush_due(10, td)
    log.append(KIND_OWN, 1, 3, ev(3), 0)
    assert log.flush_due(10, td)            # N records
    log.flush()
    assert fl.appends == 1                  # four records, one flash append
    log.append(KIND_FWD, 0, 0, b"\x82\x08\x01", 500)
    assert not log.flush_due(600, td) and log.flush_due(700, td)   # T ms
    assert log.flush_wake(650, td) == 50
    log.append(KIND_OWN, 1, 4, ev(4), 700)  # buffered, never flushed: lost at power loss
    # power loss: a new boot sees only what was flushed
    got = _records(Flash(dict(fl.files)))
    assert [(k, e, s) for k, e, s, m in got] == [(1, 1, 0), (1, 1, 1), (1, 1, 2), (1, 1, 3)]
    assert got[0][3] == ev(0)
    log.flush()
    got = _records(Flash(dict(fl.files)))
    assert len(got) == 6 and got[4] == (KIND_FWD, 0, 0, b"\x82\x08\x01")
    assert fl.renames == w0


def test_cursor_is_written_in_batches_and_replay_starts_there():
    fl = Flash()
    log = Log(fl, flush_records=100, cursor_acks=8, cursor_ms=1000)
    log.open(lambda *a: None)
    pos = []
    for s in range(20):
        pos.append(log.append(KIND_OWN, 1, s, ev(s), 0))
    log.flush()
    w0 = fl.renames
    for s in range(7):                      # 7 acks: below the batch
        log.advance(pos[s + 1], 1, 100)
        assert not log.cursor_due(100, td)
    assert log.cursor_wake(600, td) == 500
    log.advance(pos[8], 1, 100)
    assert log.cursor_due(100, td)
    log.save_cursor()
    assert fl.renames == w0 + 1
    got = _records(Flash(dict(fl.files)))
    assert [s for k, e, s, m in got] == list(range(8, 20))
    # time also triggers a save
    log.advance(pos[9], 1, 2000)
    assert not log.cursor_due(2500, td) and log.cursor_due(3000, td)
    # sync() flushes and saves
    log.append(KIND_OWN, 1, 20, ev(20), 3000)
    log.sync()
    got = _records(Flash(dict(fl.files)))
    assert [s for k, e, s, m in got] == list(range(9, 21))


def test_segments_roll_and_are_deleted_once_passed_and_compaction():
    fl = Flash()
    log = Log(fl, segment_bytes=2048, flush_records=5, cursor_acks=1, compact_bytes=512)
    log.open(lambda *a: None)
    pos = []
    for s in range(300):
        pos.append(log.append(KIND_OWN, 1, s, ev(s), 0))
        if log.flush_due(0, td):
            log.flush()
    log.flush()
    segs = [n for n in fl.files if n.startswith("ob") and n != "obcur"]
    assert len(segs) >= 4, segs
    for n in segs:
        assert len(fl.files[n]) <= 2048
    # acknowledge the first 200: the segments wholly before the cursor go
    log.advance(pos[200], 200, 0)
    log.save_cursor()
    left = [n for n in fl.files if n.startswith("ob") and n != "obcur"]
    assert len(left) < len(segs)
    got = _records(Flash(dict(fl.files)))
    assert [s for k, e, s, m in got] == list(range(200, 300))
    # everything acknowledged: compaction leaves an empty log and deletes the rest
    log.advance(None, 100, 0)
    log.save_cursor(True)
    left = [n for n in fl.files if n.startswith("ob") and n != "obcur"]
    assert left == [], left
    assert _records(Flash(dict(fl.files))) == []
    # and the log goes on in the new segment
    log.append(KIND_OWN, 1, 300, ev(300), 0)
    log.sync()
    assert [s for k, e, s, m in _records(Flash(dict(fl.files)))] == [300]


def test_replay_keeps_order_across_boots_and_ignores_a_torn_tail():
    fl = Flash()
    log = Log(fl)
    log.open(lambda *a: None)
    for s in range(5):
        log.append(KIND_OWN, 1, s, ev(s), 0)
    log.sync()
    # boot 2 replays 0..4 and appends its own records after them, in a new segment
    got = []
    log2 = Log(fl)
    log2.open(lambda k, e, s, m, p: got.append((e, s, p)))
    assert [(e, s) for e, s, p in got] == [(1, s) for s in range(5)]
    for s in range(3):
        log2.append(KIND_OWN, 2, s, ev(s, 2), 0)
    log2.sync()
    replay = []
    Log(Flash(dict(fl.files))).open(lambda k, e, s, m, p: replay.append((e, s, p)))
    assert [(e, s) for e, s, p in replay] == [(1, 0), (1, 1), (1, 2), (1, 3), (1, 4),
                                              (2, 0), (2, 1), (2, 2)]
    ps = [p for e, s, p in replay]
    assert all(pdiff(ps[i + 1], ps[i]) > 0 for i in range(len(ps) - 1))
    # power lost in the middle of an append: the torn record and what follows it in that
    # segment are ignored, counted
    name = log2.name(log2.seg)
    data = fl.files[name]
    fl.files[name] = data[:-3]
    torn = Log(Flash(dict(fl.files)))
    n = torn.open(lambda *a: None)
    assert n == 7 and torn.torn == 1
    bad = bytearray(data)
    bad[10] ^= 0x40                          # a flipped bit in the first record of boot 2
    fl.files[name] = bytes(bad)
    torn = Log(Flash(dict(fl.files)))
    assert torn.open(lambda *a: None) == 5 and torn.torn == 1


def test_segment_numbers_wrap_and_damaged_cursor_replays_from_zero():
    fl = Flash()
    log = Log(fl)
    log.open(lambda *a: None)
    log.seg = SEG_WRAP - 1                  # as after a very long life
    log.off = 0
    log.cursor = log.position()
    log._save(log.cursor)
    p1 = log.append(KIND_OWN, 1, 1, ev(1), 0)
    log.flush()
    log._roll()
    p2 = log.append(KIND_OWN, 1, 2, ev(2), 0)
    log.flush()
    assert p2 >> 16 == 0 and pdiff(p2, p1) > 0
    got = []
    Log(Flash(dict(fl.files))).open(lambda k, e, s, m, p: got.append(s))
    assert got == [1, 2]
    fl.files["obcur"] = b"garbage"
    f2 = Flash(dict(fl.files))
    Log(f2).open(lambda *a: None)
    assert f2.logs and "cursor" in f2.logs[0]


def test_message_too_long_for_a_record():
    log = Log(Flash())
    log.open(lambda *a: None)
    try:
        log.append(KIND_OWN, 1, 1, b"\x40" * 3000, 0)
        raise AssertionError("no OutboxError")
    except OutboxError:
        pass


# ------------------------------------------------------------------------ dead letters

def test_dead_letters_are_bounded_acknowledged_and_persisted():
    fl = Flash()
    d = DeadLetters(fl, "deadletter")
    assert not d.pending()
    d.add(7, [(1, s) for s in range(40)])
    d.add(9, [(3, 5)])
    d.add(7, [(1, s) for s in range(40, 70)])
    assert fl.read_file("deadletter") is None       # written by save(), once for all three
    d.save()
    assert d.total == 71 and d.lost_ids == 71 - 64
    assert d.pending()
    m = messages.decode(d.message())
    assert m.node == 7 and m.count == 70 and len(m.ids) == 63 and m.ids[0] == (1, 0)
    d.failed()
    part = d.message(128)                   # a small frame: only some ids, counted as such
    m = messages.decode(part)
    assert len(part) <= 128 and 0 < len(m.ids) < 63 and m.count == len(m.ids)
    d.failed()
    d.message()
    assert not d.pending()                  # one DEADLETTER in flight at a time
    # a reboot before the acknowledgement: the file still has everything
    d2 = DeadLetters(fl, "deadletter")
    d2.load()
    assert [e[0] for e in d2.nodes] == [7, 9] and d2.nodes[0][1] == 70
    d.acked()
    d.save()
    assert d.sent == 1 and d.pending()
    m = messages.decode(d.message())
    assert m.node == 9 and m.ids == [(3, 5)]
    d.failed()                              # it died on the link: sent again
    assert d.pending()
    d.message()
    d.acked()
    d.save()
    assert not d.pending() and d.nodes == []
    d3 = DeadLetters(fl, "deadletter")
    d3.load()
    assert d3.nodes == []
    for node in range(20):                  # at most MAX_NODES nodes remembered
        d3.add(100 + node, [(1, 1)])
    assert len(d3.nodes) == DeadLetters.MAX_NODES and d3.lost_ids == 20 - DeadLetters.MAX_NODES


def test_dead_letter_file_is_the_cbor_of_the_list_and_a_damaged_one_is_forgotten():
    # written without a generic CBOR codec, byte for byte what protocol.cbor.dumps
    # writes for the list (so files written before load the same)
    from protocol import cbor
    fl = Flash()
    d = DeadLetters(fl, "deadletter")
    d.add(7, [(1, 0), (1, 23), (1, 24), (2, 255), (2, 256), (3, 65535), (3, 65536)])
    d.add(4000000000, [(4294967295, 2 ** 40)])
    d.add(9, [])
    d.save()
    raw = fl.read_file("deadletter")
    assert raw == cbor.dumps([[e[0], e[1], [[p[0], p[1]] for p in e[2]]] for e in d.nodes])
    d2 = DeadLetters(fl, "deadletter")
    d2.load()
    assert d2.nodes == d.nodes
    logs = []
    for bad in (raw[:-1], raw + b"\x00", b"\xa0", b"\x81\x82\x01\x02",
                b"\x81\x83\x01\x02\x81\x83\x01\x02\x03", b"\x9f\xff", b"\x81\x83\x1c\x01\x80"):
        fl.files["deadletter"] = bad
        d3 = DeadLetters(fl, "deadletter")
        d3.load()
        assert d3.nodes == [], bad
    assert sum(1 for line in fl.logs if "dead-letter file unreadable" in line) == 7


def test_a_lower_nodes_dead_letter_report_is_carried_again_without_counting_it_twice():
    from protocol import nodewire
    from firmware.outbox import read_report
    data = nodewire.deadletter(12, 70, [(1, s) for s in range(60)])
    assert read_report(data) == (12, 70, [(1, s) for s in range(60)])
    assert read_report(ev(3)) is None                         # another kind
    for bad in (data[:-1], data + b"\x00", b"\x84\x09\x18\x0c\x01\x81\x83\x01\x02\x03"):
        try:
            read_report(bad)
        except ValueError:
            pass
        else:
            raise AssertionError(bad)
    d = DeadLetters(Flash(), "deadletter")
    d.add(5, [(2, 9)])                                        # our own: counted
    node, count, ids = read_report(data)
    d.add(node, ids, count)                                   # node 12's: carried, not counted
    assert d.total == 1
    assert [e[0] for e in d.nodes] == [5, 12] and d.nodes[1][1] == 70 and len(d.nodes[1][2]) == 60
    d.message()
    d.acked()
    m = messages.decode(d.message())
    # the ids that fit (64 in all) go first; the count still covers all 70
    assert m.node == 12 and len(m.ids) == 60 and m.count == 70
