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
# sockets; `main()` runs it once firmware.core.main() (what /main.py calls on a board
# or the simulator on unix) has booted from node.json. What the serial-chain node
# shares (NodeCore, the epoch file, the HAL, node.json) is in firmware/core.py.
#
# Boot: the epoch in flash (file "epoch") is read, incremented and written back
# (temporary file + rename) before anything is sent, so (epoch, seq) never repeats.
# A write that fails (a full flash) does not stop the node: it runs on the new epoch,
# tries the write again at each STATUS and reports epoch_saved; until a write lands,
# a reboot would number its events with this epoch again (logged).
# Static bases from node.json become permanent subscriptions and get a STATUS.
# A wake from deep sleep (board HALs: hal.resume() returns the saved record) is not
# a new boot: epoch, next seq, uptime, time base and sensor schedule continue and
# the epoch file is left alone (static bases: last_sent = next_seq - 1, no skip).
#
# Platforms: core.make_hal() picks the HAL by sys.platform (esp32, rp2, else unix).
# core.main() registers the board's sensor kinds before node.json is checked, calls
# hal.begin(cfg) (watchdog, Wi-Fi, NTP), and run() calls hal.feed() every loop.
#
# Time: `uptime` is ms since boot, an int accumulated from ticks_diff so it never
# wraps (ticks wrap after ~12 days on boards). Every reading's t is the uptime when
# it was sampled. time_base (Unix ms at uptime 0) is learned from the first ANNOUNCE
# that carries wall_ms, and replaced when a later one disagrees by more than 1 s;
# every subscriber then gets a STATUS so the base can convert t to wall time. A
# board whose clock NTP has set (hal.time_synced()) gives the time base itself, and
# from then on ANNOUNCEs no longer move it.
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
# Receiving never crashes: any datagram that is not a Starling message of this
# version, or an ANNOUNCE with a bad field, is counted (rx_bad, logged for the first
# few) and ignored; other kinds are ignored without further checks.
#
# Memory: the node imports protocol.nodewire (EventWriter, BatchWriter, StatusWriter,
# write_value) and protocol.cbor_lite (the ANNOUNCE reader), neither protocol.messages
# nor protocol.cbor (a signing node imports protocol.auth, and with it protocol.cbor,
# when it boots); core.load_config() drops firmware.config and protocol.codes after
# node.json is checked. The hot path (one EVENT to subscribers)
# writes the event once with nodewire.EventWriter (pre-encoded head, node, epoch and
# topic), then only its skip per subscriber; each subscriber's topic match is a flag
# per sensor (Subscriber.want) computed when its filters are set; the memoryview
# handed to sendto is cached per length. STATUS uses nodewire.StatusWriter and a
# counter list filled in place. Measured on the unix port (tests/test_node_memory.py,
# tests/dual/test_node_wire.py, bench/node.py): 0 bytes per publish for int, bool
# and float readings (a float waveform's own boxed floats, ~160 bytes, are the
# sensor's), 0 per STATUS.
from protocol import nodewire
from protocol import cbor_lite
from firmware import core
from firmware.core import NodeCore, new_epoch, save_epoch, write_counters
from firmware.subscribers import RESTARTED, Table

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore
        return x

_RX_PER_WAKE = const(16)     # datagrams read per wake-up: a flood cannot starve sampling
_LOG_BAD_FIRST = const(5)    # rx_bad: log the first few, then every 1000th
_BATCH_MAX = const(20)       # readings waiting at most (firmware.config.BATCH_MAX)
# protocol/codes.py's values, private here so the node does not keep that module in
# RAM (tests/dual/test_node_wire.py checks they agree)
_MAX_DATAGRAM = const(1400)  # codes.MAX_DATAGRAM
_CAP_UDP = const(1)
_CAP_AUTH = const(8)
_CAP_TIME = const(16)
_CAP_BATCH = const(32)
_MAX_BODY = const(1391)      # MAX_DATAGRAM - 9: an EVENT body leaves room for any skip
# STATUS counter keys in CBOR map order (ascending); _counters() fills them so
# (codes.CTR_PUBLISHED, CTR_DROPPED, CTR_QUEUE, CTR_FREE_MEM, CTR_RATE_SHED, CTR_RX_BAD,
# CTR_SEND_ERRORS, CTR_RESUBSCRIBED)
_STATUS_KEYS = (1, 2, 4, 5, 6, 7, 8, 17)


class Node(NodeCore):
    def __init__(self, cfg, hal):
        NodeCore.__init__(self, cfg, hal)
        self.resumed = False      # this boot continued an epoch after deep sleep
        # counters (STATUS keys in protocol/codes.py)
        self.published = 0
        self.dropped = 0
        self.rate_shed = 0
        self.resubscribed = 0   # entries started afresh (their base id, another instance)
        self.rx_bad = 0
        self.send_errors = 0
        self.statuses = 0
        self._topic_cbor = [nodewire.text(s.topic) for s in self.sensors]
        # the topics are fixed: each subscriber keeps a flag per sensor (want[i])
        self.subs = Table(cfg.max_subscribers, [s.topic for s in self.sensors])
        self.key = None
        self._sign = None
        if cfg.key:
            # imported only when used: hashlib and the HMAC code cost ~3 KB of RAM
            from protocol.auth import Key, sign
            self.key = Key(cfg.key)
            self._sign = sign
        self.caps = _CAP_UDP | (_CAP_AUTH if self.key else 0) | (
            _CAP_BATCH if cfg.batch_ms else 0)
        # EVENTs: nodewire.EventWriter, made at boot (it holds node and epoch). BATCHes:
        # nodewire.BatchWriter, made at boot when batching (a BATCH over one datagram
        # raises EncodeError: the run is split, a single reading counted dropped).
        # STATUS: nodewire.StatusWriter with the counters in _ctr (keys in sorted
        # order: _STATUS_KEYS)
        self.writer = None
        self.bwriter = None
        self.status_writer = nodewire.StatusWriter(cfg.node, cfg.firmware, _STATUS_KEYS)
        self._ctr = [0] * len(_STATUS_KEYS)
        self.next_status = cfg.status_every_ms
        self.tx = None
        self.rx = None
        # batching: readings waiting to go out (consecutive seqs from _b_seq0)
        self._b_n = 0
        self._b_seq0 = 0
        self._b_t = [0] * _BATCH_MAX
        self._b_sensor = [0] * _BATCH_MAX
        self._b_value = [None] * _BATCH_MAX
        self._b_send = bytearray(_BATCH_MAX)

    # --- boot ---------------------------------------------------------------------
    def boot(self, now=None, resume=None):
        # Persist the new epoch, open sockets, subscribe static bases. A deep-sleep
        # wake (resume: a hal_board.Resume, by default asked from hal.resume())
        # continues the saved epoch, seq, uptime, time base and sensor schedule
        # instead: the epoch file is not touched.
        hal = self.hal
        if resume is None:
            res = getattr(hal, "resume", None)
            if res is not None:
                resume = res()
        if resume is not None and not resume.apply(self):
            hal.log("resume record does not match node.json (sensors changed): new epoch")
            resume = None
        self.resumed = resume is not None
        if resume is None:
            self.epoch = new_epoch(hal)
            self.epoch_saved = save_epoch(hal, self.epoch, True)
        else:
            # uptime: the record holds uptime + the sleep; a clock that ran through the
            # sleep (ESP32 RTC after NTP) also counts the wake's boot and Wi-Fi join
            wall = hal.wall_ms()
            if wall is not None and self.time_base is not None and wall - self.time_base > self.uptime:
                self.uptime = wall - self.time_base
            # the STATUS cadence goes on from the wake (the record does not keep it)
            self.next_status = self.uptime + self.cfg.status_every_ms
        self._ticks = hal.ticks_ms() if now is None else now
        # head, node and epoch are the same in every EVENT of this boot
        self.writer = nodewire.EventWriter(self.node_id, self.epoch, _MAX_DATAGRAM + 16, 0)
        if self.cfg.batch_ms:
            self.bwriter = nodewire.BatchWriter(self.node_id, self.epoch, _MAX_DATAGRAM)
        self.tx = hal.udp_open(0, False, True)
        if self.cfg.discovery_port is not None:
            self.rx = hal.udp_open(self.cfg.discovery_port, True, True, self.cfg.discovery_bind)
        self._host_clock()
        synced = getattr(hal, "time_synced", None)
        if synced is not None:
            synced()   # a sync during hal.begin(): wall_ms() below has it
            self._clock_time(False)
        for host, port in self.cfg.bases:
            sub = self.subs.add_static("static:%s:%d" % (host, port), hal.resolve(host, port), 0)
            if sub is not None:
                # after a wake the base has everything before next_seq: no skip claimed
                sub.last_sent = self.next_seq - 1
                self._send_status(sub)
        self.booted = True
        hal.log("node %d epoch %d%s: %d sensors, %d static bases, discovery %s" % (
            self.node_id, self.epoch, " (resumed at seq %d)" % self.next_seq if self.resumed else "",
            len(self.sensors), len(self.cfg.bases), self.cfg.discovery_port))

    def _time_changed(self):
        self._send_status_all()

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
        if self._b_n and (self._b_n >= _BATCH_MAX
                          or up - self._b_t[0] >= self.cfg.batch_ms):
            self._flush_batch()
        if up >= self.next_status:
            if not self.epoch_saved:
                self.epoch_saved = save_epoch(self.hal, self.epoch, False)
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
            msg = cbor_lite.parse_announce(data)
        except Exception as e:  # ProtocolError, or anything odd a hostile datagram causes
            self._bad(e)
            return
        if msg is not None:
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
        feed = getattr(hal, "feed", None)
        synced = getattr(hal, "time_synced", None)
        while not self.done and not getattr(hal, "stop_requested", False):
            if feed is not None:
                feed()        # board: watchdog, Wi-Fi state, a due NTP sync
                if synced is not None and synced():
                    self._clock_time()
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
        # msg: nodewire.announce_fields() (base, host, port, filters, max_rate, lease,
        # wall_ms, instance)
        base, host, port, filters, max_rate, lease, wall_ms, instance = msg
        up = self.uptime
        time_changed = self._take_time_base(wall_ms, True)
        if not port:
            raise nodewire.ProtocolError("ANNOUNCE port 0")
        if host:
            target = self.hal.resolve(host, port)
        else:
            target = self.hal.addr_with_port(addr, port)
        static = self.subs.find_addr(target)
        created = None
        if static is None or not static.static:
            # a static base at the same address already gets everything: it wins
            self._flush_batch()   # waiting readings predate a new subscription
            sub, new = self.subs.announce(base, target, filters, max_rate, lease, up,
                                          self.next_seq, instance)
            if new:
                created = sub
                if new == RESTARTED:
                    self.resubscribed += 1
                self.hal.log("subscriber %s at %s: %r rate %d lease %d s%s" % (
                    base, self.hal.addr_str(target), filters, max_rate, lease,
                    " (the base restarted)" if new == RESTARTED else ""))
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

    def _counters(self):
        # fill _ctr in place, in the order of _STATUS_KEYS
        c = self._ctr
        c[0] = self.published
        c[1] = self.dropped
        c[2] = self._b_n
        c[3] = self.hal.free_mem()
        c[4] = self.rate_shed
        c[5] = self.rx_bad
        c[6] = self.send_errors
        c[7] = self.resubscribed
        return c

    def _send_status(self, sub):
        # written by the StatusWriter: the same bytes as messages.Status(...).encode()
        self.statuses += 1
        last = self.next_seq - 1 if self.next_seq else None
        caps = self.caps | (_CAP_TIME if self.time_base is not None else 0)
        w = self.status_writer
        w.status(self.epoch, last, sub.status_skip(last), sub.since, self.uptime,
                 self.time_base, caps, self._counters(), None, sub.instance)
        self._send(sub, w.view(), 0)

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
            if n + 1 >= _BATCH_MAX:   # full: more sensors may be due in this step
                self._flush_batch()
            return
        w = self.writer
        body = 0
        for sub in self.subs.entries:
            if not sub.want[i]:
                continue
            if not sub.allow(up):
                self.rate_shed += 1
                continue
            if not body:
                try:
                    body = w.body(seq, up, self._topic_cbor[i], value)
                    if body > _MAX_BODY:
                        raise nodewire.EncodeError("%d bytes: too big for a datagram" % body)
                except Exception as e:   # EncodeError; ValueError/IndexError: too big
                    self.dropped += 1
                    self.hal.log("seq %d not encodable: %s" % (seq, e))
                    return
            w.set_skip(seq - sub.last_sent - 1)
            sub.last_sent = seq
            self._send(sub, w.view(), 1)

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
                if not sub.want[self._b_sensor[j]]:
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
        w = self.bwriter
        try:
            w.begin(seq0, self._b_t[j], k - j, seq0 - sub.last_sent - 1)
            for r in range(j, k):
                w.add(self._b_t[r], self._topic_cbor[self._b_sensor[r]], self._b_value[r])
            w.end()
        except ValueError:   # EncodeError (too big, or a value it cannot carry)
            if k - j > 1:   # too big for one datagram: halves
                m = (j + k) // 2
                self._send_run(sub, j, m)
                self._send_run(sub, m, k)
            else:
                self.dropped += 1
                sub.last_sent = seq0
            return
        sub.last_sent = seq0 + (k - j) - 1
        self._send(sub, w.view(), k - j)    # one memoryview per BATCH length, cached

    # --- reports ----------------------------------------------------------------------------
    def report(self):
        # Final numbers as a JSON-friendly dict (the simulator collects these).
        return {"node": self.node_id, "epoch": self.epoch, "epoch_saved": self.epoch_saved,
                "published": self.published,
                "last_seq": self.next_seq - 1 if self.next_seq else None,
                "dropped": self.dropped, "rate_shed": self.rate_shed, "rx_bad": self.rx_bad,
                "send_errors": self.send_errors, "statuses": self.statuses,
                "resubscribed": self.resubscribed,
                "uptime": self.uptime, "subscribers": len(self.subs),
                # base id -> since: the seqs published before that base subscribed
                "since": dict((e.base, e.since) for e in self.subs.entries)}


def main(flash_dir=None, hal=None, stdin_control=False, cfg=None):
    # Run the UDP node on `hal` with the checked node.json `cfg` (firmware.core.main()
    # calls this after booting) until stopped; see core.main() for the way out. Without
    # cfg: core.main() boots from node.json in flash (a "serial" transport runs the
    # chain node instead). Returns 0, or 1 when node.json is unusable.
    if cfg is None:
        return core.main(flash_dir, hal, stdin_control)
    import json
    node = Node(cfg, hal)
    sleep = getattr(hal, "deep_sleep", None) if cfg.sleep_ms else None
    if cfg.sleep_ms and sleep is None:
        hal.log("deep_sleep: this HAL cannot sleep; running on")
    try:
        try:
            node.boot()
            core.boot_done()
            if sleep is None:
                node.run()
            else:
                # duty cycle: awake_ms of work, then deep sleep; a board does not come
                # back from sleep() but boots again and resumes (Node.boot)
                while not node.done:
                    node.run(cfg.awake_ms)
                    if node.done or getattr(hal, "stop_requested", False):
                        break
                    node._flush_batch()   # waiting readings would not survive the sleep
                    sleep(cfg.sleep_ms, node)
                    hal.log("deep sleep returned: stopping")   # a HAL without the power-down
                    break
        except KeyboardInterrupt:
            pass
        try:
            node.finish()
        except KeyboardInterrupt:
            node.finish()
    finally:
        rep = node.report()
        text = json.dumps({"report": rep})
        write_counters(hal, text)
        print(text)
        close = getattr(hal, "close", None)
        if close is not None:
            close()
    return 0
