# Synthetic sensors: deterministic waveforms for nodes without real hardware.
#
# A sensor's n-th sample is a pure function of (node id, sensor index, n): the
# waveform time is n * period_ms plus a phase drawn from the node id, never the
# board's clock, so two runs of the same node give the same values and a receiver
# can recompute what it should have got. The "counter" kind's value is
# start + n * step, which makes a lost sample visible in the values too.
#
# Integer arithmetic stays below 2^30 (small ints on every board: no heap). Float
# kinds allocate one boxed float per sample on boards (about 16 bytes).
import math

try:
    import struct
except ImportError:  # pragma: no cover - every port has struct
    struct = None  # type: ignore

# kind -> its parameters and their defaults (the config checks types against these)
KINDS = {
    "sine": {"amplitude": 1.0, "offset": 0.0, "wave_ms": 60000},
    "sawtooth": {"low": 0.0, "high": 1.0, "wave_ms": 10000},
    "counter": {"start": 0, "step": 1},
    "step": {"low": 0, "high": 1, "wave_ms": 10000},
    "random": {"low": 0, "high": 100},
    "constant": {"value": 0},
    "imu": {"amplitude": 1.0, "wave_ms": 5000},
}

_MASK30 = 0x3FFFFFFF
_TWO_PI = 2.0 * math.pi


def mix(x):
    # 30-bit integer hash (xorshift steps with masks so nothing passes 2^30: no
    # bigints on boards). Quality is irrelevant; determinism is the point.
    x &= _MASK30
    x ^= (x & 0x7FFFFF) << 7
    x ^= x >> 11
    x ^= (x & 0x1FFFF) << 13
    x ^= x >> 17
    x ^= (x & 0xFFFFF) << 5
    return x & _MASK30


def seed_for(node_id, index):
    return mix(mix((node_id & _MASK30) ^ 0x2545F49) ^ (index + 1) * 7919)


def to_f32(x):
    # what a single-precision board would hold (costs two small allocations)
    return struct.unpack("<f", struct.pack("<f", x))[0]


class Sensor:
    __slots__ = ("topic", "kind", "period_ms", "seed", "phase", "n", "next_due",
                 "a", "b", "wave", "f32")

    def __init__(self, spec, node_id, index, f32=False):
        # spec: a checked sensor dict from firmware/config.py
        self.topic = spec["topic"]
        self.kind = spec["kind"]
        self.period_ms = spec["period_ms"]
        self.seed = seed_for(node_id, index)
        self.n = 0                                   # index of the next sample
        self.next_due = self.seed % self.period_ms   # staggers nodes' first samples
        self.f32 = f32
        kind = self.kind
        self.wave = spec.get("wave_ms", 1)
        self.phase = self.seed % self.wave
        if kind == "sine" or kind == "imu":
            self.a = float(spec["amplitude"])
            self.b = float(spec.get("offset", 0.0))
        elif kind == "counter":
            self.a = spec["start"]
            self.b = spec["step"]
        elif kind == "constant":
            self.a = spec["value"]
            self.b = 0
        else:  # sawtooth, step, random
            self.a = spec["low"]
            self.b = spec["high"]

    def _f(self, x):
        return to_f32(x) if self.f32 else x

    def value(self, n):
        # the n-th sample (n >= 0)
        kind = self.kind
        if kind == "counter":
            return self.a + n * self.b
        if kind == "constant":
            return self.a
        if kind == "random":
            span = self.b - self.a + 1
            return self.a + mix(mix(self.seed + n)) % span
        # waveform position in 0..wave-1; n * period stays a small int for runs
        # shorter than 2^30 ms of samples (12 days), then wraps harmlessly
        pos = ((n * self.period_ms) & _MASK30) + self.phase
        pos %= self.wave
        if kind == "step":
            return self.b if pos * 2 >= self.wave else self.a
        if kind == "sawtooth":
            return self._f(self.a + (self.b - self.a) * pos / self.wave)
        angle = _TWO_PI * pos / self.wave
        if kind == "sine":
            return self._f(self.b + self.a * math.sin(angle))
        # imu: three sines 120 degrees apart (one dict per sample)
        third = _TWO_PI / 3
        return {"x": self._f(self.a * math.sin(angle)),
                "y": self._f(self.a * math.sin(angle + third)),
                "z": self._f(self.a * math.sin(angle + 2 * third))}

    def sample(self):
        # the next sample's value; advances the sample index
        v = self.value(self.n)
        self.n += 1
        return v


def make(specs, node_id, f32=False):
    out = []
    for i in range(len(specs)):
        out.append(Sensor(specs[i], node_id, i, f32))
    return out
