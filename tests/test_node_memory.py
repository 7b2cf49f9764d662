"""Heap cost of the node runtime on MicroPython (unix port, 64-bit: boards' 32-bit
objects take about half).

Measured 2026-07 with MicroPython 1.29-preview unix, gc.mem_alloc() deltas with the GC
disabled, 200 publishes after a warm-up:

* counter sensor (int readings), one subscriber: 32 bytes per publish (the memoryview
  slice handed to sendto); + 32 per extra subscriber.
* sine sensor (float readings): 192 bytes per publish (boxed floats of the waveform).
* RAM held after boot, imports included (gc.collect(); gc.mem_alloc()): about 79 KB
  from source or .mpy alike, of which protocol.cbor ~20 KB and protocol.messages ~24 KB.
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


@pytest.mark.parametrize("kind,subs,limit", [("counter", 1, 48), ("counter", 2, 96), ("sine", 1, 256)])
def test_heap_per_publish_on_micropython(micropython, tmp_path, kind, subs, limit):
    per, after_boot, published = _measure(micropython, tmp_path, kind, subs)
    print(f"{kind} x{subs}: {per} bytes/publish, {after_boot} bytes after boot")
    assert published == 200
    assert per <= limit
    assert after_boot < 120_000
