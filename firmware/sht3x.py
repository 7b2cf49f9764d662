# Sensirion SHT3x-DIS (SHT30/SHT31/SHT35) humidity and temperature driver.
#
# Theory of operation. Every exchange is a 16-bit command written MSB first (its low
# bits carry a 3-bit checksum of their own, §4), optionally followed by a read of
# 16-bit words, each followed by a CRC-8 byte (§4.12). We only use the commands with
# clock stretching disabled, so the driver does not depend on how each port's I2C
# (and its timeout setting) copes with a 15 ms clock stretch: the sensor NAKs the
# read header until its data is ready (§4.3, §4.4), and we wait the datasheet's
# worst-case time instead. Results are integers: temperature in 0.01 °C, humidity in
# 0.01 %RH, both exact to rounding (one LSB of the sensor is 0.0027 °C / 0.0015 %RH);
# boards have single-precision floats, so floats are only offered as helpers.
#
# Sources: "Datasheet SHT3x-DIS" (Sensirion, version 5 of May 2018 and later; the
# section and table numbers below are the datasheet's) and the Sensirion application note "Electronic
# Identification Code, SHT3x" for the serial number, which the datasheet omits.
#
# Memory: the command and reply buffers are preallocated; measure() allocates
# nothing on the success path (tests/dual/test_sht3x.py checks it with heap_lock on
# the unix port). Every intermediate stays below 2^30, the small-int limit of
# 32-bit boards (see centi_celsius). Errors allocate their exception, nothing else.
#
# Errors: bad arguments (our caller's fault) raise ValueError. Anything the sensor
# or bus did wrong raises OSError: the bus's own (ENODEV/EIO/ETIMEDOUT, depending
# on the port) or SHT3xError (an OSError with errno EIO) for a CRC mismatch. One
# retry is made for either before giving up; `crc_errors` and `retries` count them.
import errno

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore
        return x

try:
    from time import sleep_ms as _sleep_ms
except ImportError:  # CPython
    import time as _time

    def _sleep_ms(ms):  # type: ignore
        _time.sleep(ms / 1000)


DEFAULT_ADDRESS = const(0x44)  # ADDR pin low; 0x45 with ADDR high (§3, I2C address table)
ALT_ADDRESS = const(0x45)

# Repeatability (§2.2, §4.3): higher repeatability means less noise and a longer
# measurement. Used as indexes into the tables below.
HIGH = const(0)
MEDIUM = const(1)
LOW = const(2)

# Single shot, clock stretching disabled: Table 9 (§4.3), 0x24 MSB.
_SINGLE_SHOT = (0x2400, 0x240B, 0x2416)
# Worst-case measurement duration tMEAS per repeatability, rounded up to whole ms:
# max 15.5 / 6.5 / 4.5 ms in the system timing table for VDD 2.15..2.4 V (§2.2;
# at 2.4..5.5 V the maxima are 15 / 6 / 4 ms, so these cover the whole supply range).
_MEAS_MS = (16, 7, 5)

_CMD_SOFT_RESET = const(0x30A2)     # Table 14 (§4.9)
_CMD_HEATER_ON = const(0x306D)      # Table 16 (§4.10)
_CMD_HEATER_OFF = const(0x3066)     # Table 16 (§4.10)
_CMD_READ_STATUS = const(0xF32D)    # Table 17 (§4.11)
_CMD_CLEAR_STATUS = const(0x3041)   # Table 19 (§4.11)
_CMD_FETCH_DATA = const(0xE000)     # Table 11 (§4.6)
_CMD_BREAK = const(0x3093)          # Table 13 (§4.8)
_CMD_ART = const(0x2B32)            # Table 12 (§4.7): periodic at 4 Hz
# Serial number ("Electronic Identification Code" app note): 0x3682 with clock
# stretching disabled (0x3780 is the stretching variant, unused here). Replies with
# two words + CRC: the 32-bit number, most significant word first.
_CMD_SERIAL = const(0x3682)

# Minimal wait after any command before the next transfer (§4; the "SCL free"
# block of Table 9).
_T_IDLE_MS = const(1)
_T_RESET_MS = const(2)    # soft reset time tSR max 1.5 ms (§2.2 system timing), rounded up

# Periodic mode, Table 10 (§4.5): rows by measurements per second, columns by
# repeatability (high, medium, low).
PERIODIC_MPS = (0.5, 1, 2, 4, 10)
_PERIODIC = (
    (0x2032, 0x2024, 0x202F),  # 0.5 mps
    (0x2130, 0x2126, 0x212D),  # 1 mps
    (0x2236, 0x2220, 0x222B),  # 2 mps
    (0x2334, 0x2322, 0x2329),  # 4 mps
    (0x2737, 0x2721, 0x272A),  # 10 mps (the datasheet warns of self-heating)
)

# Status register bits, Table 18 (§4.11). Power-up/reset value: 0x8010.
STATUS_ALERT_PENDING = const(0x8000)  # bit 15, default 1
STATUS_HEATER_ON = const(0x2000)      # bit 13
STATUS_RH_ALERT = const(0x0800)       # bit 11: RH tracking alert
STATUS_T_ALERT = const(0x0400)        # bit 10: T tracking alert
STATUS_RESET_DETECTED = const(0x0010)  # bit 4, default 1: hard/soft reset or supply fail
STATUS_COMMAND_FAILED = const(0x0002)  # bit 1: last command invalid or failed its checksum
STATUS_WRITE_CRC_FAILED = const(0x0001)  # bit 0: checksum of last write transfer failed

# CRC-8 of every 16-bit word, Table 20 (§4.12): polynomial 0x31 (x^8 + x^5 + x^4 + 1),
# init 0xFF, no reflection, final XOR 0x00. Example: CRC(0xBEEF) = 0x92.
_CRC_POLY = const(0x31)
_CRC_INIT = const(0xFF)


class SHT3xError(OSError):
    # The sensor answered but its data failed the CRC check (errno EIO).
    pass


def crc8(buf, start=0, end=-1):
    # CRC-8 of buf[start:end] (end < 0: to the end) without slicing (no allocation).
    if end < 0:
        end = len(buf)
    crc = _CRC_INIT
    i = start
    while i < end:
        crc ^= buf[i]
        for _ in range(8):
            if crc & 0x80:
                crc = ((crc << 1) ^ _CRC_POLY) & 0xFF
            else:
                crc = (crc << 1) & 0xFF
        i += 1
    return crc


def centi_celsius(raw):
    # T = -45 + 175 * St / (2^16 - 1) (§4.13), in 0.01 °C rounded half up.
    # 17500 * St reaches 1.15e9, past 2^30 (a bigint on 32-bit boards), so take
    # 8750 * St (at most 573 431 250) and double quotient and remainder.
    x = 8750 * raw
    q = x // 65535
    r = x - q * 65535
    return 2 * q + (2 * r + 32767) // 65535 - 4500


def centi_percent(raw):
    # RH = 100 * Srh / (2^16 - 1) (§4.13), in 0.01 %RH rounded half up.
    # 10000 * Srh + 32767 stays below 6.6e8 < 2^30.
    return (10000 * raw + 32767) // 65535


class SHT3x:
    # One sensor on a machine.I2C-like bus (writeto / readfrom_into).
    #
    # i2c: the bus. address: 0x44 or 0x45. sleep_ms: how to wait (time.sleep_ms by
    # default; tests pass a fake clock's). repeatability: default for measure().
    # After measure() or fetch(): temperature_centi (0.01 °C) and humidity_centi
    # (0.01 %RH) hold the result.

    def __init__(self, i2c, address=DEFAULT_ADDRESS, sleep_ms=None, repeatability=HIGH):
        if address != DEFAULT_ADDRESS and address != ALT_ADDRESS:
            raise ValueError("SHT3x address must be 0x44 or 0x45")
        _check_repeatability(repeatability)
        self._i2c = i2c
        self._addr = address
        self._sleep = sleep_ms if sleep_ms is not None else _sleep_ms
        self.repeatability = repeatability
        self._cmd = bytearray(2)   # the command being sent
        self._buf6 = bytearray(6)  # two words + CRCs: a measurement, the serial number
        self._buf3 = bytearray(3)  # one word + CRC: the status register
        self.periodic = False      # True between start_periodic() and stop_periodic()
        self.temperature_centi = 0
        self.humidity_centi = 0
        self.crc_errors = 0        # CRC mismatches seen (each one retried once)
        self.retries = 0           # transfers repeated after a NAK or a CRC mismatch

    # -- single shot ---------------------------------------------------------------

    def start(self, repeatability=-1):
        # Start a single-shot measurement (clock stretching disabled) and return the
        # milliseconds to wait before read_result(). For callers with their own
        # scheduler; measure() does all of it.
        if repeatability < 0:
            repeatability = self.repeatability
        else:
            _check_repeatability(repeatability)
        self._command(_SINGLE_SHOT[repeatability])
        return _MEAS_MS[repeatability]

    def read_result(self):
        # Read the result of start(). Before the measurement has finished the sensor
        # NAKs the read header (§4.4): an OSError whose errno depends on the port
        # (EIO on RP2, ENODEV on ESP32 and SoftI2C). A CRC mismatch raises SHT3xError.
        self._i2c.readfrom_into(self._addr, self._buf6)
        self._take_measurement()

    def measure(self, repeatability=-1):
        # Measure once: command, wait the datasheet's worst-case tMEAS, read, check.
        # A NAK (sensor busy or not ready) or a CRC mismatch is retried once, after
        # waiting long enough for any measurement still running to end.
        # Results in temperature_centi / humidity_centi.
        if repeatability < 0:
            repeatability = self.repeatability
        else:
            _check_repeatability(repeatability)
        for attempt in range(2):
            try:
                self._command(_SINGLE_SHOT[repeatability])
                self._sleep(_MEAS_MS[repeatability])
                self._i2c.readfrom_into(self._addr, self._buf6)
                self._take_measurement()
                return
            except SHT3xError:
                self.crc_errors += 1
                if attempt:
                    raise
            except OSError:
                if attempt:
                    raise
            self.retries += 1
            self._sleep(_MEAS_MS[HIGH])

    def read(self, repeatability=-1):
        # measure() and return (temperature_centi, humidity_centi): one small tuple.
        self.measure(repeatability)
        return (self.temperature_centi, self.humidity_centi)

    def temperature_c(self):
        # Last temperature as a float in °C (single precision on boards: 21.3 reads
        # back as 21.2999...; send temperature_centi on the wire instead).
        return self.temperature_centi / 100

    def humidity_pct(self):
        # Last relative humidity as a float in %RH (see temperature_c).
        return self.humidity_centi / 100

    # -- periodic mode (§4.5 - §4.8) ---------------------------------------------

    def start_periodic(self, mps=1, repeatability=-1, art=False):
        # Measure continuously at mps measurements per second (0.5, 1, 2, 4 or 10),
        # or at 4 Hz with accelerated response time (art=True, §4.7). Read with
        # fetch(); stop with stop_periodic() before any other command.
        if repeatability < 0:
            repeatability = self.repeatability
        else:
            _check_repeatability(repeatability)
        if art:
            code = _CMD_ART
        else:
            row = -1
            for i in range(len(PERIODIC_MPS)):
                if PERIODIC_MPS[i] == mps:
                    row = i
            if row < 0:
                raise ValueError("mps must be one of 0.5, 1, 2, 4, 10")
            code = _PERIODIC[row][repeatability]
        self._command(code)
        self.periodic = True
        self._sleep(_T_IDLE_MS)

    def fetch(self):
        # Fetch Data (Table 11): True and new values in temperature_centi /
        # humidity_centi if the sensor has a measurement not fetched before, False if
        # it NAKs the read header because it has none (§4.6). The fetch command and
        # the read form one transfer with a repeated START.
        self._command(_CMD_FETCH_DATA, False)
        try:
            self._i2c.readfrom_into(self._addr, self._buf6)
        except OSError:
            return False
        try:
            self._take_measurement()
        except SHT3xError:
            self.crc_errors += 1
            raise
        return True

    def stop_periodic(self):
        # Break (Table 13, §4.8): abort periodic mode and return to single shot.
        self._command(_CMD_BREAK)
        self.periodic = False
        self._sleep(_T_IDLE_MS)

    # -- configuration and diagnostics --------------------------------------------

    def soft_reset(self):
        # Soft reset (Table 14, §4.9): reloads calibration, heater off, status back
        # to 0x8010. It works in idle state only, so periodic mode is stopped first.
        if self.periodic:
            self.stop_periodic()
        self._command(_CMD_SOFT_RESET)
        self._sleep(_T_RESET_MS)

    def heater(self, on):
        # Internal heater on or off (Table 16, §4.10): for plausibility checks only,
        # it raises the sensor temperature by a few degrees.
        self._command(_CMD_HEATER_ON if on else _CMD_HEATER_OFF)
        self._sleep(_T_IDLE_MS)

    def status(self):
        # The 16-bit status register (Tables 17 and 18); see the STATUS_* bits.
        buf = self._buf3
        self._read_words(_CMD_READ_STATUS, buf)
        return (buf[0] << 8) | buf[1]

    def clear_status(self):
        # Clear bits 15, 11, 10 and 4 of the status register (Table 19).
        self._command(_CMD_CLEAR_STATUS)
        self._sleep(_T_IDLE_MS)

    def serial_number(self):
        # The 32-bit unique serial number (a heap int on 32-bit boards: call rarely).
        buf = self._buf6
        self._read_words(_CMD_SERIAL, buf)
        return (buf[0] << 24) | (buf[1] << 16) | (buf[3] << 8) | buf[4]

    # -- internals -----------------------------------------------------------------

    def _command(self, code, stop=True):
        cmd = self._cmd
        cmd[0] = code >> 8
        cmd[1] = code & 0xFF
        acks = self._i2c.writeto(self._addr, cmd, stop)
        # machine.SoftI2C reports a NAK of a data byte only through its return value
        # (the number of bytes ACKed); the hardware ports raise.
        if acks is not None and acks != 2:
            raise OSError(errno.EIO, "SHT3x NAKed command")  # 2 args: errno set on CPython too

    def _take_measurement(self):
        buf = self._buf6
        _check_words(buf, 6)
        self.temperature_centi = centi_celsius((buf[0] << 8) | buf[1])
        self.humidity_centi = centi_percent((buf[3] << 8) | buf[4])

    def _read_words(self, code, buf):
        # Command, 1 ms pause, read len(buf) bytes of words + CRCs; one retry of the
        # whole exchange after a NAK or a CRC mismatch.
        for attempt in range(2):
            try:
                self._command(code)
                self._sleep(_T_IDLE_MS)
                self._i2c.readfrom_into(self._addr, buf)
                _check_words(buf, len(buf))
                return
            except SHT3xError:
                self.crc_errors += 1
                if attempt:
                    raise
            except OSError:
                if attempt:
                    raise
            self.retries += 1
            self._sleep(_T_IDLE_MS)


def _check_words(buf, n):
    # Each 16-bit word is followed by its CRC (§4.4, §4.12).
    i = 0
    while i < n:
        if crc8(buf, i, i + 2) != buf[i + 2]:
            raise SHT3xError(errno.EIO, "SHT3x CRC mismatch in word %d" % (i // 3))
        i += 3


def _check_repeatability(r):
    if r != HIGH and r != MEDIUM and r != LOW:
        raise ValueError("repeatability must be HIGH, MEDIUM or LOW")
