# A fake of the time functions a board HAL uses: ticks_ms / ticks_diff / ticks_add
# wrapping at 2^30 ms as on boards (MICROPY_PY_TIME_TICKS_PERIOD with 31-bit small
# ints), sleep_ms that advances the clock instead of sleeping, an RTC (time_ns, time)
# counting from the port's epoch (2000 on the ESP32, 1970 elsewhere) and gmtime(0).
# Not modelled: drift, gmtime of anything but 0.
_PERIOD = 1 << 30
_MASK = _PERIOD - 1
_HALF = _PERIOD >> 1
EPOCH_2000_S = 946684800


class FakeClock:
    def __init__(self, start=_PERIOD - 3000, epoch2000=False):
        self.t = start            # ticks: starts 3 s before the wrap, so tests cross it
        self.ms = 0               # total ms since the clock was made (never wraps)
        self.epoch2000 = epoch2000
        self.rtc_ms = 0           # RTC in ms since the port's epoch: 2000-01-01 or 1970
        self.sleeps = []          # every sleep_ms(ms) asked for

    # time.* functions
    def ticks_ms(self):
        return self.t

    def ticks_add(self, t, delta):
        return (t + delta) & _MASK

    def ticks_diff(self, a, b):
        return ((a - b + _HALF) & _MASK) - _HALF

    def sleep_ms(self, ms):
        self.sleeps.append(ms)
        if ms > 0:
            self.advance(ms)

    def time_ns(self):
        return self.rtc_ms * 1000000

    def time(self):
        return self.rtc_ms // 1000

    def gmtime(self, secs=None):
        if secs != 0:
            raise NotImplementedError("the fake clock knows gmtime(0) only")
        if self.epoch2000:
            return (2000, 1, 1, 0, 0, 0, 5, 1)
        return (1970, 1, 1, 0, 0, 0, 3, 1)

    # test controls
    def advance(self, ms):
        self.t = (self.t + ms) & _MASK
        self.ms += ms
        self.rtc_ms += ms

    def set_unix(self, unix_s):
        # what ntptime.settime() does: the RTC in the port's epoch
        self.rtc_ms = (unix_s - (EPOCH_2000_S if self.epoch2000 else 0)) * 1000

    def reboot(self, rtc_runs=True):
        # a reset: ticks start again at 0; the ESP32 RTC runs on through deep sleep
        self.t = 0
        if not rtc_runs:
            self.rtc_ms = 0
