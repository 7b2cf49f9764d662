# The node runtime on a board HAL: firmware/core.py main() / make_hal, firmware/node.py Node.boot and
# Node.run with hal_esp32 / hal_pico against the fake board modules of
# tests/board_fakes/ (machine, network, esp32, rp2, ntptime, a fake clock and sockets).
# Covers what main.py does on a board: the HAL chosen by platform, board sensor kinds
# registered before node.json is checked, begin() (watchdog, Wi-Fi, NTP), the watchdog
# fed every loop, a deep-sleep duty cycle that keeps epoch and seq, the time base from
# NTP, and a serial-chain node getting the board's UARTs.
# Plain functions with bare asserts: pytest runs them on CPython and
# tests/test_dual_on_micropython.py under the MicroPython unix port.
import sys
import json
import os

_dir = __file__[:__file__.rfind("/")] if "/" in __file__ else "."
_tests = _dir[:_dir.rfind("/")] if "/" in _dir else ".."
if _tests not in sys.path:
    sys.path.append(_tests)

import board_fakes   # noqa: E402
from board_fakes import machine, network, net, ntptime   # noqa: E402

board_fakes.install("esp32")   # the HALs import machine at module level

from protocol import messages, codes   # noqa: E402
from firmware import config, sensors   # noqa: E402
from firmware import hal_esp32, hal_pico, hal_unix, board_sleep   # noqa: E402
from firmware import core   # noqa: E402
from firmware import node as node_mod   # noqa: E402

BASE = ("192.168.4.2", 5684)
PICO = "Raspberry Pi Pico with RP2040"
PICO_W = "Raspberry Pi Pico W with RP2040"
NTP_MS = 1767225600 * 1000          # ntptime fake's unix_now, in ms


def _flash(node_json=None):
    return board_fakes.flash_dir("board-node", node_json)


def _esp(flash, chip="ESP32"):
    clk = board_fakes.install("esp32", chip=chip)
    hal = core.make_hal(flash, platform="esp32", quiet=True, clock=clk, sockets=net,
                            poller=net.Poll(), machine_name="Generic ESP32 module with " + chip)
    return hal, clk


def _pico(flash, name=PICO_W):
    clk = board_fakes.install("rp2")
    hal = core.make_hal(flash, platform="rp2", quiet=True, clock=clk, sockets=net,
                            poller=net.Poll(), machine_name=name)
    return hal, clk


def _again(old, clk):
    # main.py runs again after a reset or wake: a new HAL on the same flash
    return core.make_hal(old.flash_dir, platform="esp32" if old.board == "esp32" else "rp2",
                             quiet=True, clock=clk, sockets=net, poller=net.Poll(),
                             machine_name=old.machine_name)


def _node_json(**extra):
    d = {"node": 7, "wifi": {"ssid": "lab", "password": "secret"},
         "sensors": [{"topic": "c", "kind": "counter", "period_ms": 500}],
         "bases": [list(BASE)], "status_every_ms": 600000}
    for k in extra:
        d[k] = extra[k]
    return d


def _kinds_saved():
    return dict(sensors.KINDS)


def _kinds_restore(saved):
    # main() registers the board kinds in firmware.sensors.KINDS: undo for other tests
    for k in list(sensors.KINDS):
        if k not in saved:
            del sensors.KINDS[k]


def _sent(kind):
    out = []
    for addr, data in net.sent:
        m = messages.decode(data)
        if isinstance(m, kind):
            out.append(m)
    return out


def _main(hal):
    saved = _kinds_saved()
    try:
        return core.main(hal=hal)
    finally:
        _kinds_restore(saved)


# --- choosing the HAL -------------------------------------------------------------------------


def test_make_hal_picks_the_board_hal_by_platform():
    hal, _ = _esp(_flash())
    assert type(hal) is hal_esp32.Esp32Hal and hal.board == "esp32"
    hal, _ = _pico(_flash())
    assert type(hal) is hal_pico.PicoHal and hal.board == "pico-w"
    hal, _ = _pico(_flash(), PICO)
    assert hal.board == "pico" and not hal.has_wifi
    for plat in ("linux", "darwin"):
        u = core.make_hal(_flash(), platform=plat)
        assert type(u) is hal_unix.UnixHal
        u.feed()                                      # the loop hook exists, does nothing
    assert core.make_hal(platform="esp32", quiet=True, clock=board_fakes.install("esp32"),
                             sockets=net, poller=net.Poll(), machine_name="x").flash_dir == "/"


# --- main() on an ESP32 -----------------------------------------------------------------------


def test_main_on_esp32_begins_wifi_watchdog_ntp_and_publishes_board_sensors():
    flash = _flash(_node_json(
        watchdog_ms=3000, ntp={"host": "ntp.lab"}, max_events=20,
        wifi={"ssid": "lab", "password": "secret", "country": "DE"},
        sensors=[{"topic": "c", "kind": "counter", "period_ms": 500},
                 {"topic": "cpu", "kind": "mcu_temp", "period_ms": 1000}]))
    hal, clk = _esp(flash, "ESP32S3")
    assert _main(hal) == 0
    wlan = network.WLAN()
    assert len(wlan.connects) == 1 and network.country_code == "DE"
    assert network.hostname_set == "starling-7"
    assert ntptime.calls == 1 and ntptime.host == "ntp.lab"
    wdt = machine.wdt
    assert wdt is not None and wdt.timeout == 3000 and hal.wdt_ms == 3000
    assert wdt.feeds > 20 and not wdt.starved()
    evs = _sent(messages.Event)
    assert len(evs) == 20 and [e.seq for e in evs] == list(range(20))
    cpu = [e.value for e in evs if e.topic == "cpu"]
    assert cpu and cpu[0] == 4125                      # the S3's 41.25 degC, as 0.01 degC
    st = _sent(messages.Status)
    assert st[0].time_base is not None and st[0].caps & codes.CAP_TIME
    # time base from NTP: time_base + t is the RTC's Unix ms when the reading was taken
    assert NTP_MS <= st[0].time_base <= NTP_MS + 100
    assert "mcu_temp" not in sensors.KINDS             # _main() undid the registration
    with open(flash + "/counters.json") as f:
        assert json.loads(f.read())["report"]["published"] == 20
    if sys.implementation.name == "micropython":   # boot-only code dropped once booted
        assert "firmware.board_setup" not in sys.modules
        assert "firmware.config" not in sys.modules


def test_forgetting_a_module_that_was_never_imported_is_harmless():
    core._forget("firmware.no_such_module")
    core._forget("no_such_package.module")
    core.boot_done()
    core.boot_done()                                   # twice: nothing left to drop
    assert "firmware.no_such_module" not in sys.modules


def test_main_reports_bad_board_keys_without_starting_anything():
    flash = _flash(_node_json(watchdog_ms=500))
    hal, _ = _esp(flash)
    logs = []
    hal.log = logs.append
    assert _main(hal) == 1
    assert "watchdog_ms" in logs[-1] and machine.wdt is None
    assert network.WLAN().connects == []


def test_run_feeds_the_watchdog_on_every_step():
    saved = _kinds_saved()
    hal, clk = _esp(_flash())
    hal.register_kinds()
    try:
        cfg = config.from_dict(_node_json(watchdog_ms=2000, sensors=[
            {"topic": "c", "kind": "counter", "period_ms": 200},
            {"topic": "slow", "kind": "counter", "period_ms": 30000}]))
    finally:
        _kinds_restore(saved)
    hal.begin(cfg)
    node = node_mod.Node(cfg, hal)
    node.boot()
    feeds = [0]
    steps = [0]
    real_feed = hal.feed

    def feed():
        feeds[0] += 1
        real_feed()

    real_step = node.step

    def step(now):
        steps[0] += 1
        assert feeds[0] >= steps[0]                    # fed before every step
        return real_step(now)

    hal.feed = feed
    node.step = step
    node.run(60000)
    assert steps[0] >= 300 and feeds[0] >= steps[0]
    wdt = machine.wdt
    assert wdt.timeout == 2000 and not wdt.starved() and wdt.max_gap <= 1000


# --- deep sleep ----------------------------------------------------------------------------


def _sleep_main(hal):
    try:
        _main(hal)
    except machine.DeepSleepReset:
        return True
    return False


def test_deep_sleep_duty_cycle_keeps_epoch_and_seq_power_on_starts_a_new_epoch():
    flash = _flash(_node_json(deep_sleep={"awake_ms": 3000, "sleep_ms": 60000}))
    hal, clk = _esp(flash)
    assert _sleep_main(hal)                            # ran 3 s, then powered down
    assert machine.deepsleeps == [60000] and machine.reset_cause() == machine.DEEPSLEEP_RESET
    first = _sent(messages.Event)
    assert len(first) == 6 and [e.epoch for e in first] == [1] * 6
    assert hal.read_file("epoch") == b"1"

    del net.sent[:]
    # real time went on: the NTP server answers the RTC's time plus the ~2 s rejoin
    ntptime.unix_now = clk.rtc_ms // 1000 + 946684800 + 2
    hal2 = _again(hal, clk)                            # the wake: main.py runs again
    assert _sleep_main(hal2)
    assert hal2.read_file("epoch") == b"1"             # no new epoch for a wake
    evs = _sent(messages.Event)
    assert [e.epoch for e in evs] == [1] * len(evs)
    assert evs[0].seq == 6 and [e.seq for e in evs] == list(range(6, 6 + len(evs)))
    assert [e.skip for e in evs] == [0] * len(evs)    # nothing claimed as skipped
    assert evs[0].t >= 3000 + 60000                    # uptime includes the sleep
    st = _sent(messages.Status)[0]                     # the wake's STATUS: same stream
    assert (st.epoch, st.last_seq, st.skip, st.since) == (1, 5, 0, 0)
    # the RTC ran through the sleep: the time base is still NTP's
    assert st.time_base is not None and NTP_MS - 1000 <= st.time_base <= NTP_MS + 1000

    machine.power_on()                                 # power cycle: RTC memory gone
    del net.sent[:]
    hal3 = _again(hal, clk)
    assert _sleep_main(hal3)
    evs = _sent(messages.Event)
    assert evs[0].epoch == 2 and evs[0].seq == 0 and hal3.read_file("epoch") == b"2"


def test_pico_deep_sleep_resume_through_boot():
    flash = _flash(_node_json(deep_sleep={"awake_ms": 2000, "sleep_ms": 5000},
                              ntp=False))
    hal, clk = _pico(flash)
    assert _sleep_main(hal)
    n1 = len(_sent(messages.Event))
    assert machine.reset_cause() == machine.WDT_RESET and ntptime.calls == 0
    del net.sent[:]
    hal2 = _again(hal, clk)
    assert _sleep_main(hal2)
    evs = _sent(messages.Event)
    assert evs[0].seq == n1 and evs[0].epoch == 1 and evs[0].skip == 0


def test_wake_without_a_clock_counts_the_boot_in_the_uptime():
    # a Pico W has no clock running through the sleep: the time from the reset to
    # resume() (boot, Wi-Fi join) must not go missing from the events' t
    from firmware.board_sleep import Resume
    flash = _flash(_node_json(deep_sleep={"awake_ms": 2000, "sleep_ms": 5000}, ntp=False))
    hal, clk = _pico(flash)
    assert _sleep_main(hal)
    hal2 = _again(hal, clk)
    saved = Resume.unpack(hal2._rtc_load())
    clk.advance(1500)                                  # booting and joining Wi-Fi
    since_reset = hal2.ticks_ms()
    r = hal2.resume()
    assert since_reset >= 1500 and r.uptime == saved.uptime + since_reset


def test_boot_with_a_resume_that_does_not_match_starts_a_new_epoch():
    hal, clk = _esp(_flash())
    cfg = config.from_dict(_node_json())
    node = node_mod.Node(cfg, hal)
    r = board_sleep.Resume(5, 100, 9000, None, [(1, 2), (3, 4)])   # two sensors, node has one
    node.boot(resume=r)
    assert node.epoch == 1 and node.next_seq == 0 and not node.resumed
    node2 = node_mod.Node(cfg, hal)
    node2.boot(resume=board_sleep.Resume(5, 100, 9000, 123, [(40, 9500)]))
    assert (node2.epoch, node2.next_seq, node2.uptime, node2.time_base) == (5, 100, 9000, 123)
    assert node2.resumed and node2.sensors[0].n == 40 and hal.read_file("epoch") == b"1"
    assert node2.subs.entries[0].last_sent == 99


# --- time base from NTP ------------------------------------------------------------------------


def test_time_base_follows_ntp_once_wifi_comes_up_and_wins_over_announce():
    hal, clk = _esp(_flash())
    cfg = config.from_dict(_node_json(discovery={"port": 5683},
                                      wifi={"ssid": "lab", "password": "secret",
                                            "wait_ms": 0}))
    network.ap_down()
    hal.begin(cfg)                                     # no join yet, no NTP
    node = node_mod.Node(cfg, hal)
    node.boot()
    assert node.time_base is None and hal.wall_ms() is None
    # an ANNOUNCE with the base's clock sets the time base meanwhile (unsent STATUS: down)
    ann = messages.Announce("b1", "", 5684, ["#"], 0, 60, NTP_MS + 5000)
    node.on_datagram(ann.encode(), BASE, hal.ticks_ms())
    assert node.time_base == NTP_MS + 5000 - node.uptime
    network.ap_up()
    node.run(10000)                                    # joins, syncs NTP
    assert hal.link_up() and ntptime.calls == 1
    wall = hal.wall_ms()
    assert wall is not None and -2 <= node.time_base + node.uptime - wall <= 2
    st = _sent(messages.Status)
    assert st and st[-1].time_base == node.time_base   # everyone told
    # a base whose clock is 5 s off no longer moves it
    tb = node.time_base
    node.on_datagram(ann.encode(), BASE, hal.ticks_ms())
    assert node.time_base == tb


# --- serial chain on a board ------------------------------------------------------------------


def test_serial_chain_node_gets_the_board_uarts():
    flash = _flash({"node": 9, "transport": "serial", "watchdog_ms": 4000,
                    "sensors": [{"topic": "c", "kind": "counter", "period_ms": 1000}],
                    "uart": {"up": {"id": 0, "tx": 0, "rx": 1},
                             "down": {"id": 1, "tx": 4, "rx": 5, "baud": 460800}},
                    "stop_drain_ms": 0})
    hal, clk = _pico(flash, PICO)
    hal.stop_requested = True                          # boot, then stop at once
    assert _main(hal) == 0
    assert machine.wdt is not None and machine.wdt.timeout == 4000
    got = [(u.id, u.tx.id, u.rx.id, u.baudrate, u.rxbuf) for u in machine.uarts]
    assert got == [(0, 0, 1, 115200, 2048), (1, 4, 5, 460800, 2048)]
    assert machine.uarts[0].deinited and machine.uarts[1].deinited   # closed at the end
    if sys.implementation.name == "micropython":   # boot-only code dropped once booted
        assert "firmware.board_setup" not in sys.modules


def test_chain_node_on_a_board_samples_board_sensors_and_takes_the_ntp_clock():
    from firmware import chain
    flash = _flash({"node": 11, "transport": "serial", "ntp": True,
                    "wifi": {"ssid": "lab", "password": "secret", "wait_ms": 0},
                    "sensors": [{"topic": "t", "kind": "mcu_temp", "period_ms": 1000}],
                    "uart": {"up": {"id": 2, "tx": 25, "rx": 34}}, "stop_drain_ms": 0})
    hal, clk = _esp(flash)
    saved = _kinds_saved()
    try:
        cfg = core.load_config(hal)            # registers mcu_temp first
        network.ap_down()
        hal.begin(cfg)
        node = chain.ChainNode(cfg, hal)
        node.boot()
        assert node.time_base is None
        # the base's ANNOUNCE (from upstream) gives a time base meanwhile, 5 s off
        node._from_up(messages.Announce("b1", "", 0, ["#"], 0, 60, NTP_MS + 5000).encode())
        assert node.time_base == NTP_MS + 5000 - node.uptime
        network.ap_up()
        node.run(5000)                             # Wi-Fi joins, NTP syncs
        assert ntptime.calls == 1
        wall = hal.wall_ms()
        assert wall is not None and -2 <= node.time_base + node.uptime - wall <= 2
        tb = node.time_base
        node._from_up(messages.Announce("b1", "", 0, ["#"], 0, 60, NTP_MS + 5000).encode())
        assert node.time_base == tb                # the board's clock wins from now on
        assert node.published >= 4                 # mcu_temp readings accepted each second
        assert type(node.sensors[0]).__name__ == "BoardSensor"
    finally:
        _kinds_restore(saved)


# --- node.json keys of the board path ----------------------------------------------------------


def _bad(d, word):
    try:
        config.from_dict(d)
    except config.ConfigError as e:
        assert word in str(e), (word, str(e))
        return
    assert False, "accepted: %r" % (d,)


def test_board_config_keys_are_checked():
    c = config.from_dict(_node_json(
        watchdog_ms=8000, ntp={"host": "time.lab"},
        wifi={"ssid": "lab", "password": "pw", "country": "GB", "timeout_ms": 20000,
              "wait_ms": 0},
        deep_sleep={"awake_ms": 5000, "sleep_ms": 600000}))
    assert (c.watchdog_ms, c.ntp, c.ntp_host) == (8000, True, "time.lab")
    assert (c.wifi_country, c.wifi_timeout_ms, c.wifi_wait_ms) == ("GB", 20000, 0)
    assert (c.awake_ms, c.sleep_ms) == (5000, 600000)
    d = config.from_dict(_node_json())
    assert (d.watchdog_ms, d.ntp, d.ntp_host, d.wifi_country, d.sleep_ms) == (0, True, None, "", 0)
    assert config.from_dict(_node_json(ntp=False)).ntp is False
    assert config.from_dict(_node_json(watchdog_ms=0)).watchdog_ms == 0
    _bad(_node_json(watchdog_ms=999), "node.json: watchdog_ms: expected 0 (off) or an integer 1000..3600000, got 999")
    _bad(_node_json(watchdog_ms=True), "watchdog_ms")
    _bad(_node_json(watchdog_ms="5000"), "watchdog_ms")
    _bad(_node_json(ntp="pool.ntp.org"), "ntp: expected true, false or")
    _bad(_node_json(ntp={"host": ""}), "ntp.host")
    _bad(_node_json(ntp={"server": "x"}), "ntp.unknown key 'server'")
    _bad(_node_json(wifi={"ssid": "lab", "country": "de"}), "wifi.country")
    _bad(_node_json(wifi={"ssid": "lab", "country": "D1"}), "wifi.country")
    _bad(_node_json(wifi={"ssid": "lab", "country": "DEU"}), "wifi.country")
    _bad(_node_json(wifi={"ssid": "lab", "timeout_ms": 10}), "wifi.timeout_ms")
    _bad(_node_json(deep_sleep={"awake_ms": 5000}), "deep_sleep: needs both")
    _bad(_node_json(deep_sleep={"awake_ms": 5000, "sleep_ms": 10}), "deep_sleep.sleep_ms")
    _bad(_node_json(deep_sleep={"awake_ms": 5000, "sleep_ms": 5000, "x": 1}), "unknown key 'x'")
    _bad(_node_json(deep_sleep=60000), "deep_sleep: expected an object")


def test_unix_node_ignores_deep_sleep_and_runs_on():
    # the unix HAL cannot sleep: main() says so and runs as usual (max_events stops it)
    flash = _flash({"node": 3, "bases": [["127.0.0.1", 9]], "max_events": 3,
                    "sensors": [{"topic": "c", "kind": "counter", "period_ms": 10}],
                    "deep_sleep": {"awake_ms": 100, "sleep_ms": 60000}})
    hal = hal_unix.UnixHal(flash, quiet=True)
    assert core.main(hal=hal) == 0
    with open(flash + "/counters.json") as f:
        assert json.loads(f.read())["report"]["published"] == 3
