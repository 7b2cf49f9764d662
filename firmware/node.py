# The Starling node runtime: samples sensors, numbers readings, and sends them as
# EVENT (or BATCH) datagrams to every live subscriber, fire-and-forget.
#
# Theory of operation
# -------------------
# `Node` does no I/O of its own: everything goes through a HAL object (see
# firmware/hal_unix.py for the seam). It is driven from outside by
#     delay = node.step(now)             # now: hal.ticks_ms(); returns ms to sleep
#     node.on_datagram(data, addr, now)  # an ANNOUNCE (or junk) arrived
# and `Node.run()` is the short loop that does this with the HAL's clock and
# sockets; `main()` is what /main.py calls on a board or the simulator on unix.
#
# Boot: the epoch in flash (file "epoch") is read, incremented and written back
# (temporary file + rename) before anything is sent, so (epoch, seq) never repeats.
# Static bases from node.json become permanent subscriptions and get a STATUS.
#
# Time: `uptime` is ms since boot, an int accumulated from ticks_diff so it never
# wraps (ticks wrap after ~12 days on boards). Every reading's t is the uptime when
# it was sampled. time_base (Unix ms at uptime 0) is learned from the first ANNOUNCE
# that carries wall_ms, and replaced when a later one disagrees by more than 1 s;
# every subscriber then gets a STATUS so the base can convert t to wall time.
#
# Sequence numbers: one counter per boot for the whole node (0, 1, 2, ...), taken
# when a reading is sampled. Per-subscriber `skip` accounting is explained in
# firmware/subscribers.py; with it and STATUS (last_seq, skip, since) a base knows
# exactly which readings were meant for it, so anything missing was lost.
#
# Batching (batch_ms > 0): readings wait until the oldest is batch_ms old or
# BATCH_MAX (20) are waiting; then each subscriber gets the ones it wants as BATCHes
# of consecutive seqs, a run broken by its filter or rate cap starting a new BATCH
# with its own skip. STATUS and new subscriptions flush the waiting readings first.
#
# Static bases win: an ANNOUNCE whose target address is a static base's adds no
# second subscription (the static one already gets everything, uncapped); its
# wall_ms still sets the time base. A lease of 0 in an ANNOUNCE unsubscribes.
#
# Sending never blocks: the socket is non-blocking, a refused datagram is counted
# (send_errors; for EVENT/BATCH also `dropped`, per reading) and forgotten.
# Receiving never crashes: any datagram that is not a valid message is counted
# (rx_bad, logged for the first few) and ignored; valid kinds other than ANNOUNCE
# are ignored.
#
# Memory: the hot path (one EVENT to one subscriber) encodes into one preallocated
# buffer with pre-encoded topic and header bytes. Measured on the unix port
# (tests/test_node_memory.py): 32 bytes per publish per subscriber for an int
# reading (the memoryview handed to sendto), ~190 for a float waveform (boxed
# floats); about 79 KB held after boot, imports included (64-bit objects).
import sys

from protocol import cbor
from protocol import codes
from protocol import messages
from firmware import config
from firmware import sensors
from firmware.subscribers import Table

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore
        return x

_HDR_EVENT = const(0x87)     # CBOR array(7): EVENT without skip
_HDR_EVENT_SKIP = const(0x88)
_RX_PER_WAKE = const(16)     # datagrams read per wake-up: a flood cannot starve sampling
_LOG_BAD_FIRST = const(5)    # rx_bad: log the first few, then every 1000th
_EPOCH_FILE = "epoch"
_COUNTERS_FILE = "counters.json"


class Node:
    def __init__(self, cfg, hal):
        self.cfg = cfg
        self.hal = hal
        self.node_id = cfg.node
        self.epoch = 0
        self.next_seq = 0
        self.uptime = 0
        self._ticks = 0
        self.time_base = None
        self.done = False
        self.booted = False
        # counters (STATUS keys in protocol/codes.py)
        self.published = 0
        self.dropped = 0
        self.rate_shed = 0
        self.rx_bad = 0
        self.send_errors = 0
        self.statuses = 0
        self.subs = Table(cfg.max_subscribers)
        self.sensors = sensors.make(cfg.sensors, cfg.node, cfg.float32)
        self._topic_cbor = [cbor.dumps(s.topic) for s in self.sensors]
        self.key = None
        self._sign = None
        if cfg.key:
            # imported only when used: hashlib and the HMAC code cost ~3 KB of RAM
            from protocol.auth import Key, sign
            self.key = Key(cfg.key)
            self._sign = sign
        self.caps = codes.CAP_UDP | (codes.CAP_AUTH if self.key else 0) | (
            codes.CAP_BATCH if cfg.batch_ms else 0)
        # one datagram's worth, reused for every EVENT/BATCH (overflow: CBOREncodeError,
        # the reading is counted dropped)
        self.enc = cbor.Encoder(codes.MAX_DATAGRAM)
        self._prefix = b""
        self.next_status = cfg.status_every_ms
        self.tx = None
        self.rx = None
        # batching: readings waiting to go out (consecutive seqs from _b_seq0)
        self._b_n = 0
        self._b_seq0 = 0
        self._b_t = [0] * config.BATCH_MAX
        self._b_sensor = [0] * config.BATCH_MAX
        self._b_value = [None] * config.BATCH_MAX
        self._b_send = bytearray(config.BATCH_MAX)

    # --- boot ---------------------------------------------------------------------
    def boot(self, now=None):
        # Persist the new epoch, open sockets, subscribe static bases.
        hal = self.hal
        raw = hal.read_file(_EPOCH_FILE)
        prev = 0
        if raw:
            try:
                prev = int(raw)
            except ValueError:
                hal.log("epoch file unreadable (%r): starting from 0" % (raw,))
        self.epoch = prev + 1
        hal.write_file_atomic(_EPOCH_FILE, str(self.epoch).encode())
        self._ticks = hal.ticks_ms() if now is None else now
        # head, node and epoch are the same in every EVENT of this boot
        self._prefix = (cbor.dumps(messages.head(codes.KIND_EVENT)) + cbor.dumps(self.node_id)
                        + cbor.dumps(self.epoch))
        self.tx = hal.udp_open(0, False, True)
        if self.cfg.discovery_port is not None:
            self.rx = hal.udp_open(self.cfg.discovery_port, True, True, self.cfg.discovery_bind)
        if self.cfg.host_clock:
            wall = hal.wall_ms()
            if wall is not None:
                self.time_base = wall - self.uptime
        for host, port in self.cfg.bases:
            sub = self.subs.add_static("static:%s:%d" % (host, port), hal.resolve(host, port), 0)
            if sub is not None:
                self._send_status(sub)
        self.booted = True
        hal.log("node %d epoch %d: %d sensors, %d static bases, discovery %s" % (
            self.node_id, self.epoch, len(self.sensors), len(self.cfg.bases),
            self.cfg.discovery_port))

    # --- clock ----------------------------------------------------------------------
    def _advance(self, now):
        d = self.hal.ticks_diff(now, self._ticks)
        if d > 0:
            self.uptime += d
            self._ticks = now

    # --- driving ----------------------------------------------------------------------
    def step(self, now):
        # Do whatever is due at `now` (HAL ticks); return ms until the next due work.
        self._advance(now)
        up = self.uptime
        if self.done:
            return 1000
        self.subs.expire(up)
        for i in range(len(self.sensors)):
            s = self.sensors[i]
            if s.next_due <= up:
                self._publish(i, s.sample(), up)
                s.next_due += s.period_ms
                if s.next_due <= up:    # fell a whole period behind: skip, keep cadence
                    s.next_due = up + s.period_ms
                if self.cfg.max_events is not None and self.published >= self.cfg.max_events:
                    self.finish()
                    return 1000
        if self._b_n and (self._b_n >= config.BATCH_MAX
                          or up - self._b_t[0] >= self.cfg.batch_ms):
            self._flush_batch()
        if up >= self.next_status:
            self._send_status_all()
            self.next_status += self.cfg.status_every_ms
            if self.next_status <= up:
                self.next_status = up + self.cfg.status_every_ms
        wake = self.next_status
        for s in self.sensors:
            if s.next_due < wake:
                wake = s.next_due
        if self._b_n:
            b = self._b_t[0] + self.cfg.batch_ms
            if b < wake:
                wake = b
        lease = self.subs.next_expiry()
        if lease is not None and lease < wake:
            wake = lease
        return wake - up if wake > up else 0

    def on_datagram(self, data, addr, now=None):
        # Handle one received datagram (an ANNOUNCE; anything else is ignored).
        if now is not None:
            self._advance(now)
        try:
            msg = messages.decode(data)
        except Exception as e:  # ProtocolError, or anything odd a hostile datagram causes
            self._bad(e)
            return
        if isinstance(msg, messages.Announce):
            try:
                self._announce(msg, addr)
            except Exception as e:  # e.g. an unresolvable host
                self._bad(e)

    def _bad(self, e):
        self.rx_bad += 1
        if self.rx_bad <= _LOG_BAD_FIRST or self.rx_bad % 1000 == 0:
            self.hal.log("rx_bad %d: %s" % (self.rx_bad, e))

    def poll_sockets(self):
        # read what is waiting, a bounded number per call
        hal = self.hal
        for sock in (self.rx, self.tx):
            if sock is None:
                continue
            for _ in range(_RX_PER_WAKE):
                got = hal.udp_recv(sock)
                if got is None:
                    break
                self.on_datagram(got[0], got[1], hal.ticks_ms())

    def run(self, duration_ms=None):
        # Drive the node with the HAL's clock and sockets until it is done (max_events),
        # the HAL asks to stop, or duration_ms of uptime passed. Does not call finish().
        hal = self.hal
        if not self.booted:
            self.boot()
        end = None if duration_ms is None else self.uptime + duration_ms
        while not self.done and not getattr(hal, "stop_requested", False):
            delay = self.step(hal.ticks_ms())
            if self.done:
                break
            if end is not None:
                if self.uptime >= end:
                    break
                if end - self.uptime < delay:
                    delay = end - self.uptime
            if hal.wait_readable(delay):
                self.poll_sockets()

    def finish(self):
        # Stop: send waiting readings and a final STATUS to every subscriber.
        if self.done:
            return
        self._flush_batch()
        self._send_status_all()
        self.done = True

    # --- ANNOUNCE ----------------------------------------------------------------------
    def _announce(self, msg, addr):
        up = self.uptime
        time_changed = False
        if msg.wall_ms is not None:
            tb = msg.wall_ms - up
            if self.time_base is None or tb - self.time_base > 1000 or self.time_base - tb > 1000:
                self.time_base = tb
                time_changed = True
        if not msg.port:
            raise messages.ProtocolError("ANNOUNCE port 0")
        if msg.host:
            target = self.hal.resolve(msg.host, msg.port)
        else:
            target = self.hal.addr_with_port(addr, msg.port)
        static = self.subs.find_addr(target)
        created = None
        if static is None or not static.static:
            # a static base at the same address already gets everything: it wins
            self._flush_batch()   # waiting readings predate a new subscription
            sub, new = self.subs.announce(msg.base, target, msg.filters, msg.max_rate,
                                          msg.lease, up, self.next_seq)
            if new:
                created = sub
                self.hal.log("subscriber %s at %s: %r rate %d lease %d s" % (
                    msg.base, self.hal.addr_str(target), msg.filters, msg.max_rate, msg.lease))
        if time_changed:
            self._send_status_all()
        elif created is not None:
            self._send_status(created)

    # --- sending ------------------------------------------------------------------------
    def _send(self, sub, data, readings):
        if self.key is not None:
            data = self._sign(self.node_id, self.key, bytes(data))
        if not self.hal.udp_send(self.tx, sub.addr, data):
            self.send_errors += 1
            self.dropped += readings

    def counters(self):
        return {
            codes.CTR_PUBLISHED: self.published,
            codes.CTR_DROPPED: self.dropped,
            codes.CTR_RATE_SHED: self.rate_shed,
            codes.CTR_RX_BAD: self.rx_bad,
            codes.CTR_SEND_ERRORS: self.send_errors,
            codes.CTR_FREE_MEM: self.hal.free_mem(),
            codes.CTR_QUEUE: self._b_n,
        }

    def status_for(self, sub):
        last = self.next_seq - 1 if self.next_seq else None
        caps = self.caps | (codes.CAP_TIME if self.time_base is not None else 0)
        return messages.Status(self.node_id, self.epoch, last, sub.status_skip(last), sub.since,
                               self.uptime, self.time_base, self.cfg.firmware, caps,
                               self.counters())

    def _send_status(self, sub):
        self.statuses += 1
        self._send(sub, self.status_for(sub).encode(), 0)

    def _send_status_all(self):
        self._flush_batch()   # STATUS must not count waiting readings as missing
        for sub in self.subs.entries:
            self._send_status(sub)

    def _publish(self, i, value, up):
        seq = self.next_seq
        self.next_seq = seq + 1
        self.published += 1
        if self.cfg.batch_ms:
            n = self._b_n
            if n == 0:
                self._b_seq0 = seq
            self._b_t[n] = up
            self._b_sensor[n] = i
            self._b_value[n] = value
            self._b_n = n + 1
            return
        topic = self.sensors[i].topic
        enc = self.enc
        body = 0
        for sub in self.subs.entries:
            if not sub.wants(topic):
                continue
            if not sub.allow(up):
                self.rate_shed += 1
                continue
            if not body:
                try:
                    enc.reset()
                    enc.array(7)
                    enc.raw(self._prefix)
                    enc.uint(seq)
                    enc.uint(up)
                    enc.raw(self._topic_cbor[i])
                    self._value(value)
                except cbor.CBOREncodeError as e:
                    self.dropped += 1
                    self.hal.log("seq %d not encodable: %s" % (seq, e))
                    return
                body = enc.length
            skip = seq - sub.last_sent - 1
            enc.length = body
            if skip:
                enc.buffer[0] = _HDR_EVENT_SKIP
                enc.uint(skip)
            else:
                enc.buffer[0] = _HDR_EVENT
            sub.last_sent = seq
            self._send(sub, enc.view(), 1)

    def _value(self, value):
        t = type(value)
        if t is int:
            self.enc.int(value)
        elif t is float:
            self.enc.float(value)
        else:
            self.enc.encode(value)

    # --- batching -------------------------------------------------------------------------
    def _flush_batch(self):
        n = self._b_n
        if not n:
            return
        flags = self._b_send
        seq0 = self._b_seq0
        for sub in self.subs.entries:
            for j in range(n):
                flags[j] = 0
                seq = seq0 + j
                if seq < sub.since:
                    continue
                topic = self.sensors[self._b_sensor[j]].topic
                if not sub.wants(topic):
                    continue
                if not sub.allow(self._b_t[j]):
                    self.rate_shed += 1
                    continue
                flags[j] = 1
            j = 0
            while j < n:
                if not flags[j]:
                    j += 1
                    continue
                k = j
                while k < n and flags[k]:
                    k += 1
                self._send_run(sub, j, k)
                j = k
        self._b_n = 0
        for j in range(n):
            self._b_value[j] = None

    def _send_run(self, sub, j, k):
        # readings j..k-1 (consecutive seqs) to one subscriber: one BATCH
        seq0 = self._b_seq0 + j
        skip = seq0 - sub.last_sent - 1
        enc = self.enc
        try:
            enc.reset()
            enc.array(7 if skip else 6)
            enc.uint(messages.head(codes.KIND_BATCH))
            enc.uint(self.node_id)
            enc.uint(self.epoch)
            enc.uint(seq0)
            t0 = self._b_t[j]
            enc.uint(t0)
            enc.array(3 * (k - j))
            prev = t0
            for r in range(j, k):
                enc.uint(self._b_t[r] - prev)
                prev = self._b_t[r]
                enc.raw(self._topic_cbor[self._b_sensor[r]])
                self._value(self._b_value[r])
            if skip:
                enc.uint(skip)
        except cbor.CBOREncodeError:
            if k - j > 1:   # too big for one datagram: halves
                m = (j + k) // 2
                self._send_run(sub, j, m)
                self._send_run(sub, m, k)
            else:
                self.dropped += 1
                sub.last_sent = seq0
            return
        sub.last_sent = seq0 + (k - j) - 1
        self._send(sub, enc.view(), k - j)

    # --- reports ----------------------------------------------------------------------------
    def report(self):
        # Final numbers as a JSON-friendly dict (the simulator collects these).
        return {"node": self.node_id, "epoch": self.epoch, "published": self.published,
                "last_seq": self.next_seq - 1 if self.next_seq else None,
                "dropped": self.dropped, "rate_shed": self.rate_shed, "rx_bad": self.rx_bad,
                "send_errors": self.send_errors, "statuses": self.statuses,
                "uptime": self.uptime, "subscribers": len(self.subs),
                # base id -> since: the seqs published before that base subscribed
                "since": dict((e.base, e.since) for e in self.subs.entries)}


def make_hal(flash_dir=None, stdin_control=False):
    # the HAL of this platform: unix port or CPython here; boards get theirs later
    plat = sys.platform
    if plat in ("linux", "darwin") or flash_dir is not None:
        from firmware import hal_unix
        return hal_unix.UnixHal("." if flash_dir is None else flash_dir, stdin_control=stdin_control)
    raise RuntimeError("no HAL for platform %r yet" % plat)


def _sigterm_interrupts():
    # CPython: SIGTERM stops the node like Ctrl-C (final STATUS, counters written).
    # The MicroPython unix port has no signal module: SIGTERM ends it at once, so the
    # simulator stops nodes through stdin (stdin_control) or SIGINT instead.
    try:
        import signal  # type: ignore
    except ImportError:
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        pass


def main(flash_dir=None, hal=None, stdin_control=False):
    # Boot from node.json in flash and run until stopped (Ctrl-C / SIGINT, SIGTERM on
    # CPython, "stop" or end of stdin when stdin_control, or max_events). On the way
    # out: final STATUS to every subscriber, counters written to flash as
    # counters.json and printed as one JSON line starting with {"report": ...}.
    # Returns 0, or 1 when node.json is unusable.
    import json
    _sigterm_interrupts()
    if hal is None:
        hal = make_hal(flash_dir, stdin_control)
    try:
        cfg = config.load(hal)
    except config.ConfigError as e:
        hal.log(str(e))
        return 1
    if cfg.transport == "serial":   # a serial-chain node (firmware/chain.py)
        from firmware import chain
        return chain.main(hal=hal, cfg=cfg)
    node = Node(cfg, hal)
    try:
        try:
            node.boot()
            node.run()
        except KeyboardInterrupt:
            pass
        try:
            node.finish()
        except KeyboardInterrupt:
            node.finish()
    finally:
        rep = node.report()
        text = json.dumps({"report": rep})
        try:
            hal.write_file_atomic(_COUNTERS_FILE, text.encode())
        except OSError as e:
            hal.log("cannot write %s: %s" % (_COUNTERS_FILE, e))
        print(text)
        close = getattr(hal, "close", None)
        if close is not None:
            close()
    return 0
