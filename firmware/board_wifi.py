# Wi-Fi station link and NTP of the board HALs (firmware/hal_board.py), in their own
# module: firmware/board_setup.py begin() imports it only when node.json configures
# Wi-Fi on a board with a radio, so a node without (a serial-chain node, a Pico) does
# not hold this code in RAM. BoardHal.feed() calls Wifi.feed() every node step;
# BoardHal.link_up() and udp_send() ask Wifi.up(). The state machine is described in
# firmware/hal_board.py ("Wi-Fi").
try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore
        return x

_WIFI_TIMEOUT_MS = const(15000)     # one join attempt (DHCP included) before giving up
_BACKOFF_MIN_MS = const(1000)
_BACKOFF_MAX_MS = const(60000)
_NTP_EVERY_MS = const(43200000)     # re-sync every 12 h (the RTC drifts ~1 s/day)
_NTP_RETRY_MS = const(60000)        # after a failed sync, doubling up to 1 h
_NTP_RETRY_MAX_MS = const(3600000)

# Wi-Fi states
_DOWN = const(0)
_JOINING = const(1)
_UP = const(2)

# network.STAT_* names on either port (values differ: ESP32 2xx/10xx, CYW43 -3..3)
_STAT_NAMES = ("STAT_IDLE", "STAT_CONNECTING", "STAT_GOT_IP", "STAT_WRONG_PASSWORD",
               "STAT_NO_AP_FOUND", "STAT_CONNECT_FAIL", "STAT_ASSOC_FAIL",
               "STAT_HANDSHAKE_TIMEOUT", "STAT_BEACON_TIMEOUT")
_STAT_FAILED = ("STAT_WRONG_PASSWORD", "STAT_NO_AP_FOUND", "STAT_CONNECT_FAIL",
                "STAT_ASSOC_FAIL", "STAT_HANDSHAKE_TIMEOUT")


class Wifi:
    # Station-mode link with reconnect and backoff, and NTP once it is up; poll() and
    # feed() never block (except the NTP exchange itself).
    def __init__(self, hal, network, wlan, ssid, password, timeout_ms=None,
                 ntp_on=False, ntp_host=None):
        # timeout_ms: one join attempt (None: 15 s)
        self.hal = hal
        self.ntp_on = ntp_on
        self.ntp_host = ntp_host
        self.ntp_next = 0
        self.ntp_retry = _NTP_RETRY_MS
        self.wlan = wlan
        self.ssid = ssid
        self.password = password
        self.timeout_ms = timeout_ms or _WIFI_TIMEOUT_MS
        self.state = _DOWN
        self.t0 = 0
        self.next_try = hal.ticks_ms()     # first join at the first poll
        self.backoff = _BACKOFF_MIN_MS
        self.attempts = 0
        self.connects = 0
        self.drops = 0
        self.failures = 0
        self.names = {}
        for n in _STAT_NAMES:
            v = getattr(network, n, None)
            if v is not None and v not in self.names:
                self.names[v] = n[5:].lower()
        self.failed = []
        for n in _STAT_FAILED:
            v = getattr(network, n, None)
            if v is not None:
                self.failed.append(v)

    def up(self):
        return self.state == _UP

    def feed(self, now):
        # BoardHal.feed(), every node step: the link's state machine, then NTP when due
        if self.poll(now) and self.ntp_on:
            self.ntp_next = now
            self.ntp_retry = _NTP_RETRY_MS
        if self.ntp_on and self.state == _UP and self.hal.ticks_diff(now, self.ntp_next) >= 0:
            self._ntp(now)

    def status_str(self, s):
        return "%s %s" % (s, self.names.get(s, "?"))

    def poll(self, now):
        # advance the state machine; True when the link has just come up
        w = self.wlan
        up = w.isconnected()
        st = self.state
        if st == _UP:
            if up:
                return False
            self.drops += 1
            self.backoff = _BACKOFF_MIN_MS
            self._give_up(now, "link lost", w.status())
            return False
        if up:   # joined (or the driver re-associated on its own while we waited)
            self.state = _UP
            self.connects += 1
            ip = "?"
            try:
                ip = w.ifconfig()[0]
            except (AttributeError, OSError):
                pass
            self.hal.log("wifi: up, %s on %r after %d attempt(s)" % (ip, self.ssid, self.attempts))
            self.attempts = 0
            self.backoff = _BACKOFF_MIN_MS
            return True
        hal = self.hal
        if st == _JOINING:
            s = w.status()
            waited = hal.ticks_diff(now, self.t0)
            if s in self.failed:
                self.failures += 1
                self._give_up(now, "join failed after %d ms" % waited, s)
            elif waited >= self.timeout_ms:
                self.failures += 1
                self._give_up(now, "join timed out after %d ms" % waited, s)
            return False
        if hal.ticks_diff(now, self.next_try) >= 0:
            self._join(now)
        return False

    def _join(self, now):
        self.attempts += 1
        try:
            self.wlan.connect(self.ssid, self.password)
        except OSError as e:   # ESP32: "Wifi Internal State Error" while busy, ...
            self.failures += 1
            self._give_up(now, "connect() raised %s" % (e,), -1)
            return
        self.state = _JOINING
        self.t0 = now

    def _give_up(self, now, why, status):
        # back to DOWN; stop the driver (and the ESP32's own retries); retry after backoff
        try:
            self.wlan.disconnect()
        except OSError:
            pass
        hal = self.hal
        self.state = _DOWN
        self.next_try = hal._clock.ticks_add(now, self.backoff)
        hal.log("wifi: %s (status %s), retry in %d ms" % (why, self.status_str(status), self.backoff))
        self.backoff = min(self.backoff * 2, _BACKOFF_MAX_MS)

    def _ntp(self, now):
        # blocks up to ntptime.timeout (1 s) plus DNS; the watchdog is fed before
        import ntptime
        hal = self.hal
        if self.ntp_host:
            ntptime.host = self.ntp_host
        if hal._wdt is not None:
            hal._wdt.feed()
        try:
            ntptime.settime()
        except Exception as e:  # OSError (timeout, DNS), or a malformed reply: retry later
            hal.ntp_errors += 1
            self.ntp_next = hal._clock.ticks_add(now, self.ntp_retry)
            hal.log("ntp: failed (%s), retry in %d s" % (e, self.ntp_retry // 1000))
            self.ntp_retry = min(self.ntp_retry * 2, _NTP_RETRY_MAX_MS)
            return
        hal.ntp_syncs += 1
        hal._wall_ok = True
        hal._synced = True
        self.ntp_retry = _NTP_RETRY_MS
        self.ntp_next = hal._clock.ticks_add(now, _NTP_EVERY_MS)
        hal.log("ntp: clock set, unix ms %d" % hal.wall_ms())
