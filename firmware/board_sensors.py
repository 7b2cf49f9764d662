# Board sensors of the board HALs (firmware/board_setup.py make_sensor()), in their own
# module: only a node whose node.json names a board kind (board_setup.py KINDS)
# imports it.
import machine

from firmware import sensors

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore
        return x

_LOG_FIRST = const(3)               # read errors: log the first few, then every 100th


class BoardSensor:
    # A board sensor with the interface firmware/node.py uses from sensors.Sensor:
    # topic, kind, period_ms, n, next_due, sample(). `read` returns an int (or a small
    # dict); an OSError from the hardware publishes null and is counted.
    def __init__(self, hal, spec, node_id, index, read):
        self.hal = hal
        self.topic = spec["topic"]
        self.kind = spec["kind"]
        self.period_ms = spec["period_ms"]
        self.n = 0
        # staggered like the synthetic sensors, so nodes do not sample in lockstep
        self.next_due = sensors.seed_for(node_id, index) % self.period_ms
        self.errors = 0
        self._read = read

    def sample(self):
        self.n += 1
        try:
            return self._read()
        except OSError as e:
            self.errors += 1
            if self.errors <= _LOG_FIRST or self.errors % 100 == 0:
                self.hal.log("sensor %s: read failed (%d so far): %s" % (self.topic, self.errors, e))
            return None


def sht3x_reader(spec, sleep_ms):
    # a read function for a checked "sht3x" sensor spec (firmware/sht3x.py on machine.I2C)
    from firmware import sht3x
    freq = spec.get("freq", 100000)
    scl = spec.get("scl", -1)
    sda = spec.get("sda", -1)
    if scl >= 0 and sda >= 0:
        i2c = machine.I2C(spec.get("i2c", 0), scl=machine.Pin(scl), sda=machine.Pin(sda),
                          freq=freq)
    else:   # the port's default pins for this bus
        i2c = machine.I2C(spec.get("i2c", 0), freq=freq)
    dev = sht3x.SHT3x(i2c, spec.get("address", 0x44), sleep_ms=sleep_ms)
    what = spec.get("measure", "both")
    if what == "t":
        def read_t():
            dev.measure()
            return dev.temperature_centi
        return read_t
    if what == "rh":
        def read_rh():
            dev.measure()
            return dev.humidity_centi
        return read_rh
    if what == "both":
        def read_both():
            dev.measure()
            return {"t": dev.temperature_centi, "rh": dev.humidity_centi}
        return read_both
    raise ValueError("sensor %s: measure must be \"t\", \"rh\" or \"both\"" % spec["topic"])
