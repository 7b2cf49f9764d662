# SHT3x driver (firmware/sht3x.py) against the datasheet model (firmware/fake_i2c.py).
# Plain functions with bare asserts: pytest runs them on CPython and
# tests/test_dual_on_micropython.py under the MicroPython unix port.
import sys

from firmware import sht3x
from firmware.fake_i2c import FakeI2C, FakeSHT3x

MICROPYTHON = sys.implementation.name == "micropython"
ENODEV = 19
EIO = 5


class Clock:
    # Fake milliseconds: the fake sensor reads them, the driver's sleep_ms advances them.
    def __init__(self):
        self.ms = 0

    def now(self):
        return self.ms

    def sleep(self, ms):
        self.ms += ms


def _rig(t=25.0, rh=50.0, address=0x44, driver_address=None, **bus_kw):
    clock = Clock()
    bus = FakeI2C(**bus_kw)
    dev = bus.attach(FakeSHT3x(t, rh, address=address, clock=clock.now))
    if driver_address is None:
        driver_address = address
    drv = sht3x.SHT3x(bus, driver_address, sleep_ms=clock.sleep)
    return clock, bus, dev, drv


def _oserror(fn, *args):
    try:
        fn(*args)
    except OSError as e:
        return e
    raise AssertionError("no OSError")


def _exact_centi_c(raw):
    # -4500 + 17500 * raw / 65535, rounded half up, in exact integers (a bigint on
    # boards; fine in a test)
    return (2 * 17500 * raw + 65535) // (2 * 65535) - 4500


def _exact_centi_rh(raw):
    return (2 * 10000 * raw + 65535) // (2 * 65535)


def test_crc_datasheet_example():
    # Table 20: CRC(0xBEEF) = 0x92
    assert sht3x.crc8(b"\xbe\xef") == 0x92
    assert sht3x.crc8(bytearray(b"\x00\xbe\xef\x00"), 1, 3) == 0x92
    # no reflection, final XOR 0: a word followed by its CRC has CRC 0
    for word in (b"\x00\x00", b"\xff\xff", b"\x12\x34", b"\x80\x10"):
        assert sht3x.crc8(word + bytes([sht3x.crc8(word)])) == 0


def test_conversion_is_exact_integer_rounding():
    raws = list(range(0, 65536, 97)) + [65535, 32767, 32768]
    for raw in raws:
        assert sht3x.centi_celsius(raw) == _exact_centi_c(raw), raw
        assert sht3x.centi_percent(raw) == _exact_centi_rh(raw), raw
    assert sht3x.centi_celsius(0) == -4500
    assert sht3x.centi_celsius(65535) == 13000
    assert sht3x.centi_percent(65535) == 10000
    # the largest intermediates stay small ints on 32-bit boards (< 2^30)
    assert 8750 * 65535 < 2 ** 30 and 2 * 65534 + 32767 < 2 ** 30
    assert 10000 * 65535 + 32767 < 2 ** 30


def test_measurement_round_trip_within_one_lsb():
    cases = ((21.3, 45.67), (-40.0, 0.0), (125.0, 100.0), (0.0, 0.01),
             (-10.55, 99.99), (37.77, 12.34), (85.0, 60.0))
    for t, rh in cases:
        clock, bus, dev, drv = _rig(t, rh)
        drv.measure()
        tc = drv.temperature_centi
        hc = drv.humidity_centi
        assert type(tc) is int and type(hc) is int
        assert abs(tc - round(t * 100)) <= 1, (t, tc)
        assert abs(hc - round(rh * 100)) <= 1, (rh, hc)
        assert abs(drv.temperature_c() - t) <= 0.01 + 1e-6
        assert abs(drv.humidity_pct() - rh) <= 0.01 + 1e-6
        assert drv.read() == (tc, hc)


def test_fake_clamps_to_sensor_range():
    clock, bus, dev, drv = _rig(-60.0, 140.0)
    drv.measure()
    assert drv.temperature_centi == -4000 and drv.humidity_centi == 10000
    dev.set(200.0, -5.0)
    drv.measure()
    assert drv.temperature_centi == 12500 and drv.humidity_centi == 0


def test_repeatability_commands_and_waits():
    # Table 9 codes, clock stretching disabled; waits: tMEAS max 15.5 / 6.5 / 4.5 ms
    for rep, code, wait in ((sht3x.HIGH, 0x2400, 16), (sht3x.MEDIUM, 0x240B, 7),
                            (sht3x.LOW, 0x2416, 5)):
        clock, bus, dev, drv = _rig(21.0, 40.0)
        drv.measure(rep)
        assert dev.last_command == code
        assert clock.ms == wait
        assert drv.retries == 0 and bus.naks == 0
        assert drv.temperature_centi == 2100


def test_early_read_naks_then_succeeds():
    for rep, max_us in ((sht3x.HIGH, 15500), (sht3x.MEDIUM, 6500), (sht3x.LOW, 4500)):
        clock, bus, dev, drv = _rig(22.5, 33.0)
        wait = drv.start(rep)
        assert wait * 1000 >= max_us
        clock.ms = max_us // 1000  # half a millisecond short of tMEAS
        e = _oserror(drv.read_result)
        assert e.errno == EIO
        clock.ms = wait
        drv.read_result()
        assert drv.temperature_centi == 2250 and drv.humidity_centi == 3300
        # read once: the result is gone
        assert _oserror(drv.read_result).errno == EIO


def test_measure_recovers_from_a_short_sleep_on_esp32_errno():
    # ESP32 and SoftI2C report a NAKed read header as ENODEV; measure() retries once.
    clock, bus, dev, _ = _rig(19.0, 55.0, nak_errno=ENODEV)
    calls = []

    def short_first_sleep(ms):
        calls.append(ms)
        clock.ms += ms // 2 if len(calls) == 1 else ms

    drv = sht3x.SHT3x(bus, sleep_ms=short_first_sleep)
    drv.measure()
    assert drv.temperature_centi == 1900 and drv.humidity_centi == 5500
    assert drv.retries == 1 and bus.naks == 1


def test_crc_corruption_detected_and_retried():
    clock, bus, dev, drv = _rig(24.0, 41.0)
    dev.corrupt_crc = 1
    drv.measure()
    assert drv.temperature_centi == 2400 and drv.humidity_centi == 4100
    assert drv.crc_errors == 1 and drv.retries == 1
    dev.corrupt_crc = 2
    e = _oserror(drv.measure)
    assert isinstance(e, sht3x.SHT3xError)
    assert e.errno == EIO
    assert "CRC" in str(e)
    assert drv.crc_errors == 3
    drv.measure()  # and the sensor is fine afterwards
    assert drv.temperature_centi == 2400


def test_status_crc_corruption_retried():
    clock, bus, dev, drv = _rig()
    dev.corrupt_crc = 1
    assert drv.status() == 0x8010
    assert drv.crc_errors == 1
    dev.corrupt_crc = 2
    assert isinstance(_oserror(drv.status), sht3x.SHT3xError)


def test_wrong_address_is_enodev():
    clock, bus, dev, drv = _rig(address=0x44, driver_address=0x45)
    assert _oserror(drv.measure).errno == ENODEV
    assert _oserror(drv.status).errno == ENODEV
    assert _oserror(bus.readfrom, 0x10, 3).errno == ENODEV
    # ADDR pin high: 0x45
    clock, bus, dev, drv = _rig(20.0, 30.0, address=0x45)
    drv.measure()
    assert drv.temperature_centi == 2000
    bus.attach(FakeSHT3x(address=0x44, clock=clock.now))
    assert bus.scan() == [0x44, 0x45]
    for bad in (0x46, 0x40):
        try:
            FakeSHT3x(address=bad)
        except ValueError:
            pass
        else:
            raise AssertionError("FakeSHT3x accepted 0x%02x" % bad)
        try:
            sht3x.SHT3x(bus, bad)
        except ValueError:
            pass
        else:
            raise AssertionError("SHT3x accepted 0x%02x" % bad)


def test_bad_arguments_raise_value_error():
    clock, bus, dev, drv = _rig()
    for call in ((drv.measure, 3), (drv.start, 7), (drv.start_periodic, 3)):
        try:
            call[0](call[1])
        except ValueError:
            pass
        else:
            raise AssertionError(call)
    assert dev.commands == 0


def test_status_heater_and_soft_reset():
    clock, bus, dev, drv = _rig()
    st = drv.status()
    assert st == sht3x.STATUS_ALERT_PENDING | sht3x.STATUS_RESET_DETECTED  # 0x8010 at power-up
    drv.clear_status()
    assert drv.status() == 0
    drv.heater(True)
    assert drv.status() == sht3x.STATUS_HEATER_ON and dev.heater
    drv.clear_status()  # leaves the heater bit alone (clears 15, 11, 10, 4)
    assert drv.status() == sht3x.STATUS_HEATER_ON
    dev.set_alert(rh=True, t=True)
    assert drv.status() == 0x8000 | 0x2000 | 0x0800 | 0x0400
    drv.clear_status()
    assert drv.status() == sht3x.STATUS_HEATER_ON
    drv.heater(False)
    assert drv.status() == 0 and not dev.heater
    drv.heater(True)
    before = clock.ms
    drv.soft_reset()
    assert dev.last_command == 0x30A2
    assert clock.ms - before >= 2  # tSR max 1.5 ms
    assert drv.status() == 0x8010 and not dev.heater
    drv.measure()
    assert drv.temperature_centi == 2500


def test_sensor_busy_after_commands():
    # 1 ms after any command, tSR after a soft reset: the sensor NAKs its address
    clock, bus, dev, drv = _rig()
    bus.writeto(0x44, b"\x30\x66")
    assert _oserror(bus.writeto, 0x44, b"\xf3\x2d").errno == EIO
    clock.ms += 1
    bus.writeto(0x44, b"\x30\xa2")
    clock.ms += 1
    assert _oserror(bus.writeto, 0x44, b"\xf3\x2d").errno == EIO
    assert bus.scan() == []
    clock.ms += 1
    assert bus.scan() == [0x44]
    bus.writeto(0x44, b"\xf3\x2d")
    assert _oserror(bus.readfrom, 0x44, 3).errno == EIO  # 1 ms not over
    clock.ms += 1
    assert bus.readfrom(0x44, 3)[:2] == b"\x80\x10"


def test_invalid_command_sets_status_bit_1():
    clock, bus, dev, drv = _rig()
    drv.clear_status()
    clock.ms += 1
    assert _oserror(bus.writeto, 0x44, b"\x24\x01").errno == EIO
    clock.ms += 1
    assert drv.status() == sht3x.STATUS_COMMAND_FAILED
    assert drv.status() == sht3x.STATUS_COMMAND_FAILED  # reading status keeps it
    drv.heater(False)  # a valid command clears it
    assert drv.status() == 0
    # machine.SoftI2C reports the NAK of the second byte as 1 byte ACKed
    clock, bus, dev, drv = _rig(soft=True)
    assert bus.writeto(0x44, b"\x12\x34") == 1
    assert dev.status & sht3x.STATUS_COMMAND_FAILED
    drv.measure()  # the driver works over a SoftI2C-like bus too
    assert drv.temperature_centi == 2500


def test_short_ack_count_is_a_nak():
    # machine.SoftI2C.writeto returns the bytes ACKed instead of raising
    class HalfDeafBus:
        def writeto(self, addr, buf, stop=True):
            return 1

        def readfrom_into(self, addr, buf, stop=True):
            raise AssertionError("read after a NAKed command")

    drv = sht3x.SHT3x(HalfDeafBus(), sleep_ms=Clock().sleep)
    assert _oserror(drv.heater, True).errno == EIO
    assert _oserror(drv.measure).errno == EIO
    assert drv.retries == 1


def test_write_data_checksum_sets_status_bit_0():
    # alert limit write (Alert Mode app note): 16-bit command, data word, CRC
    clock, bus, dev, drv = _rig()
    drv.clear_status()
    clock.ms += 1
    good = bytearray(b"\x61\x1d\xcc\x33\x00")
    good[4] = sht3x.crc8(good, 2, 4)
    bad = bytearray(good)
    bad[4] ^= 0x01
    assert _oserror(bus.writeto, 0x44, bad).errno == EIO
    clock.ms += 1
    assert drv.status() == sht3x.STATUS_WRITE_CRC_FAILED
    assert dev.limits[0] == 0xCD33  # power-up default kept
    bus.writeto(0x44, good)
    clock.ms += 1
    assert drv.status() == 0
    assert dev.limits[0] == 0xCC33
    bus.writeto(0x44, b"\xe1\x1f")
    clock.ms += 1
    reply = bus.readfrom(0x44, 3)
    assert reply[0] == 0xCC and reply[1] == 0x33 and reply[2] == sht3x.crc8(reply, 0, 2)


def test_serial_number():
    clock = Clock()
    bus = FakeI2C()
    dev = bus.attach(FakeSHT3x(address=0x45, serial=0x8BADF00D, clock=clock.now))
    drv = sht3x.SHT3x(bus, 0x45, sleep_ms=clock.sleep)
    assert drv.serial_number() == 0x8BADF00D
    assert dev.last_command == 0x3682  # app note: no clock stretching
    clock.ms += 1
    bus.writeto(0x45, b"\x37\x80")  # the clock-stretching variant: read served at once
    data = bus.readfrom(0x45, 6)
    assert data[0] == 0x8B and data[1] == 0xAD and data[3] == 0xF0 and data[4] == 0x0D
    assert dev.stretched_us == 1000


def test_clock_stretching_single_shot_on_fake():
    clock, bus, dev, drv = _rig(30.0, 70.0)
    bus.writeto(0x44, b"\x2c\x06")
    data = bus.readfrom(0x44, 6)  # at once: the fake counts the stretch
    assert dev.stretched_us == 15500
    assert sht3x.centi_celsius((data[0] << 8) | data[1]) == 3000
    assert sht3x.crc8(data, 3, 5) == data[5]


def test_partial_read_and_general_call_reset():
    clock, bus, dev, drv = _rig(10.0, 20.0)
    drv.start()
    clock.ms += 16
    three = bus.readfrom(0x44, 3)  # the master may stop after the temperature
    assert sht3x.centi_celsius((three[0] << 8) | three[1]) == 1000
    drv.heater(True)
    clock.ms += 1
    bus.writeto(0x00, b"\x06")  # general call reset, Table 15
    clock.ms += 2
    assert drv.status() == 0x8010


def test_periodic_mode_fetch_and_break():
    clock, bus, dev, drv = _rig(18.0, 65.0)
    drv.start_periodic(2, sht3x.HIGH)
    assert dev.last_command == 0x2236 and dev.periodic
    assert not drv.fetch()  # first measurement ends 15.5 ms after the start
    clock.ms = 16
    assert drv.fetch()
    assert drv.temperature_centi == 1800 and drv.humidity_centi == 6500
    assert not drv.fetch()  # data memory cleared by the fetch
    dev.set(18.5, 64.0)
    clock.ms = 16 + 500
    assert drv.fetch()
    assert drv.temperature_centi == 1850 and drv.humidity_centi == 6400
    # other commands are refused in periodic mode; soft_reset() sends Break first
    assert _oserror(bus.writeto, 0x44, b"\x24\x00").errno == EIO
    drv.soft_reset()
    assert not drv.periodic and not dev.periodic
    assert drv.status() == 0x8010
    drv.measure()
    assert drv.temperature_centi == 1850
    drv.start_periodic(art=True)
    assert dev.last_command == 0x2B32
    drv.stop_periodic()
    assert dev.last_command == 0x3093 and not dev.periodic
    try:
        drv.start_periodic(3)
    except ValueError:
        pass
    else:
        raise AssertionError("3 mps accepted")


def test_nak_injection_retried_once():
    clock, bus, dev, drv = _rig(23.0, 45.0)
    dev.nak_next = 1
    drv.measure()
    assert drv.temperature_centi == 2300 and drv.retries == 1
    dev.nak_next = 2
    assert _oserror(drv.measure).errno == EIO
    drv.measure()
    assert drv.humidity_centi == 4500


def test_heap_per_measurement():
    if not MICROPYTHON:
        return  # the bound concerns the board interpreter
    import gc
    import micropython
    clock, bus, dev, drv = _rig(21.3, 45.67)
    drv.measure()
    gc.collect()
    gc.disable()
    try:
        before = gc.mem_alloc()
        for _ in range(50):
            drv.measure()
        used = gc.mem_alloc() - before
    finally:
        gc.enable()
    # measured 0 bytes per measurement (driver and fake) on the unix port
    assert used <= 50 * 16, used
    micropython.heap_lock()
    try:
        drv.measure()  # raises MemoryError if anything allocates
        drv.status()
    finally:
        micropython.heap_unlock()
    assert drv.temperature_centi == 2130
