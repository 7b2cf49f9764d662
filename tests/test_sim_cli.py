"""The simulator's command line (sim/cli.py) as `starling sim` will call it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_node_udp import Receiver  # noqa: E402

from sim import cli


def _parse(*argv):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults_and_base_rules():
    a = _parse()
    assert a.nodes == 3 and a.runtime == "micropython" and a.rate == 1.0 and a.duration == 10.0
    assert cli.fleet_from_args(a).bases == [("127.0.0.1", 5684)]
    a = _parse("--discovery", "6000")
    f = cli.fleet_from_args(a)
    assert f.bases == [] and f.discovery_port == 6000
    a = _parse("--discovery", "127.255.255.255:6001", "--base", "127.0.0.1:7000", "--base", "127.0.0.2:7001")
    f = cli.fleet_from_args(a)
    assert f.bases == [("127.0.0.1", 7000), ("127.0.0.2", 7001)] and f.discovery_port == 6001
    a = _parse("--loss", "0.2", "--delay", "5")
    assert cli.fleet_from_args(a).use_relays


@pytest.mark.parametrize("argv", [["--loss", "2"], ["--base", "host:notaport"], ["--runtime", "java"],
                                  ["--delay", "-1"]])
def test_bad_arguments(argv):
    with pytest.raises(SystemExit):
        _parse(*argv)


def test_run_writes_summary(tmp_path):
    rx = Receiver()
    out = tmp_path / "summary.json"
    args = _parse("--nodes", "5", "--runtime", "cpython", "--rate", "20", "--duration", "1",
                  "--base", "127.0.0.1:%d" % rx.port, "--loss", "0.1", "--seed", "2",
                  "--summary-json", str(out))
    assert cli.run(args) == 0
    rx.close()
    summary = json.loads(out.read_text())
    assert sorted(summary["nodes"]) == ["1", "2", "3", "4", "5"]
    for nid, s in summary["nodes"].items():
        got = {e.seq for e in rx.events(int(nid))}
        assert s["published"] > 5 and len(got) + s["dropped_by_sim"] == s["published"]
