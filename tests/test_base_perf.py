"""Throughput guards for the base station's receive path. The targets (>= 1,000,000
readings/s accounted with batched datagrams on a desktop, see base_station/bench.py)
are printed; times are CPU time of this process (other load on the machine does not
count) and the asserted floors are lower so a slow CI runner does not fail
spuriously, yet a per-reading slow path (e.g. from_fields for every BATCH, several
microseconds per reading) would trip them."""

import time

from base_station.accounting import EpochStream
from base_station.bench import datagrams
from base_station.station import BaseStation


def test_batch_accounting_is_per_batch_constant_time():
    s = EpochStream(0)
    t0 = time.process_time()
    for k in range(200_000):
        s.add(k * 128, 128)
    rate = 200_000 * 128 / (time.process_time() - t0)
    print("accounting alone: %.0f readings/s" % rate)
    assert s.received == 200_000 * 128 and s.lost == 0
    assert rate > 20_000_000


def test_ingest_batched_datagrams_fast():
    dg = datagrams(20, 10_000)
    assert max(map(len, dg)) <= 1400
    st = BaseStation(udp=[], announce=False)
    t0 = time.process_time()
    for d in dg:
        st.ingest(d, ("127.0.0.1", 1))
    rate = 200_000 / (time.process_time() - t0)
    print("ingest, 20 readings/datagram: %.0f readings/s" % rate)
    assert st.counters["readings"] == 200_000 and st.counters["malformed"] == 0
    assert rate > 250_000
