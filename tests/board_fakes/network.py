# Fake `network` with one station interface whose access point can vanish and return.
#
# configure(port, clock, ssid, password): STAT_* codes of that port (ESP32: 1000 idle,
# 1001 connecting, 1010 got IP, 2xx failures; CYW43 on the Pico W: 0 idle,
# 1 connecting, 3 got IP, -1 fail, -2 no AP, -3 bad password) and an AP that is up.
# WLAN.connect() is asynchronous as on the boards: after join_ms of the fake clock
# the status becomes GOT_IP (isconnected() True) if the AP is up and the password
# right, else NO_AP_FOUND / WRONG_PASSWORD. ap_down() makes a connected link drop at
# the next look (status BEACON_TIMEOUT on ESP32, CONNECT_FAIL on CYW43); ap_up()
# brings the AP back, but the station stays down until connect() is called again
# (the HAL disconnects to stop the ESP32 driver's own retries, so that is what it
# sees). The ESP32 raises OSError from connect() while a join is running.
# Not modelled: scanning, DHCP leases, AP mode, signal strength changes.
STA_IF = 0
AP_IF = 1

PORT = "esp32"
clock = None
ap_ok = True
ap_ssid = "lab"
ap_password = "secret"
join_ms = 2000
country_code = ""
hostname_set = ""
_wlan = None


def configure(port, clk, ssid="lab", password="secret"):
    global PORT, clock, ap_ok, ap_ssid, ap_password, join_ms, country_code, hostname_set, _wlan
    global STAT_IDLE, STAT_CONNECTING, STAT_GOT_IP, STAT_WRONG_PASSWORD, STAT_NO_AP_FOUND
    global STAT_CONNECT_FAIL, STAT_BEACON_TIMEOUT
    PORT = port
    clock = clk
    ap_ok = True
    ap_ssid = ssid
    ap_password = password
    join_ms = 2000
    country_code = ""
    hostname_set = ""
    _wlan = None
    if port == "esp32":
        STAT_IDLE, STAT_CONNECTING, STAT_GOT_IP = 1000, 1001, 1010
        STAT_NO_AP_FOUND, STAT_WRONG_PASSWORD, STAT_CONNECT_FAIL = 201, 202, 203
        STAT_BEACON_TIMEOUT = 200
    else:
        STAT_IDLE, STAT_CONNECTING, STAT_GOT_IP = 0, 1, 3
        STAT_CONNECT_FAIL, STAT_NO_AP_FOUND, STAT_WRONG_PASSWORD = -1, -2, -3
        STAT_BEACON_TIMEOUT = None   # not a CYW43 code; the HAL uses getattr


STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010
STAT_NO_AP_FOUND = 201
STAT_WRONG_PASSWORD = 202
STAT_CONNECT_FAIL = 203
STAT_BEACON_TIMEOUT = 200


def ap_down():
    global ap_ok
    ap_ok = False


def ap_up():
    global ap_ok
    ap_ok = True


def radio_off():
    # the board was reset: the station interface is gone
    global _wlan
    _wlan = None


def connected():
    return _wlan is not None and _wlan.isconnected()


def country(code=None):
    global country_code
    if code is None:
        return country_code
    country_code = code


def hostname(name=None):
    global hostname_set
    if name is None:
        return hostname_set
    hostname_set = name


def WLAN(iface=STA_IF):
    # the same interface object every time, as the ports return
    global _wlan
    if iface != STA_IF:
        raise ValueError("only STA_IF is faked")
    if _wlan is None:
        _wlan = _WLAN()
    return _wlan


class _WLAN:
    def __init__(self):
        self._active = False
        self._status = STAT_IDLE
        self._t0 = 0
        self._ssid = None
        self._key = None
        self.connects = []      # clock.ms of every connect()
        self.disconnects = 0
        self.configs = {}

    def active(self, on=None):
        if on is None:
            return self._active
        self._active = bool(on)
        if not on:
            self._status = STAT_IDLE

    def connect(self, ssid=None, key=None, bssid=None):
        if not self._active:
            raise OSError("STA must be active")
        if PORT == "esp32" and self._status == STAT_CONNECTING:
            raise OSError("Wifi Internal State Error")
        self.connects.append(clock.ms)
        self._ssid = ssid
        self._key = key
        self._t0 = clock.ms
        self._status = STAT_CONNECTING

    def disconnect(self):
        self.disconnects += 1
        self._status = STAT_IDLE

    def _update(self):
        if self._status == STAT_CONNECTING and clock.ms - self._t0 >= join_ms:
            if not ap_ok or self._ssid != ap_ssid:
                self._status = STAT_NO_AP_FOUND
            elif self._key != ap_password:
                self._status = STAT_WRONG_PASSWORD
            else:
                self._status = STAT_GOT_IP
        elif self._status == STAT_GOT_IP and not ap_ok:
            self._status = STAT_BEACON_TIMEOUT if PORT == "esp32" else STAT_CONNECT_FAIL

    def status(self, param=None):
        if param == "rssi":
            return -60
        if param is not None:
            raise ValueError("unknown status param")
        self._update()
        return self._status

    def isconnected(self):
        self._update()
        return self._status == STAT_GOT_IP

    def ifconfig(self, conf=None):
        if self.isconnected():
            return ("192.168.4.20", "255.255.255.0", "192.168.4.1", "192.168.4.1")
        return ("0.0.0.0", "0.0.0.0", "0.0.0.0", "0.0.0.0")

    def config(self, *args, **kw):
        if args:
            if args[0] == "mac":
                return b"\x24\x0a\xc4\x00\x00\x01"
            return self.configs.get(args[0])
        for k in kw:
            if k == "reconnects" and PORT != "esp32":
                raise ValueError("unknown config param")
            self.configs[k] = kw[k]
