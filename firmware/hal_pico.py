# Raspberry Pi Pico / Pico W HAL (RP2040; RP2350 where noted): the shared board HAL
# of firmware/hal_board.py plus what differs here.
#
# - Wi-Fi only on the Pico W (CYW43 via network.WLAN, same reconnect and backoff as
#   the ESP32). The plain Pico has no radio and no socket module: serial chain only;
#   udp_open() raises OSError(ENODEV). Detection: sys.implementation._machine names
#   the board ("Raspberry Pi Pico W with RP2040"); otherwise whether network.WLAN
#   exists. The country code (regulatory domain) is set before the radio starts,
#   with network.country() or, on firmware before 1.20, rp2.country().
# - Chain UARTs: UART0 or UART1, pins fixed by the RP2040 pin mux: TX where
#   pin % 4 == 0, RX where pin % 4 == 1, on UART0 when (pin + 4) & 8 == 0 (GP0/1,
#   GP12/13, GP16/17, GP28 TX) else UART1 (GP4/5, GP8/9, GP20/21).
# - "mcu_temp": the on-die sensor on ADC channel 4. RP2040 datasheet §4.9.5:
#   T = 27 - (V - 0.706) / 0.001721, with V = read_u16 * 3.3 / 65535 (3.3 V
#   reference). Computed exactly in integers (temp_centi) and averaged over 8 reads;
#   one 12-bit step is 0.47 degC, and the 3.3 V rail's tolerance shifts it further.
# - "adc": ADC0-2 on GP26-28, integer mV = read_u16 * 3300 / 65535 rounded. GP29
#   (ADC3) measures VSYS/3 and on the Pico W shares a pin with the Wi-Fi chip: refused.
# - Watchdog: at most 8388 ms on the RP2040 (24-bit counter at 2 ticks per us),
#   16777 ms on the RP2350 (ports/rp2/machine_wdt.c).
# - Deep sleep: machine.deepsleep(ms) on RP2 is lightsleep(ms) followed by a
#   watchdog reboot (ports/rp2/modmachine.c), so reset_cause() then reads WDT_RESET
#   and RAM is gone; there is no RTC.memory(). The resume record is written to flash
#   ("resume.bin", one rename per sleep) and a token, its CRC-32, is left in the
#   watchdog scratch registers 0 and 1, which keep their value across a watchdog
#   reboot but not a power-on (pico-sdk leaves scratch 0-3 alone when rebooting with
#   pc = 0, as MicroPython does). A wake resumes only if the reset cause is WDT_RESET
#   and the token matches the file: a real watchdog timeout finds the token already
#   cleared by resume() and starts a new epoch. A running watchdog keeps counting in
#   lightsleep, so a sleep is cut to watchdog_ms - 500 (it would end in a reset at
#   that moment anyway); lightsleep also refuses more than 2^32 us (71 min).
import binascii

import machine

from firmware.hal_board import BoardHal

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore
        return x

_TOKEN_MAGIC = const(0x5354524C)   # "STRL" in scratch 0
_RP2040_SCRATCH0 = const(0x4005800C)   # WATCHDOG_BASE 0x40058000 + SCRATCH0 (0x0c)
_RP2350_SCRATCH0 = const(0x400D800C)   # WATCHDOG_BASE 0x400d8000 on the RP2350
_RESUME_FILE = "resume.bin"
_LIGHTSLEEP_MAX_MS = const(4294000)   # lightsleep: delay_ms < 2^32 / 1000
_UART_TX = {0: (0, 12, 16, 28), 1: (4, 8, 20)}
_UART_RX = {0: (1, 13, 17), 1: (5, 9, 21)}

# temp_centi(): 100 * T = (Q0 * D + R0 - raw * 22000000) / D exactly, where
# D = 65535 * 1721 / 15 and Q0 * D + R0 = 2700 * D + 70600000 * 4369 (1721 * 4369 = D).
_T_D = const(7519049)
_T_Q0 = const(43722)
_T_R0 = const(4971922)


def temp_centi(raw):
    # read_u16 of ADC 4 -> 0.01 degC, rounded half up, every intermediate below 2^30:
    # raw * 22000000 / D by long division in base 100 from raw * 22 (< D).
    r = raw * 22
    q = 0
    for _ in range(3):
        r *= 100
        d = r // _T_D
        q = q * 100 + d
        r -= d * _T_D
    return _T_Q0 - q + (2 * (_T_R0 - r) + _T_D) // (2 * _T_D)


def u16_to_mv(raw):
    # read_u16 -> mV with the 3.3 V reference, rounded; raw * 3300 < 2^28
    return (raw * 3300 + 32767) // 65535


def detect_wifi(name):
    # does this board have the CYW43 radio? name: sys.implementation._machine
    if "Pico W" in name or "Pico 2 W" in name:
        return True
    if "Pico" in name:
        return False
    try:
        import network
    except ImportError:
        return False
    return hasattr(network, "WLAN")


class PicoHal(BoardHal):
    board = "pico"
    ETIMEDOUT = 110
    WDT_MIN_MS = 1
    WDT_MAX_MS = 8388

    def __init__(self, flash_dir="/", quiet=False, clock=None, sockets=None, poller=None,
                 machine_name=None, has_wifi=None):
        BoardHal.__init__(self, flash_dir, quiet, clock, sockets, poller, machine_name)
        name = self.machine_name
        self.has_wifi = detect_wifi(name) if has_wifi is None else has_wifi
        self.board = "pico-w" if self.has_wifi else "pico"
        rp2350 = "RP2350" in name
        self.WDT_MAX_MS = 16777 if rp2350 else 8388
        self._scratch = _RP2350_SCRATCH0 if rp2350 else _RP2040_SCRATCH0
        self._temp_adc = None

    def _set_country(self, network, code):
        if not code:
            return
        try:
            network.country(code)
            return
        except AttributeError:   # before 1.20 the country lived in rp2
            pass
        try:
            import rp2  # type: ignore[import-not-found]
            rp2.country(code)
        except (ImportError, AttributeError, ValueError) as e:
            self.log("wifi: country %r not set: %s" % (code, e))

    def _check_uart(self, uid, tx, rx):
        if uid != 0 and uid != 1:
            raise ValueError("uart.id: expected 0 or 1 on the %s, got %r" % (self.board, uid))
        if tx not in _UART_TX[uid]:
            raise ValueError("uart.tx: GP%s cannot be UART%d TX (GP%s)" % (
                tx, uid, "/GP".join([str(p) for p in _UART_TX[uid]])))
        if rx not in _UART_RX[uid]:
            raise ValueError("uart.rx: GP%s cannot be UART%d RX (GP%s)" % (
                rx, uid, "/GP".join([str(p) for p in _UART_RX[uid]])))

    def _mcu_temp_reader(self):
        adc = machine.ADC(4)   # channel 4: the temperature sensor (ADC.CORE_TEMP)

        def read_temp():
            tot = 0
            for _ in range(8):   # 8 * 65535 < 2^20
                tot += adc.read_u16()
            return temp_centi((tot + 4) // 8)
        return read_temp

    def _adc_reader(self, pin, samples):
        if pin not in (26, 27, 28):
            raise ValueError("adc pin: expected GP26, GP27 or GP28 (ADC0-2), got %r" % (pin,))
        adc = machine.ADC(machine.Pin(pin))

        def read_mv():
            tot = 0
            for _ in range(samples):
                tot += adc.read_u16()
            return u16_to_mv((tot + samples // 2) // samples)
        return read_mv

    # deep sleep: a flash record plus a token in the watchdog scratch registers
    def _clamp_sleep(self, ms):
        top = _LIGHTSLEEP_MAX_MS
        if self.wdt_ms and self.wdt_ms - 500 < top:
            top = self.wdt_ms - 500 if self.wdt_ms > 1000 else self.wdt_ms // 2
        if ms > top:
            self.log("deep sleep %d ms cut to %d ms (watchdog %d ms keeps running)"
                     % (ms, top, self.wdt_ms))
            return top
        return ms

    def _woke_from_deep_sleep(self):
        return (machine.reset_cause() == machine.WDT_RESET
                and machine.mem32[self._scratch] & 0xFFFFFFFF == _TOKEN_MAGIC)

    def _rtc_load(self):
        data = self.read_file(_RESUME_FILE)
        if data is None:
            return None
        if binascii.crc32(data) & 0xFFFFFFFF != machine.mem32[self._scratch + 4] & 0xFFFFFFFF:
            return None   # a record from another sleep
        return data

    def _rtc_store(self, data):
        self.write_file_atomic(_RESUME_FILE, data)
        machine.mem32[self._scratch + 4] = binascii.crc32(data) & 0xFFFFFFFF
        machine.mem32[self._scratch] = _TOKEN_MAGIC

    def _rtc_clear(self):
        if machine.mem32[self._scratch] & 0xFFFFFFFF == _TOKEN_MAGIC:
            machine.mem32[self._scratch] = 0

    def _sleep_now(self, ms):
        machine.deepsleep(ms)


def make_hal(flash_dir="/", quiet=False):
    return PicoHal(flash_dir, quiet)
