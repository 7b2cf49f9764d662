"""The `starling` command line as a subprocess: listen receives real datagrams and
writes its summary JSON and database; export; lazy subcommands; demo."""

import json
import socket
import subprocess
import sys
import time

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


@pytest.mark.parametrize("argv, message", [
    (["listen", "--every", "0"], "argument --every: expected a number > 0, got 0"),
    (["listen", "--duration", "-1"], "argument --duration: expected a number >= 0, got -1"),
    (["listen", "--max-datagram", "0"], "argument --max-datagram: expected 64..65507, got 0"),
    (["listen", "--lease", "0"], "argument --lease: expected 1..86400, got 0"),
    (["listen", "--max-rate", "-3"], "argument --max-rate: expected at least 0, got -3"),
    (["listen", "--rcvbuf", "x"], "argument --rcvbuf: expected a whole number, got 'x'"),
    (["demo", "--loss", "5"], "argument --loss: a probability is between 0 and 1, got 5"),
    (["demo", "--jitter", "-1"], "argument --jitter: expected a number >= 0, got -1"),
    (["demo", "--nodes", "0"], "argument --nodes: expected at least 1, got 0"),
    (["demo", "--rate", "nan"], "argument --rate: expected a number, got 'nan'"),
    (["sim", "--reboot-every", "0"], "argument --reboot-every: expected a number > 0, got 0"),
    (["sim", "--chain", "0"], "argument --chain: expected at least 1, got 0"),
    (["sim", "--ber", "2"], "argument --ber: a probability is between 0 and 1, got 2"),
])
def test_bad_numbers_are_refused_before_anything_runs(argv, message):
    # before, `listen --every 0` printed summary lines in a busy loop and `demo --loss 5`
    # ran its full duration after a traceback
    r = subprocess.run([PY, "-m", "base_station.cli", *argv], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_unusable_paths_are_one_line_errors(tmp_path):
    # before: tracebacks (sqlite3 errors, and --summary-json only after the whole run)
    missing = str(tmp_path / "no" / "such" / "dir")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all, not even close" * 4)
    other = tmp_path / "other.db"
    import sqlite3
    with sqlite3.connect(str(other)) as con:
        con.execute("CREATE TABLE x (a)")
    listen = ["listen", "--udp", "127.0.0.1:0", "--no-announce", "--duration", "0.1"]
    for argv, code, message in [
        (listen + ["--db", missing + "/s.db"], 2, "--db %s/s.db: unable to open database file" % missing),
        (listen + ["--no-db", "--summary-json", missing + "/s.json"], 2,
         "--summary-json %s/s.json: no such directory" % missing),
        (["export", "--db", str(garbage), "--jsonl", "-"], 1,
         "%s: not a Starling database (file is not a database)" % garbage),
        (["export", "--db", str(other), "--jsonl", "-"], 1,
         "%s: not a Starling database (no such table: readings)" % other),
        (["export", "--db", str(other), "--topic", "a/#/b", "--jsonl", "-"], 2,
         "argument --topic: not a topic filter: 'a/#/b'"),
    ]:
        r = subprocess.run([PY, "-m", "base_station.cli", *argv], capture_output=True, text=True,
                           timeout=30, cwd=str(tmp_path))
        assert r.returncode == code and message in r.stderr, (argv, r.returncode, r.stderr)
        assert "Traceback" not in r.stderr, r.stderr


def test_export_to_an_unwritable_path_says_so(tmp_path):
    from base_station.sinks import SQLiteSink
    db = tmp_path / "s.db"
    node = TestNode(4)
    sink = SQLiteSink(str(db))
    from base_station.station import BaseStation
    st = BaseStation(udp=[], announce=False, sinks=[sink])
    st.ingest(node.event("t", 1.5), ("127.0.0.1", 1))
    st.flush()
    sink.close()
    out = tmp_path / "no" / "x.jsonl"
    r = subprocess.run([PY, "-m", "base_station.cli", "export", "--db", str(db), "--jsonl", str(out)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "No such file or directory" in r.stderr and str(out) in r.stderr
    assert "Traceback" not in r.stderr
    r = subprocess.run([PY, "-m", "base_station.cli", "export", "--db", str(db), "--topic", "+",
                        "--jsonl", "-"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and json.loads(r.stdout.splitlines()[0])["value"] == 1.5


def test_demo_whose_fleet_cannot_start_says_why_and_fails(tmp_path):
    # the fleet's node.json check fails inside the running demo: one line, exit 1, no
    # summary of a run that never happened
    r = subprocess.run([PY, "-m", "base_station.cli", "demo", "--runtime", "cpython",
                        "--status-every", "50", "--duration", "5", "--no-db", "--plain"],
                       capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "starling demo: node.json: status_every_ms" in r.stderr
    assert "Traceback" not in r.stderr and "fleet vs base" not in r.stdout


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
    assert "every node adds up" in r.stdout, r.stdout


@pytest.mark.slow
def test_demo_with_loss_adds_up_per_node(tmp_path):
    # static base behind the relay, 20 % loss: the base's lost equals what the relay
    # dropped, and the final STATUS (not impaired) counts trailing loss too
    r = subprocess.run([PY, "-m", "base_station.cli", "demo", "--runtime", "cpython", "--nodes", "3",
                        "--rate", "40", "--duration", "1.5", "--loss", "0.2", "--no-db",
                        "--summary-json", str(tmp_path / "d.json")],
                       capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "d.json").read_text())
    assert sum(n["lost"] for n in s["nodes"].values()) > 0
    assert "every node adds up" in r.stdout, r.stdout
    assert "does not add up" not in r.stdout


def _fleet_node(published, dropped=0, since=None, exact=True):
    return {"published": published, "dropped_by_sim": dropped, "duplicated_by_sim": 0,
            "since": since or {}, "exact": exact, "last_seq": published - 1}


def _base_node(received, lost=0, skipped=0):
    return {"received": received, "lost": lost, "skipped": skipped, "duplicates": 0}


def test_demo_compare_counts_readings_before_the_subscription_apart():
    from base_station.demo import compare
    fleet = {"nodes": {"1": _fleet_node(101, since={"base-a": 1}),
                       "2": _fleet_node(50, dropped=5, since={"other": 7})}}
    station = {"nodes": {"1": _base_node(100), "2": _base_node(45, lost=5)}, "kernel_drops": 0}
    lines, exact = compare(station, fleet, "base-a")
    assert exact
    assert lines[0].startswith("node 1: published 101 (1 before it heard us) | received 100")
    assert "does not add up" not in "".join(lines)


def test_demo_compare_marks_a_node_that_does_not_add_up():
    from base_station.demo import compare
    fleet = {"nodes": {"1": _fleet_node(100), "2": _fleet_node(100, dropped=3),
                       "3": _fleet_node(100, exact=False)}}
    station = {"nodes": {"1": _base_node(99), "2": _base_node(97, lost=2, skipped=1),
                         "3": _base_node(90)}, "kernel_drops": 0}
    lines, exact = compare(station, fleet, "base-a")
    assert not exact
    assert lines[0].endswith("<- does not add up")          # one reading unaccounted
    assert lines[1].endswith("<- does not add up")          # lost 2, the relay dropped 3
    assert lines[2].endswith("(node crashed: not exact)")   # not held against the run


def test_listen_stops_when_its_stdout_reader_goes(tmp_path):
    # `starling listen --jsonl - | head -2`: once head has its lines and exits, listen
    # stops by itself (before, it ran to --duration logging a broken pipe every second),
    # with the summary on stderr and no traceback at exit; the database has every reading
    cmd = [PY, "-m", "base_station.cli", "listen", "--udp", "127.0.0.1:0", "--no-announce",
           "--duration", "120", "--jsonl", "-", "--db", str(tmp_path / "l.db"),
           "--summary-json", str(tmp_path / "summary.json"), "--every", "0.5"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=str(tmp_path))
    try:
        line = proc.stderr.readline()           # a stdout sink: our own lines go to stderr
        assert line.startswith("starling: listening on 127.0.0.1:"), line
        addr = ("127.0.0.1", int(line.strip().rsplit(":", 1)[1]))
        node = TestNode(4, target=addr)
        node.send(node.event("lab/t", 0))
        node.send(node.event("lab/t", 1))
        first = [json.loads(proc.stdout.readline()) for _ in range(2)]
        proc.stdout.close()                      # the reader goes, as `head -2` does
        for i in range(2, 400):                  # until a flush finds the pipe broken
            node.send(node.event("lab/t", i))
            if proc.poll() is not None:
                break
            time.sleep(0.01)
        err = proc.stderr.read()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert [r["seq"] for r in first] == [0, 1]
    assert proc.returncode == 0, err
    assert "stdout closed by its reader: stopped" in err and "final summary" in err
    assert "Traceback" not in err and "Exception ignored" not in err
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["sinks"]["jsonl"]["gone"] is True
    received = s["nodes"]["4"]["received"]
    assert received >= 3 and s["sinks"]["sqlite"]["written"] == received
    assert [r.seq for r in read_db(str(tmp_path / "l.db"))] == list(range(received))


def test_two_outputs_on_stdout_are_refused(tmp_path):
    r = subprocess.run([PY, "-m", "base_station.cli", "listen", "--udp", "127.0.0.1:0",
                        "--no-announce", "--no-db", "--jsonl", "-", "--csv", "-",
                        "--duration", "0.1"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "--jsonl and --csv: only one output can be stdout (-)" in r.stderr


@pytest.mark.parametrize("output, beside, code", [
    ("--jsonl", [], 0), ("--csv", [], 0), ("--senml", [], 0),
    ("--jsonl", ["--csv", "x.csv"], 1),
])
def test_export_into_a_pipe_whose_reader_goes(tmp_path, output, beside, code):
    # `starling export --jsonl - | head -1`: quiet and 0, as `cat` would be (before: an
    # error and exit 1); with a file beside stdout, that file is said to be incomplete
    from base_station.sinks import SQLiteSink
    from base_station.station import BaseStation
    db = tmp_path / "s.db"
    node = TestNode(4)
    sink = SQLiteSink(str(db))
    st = BaseStation(udp=[], announce=False, sinks=[sink])
    st.ingest(node.batch([("lab/t", float(i)) for i in range(50)]), ("127.0.0.1", 1))
    for _ in range(999):                                 # 50,000 readings: far past a pipe's buffer
        st.ingest(node.batch([("lab/t", float(i)) for i in range(50)]), ("127.0.0.1", 1))
    st.flush()
    sink.close()
    proc = subprocess.Popen([PY, "-m", "base_station.cli", "export", "--db", str(db), output, "-",
                             *beside], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=str(tmp_path))
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    proc.wait(timeout=60)
    assert first.strip()
    assert proc.returncode == code, err
    assert "Traceback" not in err and "Exception ignored" not in err
    if beside:
        assert "stdout closed by its reader after" in err and "x.csv incomplete" in err
    else:
        assert err == ""
