# Durable chain nodes (firmware/chain.py + firmware/outbox.py Log) in process on both
# interpreters: reboots of a middle node lose nothing that was durable, forwarded messages
# are on flash before they are acknowledged, dead letters reach the base, back-pressure.
from protocol import messages
from firmware.outbox import Log, KIND_OWN, KIND_FWD
from test_chain_node import World, node_config, check_exactly_once


def _cut(w, wire, ms):
    for pipe in w.lines[wire]:
        pipe.cuts.append((w.clock.us, w.clock.us + ms * 1000))


def test_graceful_reboot_of_a_middle_node_with_a_backlog_loses_nothing():
    # node 2's upstream wire is cut, so it holds its own events and node 3's; it reboots
    # (drain impossible, log synced), replays, and everything arrives exactly once
    w = World(3, seed=21, durable=True)
    w.run(1500)
    _cut(w, 1, 3000)
    w.run(1500)
    n2 = w.nodes[1]
    assert n2.own.live > 5 and n2.fwd.live > 5
    w.reboot(2)
    n2 = w.nodes[1]
    assert n2.epoch == 2 and n2.replayed > 10
    assert n2.own.live > 5 and n2.fwd.live > 5       # replayed: own and forwarded
    w.run(3000)
    w.pause()
    assert w.settle()
    check_exactly_once(w)
    ids = w.base.ids(2)
    assert (1, 0) in ids and (2, 0) in ids
    # the log was compacted once everything was acknowledged
    w.run(2500)
    segs = [n for n in w.files[1] if n.startswith("ob") and n != "obcur"]
    assert len(segs) <= 1, segs


def test_crash_of_a_middle_node_loses_at_most_its_unflushed_own_events():
    # a power loss: node 2 vanishes without finish(). Forwarded messages were on flash
    # before node 2 acknowledged them: node 3 loses nothing. Node 2 loses at most the own
    # events still in its log buffer (published after the last flush).
    w = World(3, seed=23, durable=True, extra={"log": {"flush_records": 8, "flush_ms": 300}})
    w.run(1500)
    _cut(w, 1, 2500)
    w.run(1000)
    n2 = w.nodes[1]
    unflushed = n2.log.unflushed()
    published = n2.published
    # what survives the power loss: the flushed log, as the next boot will read it
    durable = {}
    Log(_Flash(dict(w.files[1])), "ob").open(
        lambda k, e, s, m, p: durable.update({(e, s): True}) if k == KIND_OWN else None)
    w.reboot(2, crash=True)
    w.run(3500)
    w.pause()
    assert w.settle()
    for nid in (1, 3):
        ids = w.base.ids(nid)
        assert len(ids) == w.published(nid) and ids == sorted(ids), nid
    got = {}
    for e, s in w.base.ids(2):
        got[(e, s)] = True
    missing = [s for s in range(published) if (1, s) not in got]
    assert len(missing) <= unflushed <= 8, (missing, unflushed)
    assert all((1, s) not in durable for s in missing)
    assert missing == list(range(published - len(missing), published))  # only the newest
    ids2 = [i for i in w.base.ids(2) if i[0] == 2]
    assert ids2 == [(2, s) for s in range(w.nodes[1].published)]


class _Flash:
    def __init__(self, files):
        self.files = files

    def read_file(self, name):
        return self.files.get(name)

    def write_file_atomic(self, name, data):
        self.files[name] = bytes(data)

    def append_file(self, name, data):
        self.files[name] = self.files.get(name, b"") + bytes(data)

    def remove_file(self, name):
        self.files.pop(name, None)

    def log(self, msg):
        pass


def test_publish_wait_is_durable_across_a_crash():
    cfg = node_config(1, period_ms=1000000, durable=True, down=False,
                      extra={"log": {"flush_records": 100, "flush_ms": 60000}})
    w = World(1, seed=5, cfgs=[cfg])
    _cut(w, 0, 5000)                  # nothing can be acknowledged meanwhile
    n = w.nodes[0]
    assert n.publish("a", 1)          # accepted, not yet durable
    assert n.publish("a", 2, wait=True)   # both on flash now
    assert n.publish("a", 3)          # lost by the crash below
    w.reboot(1, crash=True)
    w.run(7000)
    assert w.base.ids(1) == [(1, 0), (1, 1)]


def test_a_full_flash_is_counted_and_the_chain_delivers_on():
    # node 2's flash fills up mid-run: its log appends and cursor writes fail. The node
    # must not stop (a board would boot-loop); it counts the failures and keeps
    # delivering its own events and node 3's, exactly once.
    w = World(3, seed=31, durable=True)
    w.run(1500)
    hal = w.hals[1]
    hal.full = True
    w.run(4000)
    n2 = w.nodes[1]
    assert n2.report()["flash_errors"] > 0 and not n2.done
    assert any("flash write failed" in line for line in hal.logs)
    w.pause()
    assert w.settle()
    check_exactly_once(w)
    assert len(w.base.ids(2)) == w.published(2) and len(w.base.ids(3)) == w.published(3)


def test_a_full_flash_at_boot_does_not_stop_a_chain_node():
    # node 2 reboots with a full flash: it cannot write its epoch file (nor open its
    # log). It runs on with the new epoch, retries the write at each STATUS, and once
    # there is space again the epoch is saved, so the next boot counts on from it.
    w = World(3, seed=7, durable=True)
    w.run(1500)
    assert w.files[1]["epoch"] == b"1"
    w.full_flash.add(2)
    n2 = w.reboot(2)
    assert n2.epoch == 2 and not n2.epoch_saved and w.files[1]["epoch"] == b"1"
    assert not n2.done and any("epoch 2 not saved" in line for line in w.hals[1].logs)
    w.run(3000)
    assert not n2.report()["epoch_saved"]
    w.hals[1].full = False
    w.run(3000)
    assert n2.report()["epoch_saved"] and w.files[1]["epoch"] == b"2"
    assert "epoch 2 saved" in w.hals[1].logs
    w.pause()
    assert w.settle()
    check_exactly_once(w)
    assert any(e[0] == 2 and e[1] == 2 for e in w.base.events)   # its events on epoch 2
    w.full_flash.discard(2)
    assert w.reboot(2).epoch == 3


def _survive_memory_errors(node):
    # what ChainNode.run() does around step(): count a MemoryError and step again later
    real_step = node.step
    errors = [0]

    def step(now):
        try:
            return real_step(now)
        except MemoryError:
            errors[0] += 1
            return 10
    node.step = step
    return errors


def test_a_memory_error_while_taking_forwarded_messages_loses_none():
    # node 2 runs out of heap while it logs messages node 3's link has just delivered
    # (and acknowledged): those messages exist nowhere else. The step is redone; every
    # event of node 3 still reaches the base once, and none is logged twice.
    w = World(3, seed=11, durable=True, period_ms=20)
    n2 = w.nodes[1]
    real_append = n2.log.append
    calls = [0]
    fwd_logged = []

    def flaky_append(kind, epoch, seq, msg, now):
        if kind == KIND_FWD:
            calls[0] += 1
            if calls[0] % 5 == 2:
                raise MemoryError("memory allocation failed")
            fwd_logged.append(msg)
        return real_append(kind, epoch, seq, msg, now)
    n2.log.append = flaky_append
    errors = _survive_memory_errors(n2)
    w.run(3000)
    assert errors[0] >= 10
    w.pause()
    assert w.settle()
    check_exactly_once(w)
    assert len(w.base.ids(3)) == w.published(3) and w.published(3) >= 100
    assert len(fwd_logged) == len(set(fwd_logged))       # each forwarded message logged once


def test_a_memory_error_in_a_burst_of_control_messages_loses_none_of_them():
    # the base sends three control messages at once; node 1 runs out of heap while it
    # forwards the second. The link has acknowledged all three, so the step is redone
    # from that message: each reaches nodes 2 and 3, each forwarded once.
    w = World(3, seed=5)
    w.run(2500)
    n1 = w.nodes[0]
    real_to_down = n1._to_down
    calls = [0]

    def flaky_to_down(data):
        calls[0] += 1
        if calls[0] == 2:
            raise MemoryError("memory allocation failed")
        return real_to_down(data)
    n1._to_down = flaky_to_down
    errors = _survive_memory_errors(n1)
    before = [n.ctrl_down for n in w.nodes]
    w.base.send(messages.Enumerate(1))
    w.base.send(messages.Announce("base", "", 1, ["#"], 0, 60, 1700000000000))
    w.base.send(messages.Enumerate(2))
    w.run(1500)
    assert errors[0] == 1 and calls[0] == 4
    assert [n.ctrl_down - b for n, b in zip(w.nodes, before)] == [3, 3, 0]
    assert w.nodes[2].time_base is not None       # the ANNOUNCE reached the last node


def test_dead_letters_reach_the_base_and_cover_what_is_missing():
    # a tiny retry budget on a noisy line: some frames die; their events are reported
    # in DEADLETTER messages once the link is up again (they may have arrived anyway)
    cfgs = [node_config(1, period_ms=40, max_payload=128, durable=True,
                        extra={"link": {"max_payload": 128, "max_retries": 1}}),
            node_config(2, period_ms=40, max_payload=128, down=False,
                        extra={"link": {"max_payload": 128, "max_retries": 1}})]
    w = World(2, seed=9, drop_ppm=8000, flip_ppm=4000, cfgs=cfgs, max_payload=128)
    w.run(6000)
    w.pause()
    for p in (p for pair in w.lines for p in pair):
        p.drop_ppm = 0
        p.flip_ppm = 0
    assert w.settle()
    w.run(1500)
    dead_total = w.nodes[0].dead.total + w.nodes[1].dead.total
    assert dead_total > 0
    reported = {}
    count = 0
    for d in w.base.deadletters:
        count += d.count
        for e, s in d.ids:
            reported[(d.node, e, s)] = True
    assert count == dead_total and not w.nodes[0].dead.nodes and not w.nodes[1].dead.nodes
    # every event arrived or was reported by id; beyond the 64 ids a node remembers,
    # dead letters are only counted (lost_ids)
    not_remembered = w.nodes[0].dead.lost_ids + w.nodes[1].dead.lost_ids
    unreported = 0
    for nid in (1, 2):
        ids = {}
        for i in w.base.ids(nid):
            ids[i] = True
        for s in range(w.published(nid)):
            if (1, s) not in ids and (nid, 1, s) not in reported:
                unreported += 1
        got = w.base.ids(nid)
        assert got == sorted(got)
    assert unreported <= not_remembered, (unreported, not_remembered)


def test_back_pressure_bounds_the_forward_queue_and_loses_nothing():
    # node 1's forward queue is small and its up line (2400 Bd) slower than node 2's
    # (19200 Bd): node 2 is throttled by the link's credit, node 1 never holds more than
    # its bound plus one poll of the down link, and node 2's block outbox absorbs the rest
    cfgs = [node_config(1, period_ms=1000000, durable=True, window=4, max_payload=128,
                        baud=2400, down_baud=19200,
                        extra={"forward": {"max": 16, "max_bytes": 640}}),
            node_config(2, period_ms=20, durable=True, window=4, max_payload=128,
                        down=False, baud=19200,
                        extra={"outbox": {"max": 2000, "max_bytes": 60000, "policy": "block"}})]
    w = World(2, seed=13, cfgs=cfgs, bauds=[2400, 19200], window=4, max_payload=128)
    n1 = w.nodes[0]
    peak = 0
    for _ in range(30):
        w.run(100)
        held = n1.fwd.bytes + sum(len(m) for m in n1._fin_msg)
        if held > peak:
            peak = held
    w.pause()
    assert w.settle(60000)
    check_exactly_once(w)
    assert w.nodes[1].own.refused == 0 and w.nodes[1].sample_refused == 0
    assert 640 - 64 <= peak <= 640 + 4 * 128 + 128, peak   # full, and bounded
    assert w.nodes[1].own.live == 0 and w.nodes[1].published > 100
