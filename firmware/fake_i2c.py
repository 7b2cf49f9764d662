# A fake I2C bus and a Sensirion SHT3x-DIS model that behaves as its datasheet says,
# for testing drivers on CPython and the MicroPython unix port (no chip here).
#
# FakeI2C has the machine.I2C methods drivers use: writeto, readfrom_into, readfrom,
# scan. Devices attach at their 7-bit address. A transfer to an address nobody holds
# raises OSError(ENODEV); a device that NAKs its address (busy, no data) raises
# OSError(EIO), like the RP2 hardware I2C. Ports differ here: ESP32 and SoftI2C
# raise ENODEV for both, so FakeI2C(nak_errno=19) emulates them. A NAK of a data byte
# raises EIO too, or with soft=True is reported as machine.SoftI2C does: writeto
# returns the number of bytes ACKed.
#
# Device interface (duck typed): `address`; i2c_write(buf, stop) -> bytes ACKed, or
# -1 if the address byte was NAKed; i2c_read(buf, stop) -> False if the address
# byte was NAKed, else fills buf; optional general_call(buf) for address 0.
#
# FakeSHT3x models (section and table numbers from "Datasheet SHT3x-DIS"):
# - addresses 0x44 / 0x45 (ADDR pin, §3);
# - every command of Tables 9-17 and 19 by its exact 16-bit code; an unknown code
#   is NAKed at its second byte and sets status bit 1 (Table 18);
# - single shot: the result exists only after tMEAS (the maxima 15.5 / 6.5 / 4.5 ms,
#   §2.2); with clock stretching disabled a read header before that is NAKed (§4.3),
#   with it enabled the read is served and the stretch is added to `stretched_us`;
#   a result can be read once; reading fewer than 6 bytes is allowed (§4.4);
# - the reply [T msb, T lsb, CRC, RH msb, RH lsb, CRC], raw values from the inverse
#   of §4.13: St = round((T + 45) * 65535 / 175), Srh = round(RH * 65535 / 100), with
#   T clamped to the sensor range -40..125 °C and RH to 0..100 %;
# - after any command, 1 ms before the next transfer is served (§4, "SCL free"
#   block of Table 9); after a soft reset, tSR = 1.5 ms; NAKed meanwhile;
# - status register (Table 18): 0x8010 at power-up and after reset; heater bit 13;
#   clear status (Table 19) clears bits 15, 11, 10, 4; bit 1 reflects the last
#   command (the status read itself leaves it alone); bit 0 reflects the CRC of the
#   last data write;
# - soft reset (Table 14) and general call reset (Table 15): heater off, status
#   0x8010, periodic mode stopped, pending reply dropped;
# - periodic mode (Tables 10-13): a measurement every 1/mps s (ART: 4 Hz), each
#   ready tMEAS after its start; Fetch Data returns the newest one not fetched yet,
#   or NAKs the read header; Break returns to single shot;
# - alert limits: read/write commands with the power-up defaults of the Sensirion
#   "Alert Mode" application note; a write with a bad CRC is NAKed at the CRC byte
#   and sets status bit 0;
# - serial number (app note "Electronic Identification Code"): 0x3682 and 0x3780
#   (clock stretching), two words + CRCs.
# Fault injection: nak_next = n NAKs the next n transfers at the address byte;
# corrupt_crc = n flips the first CRC byte of the next n replies.
#
# Not modelled: measurement noise, repeatability and accuracy (values are exact);
# the heater's warming of the sensor; the alert logic and ALERT pin (bits 15, 11, 10
# only change through set_alert()); power-up time; the interface reset (9 SCL
# pulses) and nRESET pin; bus timing, arbitration and clock speed. The datasheet
# only recommends Break before other commands in periodic mode (§4.8) and says soft
# reset works in idle state (§4.9); this model is strict there and treats every
# command but Fetch Data and Break as invalid in periodic mode.
import errno

try:
    from time import ticks_ms as _ticks_ms, ticks_diff as _ticks_diff
except ImportError:  # CPython
    import time as _time

    def _ticks_ms():  # type: ignore
        return _time.monotonic_ns() // 1000000

    def _ticks_diff(a, b):  # type: ignore
        return a - b


def _crc8(data, start, end):
    # CRC-8 of the SHT3x (Table 20): poly 0x31, init 0xFF, no reflection, xorout 0.
    crc = 0xFF
    for i in range(start, end):
        crc ^= data[i]
        for _ in range(8):
            crc = ((crc << 1) ^ 0x31) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


class FakeI2C:
    # A bus with attachable devices. Counters: writes, reads, naks (every transfer
    # that raised or was cut short).

    def __init__(self, soft=False, nak_errno=None):
        self._devices = {}
        self.soft = soft
        self.nak_errno = nak_errno
        self.writes = 0
        self.reads = 0
        self.naks = 0

    def attach(self, device):
        if device.address in self._devices:
            raise ValueError("address 0x%02x already taken" % device.address)
        self._devices[device.address] = device
        return device

    def detach(self, device):
        del self._devices[device.address]

    def scan(self):
        # Like machine.I2C.scan(): addresses 0x08..0x77 that ACK a write header.
        found = []
        for addr in sorted(self._devices):
            if 0x08 <= addr <= 0x77 and self._devices[addr].i2c_write(b"", True) >= 0:
                found.append(addr)
        return found

    def writeto(self, addr, buf, stop=True):
        self.writes += 1
        if addr == 0:
            return self._general_call(buf)
        dev = self._devices.get(addr)
        if dev is None:
            self._nak(errno.ENODEV)
        acked = dev.i2c_write(buf, stop)
        if acked < 0:
            self._nak(errno.EIO)
        if acked < len(buf):
            if self.soft:
                self.naks += 1
                return acked
            self._nak(errno.EIO)
        return acked

    def readfrom_into(self, addr, buf, stop=True):
        self.reads += 1
        dev = self._devices.get(addr)
        if dev is None:
            self._nak(errno.ENODEV)
        if not dev.i2c_read(buf, stop):
            self._nak(errno.EIO)

    def readfrom(self, addr, nbytes, stop=True):
        buf = bytearray(nbytes)
        self.readfrom_into(addr, buf, stop)
        return bytes(buf)

    def _general_call(self, buf):
        acked = False
        for addr in self._devices:
            dev = self._devices[addr]
            if hasattr(dev, "general_call"):
                dev.general_call(buf)
                acked = True
        if not acked:
            self._nak(errno.ENODEV)
        return len(buf)

    def _nak(self, err):
        # Two arguments: CPython sets OSError.errno only from (errno, strerror)
        # (OSError(5).errno is None there); MicroPython takes args[0] either way.
        self.naks += 1
        err = self.nak_errno or err
        raise OSError(err, "I2C NAK" if err == errno.EIO else "I2C no device")


# Single shot (Table 9): code -> (tMEAS max in µs, clock stretching).
_SINGLE = {
    0x2400: (15500, False), 0x240B: (6500, False), 0x2416: (4500, False),
    0x2C06: (15500, True), 0x2C0D: (6500, True), 0x2C10: (4500, True),
}
# Periodic (Tables 10 and 12): code -> (period in ms, tMEAS max in µs).
_PERIODIC = {
    0x2032: (2000, 15500), 0x2024: (2000, 6500), 0x202F: (2000, 4500),
    0x2130: (1000, 15500), 0x2126: (1000, 6500), 0x212D: (1000, 4500),
    0x2236: (500, 15500), 0x2220: (500, 6500), 0x222B: (500, 4500),
    0x2334: (250, 15500), 0x2322: (250, 6500), 0x2329: (250, 4500),
    0x2737: (100, 15500), 0x2721: (100, 6500), 0x272A: (100, 4500),
    0x2B32: (250, 15500),  # ART: 4 Hz (§4.7); repeatability not stated, high assumed
}
# Alert limits (Alert Mode app note): write code / read code -> index; power-up
# defaults high set 80 %RH 60 °C, high clear 79 %RH 58 °C, low clear 22 %RH -9 °C,
# low set 20 %RH -10 °C.
_LIMIT_WRITE = {0x611D: 0, 0x6116: 1, 0x610B: 2, 0x6100: 3}
_LIMIT_READ = {0xE11F: 0, 0xE114: 1, 0xE109: 2, 0xE102: 3}
_LIMIT_DEFAULTS = (0xCD33, 0xC92D, 0x3869, 0x3466)

_SOFT_RESET = 0x30A2
_HEATER_ON = 0x306D
_HEATER_OFF = 0x3066
_READ_STATUS = 0xF32D
_CLEAR_STATUS = 0x3041
_FETCH = 0xE000
_BREAK = 0x3093
_SERIAL = 0x3682
_SERIAL_STRETCH = 0x3780

STATUS_AT_RESET = 0x8010  # alert pending (bit 15) and reset detected (bit 4), Table 18
_CLEARABLE = 0x8000 | 0x0800 | 0x0400 | 0x0010  # Table 19
_T_IDLE_US = 1000
_T_SR_US = 1500


class FakeSHT3x:
    # An SHT3x at `address` measuring temperature_c / humidity_pct (change them
    # with set()). clock: a function returning milliseconds (time.ticks_ms by
    # default); tests pass a fake one and advance it from the driver's sleep_ms.

    def __init__(self, temperature_c=25.0, humidity_pct=50.0, address=0x44,
                 serial=0x5EC0FFEE, clock=None):
        if address != 0x44 and address != 0x45:
            raise ValueError("an SHT3x answers at 0x44 or 0x45 only")
        self.address = address
        self.serial = serial
        self._clock = clock if clock is not None else _ticks_ms
        self._out = bytearray(6)   # the reply the next read returns
        self._out_len = 0          # 0: nothing to read (the read header is NAKed)
        self.nak_next = 0
        self.corrupt_crc = 0
        self.commands = 0          # commands received (valid or not)
        self.last_command = -1
        self.stretched_us = 0      # clock stretching a real sensor would have done
        self.raw_t = 0
        self.raw_rh = 0
        self.limits = list(_LIMIT_DEFAULTS)
        self._period_ms = 1000     # periodic mode: interval, tMEAS, start, last fetched
        self._p_meas_us = 0
        self._p_t0 = 0
        self._p_fetched = -1
        self.set(temperature_c, humidity_pct)
        self._power_on()

    def _power_on(self):
        self.status = STATUS_AT_RESET
        self.periodic = False
        self._out_len = 0
        self._t0 = self._clock()
        self._busy_us = 0
        self._stretch = False

    def set(self, temperature_c, humidity_pct):
        # New conditions; the raw values are computed here, not per read.
        t = min(max(temperature_c, -40.0), 125.0)
        rh = min(max(humidity_pct, 0.0), 100.0)
        self.raw_t = int((t + 45) * 65535 / 175 + 0.5)
        self.raw_rh = int(rh * 65535 / 100 + 0.5)

    @property
    def heater(self):
        return bool(self.status & 0x2000)

    def set_alert(self, rh=False, t=False):
        # Raise the tracking alert bits (11, 10) and alert pending (15) as the alert
        # logic would in periodic mode; that logic itself is not modelled.
        if rh:
            self.status |= 0x8800
        if t:
            self.status |= 0x8400

    # -- bus side -----------------------------------------------------------------

    def _elapsed_us(self):
        return _ticks_diff(self._clock(), self._t0) * 1000

    def _busy(self):
        return self._elapsed_us() < self._busy_us

    def _start(self, busy_us, stretch=False):
        self._t0 = self._clock()
        self._busy_us = busy_us
        self._stretch = stretch

    def _reply_words(self, w0, w1, nwords):
        out = self._out
        out[0] = w0 >> 8
        out[1] = w0 & 0xFF
        out[2] = _crc8(out, 0, 2)
        out[3] = w1 >> 8
        out[4] = w1 & 0xFF
        out[5] = _crc8(out, 3, 5)
        self._out_len = 3 * nwords

    def i2c_write(self, buf, stop=True):
        if self.nak_next:
            self.nak_next -= 1
            return -1
        if self._busy():
            return -1
        n = len(buf)
        if n < 2:
            return n  # an address probe, or a command cut short: no effect
        code = (buf[0] << 8) | buf[1]
        self.commands += 1
        self.last_command = code
        if self.periodic and code != _FETCH and code != _BREAK:
            return self._invalid()
        self._out_len = 0  # a new command drops an unread reply
        acked = 2
        busy = _T_IDLE_US
        stretch = False
        if code in _SINGLE:
            busy, stretch = _SINGLE[code]
            self._reply_words(self.raw_t, self.raw_rh, 2)
        elif code in _PERIODIC:
            self._period_ms, self._p_meas_us = _PERIODIC[code]
            self._p_t0 = self._clock()
            self._p_fetched = -1
            self.periodic = True
            busy = 0
        elif code == _FETCH:
            if not self.periodic:
                return self._invalid()
            self._fetch()
            busy = 0  # the read follows at once, after a repeated START (Table 11)
        elif code == _BREAK:
            self.periodic = False
        elif code == _SOFT_RESET:
            self._power_on()
            busy = _T_SR_US
        elif code == _READ_STATUS:
            self._reply_words(self.status, 0, 1)
        elif code == _CLEAR_STATUS:
            self.status &= ~_CLEARABLE
        elif code == _HEATER_ON:
            self.status |= 0x2000
        elif code == _HEATER_OFF:
            self.status &= ~0x2000
        elif code == _SERIAL or code == _SERIAL_STRETCH:
            self._reply_words(self.serial >> 16, self.serial & 0xFFFF, 2)
            stretch = code == _SERIAL_STRETCH
        elif code in _LIMIT_READ:
            self._reply_words(self.limits[_LIMIT_READ[code]], 0, 1)
        elif code in _LIMIT_WRITE:
            if n < 5:
                return n  # data not sent yet: nothing happens
            if _crc8(buf, 2, 4) != buf[4]:
                self.status |= 0x0001
                self.status &= ~0x0002
                self._start(_T_IDLE_US)
                return 4  # NAK the checksum byte: the data is not taken (§4)
            self.status &= ~0x0001
            self.limits[_LIMIT_WRITE[code]] = (buf[2] << 8) | buf[3]
            acked = 5
        else:
            return self._invalid()
        if code != _READ_STATUS:
            self.status &= ~0x0002
        self._start(busy, stretch)
        return acked

    def _invalid(self):
        self.status |= 0x0002
        return 1  # MSB ACKed, LSB NAKed

    def _fetch(self):
        # The newest periodic measurement that has finished and was not fetched.
        done_us = self._ticks_us_since(self._p_t0) - self._p_meas_us
        if done_us < 0:
            return
        k = done_us // (self._period_ms * 1000)
        if k > self._p_fetched:
            self._p_fetched = k
            self._reply_words(self.raw_t, self.raw_rh, 2)

    def _ticks_us_since(self, t):
        return _ticks_diff(self._clock(), t) * 1000

    def i2c_read(self, buf, stop=True):
        if self.nak_next:
            self.nak_next -= 1
            return False
        if self._busy():
            if not self._stretch:
                return False  # no data yet (§4.3)
            self.stretched_us += self._busy_us - self._elapsed_us()
            self._busy_us = 0
        if self._out_len == 0:
            return False
        out = self._out
        n = self._out_len
        if self.corrupt_crc:
            self.corrupt_crc -= 1
            out[2] ^= 0xFF
        for i in range(len(buf)):
            buf[i] = out[i] if i < n else 0xFF  # past the reply: SDA released
        self._out_len = 0  # read once; the data memory is cleared
        return True

    def general_call(self, buf):
        # General call reset: address 0x00, second byte 0x06 (Table 15).
        if len(buf) >= 1 and buf[0] == 0x06:
            self._power_on()
            self._start(_T_SR_US)
