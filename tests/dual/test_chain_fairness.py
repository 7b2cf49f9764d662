# Fairness of a chain node's up link (firmware/chain.py, deficit round-robin on bytes
# between its own outbox and the forward queue), in process on both interpreters: a
# 9600-baud chain base <-> node 1 <-> node 2 that cannot carry everything offered.
from test_chain_node import World, node_config


def _chain(period1, period2, seed=4):
    # window 4 of 128-byte frames: about 0.8 s of the line in flight or queued per hop
    kw = {"outbox_max": 256, "window": 4, "max_payload": 128, "baud": 9600,
          "extra": {"status_every_ms": 60000}}
    cfgs = [node_config(1, period_ms=period1, **kw),
            node_config(2, period_ms=period2, down=False, **kw)]
    return World(2, baud=9600, seed=seed, cfgs=cfgs, window=4, max_payload=128)


def _shares(w, t0, t1):
    # event bytes per node arriving at the base between t0 and t1 (ms)
    got = {1: 0, 2: 0}
    for t, node, size, _ in w.base.arrivals:
        if t0 <= t < t1:
            got[node] += size
    return got


def test_both_saturated_share_the_line_evenly():
    # both nodes offer ~4 KB/s to a line of 960 B/s: each gets about half of node 1's
    # up link, whichever is the chatty one
    w = _chain(5, 5)
    w.run(7000)
    got = _shares(w, 3000, 7000)            # after the start, when node 1 had the line alone
    total = got[1] + got[2]
    assert total > 2500, got                # the line is busy (~960 B/s of frames)
    assert 0.45 < got[1] / total < 0.55, got
    assert w.nodes[0].own.evicted > 0 and w.nodes[1].own.evicted > 0   # both shed


def test_chatty_lower_node_does_not_starve_the_upper_nodes_events():
    # node 2 offers ~4 KB/s, node 1 ~110 B/s (far below its half): node 1 loses nothing
    # and its events wait at most a few frames
    w = _chain(200, 5)
    w.run(6000)
    n1 = w.nodes[0]
    assert n1.own.evicted == 0 and n1.own.dropped == 0
    assert w.nodes[1].own.evicted > 0
    lat = [t - t_ev for t, node, size, t_ev in w.base.arrivals if node == 1 and t > 1000]
    assert len(lat) >= 20 and max(lat) < 1500, (len(lat), max(lat) if lat else None)
    got = _shares(w, 2000, 6000)
    assert got[2] > got[1]                  # node 2 still gets the rest of the line


def test_chatty_upper_node_does_not_starve_the_lower_nodes_events():
    w = _chain(5, 200)
    w.run(8000)
    n2 = w.nodes[1]
    assert n2.own.evicted == 0 and n2.own.dropped == 0
    assert w.nodes[0].own.evicted > 0
    lat = [t - t_ev for t, node, size, t_ev in w.base.arrivals if node == 2 and t > 1000]
    assert len(lat) >= 20 and max(lat) < 2500, (len(lat), max(lat) if lat else None)
    # node 2's events all arrived, in order
    ids = w.base.ids(2)
    assert ids == sorted(ids) and len(ids) >= n2.published - 6
