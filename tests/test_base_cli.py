"""The `starling` command line as a subprocess: listen receives real datagrams and
writes its summary JSON and database; export; lazy subcommands; demo."""

import json
import socket
import subprocess
import sys

import cbor2
import pytest

from protocol.messages import Announce, from_fields
from base_station import cli
from base_station.sinks import read_db
from base_station.testing import TestNode

PY = sys.executable


def start_listen(tmp_path, *extra):
    cmd = [PY, "-m", "base_station.cli", "listen", "--udp", "127.0.0.1:0", "--duration", "2",
           "--db", str(tmp_path / "l.db"), "--summary-json", str(tmp_path / "summary.json"),
           "--every", "0.5", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=str(tmp_path))
    line = proc.stdout.readline()
    assert line.startswith("starling: listening on 127.0.0.1:"), line + proc.stderr.read()
    port = int(line.strip().rsplit(":", 1)[1])
    return proc, ("127.0.0.1", port)


@pytest.mark.parametrize("reader", [[], ["--reader-process"]], ids=["inline", "reader-process"])
def test_listen_subprocess_summary_json_and_db(tmp_path, reader):
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(3)
    proc, addr = start_listen(tmp_path, "--discovery", "%s:%d" % rx.getsockname(),
                              "--base-id", "cli-test", "--filter", "lab/#", "--lease", "9",
                              "--jsonl", str(tmp_path / "l.jsonl"), *reader)
    try:
        ann = from_fields(cbor2.loads(rx.recv(2048)))
        node = TestNode(11, target=addr, time_base=1_700_000_000_000)
        node.send(node.status(last_seq=None))
        for i in range(10):
            if i != 4:                                   # seq 4 lost
                node.send(node.event("lab/t", float(i)))
            else:
                node.seq += 1
        node.send(node.batch([("lab/b", i) for i in range(5)]))      # 10..14
        node.send(node.event("lab/t", 0.0, seq=2))                   # duplicate
        node.send(b"\xff garbage")                                   # malformed
        node.send(node.status())                                     # last_seq 14
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    bye = from_fields(cbor2.loads(rx.recv(2048)))
    rx.close()
    assert proc.returncode == 0, err
    assert isinstance(ann, Announce) and ann.base == "cli-test" and ann.port == addr[1]
    assert ann.filters == ["lab/#"] and ann.lease == 9 and bye.lease == 0
    s = json.loads((tmp_path / "summary.json").read_text())
    n = s["nodes"]["11"]
    assert (n["received"], n["lost"], n["duplicates"], n["skipped"]) == (14, 1, 1, 0)
    assert n["last"] == {"lab/t": 9.0, "lab/b": 4}
    assert s["malformed"] == 1 and s["rejected"] == 0 and s["kernel_drops"] == 0
    assert list(s["reader"].values()) == ["process" if reader else "in-process"]
    assert s["sinks"]["sqlite"]["written"] == 14
    assert [r.seq for r in read_db(str(tmp_path / "l.db"))] == [0, 1, 2, 3] + list(range(5, 15))
    assert len((tmp_path / "l.jsonl").read_text().splitlines()) == 14
    assert "final summary" in out and "t=" in out           # plain lines, not a TTY


def test_listen_with_keys_rejects_unsigned(tmp_path):
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"3": "00" * 16}))
    proc, addr = start_listen(tmp_path, "--no-announce", "--keys", str(keys), "--no-db")
    try:
        node = TestNode(3, target=addr)
        node.send(node.event())
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["rejected"] == 1 and s["nodes"] == {}
    assert not (tmp_path / "l.db").exists()


def test_listen_bad_arguments_exit_2(tmp_path):
    bad = tmp_path / "keys.json"
    bad.write_text("{not json")
    r = subprocess.run([PY, "-m", "base_station.cli", "listen", "--keys", str(bad), "--no-db",
                        "--no-announce", "--udp", "127.0.0.1:0", "--duration", "0.1"],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 2 and "not JSON" in r.stderr


def test_lazy_subcommands(monkeypatch, capsys):
    monkeypatch.setitem(cli.LAZY_COMMANDS, "chain", ("no_such_module.cli", "serial chain head"))
    assert cli.main(["chain", "--port", "/dev/null"]) == 2
    assert "not available" in capsys.readouterr().err
    # listen still parses fine next to a broken lazy command
    args = cli.make_parser().parse_args(["listen", "--udp", "127.0.0.1:9", "--filter", "a/#"])
    assert args.udp == [("127.0.0.1", 9)] and args.filter == ["a/#"]


def test_sim_help_is_delegated():
    r = subprocess.run([PY, "-m", "base_station.cli", "sim", "--help"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0 and "usage: starling sim" in r.stdout


@pytest.mark.slow
def test_demo_cpython_fleet_is_exact(tmp_path):
    r = subprocess.run([PY, "-m", "base_station.cli", "demo", "--runtime", "cpython", "--nodes", "2",
                        "--rate", "50", "--duration", "1.5", "--no-db",
                        "--summary-json", str(tmp_path / "d.json")],
                       capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "d.json").read_text())
    assert set(s["nodes"]) == {"1", "2"}
    for n in s["nodes"].values():
        assert n["received"] > 20 and n["lost"] == 0 and n["duplicates"] == 0
    assert "fleet vs base" in r.stdout
