# Fake `ntptime`: settime() sets the fake clock's RTC to `unix_now` (in the port's
# epoch, as the real one does from time.gmtime(0)) if the station is connected, else
# raises OSError(ETIMEDOUT) after `timeout` seconds of the fake clock.
from board_fakes import network

host = "pool.ntp.org"
timeout = 1
unix_now = 1767225600      # 2026-01-01T00:00:00Z
calls = 0
_clock = None


def configure(clk):
    global _clock, calls, host, unix_now
    _clock = clk
    calls = 0
    host = "pool.ntp.org"
    unix_now = 1767225600


def settime():
    global calls
    calls += 1
    if not network.connected():
        _clock.advance(timeout * 1000)
        raise OSError(110)
    _clock.set_unix(unix_now)
