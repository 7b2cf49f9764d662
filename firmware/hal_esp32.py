# ESP32 HAL (original ESP32, and the S2/S3/C3 where noted): the shared board HAL of
# firmware/hal_board.py plus what differs on this chip.
#
# - Wi-Fi station (network.WLAN(STA_IF)), reconnect and backoff: board_wifi.Wifi.
# - Chain UARTs: UART1 or UART2 with explicit pins. UART0 is the REPL on the USB
#   bridge: taking it would cut off mpremote, so uart_open() refuses it. Pins: any
#   GPIO 0-39 except the missing 20, 24, 28-31 and the SPI flash 6-11; GPIO 34-39
#   are input only (RX only). The same rules as base_station/build.py.
# - "mcu_temp": esp32.mcu_temperature() (ESP32-S2/S3/C3: the calibrated sensor of
#   ESP-IDF 5, degC) or, on the original ESP32, esp32.raw_temperature(): degrees
#   Fahrenheit from an uncalibrated sensor that reads the die, typically tens of
#   degrees above ambient, and on many modules a constant 128 F. Converted to
#   0.01 degC as (F - 32) * 5 / 9, rounded, in integers.
# - "adc": machine.ADC(Pin(n), atten=ATTN_11DB) and read_uv(), which the port
#   corrects with the chip's eFuse calibration; published in integer mV. With 11 dB
#   the usable range is about 0.15-2.45 V on the original ESP32. ADC2 (GPIO 0, 2, 4,
#   12-15, 25-27) is taken by the Wi-Fi driver: refused when Wi-Fi is configured.
# - Watchdog: machine.WDT, at least 1000 ms (older firmware converted the timeout to
#   whole seconds and refused 0).
# - Deep sleep: machine.deepsleep(ms); the resume record lives in RTC slow memory
#   (machine.RTC().memory(), at most 2048 bytes), which survives deep sleep and
#   soft/hard resets but not power-on; machine.reset_cause() == DEEPSLEEP_RESET tells
#   a wake. The RTC keeps counting through deep sleep, so NTP time stays valid.
import machine

from firmware.hal_board import BoardHal, _get

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore
        return x

_ESP32_GPIO_MAX = const(39)
_MISSING = (20, 24, 28, 29, 30, 31)            # no such GPIO on the ESP32
_ADC1 = (32, 33, 34, 35, 36, 37, 38, 39)
_ADC2 = (0, 2, 4, 12, 13, 14, 15, 25, 26, 27)  # unusable while Wi-Fi runs


def f_to_centi(f):
    # degrees Fahrenheit (int) -> 0.01 degC rounded half up: (F - 32) * 500 / 9
    return ((f - 32) * 1000 + 9) // 18


def to_centi(v):
    # degC as int or float -> 0.01 degC (mcu_temperature returns a float on new firmware)
    if isinstance(v, int):
        return v * 100
    return int(v * 100 + 0.5) if v >= 0 else -int(-v * 100 + 0.5)


class Esp32Hal(BoardHal):
    board = "esp32"
    has_wifi = True
    ETIMEDOUT = 116          # newlib/lwIP numbering on the ESP32 (110 elsewhere)
    WDT_MIN_MS = 1000
    WDT_MAX_MS = 0
    RTC_MAX = 2048           # MICROPY_HW_RTC_USER_MEM_MAX: RTC().memory() refuses more

    def __init__(self, flash_dir="/", quiet=False, clock=None, sockets=None, poller=None,
                 machine_name=None):
        BoardHal.__init__(self, flash_dir, quiet, clock, sockets, poller, machine_name)
        # "Generic ESP32 module with ESP32", "... with ESP32S3": the chip is the last word
        name = self.machine_name
        self.chip = name[name.rfind(" ") + 1:] if " " in name else name
        self._wifi_cfg = False

    def begin(self, cfg, watchdog_ms=None):
        self._wifi_cfg = bool(_get(cfg, "wifi_ssid", ""))
        BoardHal.begin(self, cfg, watchdog_ms)

    def _check_uart(self, uid, tx, rx):
        if uid == 0:
            raise ValueError("uart.id: UART0 is the REPL on the ESP32: use 1 or 2")
        if uid != 1 and uid != 2:
            raise ValueError("uart.id: expected 1 or 2 on the ESP32, got %r" % (uid,))
        for role, pin in (("tx", tx), ("rx", rx)):
            if not isinstance(pin, int) or pin < 0 or pin > _ESP32_GPIO_MAX or pin in _MISSING:
                raise ValueError("uart.%s: GPIO %r does not exist on the ESP32" % (role, pin))
            if 6 <= pin <= 11:
                raise ValueError("uart.%s: GPIO %d is wired to the SPI flash" % (role, pin))
        if tx >= 34:
            raise ValueError("uart.tx: GPIO %d is input-only (34-39 cannot drive TX)" % tx)
        if tx == rx:
            raise ValueError("uart.rx: the same GPIO as tx")

    def _mcu_temp_reader(self):
        import esp32  # type: ignore[import-not-found]
        f = getattr(esp32, "mcu_temperature", None)
        if f is not None:   # S2/S3/C3
            def read_mcu():
                return to_centi(f())
            return read_mcu
        raw = getattr(esp32, "raw_temperature", None)
        if raw is None:
            raise ValueError("mcu_temp: this ESP32 firmware has no temperature sensor function")

        def read_raw():
            return f_to_centi(raw())
        return read_raw

    def _adc_reader(self, pin, samples):
        if self.chip == "ESP32":   # the S2/S3/C3 map pins to ADC units differently
            if pin not in _ADC1 and pin not in _ADC2:
                raise ValueError("adc pin: GPIO %r has no ADC on the ESP32 (ADC1: 32-39)" % (pin,))
            if pin in _ADC2 and self._wifi_cfg:
                raise ValueError("adc pin: GPIO %d is on ADC2, which Wi-Fi uses: take 32-39" % pin)
        adc = machine.ADC(machine.Pin(pin), atten=machine.ADC.ATTN_11DB)

        def read_mv():
            tot = 0
            for _ in range(samples):
                tot += adc.read_uv()
            return (tot // samples + 500) // 1000
        return read_mv

    # deep sleep: RTC slow memory
    def _rtc_keeps_time(self):
        return True

    def _woke_from_deep_sleep(self):
        return machine.reset_cause() == machine.DEEPSLEEP_RESET

    def _rtc_load(self):
        return machine.RTC().memory()

    def _rtc_store(self, data):
        machine.RTC().memory(data)

    def _rtc_clear(self):
        if machine.RTC().memory():
            machine.RTC().memory(b"")

    def _sleep_now(self, ms):
        machine.deepsleep(ms)


def make_hal(flash_dir="/", quiet=False):
    return Esp32Hal(flash_dir, quiet)
