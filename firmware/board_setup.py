# What a board node needs only while it boots, kept out of firmware/hal_board.py so
# that its code can be dropped once the node runs (firmware.core.boot_done(): on a
# board without ROMFS every module's bytecode sits in RAM). BoardHal's begin(),
# uart_open(), make_sensors(), resume() and register_kinds() import this module and
# call the function of the same name with the HAL as first argument:
#   register_kinds()               before node.json is checked: the board sensor kinds
#   begin(hal, cfg, watchdog_ms)   watchdog, Wi-Fi (waits up to wifi_wait_ms for the
#                                  first association), NTP on
#   uart_open(hal, spec)           a BoardUart for node.json uart.up / uart.down
#   make_sensors(hal, specs, ...)  node.sensors: board kinds here, the rest synthetic
#   resume(hal)                    the deep-sleep Resume, or None for a new epoch
import machine

from firmware import sensors
from firmware.hal_board import _get

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore
        return x

_WIFI_WAIT_MS = const(15000)        # begin(): longest wait for the first association
_UART_RXBUF = const(2048)           # default 256 overflows in 20 ms at 115200 baud
_UART_RXBUF_MIN = const(1024)
_UART_TXBUF = const(1024)           # a whole frame fits: write() rarely waits

# Board sensor kinds: parameters and defaults, in the format of firmware/sensors.py
# KINDS (firmware/config.py checks node.json against them once register_kinds() has
# merged them there; firmware.core.load_config() does that before loading). Values
# are integers: mcu_temp in 0.01 degC, adc in mV, sht3x in 0.01 degC / 0.01 %RH
# ({"t": .., "rh": ..} for measure "both"). A failed read publishes null and is
# counted in the sensor's `errors`.
KINDS = {
    "mcu_temp": {},
    "adc": {"pin": -1, "samples": 1},
    "sht3x": {"i2c": 0, "scl": -1, "sda": -1, "address": 0x44, "freq": 100000,
              "measure": "both"},
}


def register_kinds():
    # let firmware/config.py accept the board kinds (call before config.load)
    for k in KINDS:
        sensors.KINDS[k] = KINDS[k]


def begin(hal, cfg, watchdog_ms=None):
    # Start the watchdog and Wi-Fi as cfg (firmware.config.Config) says. Waits up
    # to wifi_wait_ms (15 s) for the first association, feeding the watchdog;
    # without it the node starts anyway and feed() keeps trying.
    if watchdog_ms is None:
        watchdog_ms = _get(cfg, "watchdog_ms", 0) or 0
    if watchdog_ms:
        start_watchdog(hal, watchdog_ms)
    ssid = _get(cfg, "wifi_ssid", "")
    if not ssid:
        return
    if not hal.has_wifi:
        hal.log("wifi: %r configured but this %s has no radio" % (ssid, hal.board))
        return
    import network
    hal._set_country(network, _get(cfg, "wifi_country", ""))
    try:
        network.hostname("starling-%d" % _get(cfg, "node", 0))  # DHCP name, >= 1.20
    except (AttributeError, OSError, ValueError):
        pass
    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    from firmware.board_wifi import Wifi
    hal._wifi = Wifi(hal, network, wlan, ssid, _get(cfg, "wifi_password", ""),
                     _get(cfg, "wifi_timeout_ms", None),
                     _get(cfg, "ntp", True), _get(cfg, "ntp_host", None))
    hal.log("wifi: joining %r" % ssid)
    wait_link(hal, _get(cfg, "wifi_wait_ms", _WIFI_WAIT_MS))


def start_watchdog(hal, ms):
    # machine.WDT within this port's bounds; cannot be stopped afterwards
    lo = hal.WDT_MIN_MS
    hi = hal.WDT_MAX_MS
    if ms < lo or (hi and ms > hi):
        want = ms
        ms = lo if ms < lo else hi
        hal.log("watchdog: %d ms is outside %d..%s on %s: using %d" % (
            want, lo, hi or "any", hal.board, ms))
    hal._wdt = machine.WDT(timeout=ms)
    hal.wdt_ms = ms
    # feed at least twice per period from wait_readable()
    if ms // 2 < hal._slice_ms:
        hal._slice_ms = ms // 2 if ms >= 2 else 1
    return ms


def wait_link(hal, timeout_ms):
    # block (feeding the watchdog) until Wi-Fi is up or timeout_ms passed
    clock = hal._clock
    start = clock.ticks_ms()
    while not hal.link_up():
        if clock.ticks_diff(clock.ticks_ms(), start) >= timeout_ms:
            hal.log("wifi: not up after %d ms: sampling anyway, sends fail until it is"
                     % timeout_ms)
            return False
        clock.sleep_ms(100)
        hal.feed()
    return True


def uart_open(hal, spec):
    # A BoardUart for one chain link: 8N1, non-blocking reads (timeout=0), watched
    # by wait_readable(). spec: a checked uart.up / uart.down dict of node.json
    # {"id", "tx", "rx", "baud" [115200], "rxbuf" [2048, raised to at least
    # 1024], "txbuf" [1024]} ("path" is the unix port's and ignored here).
    # Raises ValueError naming the bad field (ESP32: UART0 is the REPL; RP2: pins
    # fixed by the pin mux).
    uid = _get(spec, "id", -1)
    tx = _get(spec, "tx", -1)
    rx = _get(spec, "rx", -1)
    baud = _get(spec, "baud", 115200) or 115200
    rxbuf = _get(spec, "rxbuf", _UART_RXBUF) or _UART_RXBUF
    if rxbuf < _UART_RXBUF_MIN:
        rxbuf = _UART_RXBUF_MIN
    txbuf = _get(spec, "txbuf", _UART_TXBUF) or _UART_TXBUF
    hal._check_uart(uid, tx, rx)
    if not 1200 <= baud <= 5000000:
        raise ValueError("uart.baud: expected 1200..5000000, got %r" % (baud,))
    u = machine.UART(uid, baud, bits=8, parity=None, stop=1, tx=machine.Pin(tx),
                     rx=machine.Pin(rx), rxbuf=rxbuf, txbuf=txbuf, timeout=0)
    from firmware.board_uart import BoardUart
    bu = BoardUart(u, uid, baud, rxbuf, hal.sleep_ms)
    hal._uarts.append(bu)
    hal.watch(u)
    return bu


def make_sensor(hal, spec, node_id, index):
    # a BoardSensor for a checked spec of one of KINDS; ValueError for bad params
    kind = spec["kind"]
    if kind == "mcu_temp":
        read = hal._mcu_temp_reader()
    elif kind == "adc":
        samples = spec.get("samples", 1)
        if not 1 <= samples <= 64:   # 64 * 3.3e6 uV stays below 2^30
            raise ValueError("sensor %s: samples must be 1..64" % spec["topic"])
        read = hal._adc_reader(spec.get("pin", -1), samples)
    elif kind == "sht3x":
        from firmware.board_sensors import sht3x_reader
        read = sht3x_reader(spec, hal.sleep_ms)
    else:
        raise ValueError("sensor kind %r is not a board kind" % (kind,))
    from firmware.board_sensors import BoardSensor
    return BoardSensor(hal, spec, node_id, index, read)


def make_sensors(hal, specs, node_id, f32=False):
    # node.sensors for a checked node.json: board kinds here, the rest synthetic
    out = []
    for i in range(len(specs)):
        spec = specs[i]
        if spec["kind"] in KINDS:
            out.append(make_sensor(hal, spec, node_id, i))
        else:
            out.append(sensors.Sensor(spec, node_id, i, f32))
    return out


def resume(hal):
    # Once at boot, before the epoch file: the Resume saved by deep_sleep() if this
    # boot is a wake from it, else None (new epoch). The record is cleared either
    # way, so a later reset cannot resume it twice.
    if hal._resume_done:
        return hal._resumed
    hal._resume_done = True
    r = None
    if hal._woke_from_deep_sleep():
        from firmware.board_sleep import Resume
        r = Resume.unpack(hal._rtc_load())
        if r is None:
            hal.log("deep-sleep wake without a valid resume record: new epoch")
    hal._rtc_clear()
    if r is not None:
        if r.wall_ok and hal._rtc_keeps_time():
            hal._wall_ok = True   # the node corrects its uptime from the clock
        else:
            # no clock ran through the sleep: ticks restarted at the reset, so what
            # they count now (boot, Wi-Fi join) is uptime the record cannot hold
            r.uptime += hal.ticks_ms()
        hal.log("resumed from deep sleep: epoch %d, next seq %d, uptime %d ms" % (
            r.epoch, r.next_seq, r.uptime))
    hal._resumed = r
    return r
