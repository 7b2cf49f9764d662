# The Starling serial-chain node: base <-> node 1 <-> node 2 <-> ... <-> node K over UARTs.
#
# Theory of operation
# -------------------
# A chain node has an upstream UART (towards the base) and optionally a downstream one.
# Each UART carries frames (protocol/framing.py) of one reliable link (protocol/link.py,
# one Link per UART side). Upstream go the node's own EVENTs and STATUS and everything the
# lower nodes send (forwarded); downstream go the base's control messages (ANNOUNCE,
# ENUMERATE, anything else that arrives from upstream).
#
# `ChainNode` does no I/O of its own beyond the HAL and two UART objects with the small
# interface of firmware/uart_unix.py (read_into / any / write). It is driven like
# firmware/node.py's Node:
#     delay = node.step(now)        # now: hal.ticks_ms(); returns ms until due work
# step() reads whatever the UARTs hold, samples due sensors, and services the links:
#   1. up link: acknowledged tickets complete outbox entries, dead tickets become dead
#      letters, received messages are handled (ANNOUNCE: time base; ENUMERATE: a STATUS
#      with our hop) and forwarded down (only while the down link is up: control is soft
#      state, the base repeats it; a stale ANNOUNCE would teach a stale clock).
#   2. down link: its received messages (lower nodes' events, batches, status, dead
#      letters) enter the bounded forward queue. Responsibility moves here as soon as they
#      are in it: the down link's next ACK ends the lower node's. Durable mode appends them
#      to the flash log and holds the down link's transmissions back (at most
#      log.ack_delay_ms, 20 ms) until the log is flushed, so nothing is acknowledged
#      before it is on flash. Cost: while lower nodes' traffic flows, up to
#      1000 / ack_delay_ms flash appends a second (each of everything that arrived
#      meanwhile); a longer delay saves flash and lowers the hop's throughput
#      (window frames per round trip).
#   3. fill the up link: our STATUS first (one slot: a newer STATUS replaces a waiting
#      one), a DEADLETTER when the link is up and there are dead letters, then the own
#      outbox and the forward queue by deficit round-robin on bytes (quantum 64 bytes):
#      when both are backlogged each gets half of the up link's bytes, so a chatty lower
#      node cannot starve this node's events, nor the reverse. The up link's own queue is
#      kept short (2 x max_payload bytes) so that this order, not the link's FIFO, decides.
#      With link.frame_bytes (a lossy line) the link gets about frame_bytes at a time,
#      each batch becoming one frame: short frames survive bit errors and dropped bytes
#      far more often (a 56-byte frame crosses a line losing 1 % of its bytes 55 % of the
#      time, a 272-byte one 6 %), while max_payload still lets a STATUS through.
#   4. transmit both links' frames.
# Back-pressure: when the forward queue is full, the down link's poll_received() is not
# called; the link then advertises less credit (window - undelivered frames) and the lower
# node stops sending. Frames already delivered but not taken are covered by the next ACK
# (link.py), which is fine in RAM-only mode; in durable mode the down link's transmissions
# are held back while such frames exist, so the lower node keeps them (it retransmits
# without burning its retry budget, since it does not hear from us; after dead_after_ms
# its link counts as down until we drain).
#
# Planned stop (finish()): a last STATUS, then up to stop_drain_ms of sending what waits
# (no sampling; the down link sends nothing more, so what the lower node sends now stays
# its own responsibility), then the log is synced. A MemoryError inside step() is
# counted (mem_errors) and survived: the step is simply redone, and what the step had
# taken from a link (control messages from above, messages from below) is kept until
# it is handled, since the link has already acknowledged it.
#
# Hop: the base is hop 0. Our hop is the up peer's HELLO hop + 1, learned from the first
# HELLO of the up link; the down link is created only then, so the lower node learns a
# correct hop from our first HELLO (a later change restarts the down link). Before that
# our HELLOs upstream carry hop 255 (unknown) and bytes from below are discarded.
#
# Events: the same numbering as the UDP node (firmware/node.py): the epoch in flash grows
# at every boot; seq 0, 1, 2, ... per boot, taken when publish() accepts a reading; t is the
# uptime in ms at sampling. On the chain there is one receiver, so skip is always 0 and
# since 0, until a restarted base process announces another instance (_take_instance).
# publish() refused (outbox full, "block" or "drop_newest") consumes no seq.
# Durable mode: an event is written to the log after it is accepted; it is durable once
# the log was flushed (publish(..., wait=True) flushes; see firmware/outbox.py for what a
# power loss can lose). At boot the log is replayed: unacknowledged events are offered
# again with their original epoch and seq, before any event of the new epoch.
#
# Memory bounds (the unix port measures them, tests/test_chain_sim.py): outbox and forward
# queues (firmware/outbox.py: max entries, max bytes; forwarded messages stay in RAM until
# acknowledged) + one poll of the down link (<= window frames of <= max_payload bytes) +
# per link: queue 2 x max_payload bytes, window frames in flight, window frames received
# + per UART: a FrameDecoder (2 x 1033 bytes) + one TX frame buffer and one 256-byte RX
# chunk + the log buffer (2 KB, durable) + dead letters (64 ids).
import sys

from protocol import codes
from protocol.cbor_lite import parse_control, event_ids
from protocol.nodewire import EventWriter, StatusWriter
from protocol.framing import FrameDecoder, encode_frame_into, max_encoded_len
from protocol.link import Link, LinkError, DATA_OVERHEAD
# firmware.core, not firmware.node: the UDP node's code and subscriber table stay out
from firmware import core
from firmware.core import NodeCore, new_epoch, save_epoch, write_counters
from firmware.outbox import (Queue, Log, DeadLetters, pdiff, read_report, Q_OWN, Q_FWD,
                             Q_STATUS, Q_DEAD, KIND_OWN, KIND_FWD)

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore
        return x

_MP = sys.implementation.name == "micropython"
_LOG_PREFIX = "ob"
_DEAD_FILE = "deadletter"
_RX_CHUNK = const(256)       # bytes per UART read
_RX_CHUNKS = const(8)        # reads per UART per step: one busy line cannot starve the other
_QUANTUM = const(64)         # deficit round-robin: bytes added per turn
_HOP_UNKNOWN = const(255)
_MEM_EVERY = const(60000)    # ms between heap samples (gc.collect() + gc.mem_alloc()), unless
                             # the HAL asks for more (mem_every_ms: the simulator's 1 s)
_SLACK = const(32)           # ring slots beyond max for a replay (the cursor's batch)
_LOG_BAD_FIRST = const(5)
_MIN_EVENT = const(8)        # bytes: no EVENT is shorter (array, 5 small ints, topic, value)


def link_kwargs(window=8, max_payload=256, baud=115200, rto_ms=1000, keepalive_ms=1000,
                dead_after_ms=3000, max_retries=16, frame_bytes=None):
    # Link parameters of a chain node's UART side (and of a base station's head, which
    # should use the same window, max_payload and baud):
    #     Link(node=..., hop=..., **link_kwargs(window, max_payload, baud))
    # The retransmission timer never undercuts the time the UART needs to send a whole
    # window of frames (+ 50 ms): frames written at once wait in the UART's transmit
    # buffer, and a shorter timeout retransmits frames still queued there (measured in
    # tests/dual/test_chain_fairness.py at 9600 Bd: without this bound 29 of 33 frames
    # were sent twice). 115200 Bd, window 8, 256-byte frames: 244 ms. Its backoff stops at
    # 4 x that (at least 500 ms): the line is ours alone, there is no congestion to back
    # off from, and a lossy line otherwise stalls on its oldest frame for seconds (when
    # every later frame of a full window is SACKed, only this timer retransmits it).
    # frame_bytes < max_payload (a lossy line): frames carry about frame_bytes, sent at
    # once (no coalescing); max_payload still bounds one message (a STATUS must fit).
    # Otherwise the link's own queue is kept at 2 x max_payload bytes so that the node's
    # fair scheduler, not the link's FIFO, decides what goes next.
    # Probes (probe_ms = one full frame's line time + 5 ms): when the window is stalled
    # with no loss known (a frame or its ACK lost, nothing new to send), the oldest frame
    # is sent again after 2 x SRTT + probe_ms (sent once: tail-loss probe), SRTT +
    # probe_ms (retransmitted) or min RTT + probe_ms (after a probe) instead of after
    # the timeout above (>= 100 ms; 244 ms at 115200 Bd): protocol/link.py.
    fb = frame_bytes if frame_bytes and frame_bytes < max_payload else max_payload
    frame_ms = (fb + 24) * 10000 // baud
    drain = window * (fb + 24) * 10000 // baud
    rto_min = max(100, drain + 50)
    rto_max = max(500, 4 * rto_min)
    return {"window": window, "max_payload": max_payload,
            "rto_ms": min(max(rto_ms, rto_min), rto_max),
            "rto_min_ms": rto_min, "rto_max_ms": rto_max,
            "keepalive_ms": keepalive_ms, "dead_after_ms": dead_after_ms,
            "max_queue": max(8, max_payload // 8), "max_queue_bytes": 2 * max_payload,
            "max_retries": max_retries, "coalesce": fb == max_payload,
            "probe_ms": frame_ms + 5}


class ChainNode(NodeCore):
    def __init__(self, cfg, hal, up=None, down=None, rng=None):
        # up/down: UART objects (read_into/any/write); None: opened through the HAL from
        # node.json's uart.up / uart.down at boot. rng: session ids for the links (tests).
        NodeCore.__init__(self, cfg, hal)
        self.hop = None
        self.paused = False
        self.draining = False       # inside _wait(): no sampling
        self.stopping = False       # inside finish(): the down link acknowledges nothing new
        self.up_uart = up
        self.down_uart = down
        self._rng = rng
        self.up_link = None
        self.down_link = None
        lk = cfg.link
        self.max_payload = lk["max_payload"]
        fb = lk["frame_bytes"]
        self.frame_bytes = fb if fb and fb < self.max_payload else 0   # 0: full frames
        self.caps = codes.CAP_SERIAL | (codes.CAP_DURABLE if cfg.durable else 0)
        # forwarded messages need no ids; log positions only with a durable outbox
        self.own = Queue(Q_OWN, cfg.outbox_max, cfg.outbox_max_bytes, cfg.outbox_policy, _SLACK,
                         False, True, cfg.durable)
        self.fwd = Queue(Q_FWD, cfg.forward_max, cfg.forward_max_bytes, "block", _SLACK, True,
                         False, cfg.durable)
        self._queues = (self.own, self.fwd)   # _fill()'s round robin, built once
        self.log = None
        if cfg.durable:
            lg = cfg.log
            self.log = Log(hal, _LOG_PREFIX, lg["segment_bytes"], lg["flush_records"],
                           lg["flush_ms"], lg["cursor_acks"], lg["cursor_ms"])
        self.dead = DeadLetters(hal, _DEAD_FILE if cfg.durable else None)
        # messages taken from the down link, waiting for room in the forward queue
        # (at most one poll: window frames)
        self._fin_msg = []
        self._fin_pos = []
        self._fin_logged = 0         # of _fin_msg, how many were checked (and logged)
        # control messages taken from the up link (ANNOUNCE, ENUMERATE...) and how many
        # of them are handled: a MemoryError mid-burst leaves the rest for the next step
        self._ctrl = None
        self._ctrl_done = 0
        self._fwd_unflushed = 0      # forwarded records in the log buffer (durable)
        self._fwd_since = 0
        self._ack_delay = cfg.log["ack_delay_ms"]
        self._status = None          # encoded STATUS waiting for the up link
        self._status_writer = None
        # the base process's ANNOUNCE instance, and STATUS `since`: 0, or after the base
        # restarted (another instance), our oldest event it may still receive
        self.base_instance = None
        self.since = 0
        self._deficit = [0, 0]
        self._rr = 0
        self._turn = False
        self._acks = 0
        # buffers: one RX chunk shared by both UARTs, one TX frame
        self._rxbuf = bytearray(_RX_CHUNK)
        self._rxmv = memoryview(self._rxbuf)
        self._txbuf = bytearray(max_encoded_len(self.max_payload + DATA_OVERHEAD))
        self._txmv = memoryview(self._txbuf)
        self.up_dec = FrameDecoder()
        self.down_dec = FrameDecoder()
        self.writer = None
        self.next_status = cfg.status_every_ms
        self._next_mem = 0
        self._mem_every = getattr(hal, "mem_every_ms", _MEM_EVERY)
        # counters
        self.published = 0          # events accepted by publish()
        self.sample_refused = 0     # sensor readings refused by a full "block" outbox
        self.too_big = 0            # events or forwarded messages over max_payload
        self.rx_bad = 0             # undecodable messages from upstream
        self.misrouted = 0          # node -> base kinds arriving from upstream (dropped)
        self.forwarded = 0          # lower nodes' messages acknowledged upstream
        self.ctrl_down = 0          # control messages forwarded down
        self.ctrl_dropped = 0       # control messages not forwarded (down link not up)
        self.statuses = 0
        self.replayed = 0
        self.replay_shed = 0
        self.mem_errors = 0         # MemoryErrors survived by run()
        self.flash_errors = 0       # log appends refused for a failing flash (the log
                                    # counts its own failed writes): survived
        self.mem_boot = 0
        self.mem_max = 0
        self.free_min = None

    # --- boot ---------------------------------------------------------------------------
    def boot(self, now=None):
        hal = self.hal
        cfg = self.cfg
        # the UDP node's epoch file and rule: a full flash does not stop the node
        self.epoch = new_epoch(hal)
        self.epoch_saved = save_epoch(hal, self.epoch, True)
        self._ticks = hal.ticks_ms() if now is None else now
        # an EVENT is at most max_payload bytes; the writer's buffer leaves room to notice
        self.writer = EventWriter(self.node_id, self.epoch, self.max_payload + 300)
        if self.log is not None:
            self.dead.load()
            try:
                self.replayed = self.log.open(self._replay)
            except OSError as e:
                # the log cannot be written (flash full or worn): run with the outbox in
                # RAM rather than not at all; what was replayed so far stays queued
                self._flash_failed(e)
                hal.log("durable outbox off: the log cannot be written")
                self.log = None
        self.up_link = self._make_link(_HOP_UNKNOWN, cfg.uart_up)
        if self.up_uart is None:
            self.up_uart = hal.uart_open(cfg.uart_up)
        if self.down_uart is None and cfg.uart_down is not None:
            self.down_uart = hal.uart_open(cfg.uart_down)
        self._host_clock()
        self.booted = True
        self._sample_mem(True)
        hal.log("chain node %d epoch %d: %d sensors, downstream %s, durable %s, replayed %d" % (
            self.node_id, self.epoch, len(self.sensors), self.down_uart is not None,
            self.log is not None, self.replayed))

    def _make_link(self, hop, uart):
        lk = self.cfg.link
        baud = (uart or {}).get("baud") or 115200
        kw = link_kwargs(self.cfg.window, self.max_payload, baud, lk["rto_ms"],
                         lk["keepalive_ms"], lk["dead_after_ms"], lk["max_retries"],
                         self.frame_bytes)
        return Link(node=self.node_id, hop=hop, rng=self._rng, **kw)

    def _replay(self, kind, epoch, seq, msg, pos):
        if kind == KIND_OWN:
            ok = self.own.put(msg, epoch, seq, pos, 1, True)
        elif kind == KIND_FWD:
            ok = self.fwd.put(msg, 0, 0, pos, 1, True)
        else:
            ok = False
        if not ok:
            self.replay_shed += 1

    # --- driving ------------------------------------------------------------------------
    def step(self, now):
        # Do whatever is due at `now` (HAL ticks); return ms until the next due work.
        self._advance(now)
        if self.done:
            return 1000
        self._commands()
        self._rx(now)
        up = self.uptime
        if not self.paused and not self.draining:
            for i in range(len(self.sensors)):
                s = self.sensors[i]
                if s.next_due <= up:
                    if not self._publish(s.topic, s.sample(), False):
                        if self.own.policy == "block":
                            self.sample_refused += 1
                    s.next_due += s.period_ms
                    if s.next_due <= up:    # fell a whole period behind: skip, keep cadence
                        s.next_due = up + s.period_ms
        if up >= self.next_status:
            if not self.epoch_saved:
                self.epoch_saved = save_epoch(self.hal, self.epoch, False)
            self.queue_status()
            self.next_status += self.cfg.status_every_ms
            if self.next_status <= up:
                self.next_status = up + self.cfg.status_every_ms
        self._service(now)
        if up >= self._next_mem:
            self._sample_mem(False)
        return self._wake(now)

    def _wake(self, now):
        up = self.uptime
        w = self.next_status - up
        if not self.paused and not self.draining:
            for s in self.sensors:
                d = s.next_due - up
                if d < w:
                    w = d
        d = self._next_mem - up
        if d < w:
            w = d
        d = self.up_link.next_wake(now)
        if d < w:
            w = d
        dn = self.down_link
        if dn is not None and not self._withhold():
            d = dn.next_wake(now)
            if d < w:
                w = d
        lg = self.log
        if lg is not None:
            td = self.hal.ticks_diff
            for d in (lg.flush_wake(now, td), lg.cursor_wake(now, td)):
                if d is not None and d < w:
                    w = d
            if self._fwd_unflushed:
                d = self._ack_delay - td(now, self._fwd_since)
                if d < w:
                    w = d
        return w if w > 0 else 0

    def _commands(self):
        cmds = getattr(self.hal, "commands", None)
        while cmds:
            c = cmds.pop(0)
            if c == "pause":        # stop sampling (the simulator's quiet period)
                self.paused = True
                self.queue_status()
                self.write_report(True)
            elif c == "resume":
                self.paused = False
            elif c == "report":
                self.write_report(False)

    # --- UART input ---------------------------------------------------------------------
    def _rx(self, now):
        self._rx_one(self.up_uart, self.up_dec, self.up_link, now)
        if self.down_uart is not None:
            self._rx_one(self.down_uart, self.down_dec, self.down_link, now)

    def _rx_one(self, uart, dec, link, now):
        buf = self._rxbuf
        for _ in range(_RX_CHUNKS):
            n = uart.read_into(buf)
            if not n:
                return
            if link is None:        # no down link yet (hop unknown): discard
                continue
            for frame in dec.feed(buf if n == _RX_CHUNK else self._rxmv[:n]):
                link.feed(frame, now)
            if n < _RX_CHUNK:
                return

    # --- links --------------------------------------------------------------------------
    def _service(self, now):
        up = self.up_link
        acks = 0
        for tk in up.poll_acked():
            acks += self._acked(tk)
        for tk in up.poll_dead():
            acks += self._dead_ticket(tk)
        self.dead.save()   # once for all that died or was reported: before the log's cursor
        ctrl = self._ctrl
        if ctrl is None:
            ctrl = up.poll_received()
            if ctrl:
                self._ctrl = ctrl
                self._ctrl_done = 0
        if ctrl:
            # one at a time, counted: a MemoryError redoes only the message it hit
            # (handling one twice is harmless: ANNOUNCE and ENUMERATE are idempotent)
            while self._ctrl_done < len(ctrl):
                self._from_up(ctrl[self._ctrl_done])
                self._ctrl_done += 1
            self._ctrl = None
        self._learn_hop()
        dn = self.down_link
        if dn is not None:
            dn.poll_acked()
            dn.poll_dead()
            if not self._fin_msg and self._fwd_room():
                msgs = dn.poll_received()
                if msgs:
                    self._take_forward(msgs, now)
            if self._fin_msg:
                if self._fin_logged < len(self._fin_msg):   # after a MemoryError
                    self._log_forward(now)
                self._move_forward()
        self._fill(self.frame_bytes)
        lg = self.log
        if lg is not None:
            td = self.hal.ticks_diff
            if acks:
                lg.advance(self._cursor(), acks, now)
            if lg.unflushed() and (lg.flush_due(now, td) or (
                    self._fwd_unflushed and td(now, self._fwd_since) >= self._ack_delay)):
                lg.flush()
            if not lg.unflushed():
                self._fwd_unflushed = 0
            if lg.cursor_due(now, td):
                c = self._cursor()
                lg.advance(c, 0, now)
                lg.save_cursor(c is None)
                if not lg.unflushed():
                    self._fwd_unflushed = 0
        n = self._transmit(up, self.up_uart, now)
        if self.frame_bytes:
            # small frames: one batch of about frame_bytes per frame, as many frames as
            # the window takes now (poll_transmit() packs everything queued into one)
            k = 0
            while n and k < 64 and not up.queued() and self._fill(self.frame_bytes):
                n = self._transmit(up, self.up_uart, now)
                k += 1
        if dn is not None and not self._withhold():
            self._transmit(dn, self.down_uart, now)

    def _withhold(self):
        # The down link may not send an ACK that covers messages we would lose: while
        # stopping (they would be lost with the RAM), and in durable mode while they are
        # not on flash. A flash that cannot be written (full, worn) does not stop the
        # chain: its messages are then forwarded from RAM, as without `durable`.
        if self.stopping:
            return True
        if self.log is None or self.log.failing:
            return False
        if self._fwd_unflushed:
            return True
        dn = self.down_link
        return dn is not None and dn.undelivered() > 0

    def _transmit(self, link, uart, now):
        # returns how many frames were written
        frames = link.poll_transmit(now)
        for p in frames:
            n = encode_frame_into(self._txbuf, p)
            uart.write(self._txmv[:n])
        return len(frames)

    def _learn_hop(self):
        ph = self.up_link.peer_hop
        if ph is None or ph >= _HOP_UNKNOWN:
            return
        hop = ph + 1 if ph < 254 else 254
        if hop == self.hop:
            return
        self.hop = hop
        self.up_link.hop = hop
        if self.down_uart is not None:
            if self.down_link is None:
                self.down_link = self._make_link(hop, self.cfg.uart_down)
            else:
                self.down_link.hop = hop
                self.down_link.restart()
        self.hal.log("node %d: hop %d" % (self.node_id, hop))

    # --- completions ----------------------------------------------------------------------
    def _acked(self, tk):
        q = tk & 3
        if q == Q_OWN:
            self.own.done(tk)
            return 1
        if q == Q_FWD:
            self.fwd.done(tk)
            self.forwarded += 1
            return 1
        if q == Q_DEAD:
            self.dead.acked()
        return 0

    def _dead_ticket(self, tk):
        q = tk & 3
        if q == Q_OWN:
            k = self.own.find(tk)
            if k >= 0:
                e, s = self.own.ids(k)
                self.dead.add(self.node_id, [(e, s)])
                self.own.done(tk)
                return 1
        elif q == Q_FWD:
            k = self.fwd.find(tk)
            if k >= 0:
                self._dead_forward(self.fwd.message(k))
                self.fwd.done(tk)
                return 1
        elif q == Q_DEAD:
            self.dead.failed()
        return 0

    def _dead_forward(self, data):
        # a lower node's message died on our up link: dead-letter its events in its name;
        # a lower node's DEADLETTER report is carried again (its events stay counted by
        # that node, not by us)
        try:
            ids = event_ids(data)
            report = read_report(data) if ids is None else None
        except Exception:
            return
        if ids is not None:
            node, epoch, seq0, count = ids
            self.dead.add(node, [(epoch, seq0 + i) for i in range(count)])
        elif report is not None:
            self.dead.add(report[0], report[2], report[1])

    # --- upstream input: control for us and the nodes below ------------------------------
    def _from_up(self, data):
        # ANNOUNCE and ENUMERATE are checked in full (a bad one is rx_bad, not forwarded);
        # node -> base kinds are dropped as misrouted with their fields unchecked; other
        # kinds go down as they came, once they are well-formed messages of our version
        try:
            kind, fields = parse_control(data)
        except Exception as e:  # ProtocolError or anything odd: the peer's problem
            self.rx_bad += 1
            if self.rx_bad <= _LOG_BAD_FIRST or self.rx_bad % 1000 == 0:
                self.hal.log("rx_bad %d: %s" % (self.rx_bad, e))
            return
        if kind == codes.KIND_ANNOUNCE:
            restarted = self._take_instance(fields[7])
            if self._take_time_base(fields[6], True) or restarted:    # its wall_ms
                self.queue_status()
        elif kind == codes.KIND_ENUMERATE:
            self.queue_status()
        elif (kind == codes.KIND_EVENT or kind == codes.KIND_BATCH or kind == codes.KIND_STATUS
              or kind == codes.KIND_DEADLETTER):
            self.misrouted += 1
            return
        self._to_down(data)

    def _take_instance(self, instance):
        # A base process that restarted (another ANNOUNCE instance than the one we
        # knew) has not seen what we delivered to its predecessor: `since` becomes our
        # oldest event of this epoch still in the outbox (not acknowledged upstream, so
        # it reaches the new process), else the next seq. True then: a STATUS is due.
        if instance is None or instance == self.base_instance:
            return False
        known = self.base_instance
        self.base_instance = instance
        if known is None:            # the first base we hear of: since 0 stays right
            return False
        own = self.own
        since = self.next_seq
        for k in range(own.n):
            epoch, seq = own.ids(k)
            if epoch == self.epoch:
                since = seq
                break
        self.since = since
        self.hal.log("the base restarted: since %d" % since)
        return True

    def _time_changed(self):    # NodeCore: a new time base from the board's clock
        self.queue_status()

    def _to_down(self, data):
        dn = self.down_link
        if dn is None:
            if self.down_uart is not None:
                self.ctrl_dropped += 1
            return
        if not dn.up:
            self.ctrl_dropped += 1
            return
        try:
            ok = dn.offer(data)
        except LinkError:
            ok = False
        if ok:
            self.ctrl_down += 1
        else:
            self.ctrl_dropped += 1

    # --- forwarding -----------------------------------------------------------------------
    def _fwd_room(self):
        f = self.fwd
        return f.n < f.max and f.bytes < f.max_bytes

    def _take_forward(self, msgs, now):
        # msgs were delivered by the down link, which acknowledges them: they are kept
        # whole first (no allocation), so a MemoryError in what follows (run() redoes
        # the step) loses none of them; _fin_logged says how far the checks got
        self._fin_msg = msgs
        self._fin_pos = None
        self._fin_logged = 0
        self._log_forward(now)

    def _log_forward(self, now):
        # check (too big: counted, left out) and log (durable) the taken messages
        ms = self._fin_msg
        if self._fin_pos is None:
            self._fin_pos = [0] * len(ms)
        ps = self._fin_pos
        lg = self.log
        k = self._fin_logged
        while k < len(ms):
            m = ms[k]
            if len(m) > self.max_payload:
                self.too_big += 1
                ms[k] = None
            elif lg is not None:
                try:
                    ps[k] = lg.append(KIND_FWD, 0, 0, m, now)
                    if not self._fwd_unflushed:
                        self._fwd_since = now
                    self._fwd_unflushed += 1
                except OSError as e:   # the link delivered it: forward it, not durably
                    self._flash_failed(e)
            k += 1
            self._fin_logged = k

    def _move_forward(self):
        f = self.fwd
        ms = self._fin_msg
        ps = self._fin_pos
        k = 0
        while k < self._fin_logged:
            m = ms[k]
            if m is not None:
                if not f.room(len(m)) and f.n:   # an empty queue takes even an oversize one
                    break
                f.put(m, 0, 0, ps[k], 0, True)
            k += 1
        if k:
            del ms[:k]
            del ps[:k]
            self._fin_logged -= k

    def _fill(self, limit=0):
        # Offer what goes up next; returns the bytes offered. limit > 0 (small frames):
        # only into an empty link queue, about `limit` bytes (at least one message).
        link = self.up_link
        if limit and link.queued():
            return 0
        offered = 0
        st = self._status
        if st is not None:
            try:
                ok = link.offer(st, Q_STATUS)
            except LinkError:   # over max_payload (counters grew huge): not sent
                ok = True
                self.too_big += 1
            if not ok:
                return 0
            self._status = None
            self.statuses += 1
            offered += len(st)
        if link.up and self.dead.pending():
            m = self.dead.message(self.max_payload)
            if not link.offer(m, Q_DEAD):
                self.dead.failed()
                return offered
            offered += len(m)
        # deficit round-robin on bytes between the own outbox (0) and forward queue (1)
        qs = self._queues
        empty = 0
        while empty < 2:
            if limit and offered >= limit:
                return offered
            i = self._rr
            q = qs[i]
            m = q.peek()
            if m is None:
                self._deficit[i] = 0
                self._turn = False
                self._rr = 1 - i
                empty += 1
                continue
            empty = 0
            if not self._turn:
                self._deficit[i] += _QUANTUM
                self._turn = True
            n = len(m)
            if n > self._deficit[i]:
                self._turn = False
                self._rr = 1 - i
                continue
            if limit and offered and offered + n > limit:
                return offered    # the next frame starts with it
            tk = q.ticket()
            try:
                ok = link.offer(m, tk)
            except LinkError:     # cannot happen for checked sizes; never wedge on it
                q.commit()
                q.done(tk)
                self.too_big += 1
                continue
            if not ok:
                return offered    # the link is full: this turn resumes next time
            q.commit()
            self._deficit[i] -= n
            offered += n
        return offered

    def _cursor(self):
        # log position of the oldest record not yet done, or None
        best = None
        fin = None       # the first taken message that was logged (not too big)
        for k in range(self._fin_logged):
            if self._fin_msg[k] is not None:
                fin = self._fin_pos[k]
                break
        for p in (self.own.front_pos(), self.fwd.front_pos(), fin):
            if p is not None and (best is None or pdiff(p, best) < 0):
                best = p
        return best

    # --- publishing -----------------------------------------------------------------------
    def publish(self, topic, value, wait=False, timeout_ms=5000):
        # Accept a reading as an EVENT (t = uptime now). Returns True when accepted.
        # wait=True: with the "block" policy, keep the links running until the outbox has
        # room (up to timeout_ms); in durable mode, return only once the event is on flash.
        if not self.booted:
            raise RuntimeError("publish() before boot()")
        return self._publish(topic, value, wait, timeout_ms)

    def _publish(self, topic, value, wait, timeout_ms=5000):
        seq = self.next_seq
        q = self.own
        if not wait and q.policy == "block" and not q.room(_MIN_EVENT):
            # full "block" outbox (back-pressure from the chain): refuse before encoding,
            # as put() would after it; this saves the encoding while the line is saturated
            q.refused += 1
            return False
        try:
            n = self.writer.event(seq, self.uptime, topic, value)
        except Exception as e:  # not encodable (a bad topic or value), or too big
            self.too_big += 1
            self.hal.log("event %r not encodable: %s" % (topic, e))
            return False
        if n > self.max_payload:
            self.too_big += 1
            return False
        if wait and q.policy == "block" and not q.room(n):
            self._wait(lambda: q.room(n), timeout_ms)
        msg = bytes(self.writer.view())
        if not q.put(msg, self.epoch, seq, 0, 0):
            return False
        self.next_seq = seq + 1
        self.published += 1
        if self.log is not None:
            try:
                q.set_tail_pos(self.log.append(KIND_OWN, self.epoch, seq, msg, self._ticks))
                if wait:
                    self.log.flush()
            except OSError as e:   # accepted in RAM: delivered, but not durable
                self._flash_failed(e)
        return True

    def sync(self):
        # everything accepted so far is on flash (durable mode); no-op otherwise
        if self.log is not None:
            self.log.sync()
            self._fwd_unflushed = 0
        self.dead.save()

    def _wait(self, ready, timeout_ms):
        # run the links (no sampling) until ready() or timeout_ms
        hal = self.hal
        start = self.uptime
        was = self.draining
        self.draining = True
        feed = getattr(hal, "feed", None)   # as in run(): a drain can outlast a watchdog
        try:
            while not ready() and self.uptime - start < timeout_ms:
                if feed is not None:
                    feed()
                now = hal.ticks_ms()
                self._advance(now)
                self._rx(now)
                self._service(now)
                d = self._wake(now)
                left = timeout_ms - (self.uptime - start)
                hal.wait_readable(max(1, min(d, left, 50)))
        finally:
            self.draining = was

    # --- status -----------------------------------------------------------------------------
    def counters(self):
        # {CTR_* code: value}, as STATUS carries them
        up = self.up_link
        st = up.stats()
        dec = self.up_dec
        return {
            codes.CTR_PUBLISHED: self.published,
            codes.CTR_DROPPED: self.own.dropped + self.sample_refused + self.too_big,
            codes.CTR_RETRIES: st["retransmissions"],
            codes.CTR_QUEUE: self.own.live,
            codes.CTR_FREE_MEM: self.hal.free_mem(),
            codes.CTR_RX_BAD: self.rx_bad,
            codes.CTR_DEADLETTER: self.dead.total,
            codes.CTR_LINK_FRAMES: st["data_sent"],
            codes.CTR_LINK_RETRANS: st["retransmissions"],
            codes.CTR_LINK_CRC: dec.crc_errors + dec.malformed + dec.oversize + st["malformed"],
            codes.CTR_LINK_RTT: st["rtt_ms"] or 0,
            codes.CTR_LINK_WINDOW: st["window_in_use"],
            codes.CTR_LINK_DOWNS: st["downs"],
            codes.CTR_FORWARDED: self.forwarded,
        }

    def status(self, final=False):
        # Our STATUS, encoded: a view of the writer's buffer, valid until the next call.
        # last_seq is the newest own event handed to the upstream link, not the newest
        # published: this STATUS enters the link after those and overtakes only events
        # still waiting in the outbox (after a cut, say), which the base must not count
        # as lost and then as out of order. The last STATUS of a node whose outbox is in
        # RAM declares everything published: what has not gone up by then is lost.
        own = self.own
        if final and self.log is None:
            last = self.next_seq - 1 if self.next_seq else None
        elif own.offered_epoch == self.epoch:
            last = own.offered_seq
        else:
            last = None
        caps = self.caps | (codes.CAP_TIME if self.time_base is not None else 0)
        ctr = self.counters()
        w = self._status_writer
        if w is None:
            w = self._status_writer = StatusWriter(self.node_id, self.cfg.firmware, list(ctr))
        w.status(self.epoch, last, 0, self.since, self.uptime, self.time_base, caps,
                 [ctr[k] for k in w.keys], self.hop, self.base_instance)
        return w.view()

    def queue_status(self, final=False):
        # our STATUS goes up before anything else; a newer one replaces a waiting one.
        # A copy: the link keeps the bytes it was offered until they are acknowledged.
        self._status = bytes(self.status(final))

    def _sample_mem(self, boot):
        self._next_mem = self.uptime + self._mem_every
        if _MP:
            import gc
            gc.collect()
        m = self.hal.mem_alloc() if hasattr(self.hal, "mem_alloc") else 0
        if boot:
            self.mem_boot = m
        if m > self.mem_max:
            self.mem_max = m
        f = self.hal.free_mem()
        if f and (self.free_min is None or f < self.free_min):
            self.free_min = f

    # --- running ------------------------------------------------------------------------------
    def run(self, duration_ms=None):
        # Drive the node with the HAL's clock and UARTs until the HAL asks to stop or
        # duration_ms of uptime passed. Does not call finish().
        hal = self.hal
        if not self.booted:
            self.boot()
        end = None if duration_ms is None else self.uptime + duration_ms
        feed = getattr(hal, "feed", None)   # the HAL's once-per-loop hook (a board: watchdog)
        synced = getattr(hal, "time_synced", None)
        while not self.done and not getattr(hal, "stop_requested", False):
            if feed is not None:
                feed()
                if synced is not None and synced():
                    self._clock_time()
            try:
                delay = self.step(hal.ticks_ms())
            except MemoryError:
                # A full or fragmented heap: count, collect, go on. What the interrupted
                # step was doing is redone (at worst a message is offered twice: a
                # duplicate the base removes) rather than the node stopping for good.
                self.mem_errors += 1
                if self.mem_errors <= _LOG_BAD_FIRST:
                    hal.log("MemoryError %d (heap full)" % self.mem_errors)
                import gc
                gc.collect()
                delay = 10
            except OSError as e:
                # a flash write failed (full or worn): the log keeps its buffer and tries
                # again; the node goes on forwarding rather than stopping (or boot-looping)
                self._flash_failed(e)
                delay = 100
            if end is not None:
                if self.uptime >= end:
                    break
                if end - self.uptime < delay:
                    delay = end - self.uptime
            hal.wait_readable(delay)

    def _flash_failed(self, e):
        self.flash_errors += 1
        if self.flash_errors <= _LOG_BAD_FIRST:
            self.hal.log("flash write failed (%d): %s" % (self.flash_errors, e))

    def idle(self):
        # nothing of ours or of lower nodes waits for the up link
        return (not self.own.live and not self.fwd.live and not self._fin_msg
                and self._status is None and not self.up_link.queued()
                and not self.up_link.in_flight())

    def finish(self):
        # Planned stop: a last STATUS, up to stop_drain_ms to empty the outbox (no new
        # readings, nothing new acknowledged below), then the log is synced.
        if self.done:
            return
        self.queue_status()
        # From here the down link sends nothing (no ACK): what the lower node sends now
        # stays its responsibility. Frames it already delivered are still taken and sent
        # on (an earlier ACK may have covered them).
        self.stopping = True
        if self.cfg.stop_drain_ms and self.up_link.up:
            self._wait(self.idle, self.cfg.stop_drain_ms)
            if self.log is None and self.own.live:
                # a RAM outbox loses what is still in it: a last STATUS declaring every
                # published seq lets the base count that loss exactly
                self.queue_status(True)
                self._wait(self.idle, min(self.cfg.stop_drain_ms, 1000))
        self.sync()
        self.done = True

    def report(self):
        # numbers for the simulator (counters.json) and humans
        up = self.up_link.stats() if self.up_link is not None else {}
        rep = {"node": self.node_id, "epoch": self.epoch, "published": self.published,
               "last_seq": self.next_seq - 1 if self.next_seq else None,
               "dropped": self.own.dropped + self.sample_refused + self.too_big,
               "evicted": self.own.evicted, "refused": self.own.refused,
               "sample_refused": self.sample_refused, "too_big": self.too_big,
               "outbox_depth": self.own.live, "forward_depth": self.fwd.live + len(self._fin_msg),
               "forwarded": self.forwarded, "dead_letter": self.dead.total,
               "rx_bad": self.rx_bad, "misrouted": self.misrouted,
               "ctrl_down": self.ctrl_down, "ctrl_dropped": self.ctrl_dropped,
               "statuses": self.statuses, "uptime": self.uptime, "hop": self.hop,
               "epoch_saved": self.epoch_saved, "time_base": self.time_base, "durable": self.log is not None,
               "replayed": self.replayed, "replay_shed": self.replay_shed,
               "mem_errors": self.mem_errors,
               "flash_errors": self.flash_errors + (self.log.flash_errors if self.log else 0),
               "mem_boot": self.mem_boot, "mem_max": self.mem_max, "free_min": self.free_min,
               "up_link": {"data_sent": up.get("data_sent"),
                           "retransmissions": up.get("retransmissions"),
                           "resyncs": up.get("resyncs"), "downs": up.get("downs"),
                           "dead": up.get("dead"), "rtt_ms": up.get("rtt_ms"),
                           "crc_errors": self.up_dec.crc_errors,
                           "malformed": self.up_dec.malformed}}
        if self.log is not None:
            rep["log"] = self.log.stats()
        if self.down_link is not None:
            dn = self.down_link.stats()
            rep["down_link"] = {"up": dn["up"], "data_received": dn["data_received"],
                                "duplicates": dn["duplicates"], "resyncs": dn["resyncs"],
                                "downs": dn["downs"], "undelivered": self.down_link.undelivered(),
                                "crc_errors": self.down_dec.crc_errors,
                                "malformed": self.down_dec.malformed}
        rep["up_link"]["up"] = up.get("up")
        rep["up_link"]["window_in_use"] = up.get("window_in_use")
        rep["up_link"]["queued"] = up.get("queued")
        rep["up_link"]["peer_window"] = up.get("peer_window")
        return rep

    def write_report(self, paused=False):
        import gc
        import json
        gc.collect()
        rep = self.report()
        rep["paused"] = paused
        text = json.dumps({"report": rep})
        write_counters(self.hal, text)
        return text


def main(flash_dir=None, hal=None, stdin_control=False, cfg=None):
    # Boot a chain node from node.json and run until stopped (Ctrl-C / SIGINT, "stop" or
    # end of stdin when stdin_control). On the way out: a last STATUS, a short drain, the
    # log synced, counters written as counters.json and printed as {"report": ...}.
    # Returns 0, or 1 when node.json is unusable.
    core.stop_on_sigterm()
    if hal is None:
        hal = core.make_hal(flash_dir, stdin_control)
    if cfg is None:
        try:
            cfg = core.load_config(hal)   # board sensor kinds registered first
        except ValueError as e:   # firmware.config.ConfigError
            hal.log(str(e))
            return 1
    if cfg.transport != "serial":
        hal.log("node.json: transport %r: the chain node needs \"serial\"" % (cfg.transport,))
        return 1
    node = ChainNode(cfg, hal)
    try:
        try:
            node.boot()
            core.boot_done()
            node.run()
        except KeyboardInterrupt:
            pass
        try:
            node.finish()
        except KeyboardInterrupt:
            node.sync()
    finally:
        print(node.write_report(False))
        close = getattr(hal, "close", None)
        if close is not None:
            close()
    return 0
