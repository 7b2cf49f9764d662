# The node runtime (firmware/node.py) stepped with a fake clock and a fake network:
# events, skips, STATUS, time base, epoch, ANNOUNCE handling, auth, batching.
from protocol import cbor, codes
from protocol import messages
from protocol.auth import Key, verify
from protocol.messages import Announce, Batch, Event, Status
from firmware import config
from firmware.node import Node

_MASK = (1 << 30) - 1   # MicroPython's ticks period on boards
_HALF = 1 << 29
STATIC = ("127.0.0.1", 5684)
BASE = ("10.0.0.9", 6000)


class FakeHal:
    """A test HAL: ticks that wrap, a dict as flash, sends collected in a list."""

    def __init__(self, files=None, start=_MASK - 500, wall=None):
        self.now = start
        self.files = {} if files is None else files
        self.sent = []          # (addr, bytes)
        self.opened = []
        self.logs = []
        self.wall = wall
        self.fail_send = False
        self.full = False       # a full flash: writes fail with ENOSPC

    def ticks_ms(self):
        return self.now

    def ticks_diff(self, a, b):
        return ((a - b + _HALF) & _MASK) - _HALF

    def advance(self, ms):
        self.now = (self.now + ms) & _MASK

    def wall_ms(self):
        return self.wall

    def udp_open(self, port=0, reuse=False, broadcast=False, bind="0.0.0.0"):
        self.opened.append((port, reuse, broadcast, bind))
        return len(self.opened)

    def resolve(self, host, port):
        return (host, port)

    def addr_with_port(self, addr, port):
        return (addr[0], port)

    def addr_str(self, addr):
        return "%s:%d" % addr

    def udp_send(self, sock, addr, data):
        if self.fail_send:
            return False
        self.sent.append((addr, bytes(data)))
        return True

    def udp_recv(self, sock):
        return None

    def wait_readable(self, timeout_ms):
        self.advance(timeout_ms)
        return False

    def read_file(self, name):
        return self.files.get(name)

    def write_file_atomic(self, name, data):
        if self.full:
            raise OSError(28, "ENOSPC")
        self.files[name] = bytes(data)

    def free_mem(self):
        return 4321

    def log(self, msg):
        self.logs.append(msg)


def make_node(hal=None, **kw):
    d = {"node": 7, "bases": [list(STATIC)], "status_every_ms": 1000,
         "sensors": [{"topic": "temp", "kind": "counter", "period_ms": 100},
                     {"topic": "hum", "kind": "counter", "period_ms": 100, "start": 1000}]}
    for k in kw:
        d[k] = kw[k]
    hal = FakeHal() if hal is None else hal
    node = Node(config.from_dict(d), hal)
    node.boot()
    return node, hal


def run_for(node, hal, ms):
    # step exactly at every due time, like Node.run() does
    end = node.uptime + ms
    while node.uptime < end and not node.done:
        delay = node.step(hal.ticks_ms())
        if node.done:
            break
        hal.advance(min(delay, end - node.uptime) if delay else 0)
    node.step(hal.ticks_ms())


def decoded(hal, addr=None, kind=None, key=None):
    out = []
    for a, data in hal.sent:
        if addr is not None and a != addr:
            continue
        msg = messages.decode(data)
        if key is not None:
            msg = messages.decode(verify(msg, {7: key}))
        if kind is None or isinstance(msg, kind):
            out.append(msg)
    return out


def announce(node, hal, base="b1", filters=("#",), rate=0, lease=30, wall=None, host="", port=6000,
             src=("10.0.0.9", 9999)):
    msg = Announce(base, host, port, list(filters), rate, lease, wall)
    node.on_datagram(msg.encode(), src, hal.ticks_ms())


def test_boot_persists_epoch_and_sends_status_to_static_base():
    node, hal = make_node()
    assert node.epoch == 1 and hal.files["epoch"] == b"1"
    assert hal.opened[0][0] == 0  # ephemeral send socket; no discovery socket
    assert len(hal.opened) == 1
    st = decoded(hal, STATIC, Status)
    assert len(st) == 1
    s = st[0]
    assert (s.node, s.epoch, s.last_seq, s.skip, s.since) == (7, 1, None, 0, 0)
    assert s.uptime == 0 and s.time_base is None and s.firmware == config.FIRMWARE_VERSION
    assert s.caps == codes.CAP_UDP
    assert s.counters[codes.CTR_PUBLISHED] == 0 and s.counters[codes.CTR_FREE_MEM] == 4321
    for k in (codes.CTR_DROPPED, codes.CTR_RATE_SHED, codes.CTR_RX_BAD, codes.CTR_SEND_ERRORS, codes.CTR_QUEUE):
        assert s.counters[k] == 0


def test_epoch_grows_on_every_boot():
    files = {}
    for expected in (1, 2, 3):
        node, hal = make_node(FakeHal(files))
        assert node.epoch == expected
    assert files["epoch"] == b"3"
    files["epoch"] = b"garbage"
    node, hal = make_node(FakeHal(files))
    assert node.epoch == 1 and hal.logs


def test_a_full_flash_at_boot_does_not_stop_the_node():
    # the epoch file cannot be written: the node runs on the new epoch (a node that
    # stopped here would boot-loop), retries at each STATUS and logs only the first
    # failure and the success
    files = {"epoch": b"4"}
    hal = FakeHal(files)
    hal.full = True
    node, hal = make_node(hal)
    assert node.epoch == 5 and not node.epoch_saved and files["epoch"] == b"4"
    run_for(node, hal, 2500)
    events = decoded(hal, STATIC, Event)
    assert len(events) >= 40 and all(e.epoch == 5 for e in events)
    assert [s.epoch for s in decoded(hal, STATIC, Status)] == [5, 5, 5]
    assert sum("epoch 5 not saved" in line for line in hal.logs) == 1
    assert not node.report()["epoch_saved"]
    hal.full = False          # space again: saved with the next STATUS
    run_for(node, hal, 1000)
    assert node.epoch_saved and files["epoch"] == b"5" and node.report()["epoch_saved"]
    assert "epoch 5 saved" in hal.logs
    node, hal = make_node(FakeHal(files))
    assert node.epoch == 6


def test_events_have_seq_t_and_values_across_a_ticks_wrap():
    node, hal = make_node()   # ticks start 500 ms before they wrap
    run_for(node, hal, 1000)
    ev = decoded(hal, STATIC, Event)
    assert len(ev) == 20 and node.published == 20 and node.next_seq == 20
    assert [e.seq for e in ev] == list(range(20))
    assert all(e.skip == 0 and e.node == 7 and e.epoch == 1 for e in ev)
    ts = [e.t for e in ev]
    assert ts == sorted(ts) and ts[-1] <= 1000 and ts[-1] - ts[0] >= 900
    temps = [e.value for e in ev if e.topic == "temp"]
    hums = [e.value for e in ev if e.topic == "hum"]
    assert temps == list(range(10)) and hums == list(range(1000, 1010))
    # each sensor keeps its cadence: 100 ms apart
    tt = [e.t for e in ev if e.topic == "temp"]
    assert all(tt[i + 1] - tt[i] == 100 for i in range(len(tt) - 1))
    assert node.uptime == 1000


def test_filtered_subscriber_gets_skips_and_status_accounts_for_the_rest():
    node, hal = make_node()
    run_for(node, hal, 250)             # a few events before the subscription
    first = node.next_seq
    announce(node, hal, filters=["temp"])
    sub = node.subs.find("b1")
    assert sub.since == first and sub.last_sent == first - 1
    st = decoded(hal, BASE, Status)
    assert len(st) == 1 and st[0].since == first and st[0].skip == 0 and st[0].last_seq == first - 1
    run_for(node, hal, 1000)
    node.finish()
    ev = decoded(hal, BASE, Event)
    assert ev and all(e.topic == "temp" for e in ev)
    # every seq from `since` is either received or covered by a skip
    expect = first
    for e in ev:
        assert e.seq - e.skip == expect, (e.seq, e.skip, expect)
        expect = e.seq + 1
    st = decoded(hal, BASE, Status)[-1]
    assert st.last_seq == node.next_seq - 1
    assert expect + st.skip == st.last_seq + 1
    # the static base still gets everything, skip 0
    assert all(e.skip == 0 for e in decoded(hal, STATIC, Event))


def test_rate_cap_sheds_with_exact_skips():
    node, hal = make_node(sensors=[{"topic": "temp", "kind": "counter", "period_ms": 100}], bases=[],
                          discovery={"port": 5685})
    assert hal.opened[1] == (5685, True, True, "0.0.0.0")
    announce(node, hal, rate=5)
    run_for(node, hal, 1200)
    node.finish()
    ev = decoded(hal, BASE, Event)
    # burst of 2 (full at start), then 5/s out of 10/s: exactly every other one
    assert [(e.seq, e.skip) for e in ev][:6] == [(0, 0), (1, 0), (2, 0), (4, 1), (6, 1), (8, 1)]
    sent = len(ev)
    assert node.rate_shed == node.published - sent
    st = decoded(hal, BASE, Status)[-1]
    assert st.counters[codes.CTR_RATE_SHED] == node.rate_shed


def test_time_base_learned_from_announce():
    node, hal = make_node()
    run_for(node, hal, 300)
    assert node.time_base is None
    announce(node, hal, wall=1700000000000)
    assert node.time_base == 1700000000000 - 300
    st = decoded(hal, STATIC, Status)[-1]   # the time change told every subscriber
    assert st.time_base == 1700000000000 - 300 and st.caps & codes.CAP_TIME
    assert decoded(hal, BASE, Status)[-1].time_base == node.time_base
    n = len(hal.sent)
    run_for(node, hal, 100)
    sent_events = len(hal.sent) - n
    # at uptime 400 the base's clock should read 1700000000100
    announce(node, hal, wall=1700000000100 + 900)   # 900 ms off: kept
    assert node.time_base == 1700000000000 - 300
    assert len(hal.sent) == n + sent_events         # no STATUS either
    announce(node, hal, wall=1700000000100 + 1500)  # 1.5 s off: replaced
    assert node.time_base == 1700000000000 + 1200
    assert decoded(hal, STATIC, Status)[-1].time_base == node.time_base


def test_host_clock_sets_time_base_at_boot():
    node, hal = make_node(FakeHal(wall=1600000000000), host_clock=True)
    assert node.time_base == 1600000000000
    assert decoded(hal, STATIC, Status)[0].time_base == 1600000000000


def test_lease_lapse_stops_traffic_and_refresh_keeps_it():
    node, hal = make_node()
    announce(node, hal, lease=1)
    run_for(node, hal, 600)
    announce(node, hal, lease=1)     # refresh at 600: lives until 1600
    run_for(node, hal, 900)
    assert node.subs.find("b1") is not None
    run_for(node, hal, 200)
    assert node.subs.find("b1") is None
    n = len(decoded(hal, BASE))
    run_for(node, hal, 1000)
    assert len(decoded(hal, BASE)) == n
    last = decoded(hal, BASE, Event)[-1]
    assert last.t <= 1600


def test_announce_host_and_static_address():
    node, hal = make_node()
    announce(node, hal, base="named", host="10.1.1.1", port=7000)
    assert node.subs.find("named").addr == ("10.1.1.1", 7000)
    # an ANNOUNCE for the static base's own address does not add a second stream
    announce(node, hal, base="same", host=STATIC[0], port=STATIC[1])
    assert node.subs.find("same") is None and len(node.subs) == 2
    announce(node, hal, base="named", lease=0, host="10.1.1.1", port=7000)
    assert node.subs.find("named") is None


def test_malformed_datagrams_are_counted_and_ignored():
    node, hal = make_node()
    bad = [
        b"",
        b"\xff\xff",
        b"\x83\x01",                                     # truncated CBOR
        cbor.dumps({"a": 1}),                            # not an array
        cbor.dumps([4, "b", "", 6000, ["#"], 0]),        # ANNOUNCE missing a field
        cbor.dumps([4, "", "", 6000, ["#"], 0, 30, None]),   # empty base id
        cbor.dumps([4, "b", "", 6000, ["a/#/b"], 0, 30, None]),  # bad filter
        cbor.dumps([4, "b", "", 0, ["#"], 0, 30, None]),  # port 0
        cbor.dumps([0x44, "b", "", 6000, ["#"], 0, 30, None]),  # version 3
        bytes(range(256)),
    ]
    for data in bad:
        node.on_datagram(data, ("10.0.0.9", 1), hal.ticks_ms())
    assert node.rx_bad == len(bad), node.rx_bad
    assert len(node.subs) == 1
    # valid messages of other kinds are ignored, not counted as bad
    node.on_datagram(Event(1, 1, 1, 1, "x", 1).encode(), ("10.0.0.9", 1))
    assert node.rx_bad == len(bad)
    run_for(node, hal, 1000)
    st = decoded(hal, STATIC, Status)[-1]
    assert st.counters[codes.CTR_RX_BAD] == len(bad)


def test_send_errors_are_counted_and_dropped():
    node, hal = make_node()
    hal.fail_send = True
    run_for(node, hal, 500)
    assert node.published == 10 and node.dropped == 10 and node.send_errors >= 10
    hal.fail_send = False
    run_for(node, hal, 600)
    st = decoded(hal, STATIC, Status)[-1]
    assert st.counters[codes.CTR_DROPPED] == 10 and st.counters[codes.CTR_SEND_ERRORS] == node.send_errors
    ev = decoded(hal, STATIC, Event)
    assert ev[0].seq == 10 and ev[0].skip == 0   # lost, not skipped: the base counts them lost


def test_max_events_finishes_with_a_final_status():
    node, hal = make_node(max_events=7)
    run_for(node, hal, 5000)
    assert node.done and node.published == 7
    st = decoded(hal, STATIC, Status)[-1]
    assert st.last_seq == 6 and st.skip == 0
    assert len(decoded(hal, STATIC, Event)) == 7
    rep = node.report()
    assert rep["published"] == 7 and rep["last_seq"] == 6 and rep["epoch"] == 1


def test_status_every_interval():
    node, hal = make_node(status_every_ms=300)
    run_for(node, hal, 1000)
    st = decoded(hal, STATIC, Status)
    assert [s.uptime for s in st] == [0, 300, 600, 900]
    assert st[-1].counters[codes.CTR_PUBLISHED] == st[-1].last_seq + 1


def test_signed_messages_verify():
    keyhex = "000102030405060708090a0b0c0d0e0f"
    node, hal = make_node(key=keyhex)
    run_for(node, hal, 300)
    key = Key(bytes(range(16)))
    msgs = decoded(hal, STATIC, None, key)
    assert isinstance(msgs[0], Status) and msgs[0].caps & codes.CAP_AUTH
    ev = [m for m in msgs if isinstance(m, Event)]
    assert [e.seq for e in ev] == list(range(len(ev))) and len(ev) == 6


def test_batches_split_into_runs_with_skips():
    node, hal = make_node(batch_ms=500)
    announce(node, hal, filters=["temp"])
    run_for(node, hal, 1200)
    node.finish()
    assert node.done
    every = []
    for b in decoded(hal, STATIC, Batch):
        every.extend(b.events())
    assert [e.seq for e in every] == list(range(node.published))
    assert all(e.skip == 0 for e in every)
    got = []
    for b in decoded(hal, BASE, Batch):
        assert len(b.readings) == 1 or b.readings[0][1] == "temp"
        got.extend(b.events())
    expect = 0
    for e in got:
        assert e.topic == "temp"
        assert e.seq - e.skip == expect
        expect = e.seq + 1
    st = decoded(hal, BASE, Status)[-1]
    assert expect + st.skip == st.last_seq + 1 == node.published
    assert len(got) == len([e for e in every if e.topic == "temp"])
    b = decoded(hal, STATIC, Batch)[0]
    assert 1 < len(b.readings) <= config.BATCH_MAX


def test_step_returns_time_to_next_work():
    node, hal = make_node(sensors=[{"topic": "temp", "kind": "counter", "period_ms": 1000}],
                          status_every_ms=5000)
    delay = node.step(hal.ticks_ms())
    assert delay == node.sensors[0].next_due - node.uptime and 0 < delay < 1000
    hal.advance(delay - 1)
    assert node.step(hal.ticks_ms()) == 1 and node.published == 0
    hal.advance(1)
    assert node.step(hal.ticks_ms()) == 1000 and node.published == 1


def test_a_restarted_base_gets_a_fresh_subscription_and_status_names_it():
    node, hal = make_node(bases=[], discovery={"port": 5685})
    msg = Announce("b1", "", 6000, ["#"], 0, 30, None, 111)
    node.on_datagram(msg.encode(), ("10.0.0.9", 9999), hal.ticks_ms())
    st = decoded(hal, BASE, Status)
    assert len(st) == 1 and st[0].since == 0 and st[0].instance == 111 and st[0].hop is None
    run_for(node, hal, 500)
    n = len(decoded(hal, BASE, Status))
    node.on_datagram(msg.encode(), ("10.0.0.9", 9999), hal.ticks_ms())   # a refresh
    assert len(decoded(hal, BASE, Status)) == n
    first = node.next_seq
    again = Announce("b1", "", 6000, ["#"], 0, 30, None, 222)            # the base restarted
    node.on_datagram(again.encode(), ("10.0.0.9", 9999), hal.ticks_ms())
    st = decoded(hal, BASE, Status)
    assert len(st) == n + 1
    assert (st[-1].since, st[-1].last_seq, st[-1].skip, st[-1].instance) == (first, first - 1, 0, 222)
    assert st[0].counters[codes.CTR_RESUBSCRIBED] == 0 and st[-1].counters[codes.CTR_RESUBSCRIBED] == 1
    assert node.report()["resubscribed"] == 1
    run_for(node, hal, 300)
    ev = [e for e in decoded(hal, BASE, Event) if e.seq >= first]
    assert ev and ev[0].seq == first and ev[0].skip == 0
    # the STATUS bytes the node writes (with the instance) are those messages.Status encodes
    raws = [bytes(d) for a, d in hal.sent if a == BASE and isinstance(messages.decode(d), Status)]
    assert len(raws) == n + 1
    for raw in raws:
        assert messages.decode(raw).encode() == raw
