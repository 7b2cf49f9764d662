"""sim.Fleet: scheduled reboots, crashes, node.json it writes, workdir handling."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_node_udp import Receiver  # noqa: E402

from firmware import config as fw_config
from sim.fleet import Fleet, with_rate

pytestmark = pytest.mark.slow


def test_scheduled_reboots_keep_accounting_exact():
    rx = Receiver()
    fleet = Fleet(3, runtime="cpython", bases=[rx.addr], rate=20, loss=0.1, seed=4,
                  reboot_every=0.25, status_every_ms=500)

    async def go():
        await fleet.start()
        await asyncio.sleep(1.4)
        return await fleet.stop()

    summary = asyncio.run(go())
    rx.close()
    assert summary["reboots"] >= 3
    assert sum(s["boots"] for s in summary["nodes"].values()) == 3 + summary["reboots"]
    for nid, s in summary["nodes"].items():
        assert s["exact"] and s["epochs"] == list(range(1, s["boots"] + 1))
        unique = {(e.epoch, e.seq) for e in rx.events(int(nid))}
        assert len(unique) + s["dropped_by_sim"] == s["published"]


def test_crash_reboot_marks_summary_inexact(tmp_path):
    rx = Receiver()
    fleet = Fleet(1, runtime="micropython", bases=[rx.addr], rate=20, workdir=tmp_path)

    async def go():
        await fleet.start()
        await asyncio.sleep(0.3)
        epoch = await fleet.reboot(1, crash=True)
        await asyncio.sleep(0.3)
        return epoch, await fleet.stop()

    epoch, summary = asyncio.run(go())
    rx.close()
    s = summary["nodes"]["1"]
    assert epoch == 2 and s["epochs"] == [1, 2] and not s["exact"]
    assert s["published"] == len({e.seq for e in rx.events(1, 2)})   # only the clean boot counted
    # the work directory given by the caller stays, with each node's files
    flash = tmp_path / "node-1"
    assert (flash / "epoch").read_text() == "2"
    cfg = fw_config.parse((flash / "node.json").read_text())
    assert cfg.bases == [rx.addr] and cfg.float32 and cfg.host_clock
    report = json.loads((flash / "counters.json").read_text())["report"]
    assert report["epoch"] == 2 and report["published"] == s["published"]
    assert b"node 1 epoch 2:" in (flash / "node.log").read_bytes()


def test_node_config_points_at_relays_and_checks_itself():
    fleet = Fleet(2, runtime="cpython", bases=[("127.0.0.1", 9)], rate=4, delay_ms=1)

    async def go():
        await fleet.start()
        cfg = fleet.node_config(2)
        relay = fleet.relay_for(("127.0.0.1", 9))
        await fleet.stop()
        return cfg, relay

    cfg, relay = asyncio.run(go())
    assert relay is not None and cfg["bases"] == [list(relay.address)] != [["127.0.0.1", 9]]
    assert cfg["node"] == 2 and all(s["period_ms"] == 500 for s in cfg["sensors"])
    assert not Path(fleet.workdir).exists()   # temporary workdir removed
    with pytest.raises(Exception):
        Fleet(1, extra_config={"status_every_ms": 1}).node_config(1)
    with pytest.raises(ValueError):
        Fleet(1, bases=[], discovery_port=None)
    with pytest.raises(ValueError):
        with_rate([{"topic": "a", "kind": "counter"}], 0)


def test_open_file_limit_is_raised_or_refused_before_any_node_starts(tmp_path):
    # run in a child: the limits are per process. A soft limit below what N node
    # processes need is raised to the hard one; a hard limit below it is a clear error
    # from Fleet.start() with nothing spawned.
    import subprocess
    script = r"""
import asyncio, resource, sys
sys.path.insert(0, %r)
from sim.fleet import Fleet
from sim.runtime import ensure_fd_limit
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 4096))
ensure_fd_limit(300)
print("raised", resource.getrlimit(resource.RLIMIT_NOFILE)[0])
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
fleet = Fleet(100, runtime="micropython", bases=[("127.0.0.1", 9)], workdir=%r)
try:
    asyncio.run(fleet.start())
except RuntimeError as e:
    print("refused", e)
print("spawned", sum(1 for m in fleet.members.values() if m.proc is not None))
""" % (str(Path(__file__).resolve().parent.parent), str(tmp_path))
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "raised 4096"
    assert lines[1] == ("refused 100 MicroPython node processes need about 556 open files, and "
                        "the limit is 64 (ulimit -Hn): raise it, or use the in-process cpython "
                        "runtime")
    assert lines[2] == "spawned 0"
