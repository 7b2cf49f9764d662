"""Where readings go: SQLite (default), JSON Lines, CSV, SenML (RFC 8428).

Every sink gets readings in bulk as `Block`s (consecutive new readings of one node
epoch, never a duplicate: the accounting dedups before delivery), the reading of a
single-EVENT datagram through `write_event` (by default a one-reading Block), and
STATUS messages as they come. The station calls `tick()` about every 200 ms and `close()` on exit.

SQLite (see docs/BASE_STATION.md for the schema) writes off the event loop: the loop
only appends to a pending list (a block as one marshalled bytes object, an event as
one flat tuple of scalars: nothing the cyclic GC keeps scanning); a thread ships the
list every `flush_rows` readings or `flush_interval` seconds, whichever comes first,
and it is written in one transaction (multi-row INSERT OR IGNORE; rows with a plain
value bind no NULL, see _SHAPE_*), either by that thread or by a writer process
(process=True, what `starling listen` uses) so row building and inserts do not
compete with the receive loop for the GIL. WAL mode, synchronous=NORMAL (a power cut may lose the
last transactions, never corrupt the file). The pending list holds at most
`max_pending` readings: if the disk cannot keep up, further blocks are dropped and
counted (`dropped`), the receive loop never blocks.

Values: SQLite's `value` column holds ints, floats, text and blobs as themselves;
`vtype` is NULL for those, 'bool' for a boolean (stored 0/1), 'map' for a map reading
(stored as JSON text, bytes inside as {"$base64": ...}) and 'bigint' for an integer
outside SQLite's signed 64-bit range (stored as decimal text).
"""

from __future__ import annotations

import base64
import csv
import json
import gc
import logging
import marshal
import os
import sqlite3
import subprocess
import sys
import threading
import time
from itertools import chain
from pathlib import Path
from typing import IO, Any, Iterable

import cbor2

from base_station.records import Block, Reading

log = logging.getLogger("starling.base.sinks")

_I64_MIN = -(1 << 63)
_I64_MAX = (1 << 63) - 1
_NATIVE = frozenset((int, float, str, bytes))

SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    node    INTEGER NOT NULL,   -- node id
    epoch   INTEGER NOT NULL,   -- boot epoch
    seq     INTEGER NOT NULL,   -- sequence number within the epoch
    topic   TEXT    NOT NULL,
    t_ms    INTEGER NOT NULL,   -- ms since the node booted
    time    REAL,               -- Unix seconds from the node's time base, NULL if unknown
    arrival REAL    NOT NULL,   -- Unix seconds when the base received it
    value,                      -- INTEGER / REAL / TEXT / BLOB (see vtype)
    vtype   TEXT,               -- NULL: value as is; 'bool', 'map' (JSON), 'bigint' (text)
    PRIMARY KEY (node, epoch, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS statuses (
    node      INTEGER NOT NULL,
    epoch     INTEGER NOT NULL,
    arrival   REAL    NOT NULL,
    last_seq  INTEGER,
    skip      INTEGER NOT NULL,
    since     INTEGER NOT NULL,
    uptime    INTEGER NOT NULL,
    time_base INTEGER,
    firmware  TEXT    NOT NULL,
    caps      INTEGER NOT NULL,
    counters  TEXT    NOT NULL,  -- JSON object, counter name (protocol.codes) -> value
    hop       INTEGER,
    instance  INTEGER            -- the ANNOUNCE instance the STATUS reports on, or NULL
);
CREATE INDEX IF NOT EXISTS statuses_node_arrival ON statuses (node, arrival);
"""

TOPIC_INDEX = "CREATE INDEX IF NOT EXISTS readings_topic_time ON readings (topic, time)"
_MULTI = 64          # rows per multi-row INSERT (9 * 64 = 576 parameters < 999, SQLite's old limit)


def _insert_sql(row: str, multi: int) -> str:
    return "INSERT OR IGNORE INTO readings VALUES " + ",".join([row] * multi)


# Three row shapes, so that the common rows bind no None: Python's sqlite3 binds int,
# float and str directly but sends None (and bytes) through its adapter lookup, which
# made a NULL `vtype` (and a NULL `time`) the largest part of the per-row cost.
# (columns, the row template)
_SHAPE_TIMED = (8, "(?, ?, ?, ?, ?, ?, ?, ?, NULL)")      # plain value, time known
_SHAPE_UNTIMED = (7, "(?, ?, ?, ?, ?, NULL, ?, ?, NULL)")  # plain value, time unknown
_SHAPE_GENERAL = (9, "(?, ?, ?, ?, ?, ?, ?, ?, ?)")        # anything (vtype set, clamped ...)
_STATEMENTS = {shape: (shape[0], _insert_sql(shape[1], 1), _insert_sql(shape[1], _MULTI))
               for shape in (_SHAPE_TIMED, _SHAPE_UNTIMED, _SHAPE_GENERAL)}
_INSERT_STATUS = "INSERT INTO statuses VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"


def _json_default(o: Any) -> Any:
    if isinstance(o, (bytes, bytearray)):
        return {"$base64": base64.b64encode(o).decode("ascii")}
    raise TypeError("not JSON serialisable: %r" % (o,))


def to_json(value: Any) -> str:
    return json.dumps(value, default=_json_default, separators=(",", ":"))


def counters_json(counters: dict) -> str:
    from protocol.codes import COUNTER_NAMES
    return json.dumps({COUNTER_NAMES.get(k, str(k)): v for k, v in counters.items()},
                      sort_keys=True)


class Sink:
    """Base class: override write_block (and optionally write_status/tick/close)."""

    name = "sink"

    def __init__(self) -> None:
        self.written = 0
        self.dropped = 0
        self.errors = 0

    def write_block(self, block: Block) -> None:
        raise NotImplementedError

    def write_event(self, node: int, epoch: int, seq: int, t: int, topic: str, value: Any,
                    time_base: int | None, arrival: float) -> None:
        """One new reading of a single-event datagram (the station calls this instead
        of write_block for EVENTs; override it to avoid the one-reading Block)."""
        self.write_block(Block(node, epoch, seq, [t], [topic], [value], time_base, arrival))

    def write_records(self, records: Iterable[Reading]) -> None:
        """Per-reading path, used by `starling export`."""
        for r in records:
            self.write_block(Block(r.node, r.epoch, r.seq, [r.t], [r.topic], [r.value], None,
                                   r.arrival))

    def write_status(self, node: int, status: Any, arrival: float) -> None:
        pass

    def tick(self) -> None:
        pass

    def flush(self) -> None:
        self.tick()

    def close(self) -> None:
        self.flush()

    # a sink writing a byte stream (a file, a FIFO, stdout), whose reader may go away
    writes_stream = False
    # True for a sink writing to this process's stdout ("-")
    to_stdout = False

    def abandon(self) -> None:
        """The stream's reader has gone (a broken pipe): let go of it without writing.
        A stdout sink points the file descriptor at /dev/null, so that what the
        interpreter still flushes at exit goes nowhere instead of raising again."""

    def stats(self) -> dict:
        return {"written": self.written, "dropped": self.dropped, "errors": self.errors}


def _abandon_stream(fp: IO, to_stdout: bool) -> None:
    if to_stdout:
        _stdout_to_devnull()
        return
    try:
        fp.close()
    except OSError:       # what it still buffered: the reader is gone
        pass


def _stdout_to_devnull() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):   # no real stdout (captured): nothing to redirect
        pass


# -- SQLite ----------------------------------------------------------------------------

class _Rows:
    """Readings rows of one transaction, sorted by shape (see _SHAPE_*). The two plain
    shapes are kept as flat parameter lists (row after row, filled by slice
    assignment), so no per-row tuple is built."""

    __slots__ = ("timed", "untimed", "general")

    def __init__(self) -> None:
        self.timed: list = []            # _SHAPE_TIMED parameters, 8 per row
        self.untimed: list = []          # _SHAPE_UNTIMED parameters, 7 per row
        self.general: list[tuple] = []   # _SHAPE_GENERAL rows

    def __len__(self) -> int:
        return len(self.timed) // 8 + len(self.untimed) // 7 + len(self.general)

    def add(self, item: Any) -> None:
        """A pending item (see SQLiteSink: a marshalled block, a block tuple or an
        event tuple) -> rows."""
        if type(item) is bytes:
            item = marshal.loads(item)
        node, epoch, seq0, ts, topics, values, tb, arrival = item
        if type(ts) is int:                          # a single event: ts is its t
            t, v = ts, values
            ty = type(v)
            if (ty is float or ty is str or (ty is int and _I64_MIN <= v <= _I64_MAX)
                    or ty is bytes) and seq0 <= _I64_MAX and t <= _I64_MAX:
                if tb is None:
                    self.untimed.extend((node, epoch, seq0, topics, t, arrival, v))
                else:
                    self.timed.extend((node, epoch, seq0, topics, t, (tb + t) / 1000.0, arrival, v))
            else:
                self.general.extend(_general_rows(node, epoch, seq0, (t,), (topics,), (v,), tb,
                                                  arrival))
            return
        n = len(ts)
        kinds = set(map(type, values))
        plain = kinds <= _NATIVE
        if plain and int in kinds:
            ints = [v for v in values if type(v) is int]
            plain = min(ints) >= _I64_MIN and max(ints) <= _I64_MAX
        if not (plain and seq0 + n - 1 <= _I64_MAX and ts[-1] <= _I64_MAX):
            self.general.extend(_general_rows(node, epoch, seq0, ts, topics, values, tb, arrival))
            return
        if tb is None:
            flat, w = self.untimed, 7
        else:
            flat, w = self.timed, 8
        k = len(flat)
        flat += [arrival] * (w * n)                  # arrival fills what is not set below
        flat[k::w] = [node] * n
        flat[k + 1::w] = [epoch] * n
        flat[k + 2::w] = range(seq0, seq0 + n)
        flat[k + 3::w] = topics
        flat[k + 4::w] = ts
        if tb is None:
            flat[k + 6::w] = values
        else:
            flat[k + 5::w] = [(tb + t) / 1000.0 for t in ts]
            flat[k + 7::w] = values

    def insert(self, db: sqlite3.Connection) -> None:
        if self.timed:
            _insert_flat(db, _STATEMENTS[_SHAPE_TIMED], self.timed)
        if self.untimed:
            _insert_flat(db, _STATEMENTS[_SHAPE_UNTIMED], self.untimed)
        if self.general:
            _insert(db, _STATEMENTS[_SHAPE_GENERAL], self.general)


def _insert_flat(db: sqlite3.Connection, statement: tuple, flat: list) -> None:
    """INSERT OR IGNORE rows given as one flat parameter list, _MULTI rows per statement."""
    ncol, one, multi = statement
    rows = len(flat) // ncol
    full = (rows - rows % _MULTI) * ncol
    if full:
        it = iter(flat[:full] if full < len(flat) else flat)
        db.executemany(multi, zip(*[it] * (ncol * _MULTI)))
    if full < len(flat):
        it = iter(flat[full:])
        db.executemany(one, zip(*[it] * ncol))


def _general_rows(node: int, epoch: int, seq0: int, ts: Any, topics: Any, values: Any,
                  tb: int | None, arrival: float) -> list[tuple]:
    """Rows of all 9 columns, values converted (bool, map, bigint) and u64 clamped."""
    out = []
    seq = seq0
    for t, topic, v in zip(ts, topics, values):
        vt = None
        ty = type(v)
        if ty is bool:
            v, vt = int(v), "bool"
        elif ty is dict:
            v, vt = to_json(v), "map"
        elif ty is int and not _I64_MIN <= v <= _I64_MAX:
            v, vt = str(v), "bigint"
        out.append((node, epoch, _clamp_i64(seq), topic, _clamp_i64(t),
                    None if tb is None else (tb + t) / 1000.0, arrival, v, vt))
        seq += 1
    return out


def _clamp_i64(n: int) -> int:
    # seq and t are u64 on the wire; SQLite integers are i64. Real nodes never get
    # near 2^63; a hostile value is clamped rather than failing the whole batch.
    return n if n <= _I64_MAX else _I64_MAX


def _insert(db: sqlite3.Connection, statement: tuple, rows: list[tuple]) -> None:
    """INSERT OR IGNORE rows of one shape, _MULTI per statement (about 20 % faster than
    one row per statement: fewer statement steps and Python calls), the rest one by
    one."""
    ncol, one, multi = statement
    full = len(rows) - len(rows) % _MULTI
    if full:
        params = chain.from_iterable(rows[:full] if full < len(rows) else rows)
        db.executemany(multi, zip(*[params] * (ncol * _MULTI)))
    if full < len(rows):
        db.executemany(one, rows[full:])


def decode_value(value: Any, vtype: str | None) -> Any:
    """A readings row's (value, vtype) back to the reading's value."""
    if vtype is None:
        return value
    if vtype == "bool":
        return bool(value)
    if vtype == "bigint":
        return int(value)
    if vtype == "map":
        def hook(d):
            if len(d) == 1 and "$base64" in d:
                return base64.b64decode(d["$base64"])
            return d
        return json.loads(value, object_hook=hook)
    return value


def open_db(path: str, topic_index: bool | None = None) -> sqlite3.Connection:
    """Open (creating if needed) a Starling database, WAL mode, schema in place.

    A new file gets 16 KiB pages (fewer B-tree splits for append-mostly inserts);
    the connection gets a 64 MiB page cache and checkpoints every ~64 MiB of WAL.
    topic_index=True creates the readings_topic_time index (queries by topic and
    time get fast, inserts about 25 % slower), False drops it, None leaves it as is.
    """
    db = sqlite3.connect(path, check_same_thread=False)
    db.execute("PRAGMA page_size=16384")       # only takes effect on a new, empty file
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA cache_size=-65536")
    db.execute("PRAGMA wal_autocheckpoint=4096")
    db.executescript(SCHEMA)
    if "instance" not in [r[1] for r in db.execute("PRAGMA table_info(statuses)")]:
        # a database written before STATUS carried the ANNOUNCE instance
        db.execute("ALTER TABLE statuses ADD COLUMN instance INTEGER")
    if topic_index:
        db.execute(TOPIC_INDEX)
    elif topic_index is not None:
        db.execute("DROP INDEX IF EXISTS readings_topic_time")
    db.commit()
    return db


def _chunks(items: list, counts: list[int], rows: int) -> Iterable[tuple[list, int]]:
    """Split pending items into lists of about `rows` readings (whole items), each with
    its number of readings."""
    total = sum(counts)
    if len(items) <= rows and total <= rows:
        yield items, total
        return
    chunk: list = []
    n = 0
    for item, k in zip(items, counts):
        chunk.append(item)
        n += k
        if n >= rows:
            yield chunk, n
            chunk, n = [], 0
    if chunk:
        yield chunk, n


class _Writer:
    """Owns the connection and writes shipped batches; runs in the sink's thread or in
    its writer process."""

    def __init__(self, path: str, topic_index: bool | None = None):
        self.path = path
        self.db = open_db(path, topic_index)

    def write(self, items: list, n: int, statuses: list[tuple]) -> tuple[int, int, str | None, int]:
        """One transaction of the `n` readings in `items`. Returns (readings written,
        readings dropped, error or None, readings of those written whose (node, epoch,
        seq) the database already had, so it kept the row it had)."""
        rows = _Rows()
        try:
            for item in items:
                rows.add(item)
        except Exception as e:   # cannot happen with what SQLiteSink queues; never fatal
            return 0, n, "cannot build rows: %r" % (e,), 0
        try:
            with self.db:
                before = self.db.total_changes
                if rows:
                    rows.insert(self.db)
                inserted = self.db.total_changes - before
                if statuses:
                    self.db.executemany(_INSERT_STATUS, statuses)
        except Exception as e:   # sqlite3.Error, or a value it cannot bind
            return 0, len(rows), "cannot write %d readings: %s" % (len(rows), e), 0
        return len(rows), 0, None, len(rows) - inserted

    def close(self) -> None:
        self.db.close()


def _writer_main(path: str) -> None:
    """Entry point of the writer process (`python -c ...`, see SQLiteSink): marshalled
    (items, statuses) batches come in on stdin, (written, dropped, error) go out on
    stdout; an empty message or end of input stops it. Anything else printed goes to
    stderr."""
    from multiprocessing.connection import Connection
    out_fd = os.dup(1)
    os.dup2(2, 1)               # stray prints must not corrupt the reply stream
    data = Connection(0, writable=False)
    reply = Connection(out_fd, readable=False)
    try:
        w = _Writer(path)
    except Exception as e:
        reply.send(("error", repr(e)))
        return
    # the rows of a transaction are short-lived and acyclic (freed by reference
    # counting): collect young objects rarely, never rescan what was there at start
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    reply.send(("ready", None))
    while True:
        try:
            raw = data.recv_bytes()
        except (EOFError, OSError):
            break
        if not raw:
            break
        try:
            items, n, statuses = marshal.loads(raw)
            reply.send(w.write(items, n, statuses))
        except Exception as e:   # keep serving: the sink counts the batch as dropped
            reply.send((0, -1, "writer failed: %r" % (e,)))
    w.close()
    reply.send(("closed", None))


class SQLiteSink(Sink):
    """Readings and statuses into a SQLite file, batched, off the event loop.

    The loop thread only appends blocks to a pending list. A shipper thread takes the
    list every `flush_rows` readings or `flush_interval` seconds and writes it in one
    transaction: itself (process=False), or through a pipe to a writer *process*
    (process=True), so building rows and inserting do not compete with the receive
    loop for the GIL; the shipper then only marshals the pending list (mostly bytes
    objects already) and waits with the GIL released. If the writer process dies,
    batches are counted dropped and logged.

    Args:
        path: database file (created with the schema if missing).
        flush_rows: write as soon as this many readings are pending; also the most
            written per transaction.
        flush_interval: ... or after this many seconds.
        max_pending: readings waiting at most while the writer is busy; beyond, blocks
            are dropped and counted (`dropped`): the receive loop never blocks.
        topic_index: create (True) or drop (False) the (topic, time) index, see open_db.
        process: write from a separate Python process (~0.2 s to start).
    Raises:
        sqlite3.Error at construction if the file cannot be opened or is not a database;
        RuntimeError if the writer process does not start.
    """

    name = "sqlite"

    def __init__(self, path: str = "starling.db", flush_rows: int = 10000,
                 flush_interval: float = 0.2, max_pending: int = 2_000_000,
                 topic_index: bool | None = None, process: bool = False):
        super().__init__()
        self.path = path
        self.flush_rows = flush_rows
        self.flush_interval = flush_interval
        self.max_pending = max_pending
        self.transactions = 0
        self.already_stored = 0      # readings whose key the database already had
        self._writer: _Writer | None = None
        self._proc: Any = None
        self._data: Any = None
        self._reply: Any = None
        if process:
            open_db(path, topic_index).close()          # errors surface here, schema in place
            self._start_process()
        else:
            self._writer = _Writer(path, topic_index)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._items: list = []          # pending blocks and events, see write_block
        self._counts: list[int] = []    # readings per pending item
        self._statuses: list[tuple] = []
        self._pending = 0
        self._requested = 0        # flush generations asked for / done
        self._done = 0
        self._stop = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="starling-sqlite", daemon=True)
        self._thread.start()

    def _start_process(self) -> None:
        # a plain subprocess, not multiprocessing: spawn would re-import the caller's
        # __main__, fork is unsafe with threads
        from multiprocessing.connection import Connection
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        code = "import sys; from base_station.sinks import _writer_main; _writer_main(sys.argv[1])"
        self._proc = subprocess.Popen([sys.executable, "-c", code, self.path], env=env,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._data = Connection(os.dup(self._proc.stdin.fileno()), readable=False)
        self._reply = Connection(os.dup(self._proc.stdout.fileno()), writable=False)
        self._proc.stdin.close()
        self._proc.stdout.close()
        if not self._reply.poll(30):
            self._proc.kill()
            raise RuntimeError("sqlite writer process did not start")
        try:
            kind, detail = self._reply.recv()
        except EOFError:
            kind, detail = "error", "exited with status %s" % self._proc.wait(5)
        if kind != "ready":
            self._proc.wait(5)
            raise RuntimeError("sqlite writer process: %s" % detail)

    def write_block(self, block: Block) -> None:
        # Pending data stays out of the cyclic GC: a block is queued as one marshalled
        # bytes object (not GC-tracked; the writer unmarshals it), so collections do not
        # rescan up to max_pending readings of lists again and again.
        n = len(block.ts)
        item: Any = (block.node, block.epoch, block.seq0, block.ts, block.topics, block.values,
                     block.time_base, block.arrival)
        try:
            item = marshal.dumps(item)
        except ValueError:       # not a value a reading can hold; queued as is
            pass
        with self._lock:
            if self._pending + n > self.max_pending:
                self.dropped += n
                return
            self._items.append(item)
            self._counts.append(n)
            self._pending += n
            if self._pending >= self.flush_rows:
                self._wake.notify()

    def write_event(self, node: int, epoch: int, seq: int, t: int, topic: str, value: Any,
                    time_base: int | None, arrival: float) -> None:
        # one flat tuple of scalars: the GC untracks it at its first collection
        with self._lock:
            if self._pending >= self.max_pending:
                self.dropped += 1
                return
            self._items.append((node, epoch, seq, t, topic, value, time_base, arrival))
            self._counts.append(1)
            self._pending += 1
            if self._pending >= self.flush_rows:
                self._wake.notify()

    def write_status(self, node: int, status: Any, arrival: float) -> None:
        fields = (node, status.epoch, arrival, status.last_seq, status.skip, status.since,
                  status.uptime, status.time_base, status.firmware, status.caps,
                  counters_json(status.counters), status.hop,
                  getattr(status, "instance", None))
        row = tuple(_clamp_i64(v) if type(v) is int else v for v in fields)
        with self._lock:
            self._statuses.append(row)

    def flush(self, timeout: float = 60.0) -> None:
        """Write everything pending now and wait until it is committed."""
        with self._lock:
            self._requested += 1
            want = self._requested
            self._wake.notify()
            deadline = time.monotonic() + timeout
            while self._done < want and self._thread.is_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning("sqlite flush timed out after %.0f s", timeout)
                    return
                self._wake.wait(left)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.flush()
        with self._lock:
            self._stop = True
            self._wake.notify_all()
        self._thread.join(timeout=60)
        if self._writer is not None:
            self._writer.close()
        if self._proc is not None:
            try:
                self._data.send_bytes(b"")
                if self._reply.poll(30):
                    self._reply.recv()
            except (OSError, EOFError):
                pass
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
            self._data.close()
            self._reply.close()

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._stop and self._pending < self.flush_rows and self._done == self._requested:
                    self._wake.wait(self.flush_interval)
                items, self._items = self._items, []
                counts, self._counts = self._counts, []
                statuses, self._statuses = self._statuses, []
                self._pending = 0
                gen = self._requested
                stop = self._stop
            for chunk, n in _chunks(items, counts, self.flush_rows):
                # one transaction per chunk: bounds the time the GIL is held to build or
                # marshal rows, so the receive loop is never stalled for long
                written, dropped, err, already = self._ship(chunk, n, statuses)
                statuses = []
                with self._lock:
                    self.written += written
                    self.dropped += dropped
                    self.transactions += 1
                    if err:
                        self.errors += 1
                    first = already and not self.already_stored
                    self.already_stored += already
                if err:
                    log.error("sqlite %s: %s", self.path, err)
                if first:
                    log.warning("sqlite %s: %d readings were already in the database (the same "
                                "node, epoch and seq) and it kept the rows it had: a restarted "
                                "base receiving them again, or a node whose epochs started again "
                                "(`starling flash --epoch-from` prevents that); counted in "
                                "already_stored", self.path, already)
            if statuses:
                self._ship([], 0, statuses)
            with self._lock:
                self._done = gen
                self._wake.notify_all()
            if stop:
                return

    def _ship(self, items: list, n: int, statuses: list[tuple]) -> tuple[int, int, str | None, int]:
        if self._writer is not None:
            return self._writer.write(items, n, statuses)
        try:
            self._data.send_bytes(marshal.dumps((items, n, statuses)))
            reply = self._reply.recv()
        except (OSError, EOFError) as e:
            return 0, n, "writer process gone: %s" % (e,), 0
        except ValueError as e:   # marshal: a value it cannot carry (none that the wire has)
            return 0, n, "cannot hand readings to the writer process: %s" % (e,), 0
        if reply[1] < 0:
            return 0, n, reply[2], 0
        return reply

    def stats(self) -> dict:
        return dict(super().stats(), already_stored=self.already_stored)


# -- text sinks --------------------------------------------------------------------------

def _open_text(path: str) -> tuple[IO[str], bool]:
    if path == "-":
        return sys.stdout, False
    return open(path, "a", encoding="utf-8", newline=""), True


class JSONLSink(Sink):
    """One JSON object per reading and line: node, epoch, seq, topic, t, time, arrival,
    value (bytes as {"$base64": ...}; NaN/Infinity as Python's json writes them).
    `path` "-" is stdout."""

    name = "jsonl"
    writes_stream = True

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.fp, self._owned = _open_text(path)
        self.to_stdout = not self._owned

    def write_block(self, block: Block) -> None:
        head = '{"node":%d,"epoch":%d,"seq":' % (block.node, block.epoch)
        arrival = repr(block.arrival)
        seq = block.seq0
        lines = []
        for t, topic, v, when in zip(block.ts, block.topics, block.values, block.times()):
            lines.append('%s%d,"topic":%s,"t":%d,"time":%s,"arrival":%s,"value":%s}\n' % (
                head, seq, json.dumps(topic), t, "null" if when is None else repr(when), arrival,
                to_json(v)))
            seq += 1
        self.fp.write("".join(lines))
        self.written += len(lines)

    def write_records(self, records: Iterable[Reading]) -> None:
        for r in records:
            self.fp.write(json.dumps(r.as_dict(), default=_json_default, separators=(",", ":")) + "\n")
            self.written += 1

    def tick(self) -> None:
        self.fp.flush()

    def abandon(self) -> None:
        _abandon_stream(self.fp, self.to_stdout)

    def close(self) -> None:
        self.fp.flush()
        if self._owned:
            self.fp.close()


def csv_value(v: Any) -> str:
    """A value as CSV text: numbers as Python writes them, true/false, text as is,
    bytes as hex, maps as JSON."""
    ty = type(v)
    if ty is bool:
        return "true" if v else "false"
    if ty is bytes:
        return v.hex()
    if ty is dict:
        return to_json(v)
    if ty is str:
        return v
    return repr(v)


CSV_HEADER = ("node", "epoch", "seq", "topic", "t_ms", "time", "arrival", "value")


class CSVSink(Sink):
    """One row per reading, columns CSV_HEADER; the header is written to a new/empty file."""

    name = "csv"
    writes_stream = True

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.fp, self._owned = _open_text(path)
        self.to_stdout = not self._owned
        self.writer = csv.writer(self.fp)
        if not self._owned or self.fp.tell() == 0:
            self.writer.writerow(CSV_HEADER)

    def write_block(self, block: Block) -> None:
        node, epoch, seq0, arrival = block.node, block.epoch, block.seq0, repr(block.arrival)
        self.writer.writerows(
            (node, epoch, seq0 + i, topic, t, "" if when is None else repr(when), arrival,
             csv_value(v))
            for i, (t, topic, v, when) in enumerate(zip(block.ts, block.topics, block.values,
                                                        block.times())))
        self.written += len(block.ts)

    def write_records(self, records: Iterable[Reading]) -> None:
        for r in records:
            self.writer.writerow((r.node, r.epoch, r.seq, r.topic, r.t,
                                  "" if r.time is None else repr(r.time), repr(r.arrival),
                                  csv_value(r.value)))
            self.written += 1

    def tick(self) -> None:
        self.fp.flush()

    def abandon(self) -> None:
        _abandon_stream(self.fp, self.to_stdout)

    def close(self) -> None:
        self.fp.flush()
        if self._owned:
            self.fp.close()


# -- SenML (RFC 8428) ---------------------------------------------------------------------

# RFC 8428 §6 (Table 4): CBOR integer labels
SENML_LABELS = {"bn": -2, "bt": -3, "n": 0, "u": 1, "v": 2, "vs": 3, "vb": 4, "vd": 8, "t": 6}


def senml_base_name(node: int) -> str:
    return "urn:dev:starling:%d:" % node


def _senml_value(v: Any, cbor: bool) -> tuple[str, Any]:
    ty = type(v)
    if ty is bool:
        return "vb", v
    if ty is int or ty is float:
        return "v", v
    if ty is str:
        return "vs", v
    if ty is bytes:
        # RFC 8428 §4.3: JSON carries data base64url without padding; CBOR a byte string
        return "vd", v if cbor else base64.urlsafe_b64encode(v).decode("ascii").rstrip("=")
    raise TypeError("no SenML value type for %r" % (v,))


class SenMLWriter:
    """Streams SenML records, one per reading (a map reading gives one record per key,
    named "topic/key"). Records of one node share a base name "urn:dev:starling:<node>:"
    and base time `bt` (the first record's time), written when the node changes; `t`
    is then relative to bt (rounded to 1 µs). The time is the node's wall-clock time
    when known, else the arrival time at the base (SenML has no "unknown time").

    JSON: a JSON array (RFC 8428 §5). CBOR: a CBOR array of maps with the integer
    labels of §6, written with indefinite length so it can be streamed.
    """

    def __init__(self, fp: IO[bytes], fmt: str = "json"):
        if fmt not in ("json", "cbor"):
            raise ValueError("SenML format is json or cbor, not %r" % (fmt,))
        self.fp = fp
        self.cbor = fmt == "cbor"
        self.count = 0
        self._node: int | None = None
        self._bt = 0.0
        self.fp.write(b"\x9f" if self.cbor else b"[")

    def write(self, r: Reading) -> None:
        when = r.time if r.time is not None else r.arrival
        items = [(r.topic + "/" + k, v) for k, v in r.value.items()] if type(r.value) is dict \
            else [(r.topic, r.value)]
        for name, v in items:
            rec: dict[str, Any] = {}
            if r.node != self._node:
                self._node = r.node
                self._bt = when
                rec["bn"] = senml_base_name(r.node)
                rec["bt"] = when
            rec["n"] = name
            label, value = _senml_value(v, self.cbor)
            rec[label] = value
            dt = round(when - self._bt, 6)
            if dt:
                rec["t"] = dt
            self._emit(rec)

    def _emit(self, rec: dict) -> None:
        if self.cbor:
            self.fp.write(cbor2.dumps({SENML_LABELS[k]: v for k, v in rec.items()}))
        else:
            text = json.dumps(rec, separators=(",", ":"), allow_nan=True)
            self.fp.write((b",\n" if self.count else b"\n") + text.encode("utf-8"))
        self.count += 1

    def close(self) -> None:
        self.fp.write(b"\xff" if self.cbor else b"\n]\n")
        self.fp.flush()


class SenMLSink(Sink):
    """SenML file sink: format from `fmt`, or from the extension (.cbor / else JSON)."""

    name = "senml"
    writes_stream = True

    def __init__(self, path: str, fmt: str | None = None):
        super().__init__()
        self.path = path
        if fmt is None:
            fmt = "cbor" if path.endswith((".cbor", ".senml-cbor")) else "json"
        self._fp = sys.stdout.buffer if path == "-" else open(path, "wb")
        self.to_stdout = path == "-"
        self.writer = SenMLWriter(self._fp, fmt)
        self._closed = False

    def write_block(self, block: Block) -> None:
        for r in block.records():
            self.writer.write(r)
        self.written += len(block.ts)

    def write_records(self, records: Iterable[Reading]) -> None:
        for r in records:
            self.writer.write(r)
            self.written += 1

    def tick(self) -> None:
        self._fp.flush()

    def abandon(self) -> None:
        self._closed = True
        _abandon_stream(self._fp, self.to_stdout)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.writer.close()
        if self._fp is not sys.stdout.buffer:
            self._fp.close()


# -- reading a database back -----------------------------------------------------------------

def read_db(path: str, node: int | None = None, topic_filter: str | None = None) -> Iterable[Reading]:
    """Readings from a Starling database ordered by node, epoch, seq."""
    from protocol.topics import topic_matches
    db = sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True)
    try:
        sql = "SELECT node, epoch, seq, topic, t_ms, time, arrival, value, vtype FROM readings"
        args: tuple = ()
        if node is not None:
            sql += " WHERE node = ?"
            args = (node,)
        sql += " ORDER BY node, epoch, seq"
        for row in db.execute(sql, args):
            if topic_filter is not None and not topic_matches(topic_filter, row[3]):
                continue
            yield Reading(row[0], row[1], row[2], row[3], decode_value(row[7], row[8]), row[4],
                          row[5], row[6])
    finally:
        db.close()

