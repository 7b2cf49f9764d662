# Synthetic sensors (firmware/sensors.py): deterministic per (node, sensor, sample).
from firmware import config, sensors


def _sensor(kind, node=7, index=0, f32=False, **params):
    spec = {"topic": "s", "kind": kind, "period_ms": 100}
    for k in params:
        spec[k] = params[k]
    c = config.from_dict({"node": node, "bases": [["h", 1]], "sensors": [spec]})
    return sensors.Sensor(c.sensors[0], node, index, f32)


def test_same_node_same_values():
    for kind in sensors.KINDS:
        a = _sensor(kind)
        b = _sensor(kind)
        va = [a.sample() for _ in range(50)]
        vb = [b.value(n) for n in range(50)]
        assert va == vb, kind
        assert a.n == 50


def test_nodes_and_sensors_get_different_phases():
    assert sensors.seed_for(1, 0) != sensors.seed_for(2, 0)
    assert sensors.seed_for(1, 0) != sensors.seed_for(1, 1)
    a = _sensor("sine", node=1)
    b = _sensor("sine", node=2)
    assert [a.value(n) for n in range(5)] != [b.value(n) for n in range(5)]
    assert 0 <= a.next_due < 100  # first sample staggered within one period


def test_counter_counts_samples():
    s = _sensor("counter", start=10, step=3)
    assert [s.sample() for _ in range(4)] == [10, 13, 16, 19]


def test_waveform_ranges():
    sine = _sensor("sine", amplitude=2.0, offset=20.0, wave_ms=1000)
    saw = _sensor("sawtooth", low=-1.0, high=1.0, wave_ms=1000)
    sq = _sensor("step", low=0, high=5, wave_ms=1000)
    rnd = _sensor("random", low=3, high=6)
    seen_sq = []
    seen_rnd = []
    for n in range(200):
        v = sine.value(n)
        assert isinstance(v, float) and 18.0 <= v <= 22.0
        v = saw.value(n)
        assert -1.0 <= v < 1.0
        v = sq.value(n)
        assert v in (0, 5)
        seen_sq.append(v)
        v = rnd.value(n)
        assert isinstance(v, int) and 3 <= v <= 6
        seen_rnd.append(v)
    assert 0 in seen_sq and 5 in seen_sq
    for v in (3, 4, 5, 6):
        assert v in seen_rnd
    # sawtooth rises by period/wave of the span per sample (within one ramp)
    d = saw.value(1) - saw.value(0)
    assert abs(d - 0.2) < 1e-9 or d < 0


def test_imu_is_a_map_and_constant_is_constant():
    imu = _sensor("imu", amplitude=9.81)
    v = imu.value(3)
    assert sorted(v.keys()) == ["x", "y", "z"]
    assert abs(v["x"] + v["y"] + v["z"]) < 1e-6  # three phases 120 degrees apart
    c = _sensor("constant", value="ok")
    assert c.value(0) == "ok" and c.value(999) == "ok"


def test_float32_emulation():
    assert sensors.to_f32(21.3) != 21.3
    assert abs(sensors.to_f32(21.3) - 21.3) < 1e-6
    assert sensors.to_f32(16777217.0) == 16777216.0
    s = _sensor("sine", f32=True, amplitude=3.0, offset=21.3)
    for n in range(10):
        v = s.value(n)
        assert sensors.to_f32(v) == v


def test_mix_stays_in_30_bits():
    x = 0
    for i in range(1000):
        x = sensors.mix(x + i)
        assert 0 <= x < (1 << 30)
