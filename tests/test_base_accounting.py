"""Exactness of base_station.accounting: loss, duplicates, reordering, late arrivals,
skips, trailing loss via STATUS, `since`, reboots, bounded memory; checked case by case
and against a brute-force model with random traffic."""

import random

from hypothesis import given, settings, strategies as st

from base_station.accounting import ALL, EpochStream, HoleBudget, NodeAccount


def totals(s):
    t = s.totals()
    t.pop("too_late")
    return t


def test_in_order_events_and_batches():
    s = EpochStream(0)
    for q in range(10):
        assert s.add(q, 1) is ALL
    assert s.add(10, 20) is ALL
    assert totals(s) == dict(received=30, lost=0, skipped=0, duplicates=0, out_of_order=0)
    assert s.holes() == []


def test_loss_then_late_arrival_turns_loss_into_received():
    s = EpochStream(0)
    s.add(0, 1)
    s.add(3, 1)                      # 1, 2 missing
    assert s.lost == 2 and s.holes() == [(1, 3)]
    assert s.add(2, 1) is ALL        # late reorder
    assert (s.lost, s.received, s.out_of_order) == (1, 3, 1)
    assert s.add(1, 1) is ALL
    assert (s.lost, s.received, s.out_of_order) == (0, 4, 2)
    assert s.holes() == []


def test_duplicates_are_counted_and_not_new():
    s = EpochStream(0)
    s.add(0, 5)
    assert s.add(2, 1) == []
    assert s.add(0, 5) == []
    assert (s.received, s.duplicates, s.lost) == (5, 6, 0)


def test_batch_partly_new_returns_new_ranges():
    s = EpochStream(0)
    s.add(0, 2)
    s.add(5, 2)                      # 2..4 missing
    got = s.add(1, 8)                # 1 dup, 2..4 new (late), 5..6 dup, 7..8 new
    assert got == [(2, 5), (7, 9)]
    assert (s.received, s.duplicates, s.out_of_order, s.lost) == (9, 3, 3, 0)


def test_skip_from_filters_is_not_loss():
    s = EpochStream(0)
    s.add(0, 1)
    s.add(4, 1, skip=3)              # 1..3 filtered out for us
    assert (s.received, s.skipped, s.lost) == (2, 3, 0)
    s.add(10, 1, skip=2)             # 5..7 lost, 8..9 skipped
    assert (s.received, s.skipped, s.lost) == (3, 5, 3)
    assert s.holes() == [(5, 8)]


def test_skip_arriving_late_converts_loss_to_skip():
    s = EpochStream(0)
    s.add(0, 1)
    s.add(10, 1)                     # 1..9 missing for now
    assert s.lost == 9
    s.add(5, 1, skip=4)              # late: 1..4 were never ours, 5 arrives
    assert (s.received, s.skipped, s.lost, s.out_of_order) == (3, 4, 4, 1)


def test_trailing_loss_via_status():
    s = EpochStream(0)
    s.add(0, 5)
    s.add_status(last_seq=9, skip=0, since=0)          # 5..9 published, none here
    assert (s.lost, s.next) == (5, 10)
    s.add_status(last_seq=12, skip=3, since=0)         # 10..12 not for us
    assert (s.lost, s.skipped) == (5, 3)
    assert s.add(7, 1) is ALL                          # one of the trailing ones was late
    assert s.lost == 4
    assert s.add(13, 1, skip=3) is ALL                 # same skip again: not counted twice
    assert (s.skipped, s.received, s.lost) == (3, 7, 4)


def test_since_reveals_lost_first_events():
    s = EpochStream(0)
    s.add(3, 1)                      # first seen: 3 (0..2 lost, we cannot know yet)
    assert s.lost == 0
    s.add_status(last_seq=3, skip=0, since=0)
    assert s.lost == 3 and s.holes() == [(0, 3)]


def test_since_after_lease_lapse_skips_gap():
    s = EpochStream(0)
    s.add_status(last_seq=None, skip=0, since=0)
    s.add(0, 10)
    s.add_status(last_seq=49, skip=0, since=50)        # re-subscribed at 50
    assert (s.received, s.skipped, s.lost) == (10, 40, 0)
    s.add(50, 1)
    assert s.lost == 0


def test_since_late_event_from_before_subscription_is_received():
    s = EpochStream(0)
    s.add_status(last_seq=None, skip=0, since=10)
    s.add(10, 1)
    assert s.add(5, 1) is ALL        # sent before our current subscription
    assert (s.received, s.skipped, s.lost) == (2, 4, 0)


def test_first_seen_minus_skip_is_start():
    s = EpochStream(0)
    s.add(7, 1, skip=7)
    assert (s.start, s.received, s.skipped, s.lost) == (0, 1, 7, 0)


def test_earlier_seq_lowers_start_without_since():
    s = EpochStream(0)
    s.add(10, 1)
    s.add(6, 1)                      # 7..9 are now known missing
    assert (s.start, s.received, s.lost, s.out_of_order) == (6, 2, 3, 1)


def test_reboot_and_late_datagram_from_old_epoch():
    a = NodeAccount(1)
    s0 = a.stream(0)
    s0.add(0, 5)
    s0.add(7, 1)                     # 5, 6 missing in epoch 0
    s1 = a.stream(1)                 # reboot
    assert a.reboots == 1 and a.current is s1
    s1.add(0, 3)
    assert a.stream(0) is s0         # old epoch still open
    s0.add(5, 1)                     # a late one from before the reboot
    t = a.totals()
    assert (t["received"], t["lost"], t["out_of_order"]) == (10, 1, 1)


def test_old_epochs_are_closed_and_stale_counted():
    a = NodeAccount(1, keep_epochs=2)
    a.stream(0).add(0, 1)
    a.stream(0).add(3, 1)            # 2 lost
    a.stream(1).add(0, 1)
    a.stream(2).add(0, 1)            # epoch 0 closed now, its totals kept
    assert a.reboots == 2
    assert a.stream(0) is None and a.stale == 1
    t = a.totals()
    assert (t["received"], t["lost"]) == (4, 2)


def test_hole_cap_forgets_oldest_and_counts_too_late():
    s = EpochStream(0, max_holes=8)
    for i in range(20):
        s.add(2 * i, 1)              # every odd seq missing: a hole each
    assert len(s.holes()) <= 8
    assert s.lost == 19 == s.missing
    assert s.add(1, 1) == []         # forgotten: cannot tell a copy from a late one
    assert s.too_late == 1 and s.duplicates == 0 and s.lost == 19
    assert s.add(37, 1) is ALL       # still tracked
    assert s.lost == 18


def test_arrivals_that_split_holes_stay_within_the_cap():
    # one huge gap, then every other seq inside it: each arrival splits a hole in two.
    # Before, only a new gap checked the cap, so a sender could grow the hole list
    # (and the memmove of every insert) without bound
    s = EpochStream(0, max_holes=8)
    s.add(0, 1)
    s.add(1_000_000, 1)                       # hole [1, 1000000)
    for q in range(2, 2002, 2):
        s.add(q, 1)
        assert len(s.holes()) <= 8
    assert s.lost == s.missing == 999_999 - s.received + 2
    assert s.received + s.too_late + s.duplicates == 1002
    lo = [a for a, _ in s.holes()]
    assert lo == sorted(lo) and s.floor <= lo[0]
    # a `since` below the start opens a hole in front: within the cap too
    t = EpochStream(0, max_holes=4)
    for q in range(10, 30, 2):
        t.add(q, 1)
    t.set_since(0)
    assert len(t.holes()) <= 4 and t.lost == t.missing


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 400), st.integers(1, 5), st.integers(0, 6)),
                max_size=80),
       st.integers(4, 12))
def test_small_hole_cap_keeps_every_invariant(arrivals, cap):
    s = EpochStream(0, max_holes=cap)
    total = 0
    for seq0, n, skip in arrivals:
        s.add(seq0, n, skip)
        total += n
        h = s.holes()
        assert len(h) <= cap
        assert all(a < b for a, b in h) and all(h[i][1] < h[i + 1][0] for i in range(len(h) - 1))
        assert s.lost == s.missing >= 0
        assert not h or h[0][0] >= s.floor
    assert s.received + s.duplicates + s.too_late == total


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 3), st.integers(0, 300),
                          st.integers(1, 4), st.integers(0, 5)), max_size=120),
       st.integers(4, 40))
def test_shared_hole_budget_is_exact_and_bounded(arrivals, limit):
    # several nodes (and reboots) share one budget: `used` is always the number of
    # holes the open streams hold, and never far past the limit
    budget = HoleBudget(limit)
    nodes = {}
    for node, epoch, seq0, n, skip in arrivals:
        acct = nodes.get(node)
        if acct is None:
            acct = nodes[node] = NodeAccount(node, max_holes=16, keep_epochs=2, budget=budget)
        s = acct.stream(epoch)
        if s is None:
            continue
        s.add(seq0, n, skip)
        held = sum(len(e.holes()) for a in nodes.values() for e in a.epochs.values())
        assert budget.used == held
        assert held <= limit + 2        # one arrival adds at most two before the check
        assert s.lost == s.missing >= 0


def test_a_station_under_a_flood_of_gaps_stays_within_its_hole_budget():
    # a keyless sender inventing node ids, each with a gap then arrivals that split it:
    # the station's holes stay at its budget; a well-behaved node's counts stay exact
    from base_station.station import BaseStation
    from base_station.testing import TestNode
    st_ = BaseStation(udp=[], announce=False, max_holes_total=1000)
    good = TestNode(1)
    for i in range(2, 60):
        bad = TestNode(i)
        for q in [0, 100_000] + list(range(2, 120, 2)):
            st_.ingest(bad.event("t", 1, seq=q))
        for _ in range(3):
            st_.ingest(good.event("t", 1))
        held = sum(len(e.holes()) for a in st_.nodes.values() for e in a.epochs.values())
        assert st_.hole_budget.used == held <= 1000 + 2
    t = st_.nodes[1].totals()
    assert t["received"] == 174 and t["lost"] == 0


def test_in_order_batches_keep_no_holes():
    s = EpochStream(0)
    seq = 0
    for _ in range(100_000):
        s.add(seq, 100)
        seq += 100
    assert s.received == 10_000_000 and s.lost == 0
    assert s.holes() == []     # nothing per reading is kept: an in-order batch is O(1)


# -- brute-force model ------------------------------------------------------------------------

class Model:
    """Per-seq states, the first claim wins: 'R' received, 'S' skipped."""

    def __init__(self):
        self.start = None
        self.next = 0
        self.since = None
        self.state = {}
        self.dup = 0
        self.ooo = 0

    def add(self, seq0, n, skip):
        lo = max(0, seq0 - skip)
        if self.start is None:
            self.start = self.next = lo
        ext = None
        if lo < self.start:
            if self.since is not None and lo < self.since:
                ext = (lo, min(self.start, self.since))
            self.start = lo
        for q in range(lo, seq0):
            self.state.setdefault(q, "S")
        nxt = self.next
        for q in range(seq0, seq0 + n):
            if q in self.state:
                self.dup += 1
            else:
                self.state[q] = "R"
                if q < nxt:
                    self.ooo += 1
        self.next = max(self.next, seq0 + n)
        if ext:
            for q in range(*ext):
                self.state.setdefault(q, "S")

    def status(self, last, skip, since):
        self.since = since
        if self.start is None:
            self.start = self.next = since
        elif since < self.start:
            self.start = since
        elif since > self.next:
            for q in range(self.next, since):
                self.state.setdefault(q, "S")
            self.next = since
        if last is not None:
            self.add(last + 1, 0, skip)

    def totals(self):
        r = sum(1 for v in self.state.values() if v == "R")
        s = sum(1 for v in self.state.values() if v == "S")
        expected = 0 if self.start is None else self.next - self.start
        return dict(received=r, lost=expected - r - s, skipped=s, duplicates=self.dup,
                    out_of_order=self.ooo)


ops = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(0, 60), st.integers(1, 6), st.integers(0, 8)),
    st.tuples(st.just("status"), st.one_of(st.none(), st.integers(0, 70)), st.integers(0, 8),
              st.integers(0, 40)),
), max_size=40)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_matches_brute_force_model(operations):
    s = EpochStream(0)
    m = Model()
    for op in operations:
        if op[0] == "add":
            _, seq0, n, skip = op
            got = s.add(seq0, n, skip)
            before = set(m.state)
            m.add(seq0, n, skip)
            new = sorted(q for q in range(seq0, seq0 + n) if m.state.get(q) == "R" and q not in before)
            if got is ALL:
                assert new == list(range(seq0, seq0 + n))
            else:
                assert [q for a, b in got for q in range(a, b)] == new
        else:
            _, last, skip, since = op
            s.add_status(last, skip, since)
            m.status(last, skip, since)
        assert totals(s) == m.totals()
        assert s.lost == s.missing >= 0


def test_random_traffic_with_loss_reorder_and_duplicates_is_exact():
    rng = random.Random(7)
    s = EpochStream(0)
    sent = list(range(5000))
    wire = [q for q in sent if rng.random() > 0.05]          # 5 % lost
    wire += rng.sample(wire, 200)                            # duplicates
    for i in range(0, len(wire) - 8, 8):                     # local reordering
        chunk = wire[i:i + 8]
        rng.shuffle(chunk)
        wire[i:i + 8] = chunk
    for q in wire:
        s.add(q, 1)
    s.add_status(4999, 0, 0)
    unique = len(set(wire))
    assert s.received == unique
    assert s.lost == 5000 - unique
    assert s.duplicates == len(wire) - unique


def test_rate_over_recent_window():
    a = NodeAccount(1)
    for i in range(100):                       # 10 readings every 0.1 s = 100/s for 10 s
        a.count_rate(10, 1000.0 + i * 0.1)
    assert 80 <= a.rate(1010.0) <= 120
    assert a.rate(1030.0) == 0                 # quiet for longer than the window
