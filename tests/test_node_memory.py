"""Heap cost of the node runtime on MicroPython (unix port, 64-bit: boards' 32-bit
objects take about half).

Measured with MicroPython 1.29-preview unix, gc.mem_alloc() deltas with the GC
disabled, 200 publishes after a warm-up:

* counter sensor (int readings), one or two subscribers: 0 bytes per publish (the
  EVENT is written by protocol.nodewire.EventWriter; the memoryview handed to sendto
  is cached per datagram length).
* sine sensor (float readings): 160 bytes per publish, all of it the waveform's boxed
  floats in firmware/sensors.py; publishing the float itself allocates nothing.
* a UDP node (unix HAL) that boots, publishes EVENTs or BATCHes of every value type
  and reads ANNOUNCEs never imports protocol.cbor or protocol.messages; nor does a
  durable serial-chain node through its control messages, dead letters and a reboot.
* RAM held after boot from source, imports included (gc.collect(); gc.mem_alloc()):
  about 78 KB here, where firmware.config is imported and kept; bench/node.py
  measures what a node holds from .mpy files with main()'s boot sequence.
"""

import re
import subprocess

import pytest

from conftest import ROOT

# The HAL both scripts below give their node: clock, flash in a dict, sockets and
# UARTs that go nowhere
HAL = r'''
import gc


class Hal:
    def __init__(self):
        self.now = 0
        self.files = {}
    def ticks_ms(self): return self.now
    def ticks_diff(self, a, b): return a - b
    def wall_ms(self): return None
    def udp_open(self, port=0, reuse=False, broadcast=False, bind="0.0.0.0"): return 1
    def resolve(self, h, p): return (h, p)
    def addr_with_port(self, a, p): return (a[0], p)
    def addr_str(self, a): return "x"
    def udp_send(self, s, a, d): return True
    def udp_recv(self, s): return None
    def wait_readable(self, t): return False
    def read_file(self, n): return self.files.get(n)
    def write_file_atomic(self, n, d): self.files[n] = bytes(d)
    def append_file(self, n, d): self.files[n] = self.files.get(n, b"") + bytes(d)
    def remove_file(self, n): self.files.pop(n, None)
    def free_mem(self): return gc.mem_free()
    def mem_alloc(self): return gc.mem_alloc()
    def log(self, m): pass


class Uart:
    # a line with nobody at the other end
    def read_into(self, buf): return 0
    def any(self): return 0
    def write(self, d): return len(d)
'''

SCRIPT = r'''
import sys, gc
sys.path.insert(0, sys.argv[1])
from firmware import config
from firmware.node import Node

kind = sys.argv[2]
nsubs = int(sys.argv[3])
cfg = config.from_dict({"node": 7, "bases": [["127.0.0.1", 5684 + i] for i in range(nsubs)],
                        "sensors": [{"topic": "temp", "kind": kind, "period_ms": 10}],
                        "status_every_ms": 1000000})
hal = Hal()
node = Node(cfg, hal)
node.boot()
gc.collect()
after_boot = gc.mem_alloc()
for i in range(20):
    hal.now += 10
    node.step(hal.now)
gc.collect()
gc.disable()
a = gc.mem_alloc()
p0 = node.published
for i in range(200):
    hal.now += 10
    node.step(hal.now)
b = gc.mem_alloc()
gc.enable()
print("per_publish=%d after_boot=%d published=%d" % ((b - a) // (node.published - p0), after_boot, node.published - p0))
'''


def _measure(micropython, tmp_path, kind, subs):
    script = tmp_path / "mem.py"
    script.write_text(HAL + SCRIPT)
    proc = subprocess.run([micropython, "-X", "heapsize=256K", str(script), str(ROOT), kind, str(subs)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    m = re.search(r"per_publish=(\d+) after_boot=(\d+) published=(\d+)", proc.stdout)
    assert m, proc.stdout
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


@pytest.mark.parametrize("kind,subs,limit", [("counter", 1, 0), ("counter", 2, 0), ("sine", 1, 192)])
def test_heap_per_publish_on_micropython(micropython, tmp_path, kind, subs, limit):
    per, after_boot, published = _measure(micropython, tmp_path, kind, subs)
    print(f"{kind} x{subs}: {per} bytes/publish, {after_boot} bytes after boot")
    assert published == 200
    assert per <= limit
    assert after_boot < 120_000


BOOT_SCRIPT = r'''
import sys, json, binascii, socket
sys.path.insert(0, sys.argv[1])
flash, port = sys.argv[2], int(sys.argv[3])
from firmware import core
from firmware import node as node_mod
hal = core.make_hal(flash)
cfg = core.load_config(hal)
node = node_mod.Node(cfg, hal)
node.boot()
node.run(300)
# the ANNOUNCE vectors of docs/PROTOCOL.md, through the discovery socket, and junk
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
to = socket.getaddrinfo("127.0.0.1", port)[0][-1]
for h in sys.argv[4:]:
    s.sendto(binascii.unhexlify(h), to)
s.sendto(b"\x88\x04junk", to)
s.close()
node.run(500)
node.finish()
hal.close()
print("RESULT " + json.dumps({"cbor": "protocol.cbor" in sys.modules,
                              "messages": "protocol.messages" in sys.modules,
                              "codes": "protocol.codes" in sys.modules,
                              "chain": [m for m in ("firmware.chain", "firmware.outbox",
                                                    "protocol.link") if m in sys.modules],
                              "subscribers": sorted(e.base for e in node.subs.entries),
                              "rx_bad": node.rx_bad, "published": node.published,
                              "dropped": node.dropped, "time_base": node.time_base}))
'''


@pytest.mark.parametrize("batch_ms", [0, 200])
def test_udp_node_boots_and_runs_without_protocol_cbor(micropython, tmp_path, batch_ms):
    # firmware.node with the unix HAL: boot, publish every value type (int, float, bool,
    # text, map), EVENT or BATCH, read ANNOUNCEs from the discovery socket: protocol.cbor
    # (and protocol.messages) are never imported
    import json
    import socket
    import sys

    sys.path.insert(0, str(ROOT / "tests" / "dual"))
    from spec_vectors import load

    # the ANNOUNCE vectors, "base-a" moved from port 5684 (a base station's) to 10
    anns = [raw.hex().replace("191634", "0a", 1) for name, raw in load().items()
            if name.startswith("announce")]
    assert len(anns) >= 2
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    flash = tmp_path / "flash"
    flash.mkdir()
    cfg = {"node": 12, "bases": [["127.0.0.1", 9]], "batch_ms": batch_ms,
           "discovery": {"port": port, "bind": "127.0.0.1"},
           "sensors": [{"topic": "n", "kind": "counter", "period_ms": 20},
                       {"topic": "sensors/a/temp", "kind": "sine", "period_ms": 30},
                       {"topic": "imu", "kind": "imu", "period_ms": 40},
                       {"topic": "flag", "kind": "constant", "period_ms": 50, "value": True},
                       {"topic": "txt", "kind": "constant", "period_ms": 60, "value": "on"}]}
    (flash / "node.json").write_text(json.dumps(cfg))
    script = tmp_path / "boot.py"
    script.write_text(BOOT_SCRIPT)
    proc = subprocess.run([micropython, str(script), str(ROOT), str(flash), str(port)] + anns,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert line, proc.stdout + proc.stderr
    r = json.loads(line[-1][7:])
    assert r["cbor"] is False and r["messages"] is False and r["codes"] is False, r
    assert r["chain"] == [], r
    assert r["subscribers"] == ["base-a", "lab", "static:127.0.0.1:9"], r
    assert r["rx_bad"] == 1 and r["dropped"] == 0 and r["published"] > 50, r
    assert r["time_base"] is not None, r     # wall_ms of the first vector


CHAIN_SCRIPT = r'''
import sys
sys.path.insert(0, sys.argv[1])
from firmware import config
from firmware.chain import ChainNode

cfg = config.from_dict({"node": 3, "transport": "serial", "durable": True,
                        "uart": {"up": {"path": "u", "baud": 115200}, "down": {"path": "d", "baud": 115200}},
                        "sensors": [{"topic": "t", "kind": "counter", "period_ms": 50}],
                        "status_every_ms": 500})
hal = Hal()
up, down = Uart(), Uart()
node = ChainNode(cfg, hal, up, down)
node.boot(0)
for i in range(100):
    hal.now += 20
    node.step(hal.now)
# control messages from the base (through _from_up, as the up link delivers them),
# dead letters (own and a forwarded event's), their message and file
from protocol import nodewire
w = nodewire.EventWriter(9, 1)
w.event(5, 100, "x", 1)
ev = bytes(w.view())
node._from_up(bytes([0x82, 0x08, 0x07]))                       # ENUMERATE 7
node._dead_forward(ev)
node.dead.add(3, [(1, 2)])
node.dead.save()
m = node.dead.message()
node.queue_status()
node2 = ChainNode(cfg, hal, Uart(), Uart())                  # a reboot: the files are read
node2.boot(hal.now)
print("loaded", "protocol.cbor" in sys.modules, "protocol.messages" in sys.modules,
      "firmware.node" in sys.modules, "firmware.subscribers" in sys.modules, node.dead.total, len(node2.dead.nodes), node.statuses >= 0, len(m) > 0)
'''


def test_chain_node_runs_without_the_generic_codec(micropython, tmp_path):
    # a durable chain node that boots, samples, answers ENUMERATE, dead-letters its own
    # and a forwarded event, persists them and reboots never imports protocol.cbor or
    # protocol.messages (~50 KB of RAM on a board), nor the UDP node (firmware.node and
    # its subscriber table: ~8 KB)
    script = tmp_path / "chain_mem.py"
    script.write_text(HAL + CHAIN_SCRIPT)
    proc = subprocess.run([micropython, "-X", "heapsize=512K", str(script), str(ROOT)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split()[-9:] == ["loaded", "False", "False", "False", "False", "2", "2", "True",
                                        "True"], proc.stdout
