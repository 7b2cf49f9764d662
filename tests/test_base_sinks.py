"""Sinks: SQLite schema and round trip, duplicates never stored, statuses, bounded
pending buffer; SenML export (JSON and CBOR with integer labels); JSON Lines/CSV."""

import json
import logging
import sqlite3
import time

import cbor2
import pytest

from base_station import cli
from base_station.records import Block
from base_station.sinks import (SENML_LABELS, CSVSink, JSONLSink, SQLiteSink, SenMLSink,
                                read_db)
from base_station.station import BaseStation
from base_station.testing import TestNode

TB = 1_700_000_000_000


def fill(db_path, extra_sinks=()):
    sink = SQLiteSink(db_path)
    st = BaseStation(udp=[], announce=False, sinks=[sink, *extra_sinks])
    n = TestNode(3, time_base=TB)
    st.ingest(n.status())
    for topic, value in [("env/temp", 21.5), ("env/ok", True), ("env/name", "lab"),
                         ("env/raw", b"\x01\x02\xff"), ("env/imu", {"x": 1.5, "y": -2})]:
        st.ingest(n.event(topic, value))
    m = TestNode(4)                         # no time base: SenML falls back to arrival
    st.ingest(m.batch([("a/b", 7), ("a/c", -1.25)]))
    for s in st.sinks:
        s.close()
    return st


def test_senml_json_export(tmp_path):
    db = str(tmp_path / "s.db")
    fill(db)
    out = tmp_path / "out.json"
    assert cli.main(["export", "--db", db, "--senml", str(out)]) == 0
    pack = json.loads(out.read_text())
    assert pack[0] == {"bn": "urn:dev:starling:3:", "bt": (TB + 10) / 1000, "n": "env/temp", "v": 21.5}
    assert pack[1] == {"n": "env/ok", "vb": True, "t": 0.01}
    assert pack[2] == {"n": "env/name", "vs": "lab", "t": 0.02}
    assert pack[3] == {"n": "env/raw", "vd": "AQL_", "t": 0.03}      # base64url, no padding
    assert pack[4] == {"n": "env/imu/x", "v": 1.5, "t": 0.04}        # a map: one record per key
    assert pack[5] == {"n": "env/imu/y", "v": -2, "t": 0.04}
    assert pack[6]["bn"] == "urn:dev:starling:4:" and pack[6]["n"] == "a/b" and pack[6]["v"] == 7
    assert abs(pack[6]["bt"] - time.time()) < 60                     # arrival time
    assert pack[7] == {"n": "a/c", "v": -1.25}
    # resolved records (RFC 8428 §4.6): name = bn + n, time = bt + t
    assert pack[0]["bn"] + pack[1]["n"] == "urn:dev:starling:3:env/ok"


def test_senml_cbor_export_uses_integer_labels(tmp_path):
    db = str(tmp_path / "s.db")
    fill(db)
    out = tmp_path / "out.cbor"
    assert cli.main(["export", "--db", db, "--senml", str(out), "--node", "3"]) == 0
    pack = cbor2.loads(out.read_bytes())
    assert SENML_LABELS == {"bn": -2, "bt": -3, "n": 0, "u": 1, "v": 2, "vs": 3, "vb": 4, "vd": 8, "t": 6}
    assert pack[0] == {-2: "urn:dev:starling:3:", -3: (TB + 10) / 1000, 0: "env/temp", 2: 21.5}
    assert pack[1] == {0: "env/ok", 4: True, 6: 0.01}
    assert pack[3] == {0: "env/raw", 8: b"\x01\x02\xff", 6: 0.03}
    assert len(pack) == 6


def test_senml_sink_while_listening(tmp_path):
    out = tmp_path / "live.json"
    fill(str(tmp_path / "s.db"), [SenMLSink(str(out))])
    pack = json.loads(out.read_text())
    assert [r["n"] for r in pack] == ["env/temp", "env/ok", "env/name", "env/raw", "env/imu/x",
                                      "env/imu/y", "a/b", "a/c"]


def test_export_jsonl_csv_and_topic_filter(tmp_path):
    db = str(tmp_path / "s.db")
    fill(db)
    jl, cv = tmp_path / "o.jsonl", tmp_path / "o.csv"
    assert cli.main(["export", "--db", db, "--jsonl", str(jl), "--csv", str(cv), "--topic", "env/+"]) == 0
    rows = [json.loads(x) for x in jl.read_text().splitlines()]
    assert [r["topic"] for r in rows] == ["env/temp", "env/ok", "env/name", "env/raw", "env/imu"]
    assert rows[3]["value"] == {"$base64": "AQL/"} and rows[4]["value"] == {"x": 1.5, "y": -2}
    assert cv.read_text().splitlines()[0] == "node,epoch,seq,topic,t_ms,time,arrival,value"
    assert cli.main(["export", "--db", str(tmp_path / "missing.db"), "--jsonl", str(jl)]) == 2


def test_sqlite_schema_statuses_and_unique(tmp_path):
    db = str(tmp_path / "s.db")
    fill(db)
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    cols = [r[1] for r in con.execute("PRAGMA table_info(readings)")]
    assert cols == ["node", "epoch", "seq", "topic", "t_ms", "time", "arrival", "value", "vtype"]
    rows = con.execute("SELECT node, seq, topic, value, vtype FROM readings ORDER BY node, seq").fetchall()
    assert rows[1] == (3, 1, "env/ok", 1, "bool") and rows[4][4] == "map" and rows[0][4] is None
    st = con.execute("SELECT node, epoch, last_seq, since, firmware, counters FROM statuses").fetchone()
    assert st[:5] == (3, 0, None, 0, "test-0.1") and json.loads(st[5]) == {"published": 0}
    with pytest.raises(sqlite3.IntegrityError):
        con.execute("INSERT INTO readings VALUES (3, 0, 1, 'x', 0, NULL, 0, 1, NULL)")
    con.close()
    # a second run on the same file (e.g. the base restarted): same (node, epoch, seq) ignored
    sink = SQLiteSink(db)
    sink.write_block(Block(3, 0, 0, [10, 20], ["env/temp", "env/ok"], [99.0, False], None, 1.0))
    sink.close()
    values = [r.value for r in read_db(db, node=3)]
    assert values[:2] == [21.5, True] and len(values) == 5


def test_sqlite_pending_is_bounded_and_drops_are_counted(tmp_path):
    # the writer sleeps (10 s interval, 20000-row trigger): pending fills up to max_pending
    sink = SQLiteSink(str(tmp_path / "b.db"), max_pending=50, flush_interval=10)
    for i in range(8):
        sink.write_block(Block(1, 0, i * 10, [0] * 10, ["t"] * 10, [1] * 10, None, 0.0))
    sink.close()
    assert (sink.written, sink.dropped) == (50, 30)
    assert len(list(read_db(str(tmp_path / "b.db")))) == 50


def test_sqlite_big_ints_and_seq_clamped(tmp_path):
    db = str(tmp_path / "big.db")
    sink = SQLiteSink(db)
    sink.write_block(Block(1, 0, 0, [0, 1, 2], ["t"] * 3, [2**64 - 1, -2**64, 5], None, 0.0))
    sink.close()
    assert [r.value for r in read_db(db)] == [2**64 - 1, -2**64, 5]


def test_sqlite_writes_every_batched_reading(tmp_path):
    """200,000 readings in 10,000 blocks: every one written, once (its speed is
    measured by bench/ingest.py, not here)."""
    db = str(tmp_path / "t.db")
    sink = SQLiteSink(db)
    blocks = [Block(1 + k % 10, 0, (k // 10) * 20, list(range(20)), ["sensors/1/temp"] * 20,
                    [21.5] * 20, TB, 1.0) for k in range(10_000)]
    for b in blocks:
        sink.write_block(b)
    sink.flush()
    sink.close()
    assert sink.written == 200_000 and sink.dropped == 0
    con = sqlite3.connect(db)
    assert con.execute("SELECT COUNT(*), COUNT(DISTINCT node || '/' || seq) FROM readings"
                       ).fetchone() == (200_000, 200_000)
    con.close()


def test_jsonl_and_csv_to_stdout(capsys):
    for cls in (JSONLSink, CSVSink):
        s = cls("-")
        s.write_block(Block(1, 2, 3, [4], ["a"], [5], None, 6.0))
        s.close()
    out = capsys.readouterr().out.splitlines()
    assert json.loads(out[0]) == {"node": 1, "epoch": 2, "seq": 3, "topic": "a", "t": 4,
                                  "time": None, "arrival": 6.0, "value": 5}
    assert out[1:] == ["node,epoch,seq,topic,t_ms,time,arrival,value", "1,2,3,a,4,,6.0,5"]


def test_sqlite_writer_process_mode(tmp_path):
    db = str(tmp_path / "p.db")
    sink = SQLiteSink(db, process=True)
    st = BaseStation(udp=[], announce=False, sinks=[sink])
    n = TestNode(5, time_base=TB)
    st.ingest(n.status())
    for i in range(3):
        st.ingest(n.batch([("p/t", i * 10 + j) for j in range(10)]))
    sink.flush()
    assert sink.written == 30
    st.ingest(n.event("p/m", {"k": True}))
    sink.close()
    rows = list(read_db(db))
    assert [r.value for r in rows] == list(range(30)) + [{"k": True}]
    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM statuses").fetchone() == (1,)


def test_sqlite_bad_path_raises(tmp_path):
    with pytest.raises(sqlite3.Error):
        SQLiteSink(str(tmp_path / "no" / "such" / "dir.db"))


def test_statuses_keep_the_announce_instance_and_an_older_database_gets_the_column(tmp_path):
    db = str(tmp_path / "old.db")
    con = sqlite3.connect(db)        # the statuses table as written before the instance
    con.executescript("""
        CREATE TABLE statuses (node INTEGER NOT NULL, epoch INTEGER NOT NULL,
            arrival REAL NOT NULL, last_seq INTEGER, skip INTEGER NOT NULL,
            since INTEGER NOT NULL, uptime INTEGER NOT NULL, time_base INTEGER,
            firmware TEXT NOT NULL, caps INTEGER NOT NULL, counters TEXT NOT NULL, hop INTEGER);
        INSERT INTO statuses VALUES (1, 0, 1.0, 5, 0, 0, 100, NULL, 'old', 1, '{}', NULL);
    """)
    con.commit()
    con.close()
    sink = SQLiteSink(db)
    st = BaseStation(udp=[], announce=False, sinks=[sink])
    node = TestNode(2)
    st.ingest(node.status(since=0, instance=st.instance), ("127.0.0.1", 1))
    st.ingest(node.status(since=0, instance=7), ("127.0.0.1", 1))
    st.ingest(node.status(since=0), ("127.0.0.1", 1))
    st.flush()
    sink.close()
    rows = sqlite3.connect(db).execute(
        "SELECT node, firmware, instance FROM statuses ORDER BY rowid").fetchall()
    assert rows == [(1, "old", None), (2, "test-0.1", st.instance), (2, "test-0.1", 7),
                    (2, "test-0.1", None)]


@pytest.mark.parametrize("process", [False, True], ids=["thread", "writer-process"])
def test_readings_the_database_already_has_are_counted(tmp_path, caplog, process):
    # the same (node, epoch, seq) from an earlier run: a restarted base receiving a
    # reading again, or a node whose epochs started again. The database keeps the row it
    # had; the sink counts it (already_stored) and says so once.
    db = str(tmp_path / "s.db")
    first = SQLiteSink(db)
    st = BaseStation(udp=[], announce=False, sinks=[first])
    node = TestNode(7, epoch=1)
    st.ingest(node.batch([("t", float(i)) for i in range(3)]), ("127.0.0.1", 1))
    st.flush()
    first.close()
    again = SQLiteSink(db, process=process)
    st = BaseStation(udp=[], announce=False, sinks=[again])
    node = TestNode(7, epoch=1)                     # epoch 1 again, other values
    with caplog.at_level(logging.WARNING, logger="starling.base.sinks"):
        st.ingest(node.batch([("t", 100.0 + i) for i in range(5)]), ("127.0.0.1", 1))
        st.flush()
    stats = st.summary()["sinks"]["sqlite"]
    again.close()
    assert stats["written"] == 5 and stats["already_stored"] == 3
    assert [r.value for r in read_db(db)] == [0.0, 1.0, 2.0, 103.0, 104.0]
    assert "3 readings were already in the database" in caplog.text
