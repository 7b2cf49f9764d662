# Fake MicroPython board modules for tests (the radio and the chip cannot exist here):
# machine, network, esp32, rp2, ntptime, plus a fake clock (the time functions boards
# have) and a fake socket module with a poll object (net). They follow the
# MicroPython docs and port sources where it matters to the HAL; what they leave out
# is said at the top of each module.
#
# Use: install(port) puts machine / network / esp32 / rp2 / ntptime into sys.modules
# (before the HAL is imported) and resets every fake to a powered-on board of that
# port ("esp32" or "rp2"); it returns the shared FakeClock.
import sys

from board_fakes import clock as _clock
from board_fakes import machine, network, esp32, rp2, ntptime, net


def install(port="esp32", chip=None, ssid="lab", password="secret"):
    for name, mod in (("machine", machine), ("network", network), ("esp32", esp32),
                      ("rp2", rp2), ("ntptime", ntptime)):
        sys.modules[name] = mod
    clk = _clock.FakeClock(epoch2000=(port == "esp32"))
    machine.configure(port, clk)
    network.configure(port, clk, ssid, password)
    esp32.configure(chip or "ESP32")
    rp2.configure()
    ntptime.configure(clk)
    net.configure(clk)
    return clk


_flash_n = [0]


def flash_dir(prefix, node_json=None):
    # An empty host directory standing in for a board's littlefs (optionally holding
    # node.json), one per call; reused by the next run after being emptied, one set
    # per interpreter.
    import os
    import json
    _flash_n[0] += 1
    d = "/tmp/starling-%s-%s-%d" % (prefix, sys.implementation.name, _flash_n[0])
    try:
        os.mkdir(d)
    except OSError:
        for name in os.listdir(d):
            os.remove(d + "/" + name)
    if node_json is not None:
        with open(d + "/node.json", "w") as f:
            f.write(json.dumps(node_json))
    return d
