# The node's soft-state subscriber table (firmware/subscribers.py): filters, leases,
# refresh, the rate cap's exact decimation and skip values, bounded size.
from firmware.subscribers import CREATED, FOREVER, REFRESHED, RESTARTED, Subscriber, Table


def test_static_entry_takes_everything_forever():
    t = Table(4)
    e = t.add_static("static:a", ("127.0.0.1", 5684), 0)
    assert e.static and e.since == 0 and e.last_sent == -1 and e.expires == FOREVER
    assert e.wants("temp") and e.wants("a/b/c")
    assert e.allow(0) and e.allow(0) and e.allow(0)  # no cap
    assert t.expire(10 ** 9) == 0 and len(t) == 1
    assert t.next_expiry() is None


def test_filters_select_topics():
    t = Table()
    e, created = t.announce("b1", "addr", ["temp", "imu/+"], 0, 10, 0, 0)
    assert created
    assert e.wants("temp") and e.wants("imu/x")
    assert not e.wants("hum") and not e.wants("imu") and not e.wants("imu/x/y")
    e2, _ = t.announce("b2", "addr2", [], 0, 10, 0, 0)
    assert not e2.wants("temp")  # no filters: STATUS only


def test_lease_lapses_and_refresh_extends_it():
    t = Table()
    e, _ = t.announce("b1", "a1", ["#"], 0, 2, 1000, 5)
    assert e.expires == 3000 and t.next_expiry() == 3000
    assert t.expire(2999) == 0 and len(t) == 1
    # refresh at 2500: new lease, filters, rate and address; since/last_sent kept
    e.last_sent = 9
    e2, created = t.announce("b1", "a2", ["temp"], 7, 2, 2500, 42)
    assert e2 is e and not created
    assert e.expires == 4500 and e.addr == "a2" and e.filters == ["temp"] and e.max_rate == 7
    assert e.since == 5 and e.last_sent == 9
    assert t.expire(4499) == 0
    assert t.expire(4500) == 1 and len(t) == 0 and t.find("b1") is None
    # a new subscription after the lapse starts from the node's next seq
    e3, created = t.announce("b1", "a2", ["#"], 0, 2, 5000, 77)
    assert created and e3.since == 77 and e3.last_sent == 76


def test_lease_zero_removes_entry():
    t = Table()
    t.announce("b1", "a1", ["#"], 0, 30, 0, 0)
    e, created = t.announce("b1", "a1", ["#"], 0, 0, 10, 0)
    assert e is None and not created and len(t) == 0
    # ... but never a static one
    t.add_static("s", "a0", 0)
    t.announce("s", "a0", ["#"], 0, 0, 10, 0)
    assert len(t) == 1


def test_bounded_size_refuses_new_bases():
    t = Table(3)
    for i in range(3):
        e, created = t.announce("b%d" % i, i, ["#"], 0, 10, 0, 0)
        assert created
    e, created = t.announce("b9", 9, ["#"], 0, 10, 0, 0)
    assert e is None and not created and t.refused == 1 and len(t) == 3
    # refreshing a known one still works when full
    e, created = t.announce("b1", 1, ["temp"], 0, 10, 0, 0)
    assert e is not None and not created
    assert t.add_static("s", 5, 0) is None and t.refused == 2


def test_rate_cap_decimates_with_exact_skips():
    # 10 readings/s against a cap of 5/s; burst max(2, 5 // 10) = 2 events, full at start
    e = Subscriber("b", "a", ["#"], 5, 100000, 0, 0)
    sent = []
    shed = 0
    for seq in range(12):
        now = 50 + seq * 100
        if e.allow(now):
            sent.append((seq, e.skip_for(seq)))
            e.last_sent = seq
        else:
            shed += 1
    # bucket (milli-events): 2000 -> 1000 -> 500+... : three go, then every other one
    assert sent == [(0, 0), (1, 0), (2, 0), (4, 1), (6, 1), (8, 1), (10, 1)], sent
    assert shed == 5
    assert e.status_skip(11) == 1 and e.status_skip(None) == 0


def test_rate_cap_at_source_rate_is_not_shed_by_jitter():
    e = Subscriber("b", "a", ["#"], 10, 100000, 0, 0)
    now = 0
    for i in range(50):
        now += 90 if i % 2 else 110   # 10/s on average, +-10 ms jitter
        assert e.allow(now), i


def test_rate_cap_refills_fully_after_idle_and_change_resets():
    e = Subscriber("b", "a", ["#"], 100, 10 ** 9, 0, 0)
    assert e.burst == 10000  # 100 ms worth: 10 events
    n = 0
    while e.allow(0):
        n += 1
    assert n == 10
    assert not e.allow(5) and e.allow(10)      # 10 ms refill one event
    assert e.allow(10 ** 8) and e.tokens == 9000  # long idle: full, no overflow
    e.set_rate(1, 20)
    assert e.max_rate == 1 and e.burst == 2000 and e.tokens == 2000


def test_skip_counts_seqs_not_sent():
    e = Subscriber("b", "a", ["temp"], 0, 1000, 40, 0)
    assert e.last_sent == 39 and e.skip_for(40) == 0 and e.skip_for(43) == 3
    assert e.status_skip(39) == 0  # nothing newer than the subscription
    e.last_sent = 43
    assert e.status_skip(50) == 7


def test_a_restarted_base_starts_its_entry_afresh():
    # same base id, another ANNOUNCE instance: the base process restarted (a crash, no
    # goodbye); the entry starts again from the node's next seq, as if created
    t = Table()
    e, what = t.announce("b1", "a1", ["#"], 0, 30, 0, 5, 111)
    assert what == CREATED and e.instance == 111 and e.since == 5
    e.last_sent = 40
    assert t.announce("b1", "a1", ["#"], 0, 30, 100, 42, 111) == (e, REFRESHED)
    assert e.since == 5 and e.last_sent == 40                  # the same process: kept
    e.tokens = 0
    assert t.announce("b1", "a1", ["#"], 3, 30, 200, 42, 222) == (e, RESTARTED)
    assert e.instance == 222 and e.since == 42 and e.last_sent == 41
    assert e.tokens == e.burst == 2000                         # a full bucket, as new
    assert len(t) == 1
    # an ANNOUNCE without an instance (an older base) refreshes as before
    assert t.announce("b1", "a1", ["#"], 3, 30, 300, 50, None) == (e, REFRESHED)
    assert e.since == 42 and e.instance == 222
    # an entry made without one adopts the first instance it hears, without a restart
    f, _ = t.announce("b2", "a2", ["#"], 0, 30, 0, 7)
    assert t.announce("b2", "a2", ["#"], 0, 30, 10, 60, 333) == (f, REFRESHED)
    assert f.since == 7 and f.instance == 333
