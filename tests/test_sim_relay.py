"""The impairment relay (sim/relay.py): what it counts, what it never touches."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_node_udp import Receiver  # noqa: E402

from protocol.auth import Key, sign
from protocol.messages import Batch, Event, Status
from sim.relay import Relay, classify


def _event(seq, node=1):
    return Event(node, 1, seq, seq * 10, "temp", 20.5).encode()


def _status(last, node=1):
    return Status(node, 1, last, 0, 0, 100, None, "0.1.0", 1, {1: last + 1}).encode()


async def _through(relay: Relay, datagrams: list[bytes], rx: Receiver) -> None:
    await relay.start()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for d in datagrams:
            s.sendto(d, relay.address)
            await asyncio.sleep(0.0005)
    assert await relay.drain()
    relay.close()


def test_classify_counts_readings():
    assert classify(_event(3, node=9)) == (9, "event", 1)
    batch = Batch(4, 2, 10, [(t, "a", t) for t in range(5)]).encode()
    assert classify(batch) == (4, "batch", 5)
    assert classify(_status(7, node=5)) == (5, "status", 0)
    assert classify(b"\xff\x00garbage") == (None, "undecodable", 0)
    signed = sign(6, Key(bytes(16)), _event(1, node=6))
    assert classify(signed) == (6, "event", 1)


def test_loss_and_dup_counts_are_exact_and_status_is_untouched():
    rx = Receiver()
    relay = Relay(rx.addr, loss=0.3, dup=0.2, seed=1)
    data = [_event(i) for i in range(200)] + [_status(199)] * 20 + [b"junk"] * 3
    asyncio.run(_through(relay, data, rx))
    rx.close()
    st = relay.nodes[1]
    got = rx.events(1)
    assert st["forwarded"] + st["dropped_by_sim"] == 200
    assert 30 < st["dropped_by_sim"] < 90 and st["duplicated_by_sim"] > 10
    assert len(got) == st["forwarded"] + st["duplicated_by_sim"]
    assert len({e.seq for e in got}) == st["forwarded"]
    assert len(rx.statuses(1)) == 20 and st["status_forwarded"] == 20 and st["status_dropped"] == 0
    assert relay.undecodable == 3 and rx.bad == 3   # junk forwarded untouched


def test_same_seed_same_decisions():
    def dropped(seed):
        rx = Receiver()
        relay = Relay(rx.addr, loss=0.5, seed=seed)
        asyncio.run(_through(relay, [_event(i) for i in range(100)], rx))
        rx.close()
        return sorted(set(range(100)) - {e.seq for e in rx.events(1)})
    a = dropped(5)
    assert a == dropped(5) and a != dropped(6)


def test_reorder_and_jitter_change_order_not_content():
    rx = Receiver()
    relay = Relay(rx.addr, reorder=0.3, jitter_ms=2, seed=3)
    asyncio.run(_through(relay, [_event(i) for i in range(100)], rx))
    rx.close()
    seqs = [e.seq for e in rx.events(1)]
    assert sorted(seqs) == list(range(100)) and seqs != list(range(100))
    assert relay.nodes[1]["reordered"] > 0


def test_impair_status_option():
    rx = Receiver()
    relay = Relay(rx.addr, loss=1.0, impair_status=True)
    asyncio.run(_through(relay, [_status(1)] * 10, rx))
    rx.close()
    assert relay.nodes[1]["status_dropped"] == 10 and not rx.statuses()


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        Relay(("127.0.0.1", 1), loss=1.5)
    with pytest.raises(ValueError):
        Relay(("127.0.0.1", 1), delay_ms=-1)
