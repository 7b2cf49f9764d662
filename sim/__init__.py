"""Starling simulator: fleets of nodes running the real firmware, and impaired links.

* `sim.fleet.Fleet` runs N nodes, each as a `micropython` unix-port process or as an
  in-process `firmware.node.Node` (``runtime="cpython"``), with per-node flash
  directories, reboots on demand or on a schedule, and an exact per-node summary.
* `sim.relay.Relay` is a UDP relay in front of a base station that drops, duplicates,
  reorders and delays datagrams with a seeded RNG and counts what it did per node.
* `sim.cli` is the command line (`starling sim`, `python -m sim`).
* Other modules here (`sim.wire`, `sim.virtual_board`: serial links) document their own model.

The list below is about the UDP fleet and relay.

What the simulator does NOT model, so do not trust it for these:

* Radio and Wi-Fi: no association, roaming, retries at the MAC layer, interference,
  signal strength, power save, or the loss *patterns* of a real link (relay losses
  are independent per datagram: no bursts, no correlation with size or rate).
* Boards' real timing: nodes run on a PC's clock and scheduler. A board's slower
  CPU, GC pauses, flash-write stalls and ticks drift are absent; a node that falls
  behind skips samples the same way a board would, but at different points.
* Board memory: processes get a fixed MicroPython heap (``heapsize``, default 256K,
  64-bit objects) rather than an ESP32's or RP2040's heap; ``-X heapsize=64K`` comes
  closer. In-process (cpython) nodes have no memory limit at all.
* Float precision: float readings are rounded to single precision only because the
  fleet sets ``"float32": true`` in node.json; arithmetic inside the firmware still
  runs in double precision on the unix port and CPython.
* Flash: the flash is a host directory; littlefs wear, power-loss during a write
  and slow erases are not modelled (writes are tmp + rename, as on the board).
* The network stack: loopback UDP never refuses a send the way lwIP does when its
  buffers are full, so send_errors stay at 0 unless a base address is unreachable;
  a base's full socket buffer drops datagrams silently (counted by nobody).
* Crashes are process kills: a real brown-out can corrupt state mid-instruction.
* Discovery traffic (ANNOUNCE) is never impaired.
"""
