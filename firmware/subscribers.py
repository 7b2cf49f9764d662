# The node's soft-state subscriber table.
#
# Theory of operation
# -------------------
# A base station subscribes by broadcasting ANNOUNCE (base id, address, topic
# filters, max_rate, lease); the node never answers. Each ANNOUNCE creates or
# refreshes the entry for that base id (filters, rate cap, address and lease are
# replaced); an entry whose lease lapses is dropped and traffic to it stops. A
# lease of 0 removes the entry at once (a base saying goodbye). Static bases from
# node.json are entries that never expire, take every topic and have no cap.
#
# Loss accounting: every entry remembers `since`, the node's next sequence number
# when the entry was created (0 for static bases and for entries that exist before
# the first event), and `last_sent`, the last sequence number sent to it (since-1
# before any). An event with sequence number s that goes to the entry carries
# skip = s - last_sent - 1: the node's sequence numbers the entry was deliberately
# not sent (filtered out or shed by the rate cap). STATUS carries
# skip = last_seq - last_sent for the trailing ones. So a base knows exactly which
# sequence numbers it should have received, and anything else missing was lost.
#
# A base that restarts (a crash: no goodbye ANNOUNCE) announces with the same base id
# but another `instance` (a number each base process picks at start): the entry is
# then started afresh (since = the next seq, as if created), so the new process is not
# told to expect what the node sent to the old one. STATUS carries the entry's
# instance, so a base can tell a STATUS about its own subscription from one about its
# predecessor's. ANNOUNCEs without an instance (older bases) refresh as before.
#
# Rate cap: a token bucket in integer milli-events (no floats, no bigints):
# max_rate events/s refill, and a burst of max(2, max_rate // 10) events (100 ms
# worth, at least 2 so a source running exactly at the cap is not shed by
# scheduling jitter). The bucket starts full.
#
# Topic matching: a node's sensors (so its topics) are fixed at boot. The table
# knows them (Table(size, topics)) and every entry keeps `want`, one flag per topic
# index, computed when its filters are set (creation, or an ANNOUNCE refreshing
# them), so a publish tests want[i] instead of matching filters.
#
# Size: at most `size` entries (default 8); an ANNOUNCE from a new base when the
# table is full is refused and counted (`refused`). Times are the node's uptime in
# ms (monotonic, never wraps).
from protocol.topics import topic_matches

FOREVER = -1
# Table.announce() results besides the entry: what became of it
REFRESHED = 0
CREATED = 1
RESTARTED = 2      # the same base id, another instance: started afresh


class Subscriber:
    __slots__ = ("base", "addr", "filters", "max_rate", "expires", "since",
                 "last_sent", "tokens", "burst", "refilled", "static", "want", "instance")

    def __init__(self, base, addr, filters, max_rate, expires, since, now, static=False,
                 topics=(), instance=None):
        self.base = base
        self.addr = addr
        self.set_filters(filters, topics)
        self.expires = expires     # uptime ms, or FOREVER
        self.since = since
        self.last_sent = since - 1
        self.static = static
        self.instance = instance   # the base process's ANNOUNCE instance, or None
        self.max_rate = 0
        self.tokens = 0
        self.burst = 0
        self.refilled = now
        self.set_rate(max_rate, now)

    def set_rate(self, max_rate, now):
        if max_rate != self.max_rate or not self.burst:
            self.max_rate = max_rate
            b = max_rate // 10
            self.burst = (b if b > 2 else 2) * 1000
            self.tokens = self.burst   # a new or changed cap starts full
            self.refilled = now

    def set_filters(self, filters, topics):
        # new filters; want[i]: does topics[i] match one of them
        self.filters = filters
        w = bytearray(len(topics))
        for i in range(len(topics)):
            if self.wants(topics[i]):
                w[i] = 1
        self.want = w

    def wants(self, topic):
        for pattern in self.filters:
            if topic_matches(pattern, topic):
                return True
        return False

    def allow(self, now):
        # token bucket; True: send (and take a token), False: shed
        if not self.max_rate:
            return True
        elapsed = now - self.refilled
        if elapsed > 0:
            self.refilled = now
            if elapsed >= self.burst:     # >= burst/1000 s: the bucket is full
                self.tokens = self.burst
            else:
                t = self.tokens + elapsed * self.max_rate
                self.tokens = t if t < self.burst else self.burst
        if self.tokens >= 1000:
            self.tokens -= 1000
            return True
        return False

    def skip_for(self, seq):
        # skip value of an event with this seq sent now (before mark_sent)
        return seq - self.last_sent - 1

    def status_skip(self, last_seq):
        return 0 if last_seq is None else last_seq - self.last_sent

    def __repr__(self):
        return "Subscriber(%r, since=%d, last_sent=%d, rate=%d, expires=%d)" % (
            self.base, self.since, self.last_sent, self.max_rate, self.expires)


class Table:
    def __init__(self, size=8, topics=()):
        self.size = size
        self.topics = list(topics)   # the node's topics by sensor index (Subscriber.want)
        self.entries = []
        self.refused = 0

    def __len__(self):
        return len(self.entries)

    def __iter__(self):
        return iter(self.entries)

    def find(self, base):
        for e in self.entries:
            if e.base == base:
                return e
        return None

    def find_addr(self, addr):
        for e in self.entries:
            if e.addr == addr:
                return e
        return None

    def add_static(self, base, addr, now):
        # a permanent subscription to every topic, no cap, since 0
        if len(self.entries) >= self.size:
            self.refused += 1
            return None
        e = Subscriber(base, addr, ["#"], 0, FOREVER, 0, now, True, self.topics)
        self.entries.append(e)
        return e

    def announce(self, base, addr, filters, max_rate, lease_s, now, next_seq, instance=None):
        # Create or refresh the entry for `base`. Returns (entry, CREATED / RESTARTED /
        # REFRESHED), or (None, REFRESHED) when the table is full or the lease is 0
        # (entry removed).
        e = self.find(base)
        if not lease_s:
            if e is not None and not e.static:
                self.entries.remove(e)
            return None, REFRESHED
        expires = now + lease_s * 1000
        if e is not None:
            what = REFRESHED
            if instance is not None and instance != e.instance:
                if e.instance is not None and not e.static:
                    e.since = next_seq          # as if created now
                    e.last_sent = next_seq - 1
                    e.burst = 0                 # set_rate below: a full bucket
                    what = RESTARTED
                e.instance = instance
            e.addr = addr
            if filters != e.filters:   # a refresh mostly repeats them: no new flags then
                e.set_filters(filters, self.topics)
            e.set_rate(max_rate, now)
            if not e.static:
                e.expires = expires
            return e, what
        if len(self.entries) >= self.size:
            self.refused += 1
            return None, REFRESHED
        e = Subscriber(base, addr, filters, max_rate, expires, next_seq, now, False, self.topics,
                       instance)
        self.entries.append(e)
        return e, CREATED

    def expire(self, now):
        # drop entries whose lease has lapsed; returns how many went
        gone = 0
        i = 0
        entries = self.entries
        while i < len(entries):
            e = entries[i]
            if e.expires != FOREVER and e.expires <= now:
                entries.pop(i)
                gone += 1
            else:
                i += 1
        return gone

    def next_expiry(self):
        # earliest lease end (uptime ms), or None
        best = None
        for e in self.entries:
            if e.expires != FOREVER and (best is None or e.expires < best):
                best = e.expires
        return best
