"""The receive path at volume: batched datagrams are accounted per batch, with no
per-reading state, and every reading is counted. How fast that runs is measured by
bench/ingest.py and `python -m base_station.bench` (docs/PERFORMANCE.md), not here."""

from base_station.accounting import EpochStream
from base_station.bench import datagrams
from base_station.station import BaseStation


def test_in_order_batches_leave_no_per_reading_state():
    s = EpochStream(0)
    for k in range(200_000):
        s.add(k * 128, 128)
    assert s.received == 200_000 * 128 and s.lost == 0 and s.next == 200_000 * 128
    assert s.holes() == []
    # one missing batch is one interval, however many readings it held
    s.add(200_001 * 128, 128)
    assert s.holes() == [(200_000 * 128, 200_001 * 128)] and s.lost == 128


def test_ingest_batched_datagrams_counts_every_reading():
    dg = datagrams(20, 10_000)
    assert max(map(len, dg)) <= 1400
    st = BaseStation(udp=[], announce=False)
    for d in dg:
        st.ingest(d, ("127.0.0.1", 1))
    assert st.counters["readings"] == 200_000 and st.counters["malformed"] == 0
    assert sum(n.totals()["received"] for n in st.nodes.values()) == 200_000
