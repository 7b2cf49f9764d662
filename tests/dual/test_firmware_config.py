# node.json loading and validation (firmware/config.py): defaults and clear errors.
import json

from firmware import config

MINIMAL = {"node": 7, "bases": [["127.0.0.1", 5684]]}


def _error(d):
    try:
        if isinstance(d, str):
            config.parse(d)
        else:
            config.from_dict(d)
    except config.ConfigError as e:
        return str(e)
    raise AssertionError("no ConfigError for %r" % (d,))


def _with(**kw):
    d = dict(MINIMAL)
    for k in kw:
        d[k] = kw[k]
    return d


def test_minimal_config_gets_defaults():
    c = config.parse(json.dumps(MINIMAL))
    assert c.node == 7 and c.transport == "udp" and c.sensors == []
    assert c.bases == [("127.0.0.1", 5684)] and c.discovery_port is None
    assert c.key is None and c.status_every_ms == 5000 and c.firmware == config.FIRMWARE_VERSION
    assert c.max_subscribers == 8 and c.max_events is None and c.batch_ms == 0


def test_full_config():
    d = {
        "node": 4000000000, "transport": "udp", "wifi": {"ssid": "lab", "password": "pw"},
        "sensors": [{"topic": "temp", "kind": "sine", "period_ms": 250, "amplitude": 5, "offset": 20.5},
                    {"topic": "n", "kind": "counter", "period_ms": 1000, "step": 2}],
        "bases": [], "discovery": {"port": 6000}, "key": "00112233445566778899aabbccddeeff",
        "status_every_ms": 1000, "firmware": "9.9", "max_events": 10, "batch_ms": 200,
        "_comment": "ignored",
    }
    c = config.from_dict(d)
    assert c.node == 4000000000 and c.wifi_ssid == "lab" and c.discovery_port == 6000
    assert c.discovery_bind == "0.0.0.0"
    assert c.key == bytes(range(0, 256, 17)) and len(c.key) == 16
    assert c.sensors[0]["amplitude"] == 5 and c.sensors[0]["wave_ms"] == 60000
    assert c.sensors[1]["step"] == 2 and c.sensors[1]["start"] == 0
    assert c.max_events == 10 and c.batch_ms == 200


def test_errors_name_the_key():
    assert "node: missing" in _error({"bases": [["h", 1]]})
    assert "node" in _error(_with(node=-1))
    assert "node" in _error(_with(node="7"))
    assert "node" in _error(_with(node=True))
    assert "not valid JSON" in _error("{node: 7")
    assert "top level" in _error("[1, 2]")
    assert "unknown key 'status_every'" in _error(_with(status_every=5))
    assert "transport" in _error(_with(transport="serial"))
    assert "bases[0]" in _error(_with(bases=[["127.0.0.1"]]))
    assert "bases[0]" in _error(_with(bases=[["127.0.0.1", 70000]]))
    assert "bases" in _error(_with(bases="127.0.0.1:5684"))
    assert "discovery" in _error(_with(discovery=5685))
    assert "discovery.port" in _error(_with(discovery={"port": 0}))
    assert "status_every_ms" in _error(_with(status_every_ms=10))
    assert "wifi.ssid" in _error(_with(wifi={"ssid": 5}))
    assert "nobody to send to" in _error({"node": 1})


def test_key_errors_do_not_print_the_key():
    msg = _error(_with(key="00" * 8))
    assert "key" in msg and "16..64" in msg
    long_secret = "ab" * 70
    msg = _error(_with(key=long_secret))
    assert long_secret not in msg
    assert "key" in _error(_with(key="zz" * 16))


def test_sensor_errors():
    def sensor(**kw):
        s = {"topic": "temp", "kind": "sine"}
        for k in kw:
            s[k] = kw[k]
        return _with(sensors=[s])
    assert "sensors[0].kind" in _error(sensor(kind="laser"))
    assert "sensors[0].topic" in _error(sensor(topic="a/#"))
    assert "sensors[0].topic" in _error(sensor(topic=""))
    assert "sensors[0].period_ms" in _error(sensor(period_ms=0))
    assert "sensors[0].period_ms" in _error(sensor(period_ms=1.5))
    assert "sensors[0].amplitude" in _error(sensor(amplitude="big"))
    assert "sensors[0].wave_ms" in _error(sensor(wave_ms=0))
    assert "unknown key 'step'" in _error(sensor(step=1))
    assert "sensors[0]" in _error(_with(sensors=["temp"]))
    two = _with(sensors=[{"topic": "t", "kind": "counter"}, {"topic": "t", "kind": "sine"}])
    assert "sensors[1].topic" in _error(two)
    assert "sensors[0].high" in _error(_with(sensors=[{"topic": "r", "kind": "random", "low": 5, "high": 1}]))


class _Flash:
    def __init__(self, files):
        self.files = files

    def read_file(self, name):
        return self.files.get(name)


def test_load_reads_node_json_from_flash():
    c = config.load(_Flash({"node.json": json.dumps(MINIMAL).encode()}))
    assert c.node == 7
    try:
        config.load(_Flash({}))
    except config.ConfigError as e:
        assert "not found" in str(e)
    else:
        raise AssertionError("missing node.json accepted")


def test_link_and_log_sections_are_checked_for_every_transport_kept_by_serial_only():
    # a UDP node checks them (a typo is caught before the node is moved to a chain) but
    # keeps no copy in RAM; a chain node keeps them with the defaults filled in
    assert "link.keepalive_ms" in _error(_with(link={"keepalive_ms": 5000, "dead_after_ms": 4000}))
    udp = config.from_dict(_with(link={"max_payload": 128}, log={"flush_ms": 50}))
    assert udp.link is None and udp.log is None
    serial = config.from_dict(_with(transport="serial", uart={"up": {"path": "up"}, "down": None},
                                    link={"max_payload": 128}, log={"flush_ms": 50}))
    assert serial.link["max_payload"] == 128 and serial.link["max_retries"] == 16
    assert serial.log["flush_ms"] == 50 and serial.log["segment_bytes"] == 4096


def test_default_window_holds_as_many_small_frames_as_8_full_ones():
    base = {"node": 3, "transport": "serial", "uart": {"up": {"path": "u", "baud": 115200}}}
    assert config.from_dict(base).window == 8
    small = dict(base, link={"max_payload": 256, "frame_bytes": 40})
    assert config.from_dict(small).window == 51               # 8 x 256 / 40
    assert config.from_dict(dict(base, link={"max_payload": 128, "frame_bytes": 40})).window == 25
    assert config.from_dict(dict(base, link={"max_payload": 1016, "frame_bytes": 64})).window == 64
    assert config.from_dict(dict(base, link={"max_payload": 256, "frame_bytes": 256})).window == 8
    assert config.from_dict(dict(small, window=8)).window == 8  # an explicit window wins
    assert config.default_window(0, 256) == 8 and config.default_window(32, 256) == 64
