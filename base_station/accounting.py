"""Exact per-node stream accounting: what arrived, what was lost, what was never ours.

Theory of operation
-------------------
Every node numbers its readings 0, 1, 2, ... within a boot *epoch* (the epoch grows on
every reboot). For one receiver, each of those sequence numbers ends up in exactly one
of four states:

    received   arrived here (counted once; a second copy is a *duplicate*)
    skipped    the node deliberately did not send it to us (topic filter, rate cap,
               or before our subscription began): declared by the `skip` field of
               EVENT/BATCH/STATUS and by STATUS `since`
    missing    expected but not (yet) here: a *hole*
    unknown    beyond what we know the stream spans

The expected span of an epoch is [start, next): `start` is STATUS `since` once known,
else the first received seq minus its skip (lowered if an earlier seq turns up);
`next` is one past the highest seq accounted for, by an arrival or by STATUS
`last_seq` (whose trailing `skip` seqs are skipped, the rest before them missing).
Then, exactly,

    lost = (next - start) - received - skipped

and the missing seqs are kept as a sorted list of disjoint half-open intervals
(`holes`). An arrival inside a hole turns that loss back into a reception (a late
reorder is *out_of_order*); an arrival that is neither new nor in a hole is a
*duplicate*; a `skip` that covers a hole turns that loss into a skip. So after a quiet
period, once everything in flight has landed, the numbers are exact whatever the
order of arrival.

Cost: an in-order EVENT or BATCH (seq0 == next, the common case) is a couple of
integer updates, O(1) whatever the batch length. A gap appends one hole (O(1)); a
reordered arrival costs a bisection over the holes, O(log h), plus a list
insert/delete (a memmove, fast for the capped size).

Bounds and what happens beyond them
-----------------------------------
* At most `max_holes` (default 16384) separate holes per epoch. When a new gap, or a
  late arrival that splits a hole in two, takes them past it, the oldest quarter of the
  holes is *forgotten*: those seqs stay counted
  as lost for good, and `floor` moves above them. A copy of a seq below `floor` that
  is not provably accounted can no longer be told from a duplicate: it is counted
  `too_late` and not delivered (at most `max_holes` separate gaps are ever
  recoverable; the span of a single hole is unlimited, so a long outage costs one
  entry).
* At most `MAX_HOLES_TOTAL` (2**20, ~75 MB) holes over all the streams sharing a
  `HoleBudget` (a station's). A stream that adds a hole while the budget is exceeded
  forgets the older half of its own holes, as above: a sender that invents node ids
  and gaps cannot grow the station past the budget, and every count stays exact (only
  late arrivals below a forgotten hole become `too_late`).
* At most `keep_epochs` (default 3, the current one included) epochs per node stay
  open for late datagrams from before a reboot; an older one is *closed*: its totals
  stay in the node's totals, and a datagram for a closed or never-seen older epoch is
  counted `stale` and not delivered.
* A `skip` larger than the seq it comes with is clamped at seq 0.
* `since` (STATUS) is authoritative: below it nothing is expected. A `since` below
  our start (the first events were lost) lowers the start: those seqs become missing.
  A `since` above everything we know (the node dropped our subscription after a lease
  lapse and created a new one) makes the gap skipped, not lost; missing seqs from
  the old subscription stay lost. A late seq from below `since` is received, the
  rest below `since` skipped.
* A base that restarts (same base id, crash without the goodbye ANNOUNCE) while a node
  still holds its old subscription: the station does not pass a STATUS that names
  another ANNOUNCE instance to add_status() (its `since` is the old subscription's),
  and the node starts the subscription afresh once it hears the new instance (a
  `since` above everything known: the gap is skipped). With a node that predates the
  instance field, the old `since` counts what the node sent to the previous process
  as lost; a clean shutdown sends lease 0 and avoids it.

Nothing here does I/O or reads a clock: callers pass the arrival time in.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Any

ALL = True            # add() result: every seq of the range was new
MAX_HOLES = 16384
MAX_HOLES_TOTAL = 1 << 20   # holes of all the streams sharing a HoleBudget (a station's)
KEEP_EPOCHS = 3
RATE_WINDOW = 5       # seconds of history behind NodeAccount.rate()
LAST_TOPICS = 256     # last value kept for at most this many topics per node
RESTART_MARGIN = 5.0  # s: a node's epochs start again only with a boot this much later
FRESH_BOOT_MS = 120_000   # ... told by a STATUS sent this soon after that boot


class HoleBudget:
    """How many holes the streams sharing it hold (`used`) and may hold (`limit`)."""

    __slots__ = ("used", "limit")

    def __init__(self, limit: int = MAX_HOLES_TOTAL):
        self.used = 0
        self.limit = max(4, limit)


class EpochStream:
    """Accounting of one (node, epoch) stream. See the module docstring."""

    __slots__ = ("epoch", "start", "next", "since", "received", "skipped", "duplicates",
                 "out_of_order", "too_late", "forgotten", "floor", "max_holes", "budget",
                 "_lo", "_hi", "time_base", "status", "opened")

    def __init__(self, epoch: int, max_holes: int = MAX_HOLES, budget: HoleBudget | None = None):
        self.epoch = epoch
        self.start: int | None = None   # first expected seq (None until anything is known)
        self.next = 0                    # one past the highest seq accounted for
        self.since: int | None = None    # STATUS `since`, authoritative once known
        self.received = 0
        self.skipped = 0
        self.duplicates = 0
        self.out_of_order = 0
        self.too_late = 0
        self.forgotten = 0               # lost seqs whose holes were dropped (max_holes)
        self.floor = 0                   # holes below this were forgotten
        self.max_holes = max(4, max_holes)
        self.budget = budget             # shared with the station's other streams, or None
        self._lo: list[int] = []         # hole starts, ascending
        self._hi: list[int] = []         # hole ends (exclusive), ascending
        self.time_base: int | None = None  # Unix ms at uptime 0, from STATUS
        self.status: Any = None          # last STATUS message of this epoch
        self.opened: float | None = None  # when its first message came (a monotonic clock, s)

    # -- derived numbers ---------------------------------------------------------------
    @property
    def expected(self) -> int:
        return 0 if self.start is None else self.next - self.start

    @property
    def lost(self) -> int:
        return self.expected - self.received - self.skipped

    @property
    def missing(self) -> int:
        """Seqs currently in holes plus forgotten ones; always equals `lost`."""
        return self.forgotten + sum(h - lo for lo, h in zip(self._lo, self._hi))

    def holes(self) -> list[tuple[int, int]]:
        """The missing seqs as half-open intervals [lo, hi), ascending."""
        return list(zip(self._lo, self._hi))

    # -- updates -----------------------------------------------------------------------
    def add(self, seq0: int, n: int, skip: int = 0):
        """Account n readings with seqs seq0 .. seq0+n-1, the `skip` seqs before seq0
        declared not for us. Returns ALL (True) when every one of them is new, else the
        list of new sub-ranges [(a, b), ...] (possibly empty: all duplicates)."""
        nxt = self.next
        if seq0 == nxt and not skip and self.start is not None:
            # the hot path: the next readings, in order
            self.next = seq0 + n
            self.received += n
            return ALL
        before = len(self._hi)
        got = self._add(seq0, n, skip, nxt)
        if len(self._hi) != before:
            self._holes_changed(before)
        return got

    def _add(self, seq0: int, n: int, skip: int, nxt: int):
        # add() past its in-order hot path
        lo = seq0 - skip
        if lo < 0:
            lo = 0
        below = None
        if self.start is None:
            self.start = self.next = nxt = lo
        elif lo < self.start:
            below = self._extend_down(lo)
        end = seq0 + n
        if seq0 >= nxt:
            # in order, after a gap and/or skipped seqs
            if lo > nxt:
                self._add_hole(nxt, lo)
                self.skipped += seq0 - lo
            else:
                self.skipped += seq0 - nxt
                if lo < nxt and self._hi and self._hi[-1] > lo:
                    self.skipped += _size(self._take(lo, nxt))
            self.next = end
            self.received += n
            if below is not None:
                self.skipped += _size(self._take(lo, below))
            return ALL
        # (partly) behind `next`: fill holes; the rest are duplicates or too late
        if lo < seq0 and self._hi and self._hi[-1] > lo:
            self.skipped += _size(self._take(lo, seq0))
        if end > nxt:
            self._add_hole(nxt, end)
            self.next = end
        floor = self.floor
        late = 0
        if seq0 < floor:
            # below forgotten holes: neither provably new nor provably a copy
            late = (end if end < floor else floor) - seq0
            self.too_late += late
            filled = self._take(floor, end) if end > floor else []
        else:
            filled = self._take(seq0, end)
        new = _size(filled)
        self.received += new
        self.duplicates += n - new - late
        for a, b in filled:
            self.out_of_order += _overlap(a, b, a, nxt)
        if below is not None:
            self.skipped += _size(self._take(lo, below))
        return ALL if new == n else filled

    def add_status(self, last_seq: int | None, skip: int, since: int) -> None:
        """Account a STATUS: `since` fixes the start, `last_seq` and its trailing
        `skip` the end (as if seq last_seq + 1 had arrived with that skip)."""
        self.set_since(since)
        if last_seq is not None:
            self.add(last_seq + 1, 0, skip)

    def set_since(self, since: int) -> None:
        """STATUS `since`: our subscription's first seq. Below it nothing is expected;
        a `since` above everything we know (a re-created subscription) skips the gap."""
        self.since = since
        if self.start is None:
            self.start = self.next = since
        elif since < self.start:
            before = len(self._hi)
            self._extend_down(since)
            if len(self._hi) != before:
                self._holes_changed(before)
        elif since > self.next:
            self.skipped += since - self.next
            self.next = since

    # -- holes -------------------------------------------------------------------------
    def _extend_down(self, lo: int) -> int | None:
        """Lower `start` to lo: [lo, start) becomes missing. Returns the end of the part
        below a known `since` (before our subscription: skipped unless it arrives, so
        the caller converts what is still missing there once the message is
        accounted), else None."""
        old = lo if self.start is None else self.start
        self.start = lo
        if self.forgotten:
            # holes were forgotten above: this region cannot be tracked either
            self.forgotten += old - lo
            return None
        if self._lo and self._lo[0] == old:
            self._lo[0] = lo
        else:
            self._lo.insert(0, lo)
            self._hi.insert(0, old)
        if self.since is not None and lo < self.since:
            return old if old < self.since else self.since
        return None

    def _add_hole(self, a: int, b: int) -> None:
        """Append [a, b) above every existing hole (a >= the old `next`)."""
        hi = self._hi
        if hi and hi[-1] == a:
            hi[-1] = b
            return
        self._lo.append(a)
        hi.append(b)

    def _holes_changed(self, before: int) -> None:
        # The number of holes went from `before` to len(_hi) (a new gap, a late arrival
        # splitting a hole in two, a filled one). Past max_holes: forget the oldest,
        # keeping three quarters of the cap. Past the shared budget (other streams hold
        # it, e.g. a sender inventing ids and gaps): forget the older half of ours (the
        # one hole of a stream with one).
        n = len(self._hi)
        if n > self.max_holes:
            self._forget(n - self.max_holes * 3 // 4)
            n = len(self._hi)
        b = self.budget
        if b is not None:
            b.used += n - before
            if b.used > b.limit and n:
                drop = (n + 1) // 2
                self._forget(drop)
                b.used -= drop

    def release(self) -> None:
        """The stream is closed: its holes no longer count against the budget."""
        if self.budget is not None:
            self.budget.used -= len(self._hi)
            self.budget = None

    def _forget(self, count: int) -> None:
        lost = sum(h - lo for lo, h in zip(self._lo[:count], self._hi[:count]))
        self.forgotten += lost
        self.floor = self._hi[count - 1]
        del self._lo[:count]
        del self._hi[:count]

    def _take(self, a: int, b: int) -> list[tuple[int, int]]:
        """Remove [a, b) from the holes; return the removed pieces, ascending."""
        lo, hi = self._lo, self._hi
        i = bisect_right(hi, a)
        out = []
        while i < len(lo) and lo[i] < b:
            x, y = lo[i], hi[i]
            s = x if x > a else a
            e = y if y < b else b
            out.append((s, e))
            if s > x and e < y:        # strictly inside: split
                hi[i] = s
                lo.insert(i + 1, e)
                hi.insert(i + 1, y)
                break
            if s > x:                  # trim the right part
                hi[i] = s
                i += 1
            elif e < y:                # trim the left part
                lo[i] = e
                break
            else:                      # whole hole
                del lo[i]
                del hi[i]
        return out

    def totals(self) -> dict[str, int]:
        return {"received": self.received, "lost": self.lost, "skipped": self.skipped,
                "duplicates": self.duplicates, "out_of_order": self.out_of_order,
                "too_late": self.too_late}


def _size(ranges) -> int:
    return sum(b - a for a, b in ranges)


def _overlap(a: int, b: int, c: int, d: int) -> int:
    lo = a if a > c else c
    hi = b if b < d else d
    return hi - lo if hi > lo else 0


class Latency:
    """How long a node's readings took to reach us, in ms: our arrival time minus the
    node's timestamp of the newest reading in each accepted EVENT or BATCH (a BATCH's
    older readings also waited on the node, by design). Only for epochs whose STATUS
    gave a time base; the node's clock then follows ours (ANNOUNCE) or NTP, so the
    figure includes that clock's error. Percentiles over the last SIZE messages; the
    count and the maximum over all. BaseStation._reading inlines add()."""

    SIZE = 64             # a power of two: the ring index is n & MASK
    MASK = SIZE - 1

    __slots__ = ("ring", "n", "max", "_cache", "_cache_n")

    def __init__(self) -> None:
        self.ring = [0.0] * self.SIZE
        self.n = 0
        self.max = float("-inf")
        self._cache: dict | None = None
        self._cache_n = -1

    def add(self, ms: float) -> None:
        i = self.n
        self.ring[i & self.MASK] = ms
        self.n = i + 1
        if ms > self.max:
            self.max = ms

    def summary(self) -> dict | None:
        """{"n", "p50", "p95", "max_recent", "max"} in ms (one decimal), or None."""
        if not self.n:
            return None
        if self._cache_n != self.n:
            k = min(self.n, self.SIZE)
            s = sorted(self.ring[:k])
            self._cache = {"n": self.n, "p50": round(s[k // 2], 1),
                           "p95": round(s[min(k - 1, (k * 95) // 100)], 1),
                           "max_recent": round(s[-1], 1), "max": round(self.max, 1)}
            self._cache_n = self.n
        return self._cache


_TOTAL_KEYS = ("received", "lost", "skipped", "duplicates", "out_of_order", "too_late")


class NodeAccount:
    """Everything known about one node: its open epochs, totals of closed ones,
    reboots, rate, last values, last STATUS."""

    def __init__(self, node: int, max_holes: int = MAX_HOLES, keep_epochs: int = KEEP_EPOCHS,
                 budget: HoleBudget | None = None):
        self.node = node
        self.max_holes = max_holes
        self.budget = budget
        self.keep_epochs = max(1, keep_epochs)
        self.epochs: dict[int, EpochStream] = {}   # open epochs, oldest first
        self.current: EpochStream | None = None
        self.closed = dict.fromkeys(_TOTAL_KEYS, 0)
        self.reboots = 0
        self.stale = 0               # datagrams for a closed or never-seen older epoch
        self.dead_letter = 0         # events the node reported as given up (DEADLETTER)
        self.last_seen: float | None = None   # arrival time (Unix s) of the last message
        self.source: Any = None               # where the last message came from
        self.last: dict[str, Any] = {}        # topic -> newest in-order value
        self.status: Any = None               # last STATUS
        self.retired = -1                     # epochs up to this were closed by restart_epochs()
        self.resubscribed: tuple[int, int] | None = None   # (epoch, the node's count) at its last STATUS
        self.latency = Latency()
        self._rate_sec = 0
        self._rate = [0] * RATE_WINDOW
        self._first_mono: float | None = None

    def stream(self, epoch: int, arrival: float | None = None,
               status: bool = False) -> EpochStream | None:
        """The open stream of `epoch`, opening it (a reboot) if it is newer than the
        current one; None for a closed or never-seen older epoch (counted `stale`).
        After restart_epochs(), an unseen epoch up to the retired ones is opened only
        by a STATUS (status=True): a late message of a retired epoch is stale."""
        cur = self.current
        if cur is not None and cur.epoch == epoch:
            return cur
        s = self.epochs.get(epoch)
        if s is not None:
            return s
        if cur is not None and (epoch < cur.epoch or (epoch <= self.retired and not status)):
            self.stale += 1
            return None
        if cur is not None:
            self.reboots += 1
        s = EpochStream(epoch, self.max_holes, self.budget)
        s.opened = arrival
        self.epochs[epoch] = s
        self.current = s
        while len(self.epochs) > self.keep_epochs:
            self._close(min(self.epochs))
        return s

    def _close(self, epoch: int) -> None:
        closed = self.epochs.pop(epoch)
        closed.release()
        for k, v in closed.totals().items():
            self.closed[k] += v

    def epochs_started_again(self, epoch: int, uptime_ms: int, arrival: float) -> bool:
        """A STATUS of `epoch` (not newer than the current one), sent `uptime_ms` after
        its node booted, arriving at `arrival` (s, on the monotonic clock `opened` is on,
        so that a step of the wall clock cannot look like a boot): True when it comes from a boot
        more than RESTART_MARGIN s after the current epoch's first message, i.e. the
        node's epochs started again (its flash erased, or another board with its node
        id). A STATUS of an earlier boot, or of the current one, comes from a boot
        before that first message. Only a young boot counts (uptime below
        FRESH_BOOT_MS): the boot time is estimated as arrival minus uptime, and a
        node's clock drifts (50 ppm: 30 s a week). Erasing and flashing a board, or
        swapping one, takes longer than the margin."""
        cur = self.current
        if (cur is None or cur.opened is None or epoch > cur.epoch
                or uptime_ms >= FRESH_BOOT_MS):
            return False
        return arrival - uptime_ms / 1000.0 > cur.opened + RESTART_MARGIN

    def restart_epochs(self, epoch: int, arrival: float | None) -> EpochStream:
        """Close every open epoch (their totals kept) and open `epoch` as the current
        one: a new boot whose number is not above the old ones. Epochs up to the highest
        closed here are opened again only by a STATUS (see stream())."""
        self.retired = max(self.retired, max(self.epochs))
        for e in sorted(self.epochs):
            self._close(e)
        self.current = None
        self.reboots += 1
        s = self.stream(epoch, arrival, True)
        assert s is not None
        return s

    def count_rate(self, n: int, now: float) -> None:
        """Count n readings arriving at `now` (seconds, any clock that does not jump)."""
        sec = int(now)
        if sec != self._rate_sec:
            gap = sec - self._rate_sec
            if gap >= RATE_WINDOW or gap < 0:
                self._rate = [0] * RATE_WINDOW
            else:
                for i in range(1, gap + 1):
                    self._rate[(self._rate_sec + i) % RATE_WINDOW] = 0
            self._rate_sec = sec
            if self._first_mono is None:
                self._first_mono = now
        self._rate[sec % RATE_WINDOW] += n

    def rate(self, now: float) -> float:
        """Unique readings per second over the last RATE_WINDOW seconds."""
        if self._first_mono is None:
            return 0.0
        mono = now
        sec = int(mono)
        total = 0
        for i in range(RATE_WINDOW):
            s = sec - i
            if self._rate_sec - RATE_WINDOW < s <= self._rate_sec:
                total += self._rate[s % RATE_WINDOW]
        span = min(RATE_WINDOW - 1 + (mono - sec), mono - self._first_mono)
        return total / span if span > 0.5 else float(total)

    def totals(self) -> dict[str, int]:
        out = dict(self.closed)
        for s in self.epochs.values():
            for k, v in s.totals().items():
                out[k] += v
        return out
