# node.json: the node's configuration, loaded from flash and checked once at boot.
#
# Every problem is reported as ConfigError naming the key, what was expected and
# what was found, e.g.
#     node.json: sensors[1].period_ms: expected an integer 1..86400000, got -5
# so a node with a broken file says why on its console instead of failing later.
# Unknown keys are errors too (a typo would otherwise be silently ignored); keys
# starting with "_" are comments and are skipped.
#
# Schema (defaults in brackets):
#   node             int 0..2^32-1, required: the node id on the wire
#   transport        "udp" ["udp"]
#   wifi             {"ssid": str (1..32), "password": str (..64), "country": str
#                    ["": the firmware's default], "timeout_ms": int [15000],
#                    "wait_ms": int [15000]} or null [null]; board HALs only:
#                    country is the ISO 3166 code of the regulatory domain (two
#                    capital letters, e.g. "DE"), timeout_ms one join attempt before
#                    backing off, wait_ms how long boot waits for the first join
#   watchdog_ms      int, 0 or 1000..3600000 [0: off]: board HALs start machine.WDT
#                    with it (RP2040: at most 8388, RP2350 16777; longer is cut
#                    with a log line). Once started it cannot be stopped
#   ntp              true, false or {"host": str ["pool.ntp.org"]} [true]: board
#                    HALs set the clock by NTP after each Wi-Fi join (every 12 h)
#                    and the node takes its time base from it
#   deep_sleep       {"awake_ms": int 100..86400000, "sleep_ms": int 1000..4294000}
#                    or null [null]: board HALs only; after awake_ms of running the
#                    node saves epoch, seq and schedule and deep-sleeps sleep_ms,
#                    then continues the same epoch (docs/BOARDS.md)
#   sensors          [{"topic": str, "kind": str, "period_ms": int, ...params}] [[]]
#                    kinds and their params: firmware/sensors.py KINDS
#   bases            [[host, port], ...] [[]]: static subscribers (all topics, no
#                    rate cap, since 0, never expire)
#   discovery        {"port": int, "bind": str ["0.0.0.0"]} or null [null]:
#                    where ANNOUNCEs are received
#   key              hex string of 16..64 bytes or null [null]: sign every message
#   status_every_ms  int >= 100 [5000]
#   firmware         str [FIRMWARE_VERSION]
#   max_subscribers  int 1..32 [8]
#   max_events       int >= 1 or null [null]: stop after this many events (tests)
#   batch_ms         int >= 0 [0]: 0 sends one EVENT per reading; > 0 gathers
#                    readings for up to batch_ms (at most BATCH_MAX) into BATCHes
#   float32          bool [false]: round float readings to single precision, as
#                    on a board (for the CPython/unix simulator)
#   host_clock       bool [false]: take the time base from the HAL's wall clock
#                    at boot (unix HAL) instead of waiting for an ANNOUNCE
#
# Serial chain (transport "serial", firmware/chain.py; bases and discovery are not used):
#   uart             {"up": UART, "down": UART or null}, required, "up" not null
#                    UART = {"id": int, "tx": int, "rx": int, "baud": int [115200],
#                            "path": str (unix port: the pty), "rxbuf": int [2048]}
#   durable          bool [false]: keep accepted events and forwarded messages in a
#                    flash log until acknowledged (firmware/outbox.py)
#   outbox           {"max": int [256], "max_bytes": int [8192],
#                     "policy": "drop_oldest" | "drop_newest" | "block" ["drop_oldest"]}
#   forward          {"max": int [256], "max_bytes": int [8192]}: lower nodes' messages,
#                    counted until acknowledged upstream (so at least the up link's
#                    capacity: window x max_payload in flight + 2 x max_payload queued)
#   window           int 1..64 [8; with link.frame_bytes < max_payload: 8 x max_payload /
#                    frame_bytes, at most 64]: link window (frames in flight, frames
#                    buffered); the base's head should take at least as many
#   link             {"max_payload": int 128..1016 [256] (a STATUS must fit: ~100 bytes),
#                     "frame_bytes": int 0..1016 [0]: target DATA payload per frame on a
#                     lossy line (0: fill frames up to max_payload), "max_retries": int [16],
#                     "rto_ms": [1000], "keepalive_ms": [1000], "dead_after_ms": [3000]}
#   log              {"flush_records": [16], "flush_ms": [200], "cursor_acks": [32],
#                     "cursor_ms": [1000], "segment_bytes": 2048..65535 [4096],
#                     "ack_delay_ms": [20]: forwarded messages are flushed within this,
#                     and the down link's ACK waits for that flush}
#   stop_drain_ms    int [1000]: at a planned stop, keep sending this long to empty the outbox
import json

from protocol import codes
from protocol.topics import valid_topic
from firmware import sensors

FIRMWARE_VERSION = "0.1.0"
BATCH_MAX = 20
_MAX_U32 = 4294967295


class ConfigError(ValueError):
    # node.json is missing, not JSON, or holds a bad value
    pass


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v):
    return _is_int(v) or isinstance(v, float)


def _fail(where, expected, got):
    raise ConfigError("node.json: %s: expected %s, got %r" % (where, expected, got))


def _int(d, key, where, lo, hi, default=None, optional=False):
    v = d.get(key, default)
    if v is None and optional:
        return None
    if not _is_int(v) or v < lo or v > hi:
        _fail(where + key, "an integer %d..%d" % (lo, hi), v)
    return v


def _bool(d, key, where, default):
    v = d.get(key, default)
    if not isinstance(v, bool):
        _fail(where + key, "true or false", v)
    return v


def _str(d, key, where, default, limit=64):
    v = d.get(key, default)
    if not isinstance(v, str) or len(v) > limit:
        _fail(where + key, "a string of at most %d characters" % limit, v)
    return v


def _check_keys(d, known, where):
    for k in d:
        if not isinstance(k, str):
            _fail(where, "string keys", k)
        if k.startswith("_"):
            continue
        if k not in known:
            raise ConfigError("node.json: %sunknown key %r (known: %s)"
                              % (where, k, ", ".join(sorted(known))))


class Config:
    # Plain attributes (see the schema above); the defaults are class attributes and
    # from_dict() sets every mutable one per instance. No methods on purpose: nothing
    # in a Config refers back to this module, so a node can drop firmware.config
    # from sys.modules after boot (firmware/node.py load_config) and free its code.
    node = 0
    transport = "udp"
    wifi_ssid = ""
    wifi_password = ""
    sensors = None             # list of dicts, checked, with defaults filled in
    bases = None               # list of (host, port)
    discovery_port = None
    discovery_bind = "0.0.0.0"
    key = None                 # bytes or None
    status_every_ms = 5000
    firmware = FIRMWARE_VERSION
    max_subscribers = 8
    max_events = None
    batch_ms = 0
    float32 = False
    host_clock = False
    # board HALs (firmware/hal_board.py reads these attribute names)
    wifi_country = ""
    wifi_timeout_ms = 15000
    wifi_wait_ms = 15000
    watchdog_ms = 0
    ntp = True
    ntp_host = None
    awake_ms = 0               # deep_sleep: 0 = never sleep
    sleep_ms = 0
    # serial chain
    uart_up = None             # dict (checked, defaults filled) or None
    uart_down = None
    durable = False
    outbox_max = 256
    outbox_max_bytes = 8192
    outbox_policy = "drop_oldest"
    forward_max = 256
    forward_max_bytes = 8192
    window = 8
    link = None                # dict: LINK_DEFAULTS with node.json's values (serial only)
    log = None                 # dict: LOG_DEFAULTS with node.json's values (serial only)
    stop_drain_ms = 1000


_TOP = ("node", "transport", "wifi", "sensors", "bases", "discovery", "key",
        "status_every_ms", "firmware", "max_subscribers", "max_events", "batch_ms",
        "float32", "host_clock", "uart", "durable", "outbox", "forward", "window", "link",
        "log", "stop_drain_ms", "watchdog_ms", "ntp", "deep_sleep")
TRANSPORTS = ("udp", "serial")
POLICIES = ("drop_oldest", "drop_newest", "block")
LINK_DEFAULTS = {"max_payload": 256, "frame_bytes": 0, "max_retries": 16, "rto_ms": 1000,
                 "keepalive_ms": 1000, "dead_after_ms": 3000}
_LINK_RANGES = {"max_payload": (128, 1016), "frame_bytes": (0, 1016), "max_retries": (0, 1000),
                "rto_ms": (100, 4000),
                "keepalive_ms": (10, 60000), "dead_after_ms": (20, 600000)}
LOG_DEFAULTS = {"flush_records": 16, "flush_ms": 200, "cursor_acks": 32, "cursor_ms": 1000,
                "segment_bytes": 4096, "ack_delay_ms": 20}
_LOG_RANGES = {"flush_records": (1, 100), "flush_ms": (0, 60000), "cursor_acks": (1, 10000),
               "cursor_ms": (0, 600000), "segment_bytes": (2048, 65535),
               "ack_delay_ms": (0, 10000)}


def _sensor(spec, i, topics):
    where = "sensors[%d]." % i
    if not isinstance(spec, dict):
        _fail("sensors[%d]" % i, "an object", spec)
    kind = spec.get("kind")
    params = sensors.KINDS.get(kind) if isinstance(kind, str) else None
    if params is None:
        _fail(where + "kind", "one of " + ", ".join(sorted(sensors.KINDS)), kind)
        return {}
    known = ["topic", "kind", "period_ms"]
    for name in params:
        known.append(name)
    _check_keys(spec, known, where)
    topic = spec.get("topic")
    if not valid_topic(topic):
        _fail(where + "topic", "a topic of 1..64 characters without + # or NUL", topic)
    if topic in topics:
        _fail(where + "topic", "a topic not used by another sensor", topic)
    out = {"topic": topic, "kind": kind,
           "period_ms": _int(spec, "period_ms", where, 1, 86400000, 1000)}
    for name in params:
        default = params[name]
        v = spec.get(name, default)
        if name == "value":   # the constant kind: any scalar reading
            if not _is_num(v) and not isinstance(v, (str, bool)):
                _fail(where + name, "a number, string or boolean", v)
        elif _is_int(default):
            if not _is_int(v):
                _fail(where + name, "an integer", v)
        elif isinstance(default, float):
            if not _is_num(v):
                _fail(where + name, "a number", v)
        elif not _is_num(v) and not isinstance(v, (str, bool)):
            _fail(where + name, "a number, string or boolean", v)
        out[name] = v
    if "wave_ms" in out and (not _is_int(out["wave_ms"]) or out["wave_ms"] < 1):
        _fail(where + "wave_ms", "an integer >= 1", out["wave_ms"])
    if kind == "random" and out["high"] < out["low"]:
        _fail(where + "high", "a value >= low (%r)" % out["low"], out["high"])
    return out


def from_dict(d):
    # a decoded node.json -> Config; raises ConfigError
    if not isinstance(d, dict):
        _fail("top level", "a JSON object", d)
    _check_keys(d, _TOP, "")
    c = Config()
    c.sensors = []
    c.bases = []
    if "node" not in d:
        raise ConfigError("node.json: node: missing (the node id, an integer 0..4294967295)")
    c.node = _int(d, "node", "", 0, _MAX_U32)
    c.transport = d.get("transport", "udp")
    if c.transport not in TRANSPORTS:
        _fail("transport", '"udp" or "serial"', c.transport)
    wifi = d.get("wifi")
    if wifi is not None:
        if not isinstance(wifi, dict):
            _fail("wifi", 'an object {"ssid": ..., "password": ...}', wifi)
        _check_keys(wifi, ("ssid", "password", "country", "timeout_ms", "wait_ms"), "wifi.")
        c.wifi_ssid = _str(wifi, "ssid", "wifi.", "", 32)
        c.wifi_password = _str(wifi, "password", "wifi.", "", 64)
        cc = wifi.get("country", "")
        if not isinstance(cc, str) or (cc and (len(cc) != 2 or not "A" <= cc[0] <= "Z"
                                               or not "A" <= cc[1] <= "Z")):
            _fail("wifi.country", 'a two-letter country code like "DE" (ISO 3166), or ""', cc)
        c.wifi_country = cc
        c.wifi_timeout_ms = _int(wifi, "timeout_ms", "wifi.", 1000, 600000, 15000)
        c.wifi_wait_ms = _int(wifi, "wait_ms", "wifi.", 0, 600000, 15000)
    specs = d.get("sensors", [])
    if not isinstance(specs, list):
        _fail("sensors", "a list of sensor objects", specs)
    topics = []
    for i in range(len(specs)):
        s = _sensor(specs[i], i, topics)
        topics.append(s["topic"])
        c.sensors.append(s)
    bases = d.get("bases", [])
    if not isinstance(bases, list):
        _fail("bases", "a list of [host, port] pairs", bases)
    for i in range(len(bases)):
        b = bases[i]
        if (not isinstance(b, (list, tuple)) or len(b) != 2 or not isinstance(b[0], str)
                or not b[0] or not _is_int(b[1]) or not 0 < b[1] < 65536):
            _fail("bases[%d]" % i, '[host, port] like ["127.0.0.1", %d]' % codes.UDP_PORT, b)
        c.bases.append((b[0], b[1]))
    disc = d.get("discovery")
    if disc is not None:
        if not isinstance(disc, dict):
            _fail("discovery", '{"port": %d} or null' % codes.DISCOVERY_PORT, disc)
        _check_keys(disc, ("port", "bind"), "discovery.")
        c.discovery_port = _int(disc, "port", "discovery.", 1, 65535, codes.DISCOVERY_PORT)
        c.discovery_bind = _str(disc, "bind", "discovery.", "0.0.0.0")
    key = d.get("key")
    if key is not None:
        try:
            import binascii
            raw = binascii.unhexlify(key)
        except Exception:
            raw = None
        if raw is None or not codes.KEY_MIN_LEN <= len(raw) <= codes.KEY_MAX_LEN:
            _fail("key", "a hex string of %d..%d bytes, or null" % (codes.KEY_MIN_LEN, codes.KEY_MAX_LEN),
                  key if isinstance(key, str) and len(key) < 20 else type(key).__name__ + " (not shown)")
        c.key = raw
    c.status_every_ms = _int(d, "status_every_ms", "", 100, 86400000, 5000)
    c.firmware = _str(d, "firmware", "", FIRMWARE_VERSION)
    c.max_subscribers = _int(d, "max_subscribers", "", 1, 32, 8)
    c.max_events = _int(d, "max_events", "", 1, 1 << 62, None, True)
    c.batch_ms = _int(d, "batch_ms", "", 0, 60000, 0)
    c.float32 = _bool(d, "float32", "", False)
    c.host_clock = _bool(d, "host_clock", "", False)
    _board(d, c)
    _serial(d, c)
    if c.transport == "serial":
        return c
    if not c.bases and c.discovery_port is None:
        raise ConfigError("node.json: no bases and no discovery: the node would have nobody to send to")
    return c


def _board(d, c):
    # watchdog, NTP and deep sleep: read by board HALs, ignored by the unix HAL
    wd = d.get("watchdog_ms", 0)
    if wd is None:
        wd = 0
    if not _is_int(wd) or (wd != 0 and not 1000 <= wd <= 3600000):
        _fail("watchdog_ms", "0 (off) or an integer 1000..3600000", wd)
    c.watchdog_ms = wd
    ntp = d.get("ntp", True)
    if isinstance(ntp, dict):
        _check_keys(ntp, ("host",), "ntp.")
        host = ntp.get("host", "pool.ntp.org")
        if not isinstance(host, str) or not host or len(host) > 64:
            _fail("ntp.host", "a host name of 1..64 characters", host)
        c.ntp = True
        c.ntp_host = host
    elif isinstance(ntp, bool):
        c.ntp = ntp
    else:
        _fail("ntp", 'true, false or {"host": "pool.ntp.org"}', ntp)
    ds = d.get("deep_sleep")
    if ds is not None:
        if not isinstance(ds, dict):
            _fail("deep_sleep", 'an object {"awake_ms": ..., "sleep_ms": ...} or null', ds)
        _check_keys(ds, ("awake_ms", "sleep_ms"), "deep_sleep.")
        if "awake_ms" not in ds or "sleep_ms" not in ds:
            raise ConfigError("node.json: deep_sleep: needs both awake_ms and sleep_ms")
        c.awake_ms = _int(ds, "awake_ms", "deep_sleep.", 100, 86400000)
        c.sleep_ms = _int(ds, "sleep_ms", "deep_sleep.", 1000, 4294000)


def _uart(spec, where):
    if not isinstance(spec, dict):
        _fail(where, 'an object {"id": ..., "tx": ..., "rx": ..., "baud": ..., "path": ...}', spec)
    _check_keys(spec, ("id", "tx", "rx", "baud", "path", "rxbuf"), where + ".")
    out = {"baud": _int(spec, "baud", where + ".", 1200, 5000000, 115200),
           "rxbuf": _int(spec, "rxbuf", where + ".", 64, 65536, 2048)}
    for k in ("id", "tx", "rx"):
        out[k] = _int(spec, k, where + ".", 0, 255, None, True)
    path = spec.get("path")
    if path is not None and (not isinstance(path, str) or not path):
        _fail(where + ".path", "a device path", path)
    out["path"] = path
    return out


def _section(d, key, defaults, ranges):
    v = d.get(key)
    out = dict(defaults)
    if v is None:
        return out
    if not isinstance(v, dict):
        _fail(key, "an object with keys " + ", ".join(sorted(defaults)), v)
    _check_keys(v, list(defaults), key + ".")
    for k in defaults:
        lo, hi = ranges[k]
        out[k] = _int(v, k, key + ".", lo, hi, defaults[k])
    return out


def _serial(d, c):
    # the serial-chain keys; checked for every transport, required only for "serial"
    uart = d.get("uart")
    if uart is None:
        if c.transport == "serial":
            raise ConfigError('node.json: uart.up: missing: transport "serial" needs '
                              '{"uart": {"up": {...}, "down": {...} or null}}')
    else:
        if not isinstance(uart, dict):
            _fail("uart", 'an object {"up": {...}, "down": {...} or null}', uart)
        _check_keys(uart, ("up", "down"), "uart.")
        if uart.get("up") is None:
            if c.transport == "serial":
                raise ConfigError('node.json: uart.up: missing: transport "serial" needs '
                                  'an upstream UART')
        else:
            c.uart_up = _uart(uart["up"], "uart.up")
        if uart.get("down") is not None:
            c.uart_down = _uart(uart["down"], "uart.down")
    c.durable = _bool(d, "durable", "", False)
    ob = d.get("outbox")
    if ob is not None:
        if not isinstance(ob, dict):
            _fail("outbox", 'an object {"max": ..., "max_bytes": ..., "policy": ...}', ob)
        _check_keys(ob, ("max", "max_bytes", "policy"), "outbox.")
        c.outbox_max = _int(ob, "max", "outbox.", 1, 65536, 256)
        c.outbox_max_bytes = _int(ob, "max_bytes", "outbox.", 64, 1 << 24, 8192)
        c.outbox_policy = ob.get("policy", "drop_oldest")
        if c.outbox_policy not in POLICIES:
            _fail("outbox.policy", "one of " + ", ".join(POLICIES), c.outbox_policy)
    fw = d.get("forward")
    if fw is not None:
        if not isinstance(fw, dict):
            _fail("forward", 'an object {"max": ..., "max_bytes": ...}', fw)
        _check_keys(fw, ("max", "max_bytes"), "forward.")
        c.forward_max = _int(fw, "max", "forward.", 1, 65536, 256)
        c.forward_max_bytes = _int(fw, "max_bytes", "forward.", 64, 1 << 24, 8192)
    c.link = _section(d, "link", LINK_DEFAULTS, _LINK_RANGES)
    c.window = _int(d, "window", "", 1, 64,
                    default_window(c.link["frame_bytes"], c.link["max_payload"]))
    if c.link["keepalive_ms"] >= c.link["dead_after_ms"]:
        _fail("link.keepalive_ms", "less than dead_after_ms (%d)" % c.link["dead_after_ms"],
              c.link["keepalive_ms"])
    c.log = _section(d, "log", LOG_DEFAULTS, _LOG_RANGES)
    if c.log["segment_bytes"] < c.link["max_payload"] + 32:
        _fail("log.segment_bytes", "at least link.max_payload + 32", c.log["segment_bytes"])
    if c.transport != "serial":
        c.link = c.log = None     # checked all the same; only a chain node keeps them (RAM)
    c.stop_drain_ms = _int(d, "stop_drain_ms", "", 0, 600000, 1000)


def default_window(frame_bytes, max_payload):
    # The default window: 8 full frames; with small frames (link.frame_bytes below
    # max_payload, a lossy line) as many frames as hold the same bytes, up to 64 (the
    # SACK bitmap): a window of 8 small frames leaves such a line idle while losses are
    # recovered, and the link's buffers hold frames of their own size, so RAM is the same
    if not frame_bytes or frame_bytes >= max_payload:
        return 8
    return min(64, 8 * max_payload // frame_bytes)


def parse(text):
    # node.json text (str or bytes) -> Config; raises ConfigError
    try:
        d = json.loads(text)
    except Exception as e:  # ValueError on both interpreters; keep the message
        raise ConfigError("node.json: not valid JSON (%s)" % (e,))
    return from_dict(d)


def load(hal, name="node.json"):
    # read and check node.json from the HAL's flash; raises ConfigError
    data = hal.read_file(name)
    if data is None:
        raise ConfigError("node.json: not found in flash (%s)" % name)
    return parse(data)
