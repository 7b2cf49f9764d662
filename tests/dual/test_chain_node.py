# firmware/chain.py in process: a base Link and two or three ChainNodes joined by
# simulated UART lines with a fake clock, on both interpreters. The other
# tests/dual/test_chain_*.py modules reuse the World below.
from protocol import codes
from protocol import messages
from protocol.framing import FrameDecoder, encode_frame
from protocol.link import Link
from firmware import config
from firmware.chain import ChainNode
from dual_helpers import DictFlash, Lcg as BaseLcg

_MASK = (1 << 30) - 1   # a board's ticks_ms period
_HALF = 1 << 29


class Lcg(BaseLcg):
    # the shared generator, seeds spread apart
    def __init__(self, seed):
        BaseLcg.__init__(self, seed * 2654435761 + 12345)


class Pipe:
    """One direction of a UART line. A byte takes 10 bit times; bytes queue behind each
    other (the line is serial); per byte, `drop_ppm` loses it and `flip_ppm` flips one
    of its bits (both per million); a byte whose time overlaps a cut is lost. Does not
    model: receive-buffer overruns, baud mismatch, noise between bytes."""

    def __init__(self, clock, baud, rng, drop_ppm=0, flip_ppm=0):
        self.clock = clock
        self.byte_us = 10000000 // baud
        self.rng = rng
        self.drop_ppm = drop_ppm
        self.flip_ppm = flip_ppm
        self.cuts = []          # (start_us, end_us)
        self.free = 0           # when the line is idle again (us)
        self.chunks = []        # [end_us_of_first_byte, bytes, read_pos]
        self.bytes_sent = 0
        self.lost = 0

    def send(self, data):
        now = self.clock.us
        start = now if now > self.free else self.free
        bt = self.byte_us
        self.free = start + len(data) * bt
        self.bytes_sent += len(data)
        out = bytearray()
        rng = self.rng
        for i in range(len(data)):
            t = start + (i + 1) * bt
            cut = False
            for c in self.cuts:
                if c[0] < t and t - bt < c[1]:
                    cut = True
                    break
            if cut or (self.drop_ppm and rng.below(1000000) < self.drop_ppm):
                self.lost += 1
                continue
            b = data[i]
            if self.flip_ppm and rng.below(1000000) < self.flip_ppm:
                b ^= 1 << rng.below(8)
            out.append(b)
        if out:
            # survivors arrive one byte time apart from the first byte's end (a little
            # early when bytes were lost before them: harmless)
            self.chunks.append([start + bt, bytes(out), 0, bt])

    def _avail(self, c, now):
        # bytes of chunk c whose time has come
        first, data, pos, step = c
        if now < first:
            return 0
        k = (now - first) // step + 1 if step else len(data)
        return min(len(data), k) - pos

    def read_into(self, buf):
        now = self.clock.us
        n = 0
        while self.chunks and n < len(buf):
            c = self.chunks[0]
            k = self._avail(c, now)
            if k <= 0:
                break
            k = min(k, len(buf) - n)
            buf[n:n + k] = c[1][c[2]:c[2] + k]
            n += k
            c[2] += k
            if c[2] >= len(c[1]):
                self.chunks.pop(0)
            else:
                break
        return n

    def next_frame_end(self):
        # time (us) at which the next 0x00 (a frame delimiter) will have arrived, or None
        for c in self.chunks:
            j = c[1].find(b"\x00", c[2])
            if j >= 0:
                return c[0] + j * c[3] if c[3] else c[0]
        return None


class FakeUart:
    def __init__(self, rx, tx):
        self.rx = rx
        self.tx = tx

    def read_into(self, buf):
        return self.rx.read_into(buf)

    def any(self):
        return bool(self.rx.chunks)

    def write(self, data):
        self.tx.send(bytes(data))
        return len(data)


class Clock:
    def __init__(self, base_ms=_MASK - 2000):
        self.us = 0
        self.base_ms = base_ms   # ticks start 2 s before they wrap

    def ms(self):
        return (self.us // 1000 + self.base_ms) & _MASK


class FakeHal(DictFlash):
    """A board-like HAL: wrapping ticks from the world's clock, a dict as flash (each
    append_file / write_file_atomic is committed at once, as littlefs does on close)."""

    def __init__(self, world, files=None):
        DictFlash.__init__(self, files)
        self.world = world
        self.commands = []
        self.node = None

    def ticks_ms(self):
        return self.world.clock.ms()

    def ticks_diff(self, a, b):
        return ((a - b + _HALF) & _MASK) - _HALF

    def wall_ms(self):
        return None

    def free_mem(self):
        return 0

    def mem_alloc(self):
        return 0

    def wait_readable(self, ms):
        # this node blocks (publish(wait=True), finish()): the rest of the world runs on
        self.world.run(ms if ms > 0 else 1, skip=self.node)
        return False


class Base:
    """The head of the chain in the test: Link(node=0, hop=0) on a UART, decoding what
    arrives; events are deduplicated by (node, epoch, seq) as the base station does."""

    def __init__(self, world, uart, window=8, max_payload=256):
        self.world = world
        self.uart = uart
        self.link = Link(node=0, hop=0, window=window, max_payload=max_payload,
                         rng=world.rng.u32)
        self.dec = FrameDecoder()
        self.buf = bytearray(256)
        self.events = []         # (node, epoch, seq, topic, value) in arrival order, unique
        self.seen = {}
        self.dups = 0
        self.dup_ids = []
        self.statuses = []
        self.deadletters = []
        self.other = []
        self.arrivals = []       # (ms since the world began, node, bytes, t) per new event

    def step(self, now):
        while True:
            n = self.uart.read_into(self.buf)
            if not n:
                break
            for f in self.dec.feed(bytes(self.buf[:n])):
                self.link.feed(f, now)
        for m in self.link.poll_received():
            self.take(m)
        self.link.poll_acked()
        self.link.poll_dead()
        for p in self.link.poll_transmit(now):
            self.uart.write(encode_frame(p))
        return self.link.next_wake(now)

    def take(self, data):
        msg = messages.decode(data)
        if isinstance(msg, messages.Batch):
            evs = msg.events()
        elif isinstance(msg, messages.Event):
            evs = [msg]
        else:
            if isinstance(msg, messages.Status):
                self.statuses.append(msg)
            elif isinstance(msg, messages.DeadLetter):
                self.deadletters.append(msg)
            else:
                self.other.append(msg)
            return
        for e in evs:
            key = (e.node, e.epoch, e.seq)
            if key in self.seen:
                self.dups += 1
                self.dup_ids.append(key)
                continue
            self.seen[key] = True
            self.events.append((e.node, e.epoch, e.seq, e.topic, e.value))
            self.arrivals.append((self.world.clock.us // 1000, e.node, len(data), e.t))

    def send(self, msg):
        return self.link.offer(msg.encode())

    def ids(self, node):
        return [(e[1], e[2]) for e in self.events if e[0] == node]


def node_config(node, period_ms=100, durable=False, window=8, policy="drop_oldest",
                outbox_max=256, max_payload=256, down=True, extra=None, baud=115200,
                down_baud=None):
    d = {"node": node, "transport": "serial",
         "uart": {"up": {"path": "up", "baud": baud},
                  "down": {"path": "down", "baud": down_baud or baud} if down else None},
         "sensors": [{"topic": "n%d" % node, "kind": "counter", "period_ms": period_ms}],
         "durable": durable, "window": window, "status_every_ms": 2000,
         "outbox": {"max": outbox_max, "policy": policy},
         "link": {"max_payload": max_payload, "max_retries": 40},
         "stop_drain_ms": 500}
    if extra:
        for k in extra:
            d[k] = extra[k]
    return config.from_dict(d)


class World:
    """base <-> node 1 <-> ... <-> node k on simulated lines (one Pipe per direction)."""

    def __init__(self, k=2, baud=115200, seed=1, drop_ppm=0, flip_ppm=0, cfgs=None, bauds=None,
                 **kw):
        self.clock = Clock()
        self.rng = Lcg(seed)
        self.k = k
        self.lines = []     # per wire: (down pipe: towards the tail, up pipe: towards the base)
        for i in range(k):
            b = bauds[i] if bauds else baud
            self.lines.append((Pipe(self.clock, b, Lcg(seed * 31 + 2 * i), drop_ppm, flip_ppm),
                               Pipe(self.clock, b, Lcg(seed * 31 + 2 * i + 1), drop_ppm, flip_ppm)))
        self.base = Base(self, FakeUart(self.lines[0][1], self.lines[0][0]),
                         kw.get("window", 8), kw.get("max_payload", 256))
        self.files = [{} for _ in range(k)]
        self.cfgs = cfgs or [node_config(j + 1, down=(j + 1 < k), baud=baud, **kw)
                             for j in range(k)]
        self.nodes = [None] * k
        self.hals = [None] * k
        self.reports = []   # report() of every finished boot
        self.wake = {}
        self.full_flash = set()   # node ids that boot with a full flash
        for j in range(k):
            self.boot(j + 1)

    def boot(self, nid):
        j = nid - 1
        hal = FakeHal(self, self.files[j])
        hal.full = nid in self.full_flash
        up = FakeUart(self.lines[j][0], self.lines[j][1])
        down = FakeUart(self.lines[j + 1][1], self.lines[j + 1][0]) if j + 1 < self.k else None
        node = ChainNode(self.cfgs[j], hal, up, down, rng=self.rng.u32)
        hal.node = node
        node.boot(hal.ticks_ms())
        self.nodes[j] = node
        self.hals[j] = hal
        return node

    def reboot(self, nid, crash=False):
        # graceful: finish() (drain, log synced); crash: the node object just vanishes
        node = self.nodes[nid - 1]
        if not crash:
            node.finish()
        self.reports.append(node.report())
        return self.boot(nid)

    def parties(self):
        return [self.base] + self.nodes

    def inputs(self, p):
        # the pipes a party reads
        if p is self.base:
            return [self.lines[0][1]]
        j = self.nodes.index(p)
        out = [self.lines[j][0]]
        if j + 1 < self.k:
            out.append(self.lines[j + 1][1])
        return out

    def run(self, ms, skip=None):
        # Each party is stepped when its own wake time comes or when bytes it reads have
        # arrived (a board sleeps in poll() on its UARTs until then), nothing more: a
        # node that forgets to ask for a wake-up stalls here as it would on a board.
        end = self.clock.us + ms * 1000
        wake = self.wake
        while True:
            now_us = self.clock.us
            now = self.clock.ms()
            for p in self.parties():
                if p is skip:
                    continue
                due = wake.get(id(p), 0) <= now_us
                if not due:
                    for pipe in self.inputs(p):
                        c = pipe.chunks
                        if c and c[0][0] <= now_us:
                            due = True
                            break
                if due:
                    w = p.step(now)
                    wake[id(p)] = now_us + max(w, 0) * 1000
            if now_us >= end:
                return
            nxt = end
            for p in self.parties():
                if p is not skip:
                    t = wake.get(id(p), 0)
                    if t < nxt:
                        nxt = t
            for pair in self.lines:
                for pipe in pair:
                    t = pipe.next_frame_end()
                    if t is not None and t < nxt:
                        nxt = t
            # steps land on whole ms (the nodes' clock has ms resolution), at least 1 ms on
            nxt = ((nxt + 999) // 1000) * 1000
            if nxt <= now_us:
                nxt = now_us + 1000
            self.clock.us = nxt if nxt < end else end

    def published(self, nid):
        # events accepted by publish() over every boot of node nid
        total = self.nodes[nid - 1].published
        for r in self.reports:
            if r["node"] == nid:
                total += r["published"]
        return total

    def pause(self):
        for n in self.nodes:
            n.paused = True

    def settle(self, limit_ms=20000):
        # sampling stopped: run until every node is idle and the base has caught up
        t = 0
        while t < limit_ms:
            self.run(200)
            t += 200
            if all(n.idle() for n in self.nodes):
                self.run(200)
                return True
        return False


def check_exactly_once(world):
    # every event accepted by publish() reached the base once (after dedupe), in per-node
    # (epoch, seq) order, nothing lost
    for j in range(world.k):
        nid = j + 1
        ids = world.base.ids(nid)
        assert len(ids) == world.published(nid), (nid, len(ids), world.published(nid))
        assert ids == sorted(ids), nid
        epochs = {}
        for e, s in ids:
            epochs.setdefault(e, []).append(s)
        for e in epochs:
            assert epochs[e] == list(range(len(epochs[e]))), (nid, e)


# ----------------------------------------------------------------------------- tests

def test_chain_of_two_delivers_in_order_and_learns_hops():
    w = World(2, seed=3)
    w.run(3000)
    assert w.nodes[0].hop == 1 and w.nodes[1].hop == 2
    w.pause()
    assert w.settle()
    check_exactly_once(w)
    assert w.base.dups == 0
    assert w.published(1) >= 25 and w.published(2) >= 25
    # node 1 forwarded node 2's messages (events and STATUS)
    assert w.nodes[0].forwarded >= w.published(2)


def test_enumerate_returns_every_hop_and_announce_sets_time():
    w = World(3, seed=5)
    w.run(2500)
    w.base.send(messages.Enumerate(77))
    w.base.send(messages.Announce("base", "", 1, ["#"], 0, 60, 1700000000000))
    w.run(1000)
    hops = {}
    for s in w.base.statuses:
        if s.hop is not None:
            hops[s.node] = s.hop
    assert hops == {1: 1, 2: 2, 3: 3}, hops
    last = {}
    for s in w.base.statuses:
        last[s.node] = s
    for nid in (1, 2, 3):
        s = last[nid]
        assert s.time_base is not None and s.caps & codes.CAP_TIME and s.caps & codes.CAP_SERIAL
        # the time base is the wall clock at uptime 0: within a few ms of the truth
        assert abs(s.time_base + s.uptime - 1700000000000) < 1500, (nid, s.time_base, s.uptime)
        c = s.counters
        for key in (codes.CTR_PUBLISHED, codes.CTR_LINK_FRAMES, codes.CTR_LINK_RETRANS,
                    codes.CTR_LINK_CRC, codes.CTR_LINK_RTT, codes.CTR_LINK_WINDOW,
                    codes.CTR_LINK_DOWNS, codes.CTR_FORWARDED, codes.CTR_DEADLETTER):
            assert key in c, (nid, key)
    assert last[1].counters[codes.CTR_FORWARDED] > 0
    assert last[3].counters[codes.CTR_FORWARDED] == 0
    assert w.nodes[2].ctrl_down == 0 and w.nodes[0].ctrl_down >= 2


def test_lossy_lines_and_a_cut_deliver_exactly_once():
    # bit errors and dropped bytes on every line, then a 2 s cut of the middle wire
    w = World(3, seed=11, drop_ppm=2000, flip_ppm=2000, max_payload=128)
    w.run(2000)
    w.lines[1][0].cuts.append((w.clock.us, w.clock.us + 2000000))
    w.lines[1][1].cuts.append((w.clock.us, w.clock.us + 2000000))
    w.run(4000)
    w.pause()
    assert w.settle(30000)
    check_exactly_once(w)
    lost = sum(p.lost for pair in w.lines for p in pair)
    assert lost > 50
    assert sum(n.up_link.retransmissions for n in w.nodes) > 0
    assert all(n.dead.total == 0 for n in w.nodes)
    # no session was lost (the cut only paused the link): not a single duplicate
    assert all(n.up_link.resyncs == 0 for n in w.nodes)
    assert w.base.dups == 0


def test_node_reboot_resyncs_and_dedupe_only_hides_resent_events():
    # a RAM-only middle node reboots gracefully (drain first): nothing is lost; duplicates
    # at the base can only come from a link resync
    w = World(3, seed=7)
    w.run(2000)
    w.reboot(2)
    assert w.nodes[1].epoch == 2
    w.run(2000)
    w.pause()
    assert w.settle()
    check_exactly_once(w)
    ids = w.base.ids(2)
    assert (1, 0) in ids and (2, 0) in ids
    # duplicates can only be messages resent across the resync of node 2's two links:
    # events of node 2's first boot or of node 3 (node 1's own never cross node 2)
    assert w.nodes[0].down_link.resyncs >= 1 and w.nodes[2].up_link.resyncs >= 1
    for node, epoch, seq in w.base.dup_ids:
        assert (node, epoch) in ((2, 1), (3, 1)), (node, epoch, seq)


def test_block_policy_publish_wait_and_refusal():
    cfg = node_config(1, period_ms=100000, policy="block", outbox_max=4, down=False)
    w = World(1, seed=2, cfgs=[cfg])
    node = w.nodes[0]
    # before the link is up nothing drains: four fit, the fifth is refused
    for i in range(4):
        assert node.publish("x", i)
    assert not node.publish("x", 4)
    assert node.own.refused == 1 and node.next_seq == 4   # a refusal takes no seq
    # wait=True keeps the links running until there is room
    assert node.publish("x", 4, wait=True)
    assert node.next_seq == 5
    w.run(1000)
    assert w.base.ids(1) == [(1, s) for s in range(5)]


def test_idle_middle_node_step_allocates_nothing_on_micropython():
    # a chain node steps on every wake-up and every byte: between publishes, with both
    # links up and nothing to send, a step must not allocate (each idle step used to
    # leave 672 bytes of empty lists on 64-bit, polls and poll_transmit's own)
    import gc
    import sys
    cfgs = [node_config(1, period_ms=600000), node_config(2, period_ms=600000, down=False)]
    w = World(2, cfgs=cfgs)
    w.run(5000)
    node = w.nodes[0]
    assert node.hop == 1 and node.up_link.established and node.down_link.established
    now = w.clock.ms()
    for i in range(20):
        node.step(now + i)
    if sys.implementation.name != "micropython":
        return   # heap accounting is a MicroPython measurement
    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    for i in range(100):
        node.step(now + 20 + i)
    used = gc.mem_alloc() - before
    gc.enable()
    assert used == 0, used


def test_a_restarted_base_gets_since_from_the_oldest_event_it_may_still_receive():
    # the base's first ANNOUNCE instance is adopted (since stays 0); another one (the
    # base process restarted) makes since the oldest own event not yet acknowledged
    # upstream, so the new process is not told to expect what its predecessor received
    w = World(2, seed=9)
    w.run(1500)
    w.base.send(messages.Announce("base", "", 1, ["#"], 0, 60, 1700000000000, 111))
    w.run(800)
    for nid in (1, 2):
        st = [s for s in w.base.statuses if s.node == nid and s.instance == 111]
        assert st and all(s.since == 0 for s in st), nid
    received = {nid: len(w.base.ids(nid)) for nid in (1, 2)}
    w.base.send(messages.Announce("base", "", 1, ["#"], 0, 60, 1700000000900, 222))
    w.run(800)
    w.base.send(messages.Announce("base", "", 1, ["#"], 0, 60, 1700000001700, 222))  # a refresh
    w.run(2500)
    w.pause()
    assert w.settle()
    check_exactly_once(w)
    for j, nid in enumerate((1, 2)):
        st = [s for s in w.base.statuses if s.node == nid and s.instance == 222]
        assert st, nid
        since = st[0].since
        assert all(s.since == since for s in st), nid         # the refresh kept it
        assert received[nid] <= since <= w.nodes[j].next_seq, (nid, received[nid], since)
        assert w.nodes[j].base_instance == 222 and w.nodes[j].since == since
