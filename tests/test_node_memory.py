"""Heap cost of the node runtime on MicroPython (unix port, 64-bit: boards' 32-bit
objects take about half).

Measured with MicroPython 1.29-preview unix, gc.mem_alloc() deltas with the GC
disabled, 200 publishes after a warm-up:

* counter sensor (int readings), one or two subscribers: 0 bytes per publish (the
  EVENT is written by protocol.nodewire.EventWriter; the memoryview handed to sendto
  is cached per datagram length).
* sine sensor (float readings): 160 bytes per publish, all of it the waveform's boxed
  floats in firmware/sensors.py; publishing the float itself allocates nothing.
* RAM held after boot from source, imports included (gc.collect(); gc.mem_alloc()):
  about 78 KB here, where firmware.config is imported and kept; bench/node.py
  measures what a node holds from .mpy files with main()'s boot sequence.
"""

import re
import subprocess

import pytest

from conftest import ROOT

SCRIPT = r'''
import sys, gc
sys.path.insert(0, sys.argv[1])
from firmware import config
from firmware.node import Node

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
    def write_file_atomic(self, n, d): self.files[n] = d
    def free_mem(self): return gc.mem_free()
    def log(self, m): pass

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
    script.write_text(SCRIPT)
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
