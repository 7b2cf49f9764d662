# Board HALs (firmware/hal_board.py, hal_esp32.py, hal_pico.py) against fake board
# modules (tests/board_fakes/: machine, network, esp32, rp2, ntptime, a fake clock and
# a fake socket module), put into sys.modules before the HALs are imported.
# Plain functions with bare asserts: pytest runs them on CPython and
# tests/test_dual_on_micropython.py under the MicroPython unix port.
import sys

_dir = __file__[:__file__.rfind("/")] if "/" in __file__ else "."
_tests = _dir[:_dir.rfind("/")] if "/" in _dir else ".."
if _tests not in sys.path:
    sys.path.append(_tests)

import board_fakes   # noqa: E402
from board_fakes import machine, network, net, ntptime   # noqa: E402
from board_fakes import esp32 as fake_esp32   # noqa: E402
from board_fakes import rp2 as fake_rp2   # noqa: E402

board_fakes.install("esp32")   # the HALs import machine at module level

from protocol import messages   # noqa: E402
from firmware import config, sensors   # noqa: E402
from firmware import hal_board, hal_esp32, hal_pico, board_setup, board_sleep, board_sensors   # noqa: E402
from firmware.fake_i2c import FakeI2C, FakeSHT3x   # noqa: E402
from firmware.node import Node   # noqa: E402
from board_fakes.clock import FakeClock   # noqa: E402

import os   # noqa: E402

BASE = ("192.168.4.2", 5684)
PICO_W = "Raspberry Pi Pico W with RP2040"
PICO = "Raspberry Pi Pico with RP2040"


def _flash():
    return board_fakes.flash_dir("board-hal")


class Cfg:
    # the attributes of firmware.config.Config a board HAL reads
    def __init__(self, ssid="lab", password="secret", **kw):
        self.node = 7
        self.wifi_ssid = ssid
        self.wifi_password = password
        for k in kw:
            setattr(self, k, kw[k])


def _esp(chip="ESP32", flash=None):
    clk = board_fakes.install("esp32", chip=chip)
    hal = hal_esp32.Esp32Hal(flash or _flash(), True, clk, net, net.Poll(),
                             "Generic ESP32 module with " + chip)
    return hal, clk


def _pico(name=PICO_W, flash=None):
    clk = board_fakes.install("rp2")
    hal = hal_pico.PicoHal(flash or _flash(), True, clk, net, net.Poll(), name)
    return hal, clk


def _reboot_hal(old, clk):
    # main.py runs again after a reset: a new HAL on the same flash
    cls = type(old)
    return cls(old.flash_dir, True, clk, net, net.Poll(), old.machine_name)


def _node_cfg(period_ms=500, **extra):
    d = {"node": 7, "sensors": [{"topic": "c", "kind": "counter", "period_ms": period_ms}],
         "bases": [list(BASE)], "status_every_ms": 600000}
    for k in extra:
        d[k] = extra[k]
    return config.from_dict(d)


def _run(node, hal, clk, ms):
    # the node's loop (Node.run) for ms of fake time, calling feed() each step
    end = clk.ms + ms
    while clk.ms < end:
        delay = node.step(hal.ticks_ms())
        hal.feed()
        if delay > end - clk.ms:
            delay = end - clk.ms
        hal.wait_readable(delay)


def _event_seqs():
    out = []
    for addr, data in net.sent:
        m = messages.decode(data)
        if isinstance(m, messages.Event):
            out.append(m.seq)
    return out


# --- time ---------------------------------------------------------------------------


def test_esp32_wall_clock_corrects_the_2000_epoch():
    hal, clk = _esp()
    assert clk.gmtime(0)[0] == 2000
    assert hal.wall_ms() is None          # RTC not set yet: no nonsense time
    hal.begin(Cfg())
    assert hal.link_up() and ntptime.calls == 1
    assert hal.time_synced() and not hal.time_synced()
    # the RTC holds seconds since 2000; wall_ms is Unix time
    assert clk.time() == ntptime.unix_now - 946684800
    assert hal.wall_ms() == ntptime.unix_now * 1000
    clk.advance(1234)
    assert hal.wall_ms() == ntptime.unix_now * 1000 + 1234


def test_pico_w_wall_clock_has_no_correction():
    hal, clk = _pico()
    assert clk.gmtime(0)[0] == 1970
    hal.begin(Cfg(wifi_country="DE"))
    assert network.country_code == "DE"
    assert clk.time() == ntptime.unix_now
    assert hal.wall_ms() == ntptime.unix_now * 1000


def test_ticks_wrap_through_the_clock():
    hal, clk = _esp()
    a = hal.ticks_ms()
    clk.advance(5000)                      # the fake starts 3 s before the wrap
    b = hal.ticks_ms()
    assert b < a and hal.ticks_diff(b, a) == 5000


# --- Wi-Fi ----------------------------------------------------------------------------


def test_wifi_reconnects_with_backoff_while_sampling_continues():
    hal, clk = _esp()
    cfg = _node_cfg()
    hal.begin(cfg_wifi(cfg))
    assert hal.link_up()
    node = Node(cfg, hal)
    node.boot()
    _run(node, hal, clk, 10000)
    sent_before = len(_event_seqs())
    assert sent_before >= 19
    wlan = network.WLAN()
    connects_before = len(wlan.connects)

    network.ap_down()                      # the access point vanishes for 50 s
    lost_at = clk.ms
    published = node.published
    _run(node, hal, clk, 50000)
    assert not hal.link_up()
    assert node.published - published >= 99          # sampling went on: 2 per second
    assert len(_event_seqs()) == sent_before          # nothing reached the stack
    assert hal.send_down == node.send_errors > 0      # failed fast, and counted
    assert node.dropped == node.send_errors

    # retries: first 1 s after the loss, then waits doubling: 2, 4, 8, 16 s (each
    # after a join that fails in join_ms); detection rides on the <= 1 s wait slices
    tries = wlan.connects[connects_before:]   # all failed: a later one exists or AP down
    assert tries[0] - lost_at <= 1000 + 1000 + 1000
    waits = [tries[i + 1] - tries[i] - network.join_ms for i in range(len(tries) - 1)]
    expect = 2000
    for w in waits:
        assert expect <= w <= expect + 2000, (waits, expect)
        expect *= 2
    assert len(tries) == 5

    network.ap_up()
    _run(node, hal, clk, 45000)                       # next try due ~73-83 s after the loss
    assert hal.link_up()
    st = hal.stats()
    assert st["wifi_drops"] == 1 and st["wifi_connects"] == 2
    assert st["wifi_failures"] == len(wlan.connects[connects_before:]) - 1
    seqs = _event_seqs()
    assert len(seqs) > sent_before + 20               # sends resumed
    # every reading numbered exactly once: sent, or counted as dropped
    assert sorted(seqs) == seqs
    missing = node.next_seq - len(seqs)
    assert missing == node.dropped
    assert ntptime.calls == 2                         # NTP again after the reconnect


def cfg_wifi(cfg):
    # the Wi-Fi keys a node.json "wifi" object sets (firmware/config.py)
    cfg.wifi_ssid = "lab"
    cfg.wifi_password = "secret"
    return cfg


def test_wifi_join_failures_back_off_to_a_cap_and_log_the_status():
    hal, clk = _esp()
    logs = []
    hal.log = logs.append
    start = clk.ms
    hal.begin(Cfg(password="wrong"))                  # waits wifi_wait_ms (15 s), no more
    assert not hal.link_up()
    assert 15000 <= clk.ms - start <= 15200
    assert [x for x in logs if "wrong_password" in x]
    assert [x for x in logs if "not up after" in x]
    # keep polling for 10 minutes: the wait between tries caps at 60 s
    for _ in range(600):
        hal.wait_readable(1000)
    tries = network.WLAN().connects
    waits = [tries[i + 1] - tries[i] - network.join_ms for i in range(len(tries) - 1)]
    assert max(waits) <= 60000 + 1000
    assert waits[-1] >= 60000 and waits[-2] >= 60000
    assert len(tries) - 1 <= hal.stats()["wifi_failures"] <= len(tries)   # the last may still run


def test_wifi_join_timeout_and_connect_error_are_survived():
    hal, clk = _esp()
    network.join_ms = 30000                           # longer than the join timeout
    hal.begin(Cfg(wifi_timeout_ms=5000, wifi_wait_ms=6000))
    assert not hal.link_up()
    assert network.WLAN().disconnects >= 1            # the slow join was abandoned
    network.join_ms = 2000
    for _ in range(20):
        hal.wait_readable(1000)
    assert hal.link_up()


def test_udp_send_fails_fast_while_down_and_errno_handling():
    hal, clk = _esp()
    hal.begin(Cfg())
    s = hal.udp_open(0, False, True)
    assert s.blocking is False and s.bound == ("0.0.0.0", 0)
    addr = hal.resolve(*BASE)
    assert hal.udp_send(s, addr, b"x") and net.sent[-1] == (BASE, b"x")
    network.ap_down()
    hal.feed()
    n = len(net.sent)
    assert hal.udp_send(s, addr, b"y") is False and len(net.sent) == n
    assert hal.send_down == 1 and hal.send_errors == 0
    network.ap_up()
    for _ in range(5):
        hal.wait_readable(1000)
    assert hal.link_up()
    net.send_errno = 12                               # ENOMEM: lwIP out of buffers
    assert hal.udp_send(s, addr, b"z") is False and hal.send_errors == 1
    net.send_errno = 0
    assert hal.udp_recv(s) is None and hal.recv_errors == 0     # EAGAIN: nothing
    s.inbox.append((b"hello", BASE))
    assert hal.udp_recv(s) == (b"hello", BASE)


class _ErrSock:
    def __init__(self, err):
        self.err = err

    def recvfrom(self, n):
        raise OSError(self.err)


def test_etimedout_is_116_on_esp32_and_110_on_rp2():
    esp, _ = _esp()
    assert esp.ETIMEDOUT == 116
    assert esp.udp_recv(_ErrSock(116)) is None and esp.recv_errors == 0
    assert esp.udp_recv(_ErrSock(104)) is None and esp.recv_errors == 1   # ECONNRESET
    pico, _ = _pico()
    assert pico.ETIMEDOUT == 110
    assert pico.udp_recv(_ErrSock(110)) is None and pico.recv_errors == 0
    assert pico.udp_recv(_ErrSock(11)) is None and pico.recv_errors == 0


def test_static_base_by_name_resolves_once_the_link_is_up():
    hal, clk = _esp()
    net.dns["base.lan"] = "192.168.4.9"
    addr = hal.resolve("base.lan", 5684)              # radio not started: no DNS
    assert hal.addr_str(addr) == "base.lan:5684 (unresolved)"
    hal.begin(Cfg())
    s = hal.udp_open()
    assert hal.udp_send(s, addr, b"a")
    assert net.sent[-1] == (("192.168.4.9", 5684), b"a")
    assert addr == ("192.168.4.9", 5684)              # Subscribers.find_addr compares so


# --- sensors -----------------------------------------------------------------------------


def _spec(kind, **params):
    d = {"topic": "t/" + kind, "kind": kind, "period_ms": 1000}
    for k in board_setup.KINDS[kind]:
        d[k] = board_setup.KINDS[kind][k]
    for k in params:
        d[k] = params[k]
    return d


def test_esp32_mcu_temp_both_chip_families():
    hal, _ = _esp("ESP32S3")
    s = board_setup.make_sensor(hal, _spec("mcu_temp"), 7, 0)
    assert s.sample() == 4125                         # 41.25 degC from mcu_temperature()
    fake_esp32.temp_c = -3.5
    assert s.sample() == -350
    hal, _ = _esp("ESP32")                            # original chip: Fahrenheit
    s = board_setup.make_sensor(hal, _spec("mcu_temp"), 7, 0)
    assert s.sample() == 5333                         # 128 F = 53.33 degC
    fake_esp32.temp_f = 32
    assert s.sample() == 0
    fake_esp32.temp_f = 33
    assert s.sample() == 56                           # 0.5556 rounds to 0.56
    assert hal_esp32.f_to_centi(212) == 10000 and hal_esp32.f_to_centi(-40) == -4000


def test_esp32_adc_reads_microvolts_as_integer_millivolts():
    hal, _ = _esp()
    s = board_setup.make_sensor(hal, _spec("adc", pin=34, samples=4), 7, 0)
    adc = machine.adcs[-1]
    assert adc.atten == machine.ADC.ATTN_11DB
    machine.adc_values[34] = 1234567
    assert s.sample() == 1235 and adc.reads == 4
    machine.adc_values[34] = 1234499
    assert s.sample() == 1234
    try:
        board_setup.make_sensor(hal, _spec("adc", pin=5), 7, 0)
        assert False, "GPIO 5 has no ADC"
    except ValueError:
        pass
    hal._wifi_cfg = True                               # begin() with an ssid sets this
    try:
        board_setup.make_sensor(hal, _spec("adc", pin=25), 7, 0)
        assert False, "ADC2 with Wi-Fi"
    except ValueError as e:
        assert "ADC2" in str(e)


def _datasheet_centi(raw):
    v = raw * 3.3 / 65535
    return (27 - (v - 0.706) / 0.001721) * 100


def test_pico_temperature_integer_math_matches_the_datasheet():
    worst = 0
    for raw in range(0, 65536, 7):
        e = hal_pico.temp_centi(raw) - _datasheet_centi(raw)
        e = -e if e < 0 else e
        if e > worst:
            worst = e
    assert worst <= 0.5 + 1e-6                        # rounding only: +-0.005 degC
    for raw in (0, 1, 14020, 14021, 65534, 65535):
        e = hal_pico.temp_centi(raw) - _datasheet_centi(raw)
        assert -1 <= e <= 1                            # the +-0.01 degC of the brief
    assert 2699 <= hal_pico.temp_centi(14020) <= 2702  # 0.706 V reads 27 degC
    hal, _ = _pico()
    s = board_setup.make_sensor(hal, _spec("mcu_temp"), 7, 0)
    machine.adc_values[4] = 13000
    assert s.sample() == hal_pico.temp_centi(13000) == 5686   # 0.6546 V: 56.86 degC
    assert machine.adcs[-1].key == 4 and machine.adcs[-1].reads == 8


def test_pico_adc_millivolts_on_gp26_to_gp28():
    hal, _ = _pico(PICO)
    s = board_setup.make_sensor(hal, _spec("adc", pin=26), 7, 0)
    machine.adc_values[0] = 32768
    assert s.sample() == 1650
    machine.adc_values[0] = 65535
    assert s.sample() == 3300
    s2 = board_setup.make_sensor(hal, _spec("adc", pin=28, samples=2), 7, 1)
    machine.adc_values[2] = 1
    assert s2.sample() == 0
    for bad in (29, 25, -1):
        try:
            board_setup.make_sensor(hal, _spec("adc", pin=bad), 7, 0)
            assert False, bad
        except ValueError:
            pass


def test_sht3x_kind_and_read_errors_publish_null():
    hal, clk = _esp()
    bus = FakeI2C(nak_errno=19)
    bus.attach(FakeSHT3x(21.5, 40.0, clock=lambda: clk.ms))
    machine.i2c_bus = bus
    s = board_setup.make_sensor(hal, _spec("sht3x", scl=22, sda=21), 7, 0)
    assert machine.i2cs[-1].scl.id == 22 and machine.i2cs[-1].freq == 100000
    v = s.sample()
    assert v == {"t": 2150, "rh": 4000}
    t_only = board_setup.make_sensor(hal, _spec("sht3x", measure="t"), 7, 1)
    assert t_only.sample() == 2150
    machine.i2c_bus = FakeI2C(nak_errno=19)           # sensor unplugged
    assert s.sample() is None and s.errors == 1 and s.n == 2


def test_board_kinds_join_the_config_and_the_synthetic_ones():
    saved = dict(sensors.KINDS)
    try:
        board_setup.register_kinds()
        cfg = config.from_dict({"node": 3, "bases": [list(BASE)], "sensors": [
            {"topic": "cpu", "kind": "mcu_temp", "period_ms": 5000},
            {"topic": "bat", "kind": "adc", "pin": 35},
            {"topic": "n", "kind": "counter"}]})
    finally:
        for k in list(sensors.KINDS):
            if k not in saved:
                del sensors.KINDS[k]
    hal, _ = _esp()
    got = hal.make_sensors(cfg.sensors, cfg.node)
    assert [s.kind for s in got] == ["mcu_temp", "adc", "counter"]
    assert isinstance(got[0], board_sensors.BoardSensor) and isinstance(got[2], sensors.Sensor)
    assert got[0].next_due == sensors.seed_for(3, 0) % 5000
    assert "mcu_temp" not in sensors.KINDS


# --- deep sleep --------------------------------------------------------------------------


def test_resume_record_round_trip_and_rejects_damage():
    r = board_sleep.Resume(12, 345, 6789012345, 1767225600000, [(3, 4000), (70000, 123456789012)], True)
    raw = r.pack()
    back = board_sleep.Resume.unpack(raw)
    assert (back.epoch, back.next_seq, back.uptime, back.time_base, back.wall_ok) == (
        12, 345, 6789012345, 1767225600000, True)
    assert [tuple(x) for x in back.sensors] == [(3, 4000), (70000, 123456789012)]
    assert board_sleep.Resume.unpack(board_sleep.Resume(1, 0, 0).pack()).time_base is None
    for bad in (b"", raw[:-1], raw[:20], b"\x00" * len(raw)):
        assert board_sleep.Resume.unpack(bad) is None
    flipped = bytearray(raw)
    flipped[9] ^= 1
    assert board_sleep.Resume.unpack(bytes(flipped)) is None


def _boot_resumed(node, hal, r):
    # a deep-sleep wake through Node.boot: no new epoch in flash; epoch, seq, uptime,
    # time base and sensor state from r; static bases re-added without claiming a skip
    node.boot(resume=r)
    assert node.resumed and node.epoch == r.epoch and node.next_seq == r.next_seq


def _sleep(hal, node, ms):
    try:
        hal.deep_sleep(ms, node)
    except machine.DeepSleepReset:
        return True
    return False


def test_esp32_deep_sleep_keeps_epoch_and_seq_power_on_starts_a_new_epoch():
    hal, clk = _esp()
    cfg = _node_cfg(period_ms=1000)
    hal.begin(cfg_wifi(cfg))
    node = Node(cfg, hal)
    node.boot()
    _run(node, hal, clk, 5500)
    epoch, seq, up, tb = node.epoch, node.next_seq, node.uptime, node.time_base
    wall0, ms0 = hal.wall_ms(), clk.ms
    n0, due0 = node.sensors[0].n, node.sensors[0].next_due
    assert epoch == 1 and seq >= 5
    assert _sleep(hal, node, 60000)
    assert machine.deepsleeps == [60000] and len(machine.rtc_memory) == 40 + 16 + 4
    assert machine.reset_cause() == machine.DEEPSLEEP_RESET

    # wake: main.py runs again
    hal2 = _reboot_hal(hal, clk)
    r = hal2.resume()
    assert r is not None and hal2.resume() is r
    assert (r.epoch, r.next_seq, r.uptime, r.time_base) == (epoch, seq, up + 60000, tb)
    assert hal2.wall_ms() == wall0 + clk.ms - ms0     # the RTC ran on through the sleep
    assert machine.rtc_memory == b""                  # consumed: a reset cannot reuse it
    hal2.begin(cfg)
    node2 = Node(cfg, hal2)
    _boot_resumed(node2, hal2, r)
    assert (node2.sensors[0].n, node2.sensors[0].next_due) == (n0, due0)
    before = len(net.sent)
    _run(node2, hal2, clk, 3000)
    seqs = [messages.decode(d).seq for a, d in net.sent[before:]
            if isinstance(messages.decode(d), messages.Event)]
    assert seqs[0] == seq and node2.epoch == epoch    # the seq continues, same epoch
    ev = messages.decode(net.sent[-1][1])
    assert ev.epoch == epoch and ev.skip == 0

    # a hard reset after the wake: a new epoch
    try:
        machine.reset()
    except machine.DeepSleepReset:
        pass
    hal3 = _reboot_hal(hal, clk)
    assert hal3.resume() is None
    # power-on: RTC memory is gone; the node counts a new epoch from flash
    assert _sleep(hal2, node2, 1000)
    machine.power_on()
    hal4 = _reboot_hal(hal, clk)
    assert hal4.resume() is None
    node4 = Node(cfg, hal4)
    node4.boot()
    assert node4.epoch == epoch + 1 and node4.next_seq == 0


def test_esp32_deep_sleep_record_fits_rtc_memory():
    hal, _ = _esp()
    cfg = _node_cfg()
    node = Node(cfg, hal)
    node.sensors = node.sensors * 200                 # 200 sensors: 3244 bytes
    try:
        hal.deep_sleep(1000, node)
        assert False, "record too big"
    except ValueError as e:
        assert "RTC" in str(e)
    assert machine.deepsleeps == []


def test_pico_deep_sleep_token_in_watchdog_scratch_and_flash_record():
    hal, clk = _pico(PICO)
    cfg = _node_cfg()
    node = Node(cfg, hal)
    node.epoch, node.next_seq, node.uptime = 4, 99, 123456
    assert _sleep(hal, node, 30000)
    assert machine.reset_cause() == machine.WDT_RESET  # RP2 deepsleep = lightsleep + reboot
    assert machine.mem32[0x4005800C] == 0x5354524C
    hal2 = _reboot_hal(hal, clk)
    r = hal2.resume()
    assert (r.epoch, r.next_seq, r.uptime) == (4, 99, 153456)
    assert hal2.wall_ms() is None                      # RP2 time is not carried over
    assert machine.mem32[0x4005800C] == 0
    # a real watchdog timeout later: token cleared, so a new epoch
    try:
        machine.reset()
    except machine.DeepSleepReset:
        pass
    assert machine.reset_cause() == machine.WDT_RESET
    assert _reboot_hal(hal, clk).resume() is None
    # power-on after a sleep: scratch registers are reset, the file alone is not enough
    hal5 = _reboot_hal(hal, clk)
    assert _sleep(hal5, node, 1000)
    machine.power_on()
    assert _reboot_hal(hal, clk).resume() is None


def test_pico_deep_sleep_is_cut_to_the_running_watchdog():
    hal, clk = _pico(PICO)
    assert board_setup.start_watchdog(hal, 8000) == 8000
    node = Node(_node_cfg(), hal)
    node.uptime = 1000
    assert _sleep(hal, node, 60000)
    assert machine.deepsleeps == [7500]
    r = _reboot_hal(hal, clk).resume()
    assert r.uptime == 1000 + 7500


# --- watchdog -----------------------------------------------------------------------------


def test_watchdog_is_fed_through_long_waits():
    hal, clk = _esp()
    cfg = _node_cfg(period_ms=30000)                  # the node sleeps 30 s at a time
    assert board_setup.start_watchdog(hal, 2000) == 2000
    hal.begin(cfg_wifi(cfg))
    node = Node(cfg, hal)
    node.boot()
    _run(node, hal, clk, 120000)
    wdt = machine.wdt
    assert wdt.timeout == 2000 and wdt.feeds >= 120
    assert not wdt.starved() and wdt.max_gap <= 1000


def test_watchdog_bounds_per_port():
    hal, _ = _esp()
    assert board_setup.start_watchdog(hal, 300) == 1000  # ESP32: whole seconds on old firmware
    assert machine.wdt.timeout == 1000
    hal, _ = _pico()
    assert board_setup.start_watchdog(hal, 20000) == 8388  # RP2040 maximum
    assert machine.wdt.timeout == 8388
    assert hal_pico.PicoHal("/", True, FakeClock(), net, net.Poll(),
                            "Raspberry Pi Pico 2 W with RP2350").WDT_MAX_MS == 16777
    hal, _ = _esp()
    hal.begin(Cfg(ssid=""), watchdog_ms=5000)
    assert machine.wdt.timeout == 5000 and hal._slice_ms == 1000


# --- UART ---------------------------------------------------------------------------------


def test_esp32_uart_config_and_refusals():
    hal, _ = _esp()
    bu = hal.uart_open({"id": 2, "tx": 17, "rx": 16, "baud": 460800, "path": None})
    u = bu.stream()
    assert u is machine.uarts[-1]
    assert (u.id, u.tx.id, u.rx.id, u.baudrate) == (2, 17, 16, 460800)
    assert u.rxbuf >= 1024 and u.rxbuf == 2048 and u.timeout == 0 and u.txbuf == 1024
    assert (u.bits, u.parity, u.stop) == (8, None, 1)
    u = hal.uart_open({"id": 1, "tx": 4, "rx": 36, "rxbuf": 256}).stream()
    assert u.rxbuf == 1024 and u.baudrate == 115200
    for bad, word in (({"id": 0, "tx": 1, "rx": 3}, "REPL"),
                      ({"id": 3, "tx": 17, "rx": 16}, "1 or 2"),
                      ({"id": None, "tx": 17, "rx": 16}, "1 or 2"),
                      ({"id": 1, "tx": 35, "rx": 16}, "input-only"),
                      ({"id": 1, "tx": 7, "rx": 16}, "flash"),
                      ({"id": 1, "tx": 24, "rx": 16}, "does not exist"),
                      ({"id": 1, "tx": 17, "rx": 16, "baud": 300}, "baud")):
        try:
            hal.uart_open(bad)
            assert False, bad
        except ValueError as e:
            assert word in str(e), (word, str(e))


def test_board_uart_has_the_chain_interface():
    # read_into / any / write / stream / close, as firmware/uart_unix.py
    hal, clk = _pico(PICO)
    bu = hal.uart_open({"id": 1, "tx": 4, "rx": 5, "baud": 1000000})
    u = bu.stream()
    buf = bytearray(8)
    assert bu.any() is False and bu.read_into(buf) == 0
    u.feed(b"0123456789AB")
    assert bu.any() is True
    assert bu.read_into(buf) == 8 and bytes(buf) == b"01234567"
    assert bu.read_into(buf) == 4 and bytes(buf[:4]) == b"89AB"
    assert bu.read_into(buf) == 0 and bu.bytes_in == 12
    u.write_room = 5                                  # RP2, timeout=0: partial writes
    assert bu.write(b"x" * 23) == 23 and bytes(u.sent) == b"x" * 23 and u.writes == 5
    assert bu.bytes_out == 23
    hal.close()
    assert u.deinited and hal._npoll == 0


def test_pico_uart_pins_follow_the_mux_and_wake_the_wait():
    hal, clk = _pico(PICO)
    u0 = hal.uart_open({"id": 0, "tx": 0, "rx": 1}).stream()
    u1 = hal.uart_open({"id": 1, "tx": 4, "rx": 5, "baud": 1000000}).stream()
    assert (u0.id, u0.tx.id, u0.rx.id, u0.rxbuf) == (0, 0, 1, 2048)
    assert (u1.id, u1.tx.id, u1.rx.id, u1.baudrate) == (1, 4, 5, 1000000)
    for bad in ({"id": 0, "tx": 4, "rx": 5}, {"id": 1, "tx": 0, "rx": 5},
                {"id": 1, "tx": 4, "rx": 6}, {"id": 2, "tx": 4, "rx": 5}):
        try:
            hal.uart_open(bad)
            assert False, bad
        except ValueError:
            pass
    start = clk.ms                                    # uart_open watched both UARTs
    assert hal.wait_readable(500) is False and clk.ms - start == 500
    u1.feed(b"\x00frame\x00")
    assert hal.wait_readable(5000) is True and clk.ms - start == 500


# --- boards without a radio, flash -----------------------------------------------------------


def test_plain_pico_has_no_network_and_pico_w_is_detected():
    assert hal_pico.detect_wifi(PICO_W) and hal_pico.detect_wifi("Raspberry Pi Pico 2 W with RP2350")
    assert not hal_pico.detect_wifi(PICO)
    hal, _ = _pico(PICO)
    assert hal.board == "pico" and not hal.has_wifi
    logs = []
    hal.log = logs.append
    hal.begin(Cfg())
    assert "no radio" in logs[-1] and not hal.link_up()
    try:
        hal.udp_open()
        assert False, "no sockets on a Pico"
    except OSError as e:
        assert e.args[0] == 19
    hal, _ = _pico(PICO_W)
    assert hal.board == "pico-w"
    hal._set_country(object(), "GB")                  # firmware < 1.20: rp2.country()
    assert fake_rp2.country_code == "GB"


def test_flash_writes_are_atomic_renames():
    hal, _ = _esp()
    assert hal.read_file("epoch") is None
    hal.write_file_atomic("epoch", b"1")
    hal.write_file_atomic("epoch", b"22")
    assert hal.read_file("epoch") == b"22"
    assert sorted(os.listdir(hal.flash_dir)) == ["epoch"]   # no .tmp left behind
    hal.append_file("log", b"ab")
    hal.append_file("log", b"cd")
    assert hal.read_file("log") == b"abcd"
    hal.remove_file("log")
    hal.remove_file("log")                            # absent: no error
    assert hal.read_file("log") is None
    assert hal.free_mem() >= 0 and hal.mem_alloc() >= 0
