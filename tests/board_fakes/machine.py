# Fake `machine` for board HAL tests: records what the HAL asks for and behaves as the
# MicroPython docs and port sources say where the HAL depends on it.
#
# configure(port, clock) makes it an "esp32" or "rp2" board just powered on.
# - reset_cause(): PWRON_RESET after configure()/power_on(); after deepsleep() the
#   board "reboots": ESP32 -> DEEPSLEEP_RESET, RP2 -> WDT_RESET (RP2's deepsleep is
#   lightsleep + watchdog reboot, ports/rp2/modmachine.c). deepsleep() then raises
#   DeepSleepReset: the test builds a new HAL, as the board would run main.py again.
# - RTC().memory(): ESP32 only, at most 2048 bytes, kept across deep sleep and resets,
#   cleared by power_on(). RP2 has no RTC memory (AttributeError).
# - mem32[addr]: 32-bit registers; only the RP2 watchdog scratch registers matter;
#   kept across a watchdog reboot, cleared by power_on().
# - WDT(id=0, timeout): ESP32 refuses timeout <= 0, RP2040 timeout > 8388; records
#   feeds and the longest gap between them (starved() says if it would have fired).
#   A running RP2 watchdog cuts a deepsleep short at its timeout.
# - ADC(src, atten=...): RP2 channels 0-4 or Pins 26-29, read_u16 only; ESP32 Pins
#   with an ADC, read_u16 and read_uv. Values come from adc_values[key] (key: channel
#   number on RP2 (Pin 26 -> 0), GPIO on ESP32): raw 0..65535, or uV for read_uv.
# - UART(id, baudrate, ..., tx, rx, rxbuf, timeout): ESP32 ids 0-2, RP2 ids 0-1 with
#   the pin mux rule; records its settings; write() collects (at most write_room bytes
#   per call when set, EAGAIN at 0, like RP2 with timeout=0), feed() makes bytes arrive.
# - I2C(id, scl=, sda=, freq=): forwards transfers to `i2c_bus` (firmware/fake_i2c.py).
# Not modelled: interrupts, timers, pin levels, real timing.
PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5

PORT = "esp32"
clock = None
_reset_cause = PWRON_RESET
adc_values = {}
adcs = []
uarts = []
i2cs = []
i2c_bus = None
wdt = None
deepsleeps = []
lightsleeps = []
rtc_memory = b""
_regs = {}


class DeepSleepReset(Exception):
    # raised by deepsleep(): the chip is off; the test "boots" a new HAL
    pass


def configure(port, clk):
    global PORT, clock
    PORT = port
    clock = clk
    power_on()


def power_on():
    global _reset_cause, wdt, rtc_memory, i2c_bus
    _reset_cause = PWRON_RESET
    wdt = None
    rtc_memory = b""
    _regs.clear()
    adc_values.clear()
    del adcs[:]
    del uarts[:]
    del i2cs[:]
    del deepsleeps[:]
    del lightsleeps[:]
    i2c_bus = None


def _reboot(cause):
    global _reset_cause, wdt
    _reset_cause = cause
    wdt = None          # a reset stops the watchdog; main.py starts it again
    del uarts[:]
    from board_fakes import network
    network.radio_off()  # the radio starts again from scratch after any reset
    clock.reboot(rtc_runs=(PORT == "esp32"))


def reset_cause():
    return _reset_cause


def reset():
    # machine.reset(): a hard reset on ESP32, a watchdog reboot on RP2
    _reboot(HARD_RESET if PORT == "esp32" else WDT_RESET)
    raise DeepSleepReset("reset")


def deepsleep(ms=0):
    deepsleeps.append(ms)
    if PORT == "rp2" and wdt is not None and ms > wdt.timeout:
        ms = wdt.timeout     # the watchdog keeps counting through lightsleep
    clock.advance(ms)
    _reboot(DEEPSLEEP_RESET if PORT == "esp32" else WDT_RESET)
    raise DeepSleepReset(ms)


def lightsleep(ms=0):
    lightsleeps.append(ms)
    clock.advance(ms)


def unique_id():
    return b"\xde\xad\xbe\xef\x00\x01"


def freq():
    return 240000000 if PORT == "esp32" else 125000000


class _Mem:
    def __getitem__(self, addr):
        return _regs.get(addr, 0)

    def __setitem__(self, addr, value):
        _regs[addr] = value & 0xFFFFFFFF


mem32 = _Mem()


class Pin:
    IN = 1
    OUT = 3
    OPEN_DRAIN = 7
    PULL_UP = 1
    PULL_DOWN = 2

    def __init__(self, id, mode=-1, pull=-1, value=None):
        if not isinstance(id, int) or id < 0 or id > (39 if PORT == "esp32" else 29):
            raise ValueError("invalid pin")
        self.id = id
        self.mode = mode

    def __repr__(self):
        return "Pin(%d)" % self.id


_ESP32_ADC = (0, 2, 4, 12, 13, 14, 15, 25, 26, 27, 32, 33, 34, 35, 36, 37, 38, 39)


class ADC:
    ATTN_0DB = 0
    ATTN_2_5DB = 1
    ATTN_6DB = 2
    ATTN_11DB = 3
    CORE_TEMP = 4

    def __init__(self, src, atten=None):
        if PORT == "rp2":
            if isinstance(src, Pin):
                if not 26 <= src.id <= 29:
                    raise ValueError("Pin doesn't have ADC capabilities")
                key = src.id - 26
            elif 0 <= src <= 4:
                key = src
            else:
                raise ValueError("invalid channel")
            if atten is not None:
                raise TypeError("unexpected keyword argument 'atten'")
        else:
            if not isinstance(src, Pin) or src.id not in _ESP32_ADC:
                raise ValueError("invalid pin")
            key = src.id
        self.key = key
        self.atten = atten
        self.reads = 0
        adcs.append(self)

    def read_u16(self):
        self.reads += 1
        v = adc_values.get(self.key, 0)
        if PORT == "esp32":   # adc_values hold uV on the ESP32; 11 dB spans ~3.1 V
            v = v * 65535 // 3100000
        return 0 if v < 0 else 65535 if v > 65535 else v

    def read_uv(self):
        if PORT != "esp32":
            raise AttributeError("'ADC' object has no attribute 'read_uv'")
        self.reads += 1
        return adc_values.get(self.key, 0)


class WDT:
    def __init__(self, id=0, timeout=5000):
        global wdt
        if id != 0:
            raise ValueError("WDT(%d) doesn't exist" % id)
        if PORT == "esp32" and timeout <= 0:
            raise ValueError("WDT timeout too short")
        if PORT == "rp2" and timeout > 8388:
            raise ValueError("timeout exceeds 8388")
        self.timeout = timeout
        self.feeds = 0
        self.last = clock.ms
        self.max_gap = 0
        wdt = self

    def feed(self):
        gap = clock.ms - self.last
        if gap > self.max_gap:
            self.max_gap = gap
        self.last = clock.ms
        self.feeds += 1

    def starved(self):
        # would the real watchdog have reset the board by now?
        return self.max_gap > self.timeout or clock.ms - self.last > self.timeout


class RTC:
    def __init__(self, id=0):
        pass

    def memory(self, data=None):
        global rtc_memory
        if PORT != "esp32":
            raise AttributeError("'RTC' object has no attribute 'memory'")
        if data is None:
            return rtc_memory
        if len(data) > 2048:
            raise ValueError("buffer too long")
        rtc_memory = bytes(data)


def _rp2_uart_pin_ok(uid, pin, tx):
    # ports/rp2/machine_uart.c: TX pin % 4 == 0, RX pin % 4 == 1, UART0 when (pin + 4) & 8 == 0
    if pin % 4 != (0 if tx else 1):
        return False
    return (0 if ((pin + 4) & 8) == 0 else 1) == uid


class UART:
    def __init__(self, id, baudrate=9600, bits=8, parity=None, stop=1, tx=None, rx=None,
                 txbuf=None, rxbuf=None, timeout=None, timeout_char=None):
        if PORT == "esp32" and not 0 <= id <= 2:
            raise ValueError("UART(%d) does not exist" % id)
        if PORT == "rp2":
            if not 0 <= id <= 1:
                raise ValueError("UART(%d) doesn't exist" % id)
            if tx is not None and not _rp2_uart_pin_ok(id, tx.id, True):
                raise ValueError("bad TX pin")
            if rx is not None and not _rp2_uart_pin_ok(id, rx.id, False):
                raise ValueError("bad RX pin")
        self.id = id
        self.baudrate = baudrate
        self.bits = bits
        self.parity = parity
        self.stop = stop
        self.tx = tx
        self.rx = rx
        self.txbuf = txbuf
        self.rxbuf = 256 if rxbuf is None else rxbuf
        self.timeout = timeout
        self.sent = bytearray()
        self._in = bytearray()
        self.write_room = None   # RP2 with timeout=0: at most this many bytes per write()
        self.writes = 0
        self.deinited = False
        uarts.append(self)

    def feed(self, data):
        # bytes arriving on RX (beyond rxbuf they are lost, as on the board)
        room = self.rxbuf - len(self._in)
        self._in.extend(data[:room] if room > 0 else b"")

    def any(self):
        return len(self._in)

    def read(self, n=-1):
        if not self._in:
            return None
        if n is None or n < 0 or n > len(self._in):
            n = len(self._in)
        out = bytes(self._in[:n])
        self._in = self._in[n:]
        return out

    def readinto(self, buf, nbytes=None):
        if not self._in:
            return None
        n = len(buf) if nbytes is None else nbytes
        if n > len(self._in):
            n = len(self._in)
        buf[:n] = self._in[:n]
        self._in = self._in[n:]
        return n

    def write(self, data):
        self.writes += 1
        n = len(data)
        if self.write_room is not None and n > self.write_room:
            n = self.write_room
            if n == 0:
                raise OSError(11)      # EAGAIN: nothing fitted
        self.sent.extend(bytes(data[:n]))
        return n

    def flush(self):
        pass

    def txdone(self):
        return True

    def deinit(self):
        self.deinited = True


class I2C:
    def __init__(self, id, scl=None, sda=None, freq=400000, timeout=50000):
        self.id = id
        self.scl = scl
        self.sda = sda
        self.freq = freq
        i2cs.append(self)

    def writeto(self, addr, buf, stop=True):
        return i2c_bus.writeto(addr, buf, stop)

    def readfrom_into(self, addr, buf, stop=True):
        return i2c_bus.readfrom_into(addr, buf, stop)

    def scan(self):
        return i2c_bus.scan()
