# Shared board HAL for the ESP32 (firmware/hal_esp32.py) and the Raspberry Pi Pico /
# Pico W (firmware/hal_pico.py). It implements the HAL seam described at the top of
# firmware/hal_unix.py (ticks_ms, ticks_diff, wall_ms, sleep_ms, udp_open, resolve,
# addr_with_port, addr_str, udp_send, udp_recv, wait_readable, close, read_file,
# write_file_atomic, free_mem, mem_alloc, log, stop_requested). hal_unix is not in a
# board's bundle, so nothing is imported from it: the seam is the contract. The
# serial-chain additions of that seam are here too: append_file, remove_file, and
# uart_open(spec) returning a UART with the interface of firmware/uart_unix.py
# (read_into / any / write / stream / close), watched by wait_readable().
#
# What boards add (firmware/core.py main(), Node.boot and Node.run use these; see
# docs/BOARDS.md "What /main.py does on a board"):
#   register_kinds()               before node.json is checked: the board sensor kinds
#   begin(cfg, watchdog_ms=None)   after node.json is loaded: watchdog, Wi-Fi (waits
#                                  up to wifi_wait_ms for the first association), NTP
#   feed()                         once per node step: feeds the watchdog, checks Wi-Fi
#                                  without blocking, runs a due NTP sync.
#                                  wait_readable() calls it too, between slices of at
#                                  most half the watchdog timeout
#   link_up()                      Wi-Fi associated and holding an address
#   time_synced()                  True once after each NTP sync: refresh the time base
#   resume()                       at boot, before the epoch file is touched: None for
#                                  a new epoch (power-on, reset, watchdog) or the Resume
#                                  saved by deep_sleep() (same epoch, seq continues;
#                                  firmware/board_sleep.py)
#   deep_sleep(ms, node)           save the node's state in RTC memory and power down
#   uart_open(spec)                a BoardUart (machine.UART behind the read_into /
#                                  any / write / stream / close interface of
#                                  firmware/uart_unix.py) for node.json uart.up /
#                                  uart.down; wait_readable() wakes when it has data
#   watch(stream)                  wait_readable() also wakes when `stream` is readable
#   make_sensors(specs, id, f32)   board sensor kinds (firmware/board_setup.py KINDS)
#                                  beside the synthetic ones of firmware/sensors.py
#   stats()                        the HAL's counters as a dict
#
# Theory of operation
# -------------------
# Time. ticks_ms/ticks_diff are the board's wrapping ticks (period 2^30 ms). wall_ms()
# is Unix ms, or None until NTP has set the clock: the RTC starts at the port's epoch
# after power-on and would give the base nonsense. The ESP32 counts from 2000-01-01
# (time.gmtime(0)[0] == 2000), RP2 from 1970: 946684800 s are added on the ESP32.
#
# Wi-Fi (firmware/board_wifi.py Wifi). connect() is asynchronous on both ports. The state machine
# DOWN -> JOINING -> UP is polled from feed(): a join that fails (status
# WRONG_PASSWORD, NO_AP_FOUND, ...) or takes longer than wifi_timeout_ms is abandoned
# with disconnect() (which also stops the ESP32 driver's own retries, so one backoff
# rule holds) and retried after a backoff doubling from 1 s to 60 s; a lost link is
# retried after 1 s. Nothing here blocks except begin()'s first wait and an NTP
# exchange (ntptime: up to its 1 s socket timeout, plus DNS).
#
# Sending while down. The node keeps sampling and numbering readings; udp_send()
# returns False at once without touching the stack (send_down), so the node counts
# them in send_errors/dropped exactly as for any refused datagram. A static base given
# by name that cannot be resolved at boot becomes a _Pending address, resolved on a
# later send (at most every 10 s), so boot never fails because the radio is down.
#
# Errors. A non-blocking receive with nothing waiting raises OSError(EAGAIN); with a
# timeout, ETIMEDOUT, which is 116 on the ESP32 (newlib/lwIP) and 110 on RP2: the
# subclass says which. Both mean "nothing"; any other errno is counted.
#
# Watchdog. machine.WDT cannot be stopped or slowed once started (MicroPython docs),
# so it is off unless begin() gets watchdog_ms (node.json "watchdog_ms", checked by
# firmware/config.py). Bounds: ESP32 >= 1000 ms (older firmware took whole seconds),
# RP2040 <= 8388 ms, RP2350 <= 16777 ms (ports/rp2/machine_wdt.c). Reflashing a board
# whose watchdog runs: see docs/BOARDS.md.
#
# Deep sleep. deep_sleep(ms, node) packs (epoch, next_seq, uptime + ms, time_base,
# each sensor's sample index and due time) into one CRC-checked record in memory that
# survives deep sleep but not power-on (ESP32: RTC slow memory through
# machine.RTC().memory(), at most 2048 bytes; RP2: see hal_pico.py) and powers down.
# The board then boots from the top; resume() returns the record only when the reset
# cause says deep-sleep wake and the record checks, and clears it, so a later reset
# or power-on starts a new epoch from the epoch file as usual.
#
# Modules. What only some nodes need lives beside this one and is imported on first
# use, so the others do not keep its code in RAM: firmware/board_sleep.py (Resume,
# the deep-sleep record), firmware/board_uart.py (BoardUart, serial chain),
# firmware/board_wifi.py (Wifi and NTP, when node.json configures Wi-Fi),
# firmware/board_sensors.py (BoardSensor and the SHT3x reader, board sensor kinds).
# What only boot needs (register_kinds, begin, uart_open, make_sensors, resume: the
# methods here import it) is firmware/board_setup.py, which firmware.core drops once
# the node has booted.
#
# Memory: wall_ms uses bigints (ms timestamps do not fit 31-bit small ints), once per
# call. The hot path (udp_send) allocates nothing of its own.
import sys
import select

import machine

try:
    import errno
    _EAGAIN = errno.EAGAIN
except ImportError:  # pragma: no cover - every port has errno
    _EAGAIN = 11

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore
        return x

_MAX_DATAGRAM = const(1500)
_EPOCH_2000_MS = 946684800000       # 2000-01-01 minus 1970-01-01 in ms (a bigint on boards)
_SLICE_MS = const(1000)             # wait_readable() wakes at least this often: Wi-Fi check
_RESOLVE_RETRY_MS = const(10000)    # a _Pending address: DNS at most this often
_LOG_FIRST = const(3)               # errors: log the first few, then every 100th

def _get(cfg, key, default):
    # a node.json object (dict) or a config object with attributes
    if isinstance(cfg, dict):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def _errno(e):
    return e.args[0] if e.args else 0


class _Pending:
    # A host that could not be resolved (radio down at boot): resolved on a later send.
    def __init__(self, host, port):
        self.host = host
        self.port = port
        self.addr = None
        self.next_try = None

    def __eq__(self, other):
        if isinstance(other, _Pending):
            return self.host == other.host and self.port == other.port
        return self.addr is not None and self.addr == other

    def __ne__(self, other):
        return not self.__eq__(other)


class BoardHal:
    # Subclasses set these and implement the _hooks at the end.
    board = "board"
    has_wifi = False
    ETIMEDOUT = 110
    WDT_MIN_MS = 1
    WDT_MAX_MS = 0               # 0: no upper bound
    RTC_MAX = 0                  # bytes the deep-sleep record may use (0: no bound)

    def __init__(self, flash_dir="/", quiet=False, clock=None, sockets=None, poller=None,
                 machine_name=None):
        # clock: the time module (tests pass a fake clock with the same functions);
        # sockets: the socket module, imported on first use (the Pico has none);
        # poller: select.poll(); machine_name: sys.implementation._machine
        if clock is None:
            import time
            clock = time
        self._clock = clock
        self.ticks_ms = clock.ticks_ms          # bound once: no method lookup per call
        self.ticks_diff = clock.ticks_diff
        self.flash_dir = flash_dir
        self.quiet = quiet
        self.machine_name = (machine_name if machine_name is not None
                             else getattr(sys.implementation, "_machine", ""))
        self._so = sockets
        self._poll = poller if poller is not None else select.poll()
        self._npoll = 0
        self._socks = []
        self._uarts = []
        self.stop_requested = False
        # the RTC counts from 2000 on the ESP32
        self._epoch_ms = _EPOCH_2000_MS if clock.gmtime(0)[0] == 2000 else 0
        self._wall_ok = False
        self._synced = False
        self._wdt = None
        self.wdt_ms = 0
        self._slice_ms = _SLICE_MS
        self._wifi = None        # a board_wifi.Wifi once begin() has joined a network
        self._resumed = None
        self._resume_done = False
        # counters (stats())
        self.send_down = 0       # refused at once: Wi-Fi down
        self.send_errors = 0     # the stack refused (buffer full, no route, ...)
        self.recv_errors = 0     # receive errors other than "nothing waiting"
        self.ntp_syncs = 0
        self.ntp_errors = 0

    # --- setup after node.json is known ----------------------------------------------
    def register_kinds(self):
        # before node.json is checked: firmware/config.py accepts the board kinds
        from firmware import board_setup
        board_setup.register_kinds()

    def begin(self, cfg, watchdog_ms=None):
        # watchdog, Wi-Fi (waits for the first association), NTP: firmware/board_setup.py
        from firmware import board_setup
        board_setup.begin(self, cfg, watchdog_ms)

    # --- the loop ----------------------------------------------------------------------
    def feed(self):
        # Once per node step (and between wait slices): watchdog, Wi-Fi, NTP.
        if self._wdt is not None:
            self._wdt.feed()
        w = self._wifi
        if w is not None:
            w.feed(self._clock.ticks_ms())

    def link_up(self):
        return self._wifi is not None and self._wifi.up()

    def time_synced(self):
        # True once after each NTP sync (the node refreshes its time base then)
        s = self._synced
        self._synced = False
        return s

    # --- clocks --------------------------------------------------------------------------
    def ticks_ms(self):   # replaced per instance by the clock's own (see __init__)
        return self._clock.ticks_ms()

    def ticks_diff(self, a, b):
        return self._clock.ticks_diff(a, b)

    def wall_ms(self):
        # Unix ms, or None while the RTC has not been set by NTP
        if not self._wall_ok:
            return None
        return self._clock.time_ns() // 1000000 + self._epoch_ms

    def sleep_ms(self, ms):
        if ms > 0:
            self._clock.sleep_ms(ms)

    # --- network -----------------------------------------------------------------------
    def _sockets(self):
        if not self.has_wifi:
            raise OSError(19, "no network on this %s: use the serial chain" % self.board)
        if self._so is None:
            import socket
            self._so = socket
        return self._so

    def udp_open(self, port=0, reuse=False, broadcast=False, bind="0.0.0.0"):
        so = self._sockets()
        s = so.socket(so.AF_INET, so.SOCK_DGRAM)
        try:
            if reuse:
                s.setsockopt(so.SOL_SOCKET, so.SO_REUSEADDR, 1)
            if broadcast:
                try:
                    s.setsockopt(so.SOL_SOCKET, so.SO_BROADCAST, 1)
                except (AttributeError, OSError):   # not on every lwIP build
                    pass
            s.bind(so.getaddrinfo(bind, port)[0][-1])
            s.setblocking(False)
        except Exception:
            s.close()
            raise
        self._socks.append(s)
        self.watch(s)
        return s

    def resolve(self, host, port):
        try:
            return self._sockets().getaddrinfo(host, port)[0][-1]
        except OSError as e:   # no radio yet, or DNS down: resolve on a later send
            self.log("resolve %s: %s: will retry when sending" % (host, e))
            return _Pending(host, port)

    def addr_with_port(self, addr, port):
        if isinstance(addr, tuple):
            return (addr[0], port)
        b = bytearray(addr)   # raw struct sockaddr_in: port big-endian at bytes 2..3
        b[2] = (port >> 8) & 255
        b[3] = port & 255
        return bytes(b)

    def addr_str(self, addr):
        if isinstance(addr, _Pending):
            return "%s:%d" % (addr.host, addr.port) + ("" if addr.addr else " (unresolved)")
        if isinstance(addr, tuple):
            return "%s:%d" % (addr[0], addr[1])
        return repr(addr)

    def _resolved(self, p):
        if p.addr is None:
            now = self._clock.ticks_ms()
            if p.next_try is not None and self.ticks_diff(now, p.next_try) < 0:
                return None
            p.next_try = self._clock.ticks_add(now, _RESOLVE_RETRY_MS)
            try:
                p.addr = self._sockets().getaddrinfo(p.host, p.port)[0][-1]
            except OSError:
                return None
        return p.addr

    def udp_send(self, sock, addr, data):
        # never blocks; False when the datagram did not go (the node counts it)
        w = self._wifi
        if w is not None and not w.up():
            self.send_down += 1
            return False
        if isinstance(addr, _Pending):
            addr = self._resolved(addr)
            if addr is None:
                self.send_errors += 1
                return False
        try:
            sock.sendto(data, addr)
            return True
        except OSError as e:   # EAGAIN / ENOMEM (lwIP out of pbufs), EHOSTUNREACH, ...
            self.send_errors += 1
            if self.send_errors <= _LOG_FIRST or self.send_errors % 100 == 0:
                self.log("udp send error %d (%d so far)" % (_errno(e), self.send_errors))
            return False

    def udp_recv(self, sock):
        try:
            data, addr = sock.recvfrom(_MAX_DATAGRAM)
        except OSError as e:
            n = _errno(e)
            if n != _EAGAIN and n != self.ETIMEDOUT:   # both mean "nothing waiting"
                self.recv_errors += 1
            return None
        return data, addr

    def watch(self, stream):
        # wait_readable() returns early when `stream` (socket or UART) is readable
        self._poll.register(stream, select.POLLIN)
        self._npoll += 1

    def wait_readable(self, timeout_ms):
        # Sleep until something watched is readable or timeout_ms passed, in slices of
        # at most _slice_ms with feed() between them (watchdog, Wi-Fi, NTP).
        clock = self._clock
        start = clock.ticks_ms()
        left = timeout_ms if timeout_ms > 0 else 0
        while True:
            self.feed()
            n = left if left < self._slice_ms else self._slice_ms
            if self._npoll:
                if self._poll.poll(n):
                    return True
            else:
                clock.sleep_ms(n)
            left = timeout_ms - clock.ticks_diff(clock.ticks_ms(), start)
            if left <= 0:
                return False

    def close(self):
        for u in self._uarts:
            try:
                self._poll.unregister(u.stream())
                self._npoll -= 1
            except Exception:
                pass
            u.close()
        self._uarts = []
        for s in self._socks:
            try:
                self._poll.unregister(s)
                self._npoll -= 1
            except Exception:
                pass
            s.close()
        self._socks = []

    # --- UART for the serial chain ---------------------------------------------------------
    def uart_open(self, spec):
        # a BoardUart for node.json uart.up / uart.down: firmware/board_setup.py
        from firmware import board_setup
        return board_setup.uart_open(self, spec)

    # --- board sensors ---------------------------------------------------------------------
    def make_sensors(self, specs, node_id, f32=False):
        # node.sensors for a checked node.json: firmware/board_setup.py
        from firmware import board_setup
        return board_setup.make_sensors(self, specs, node_id, f32)

    # --- deep sleep -------------------------------------------------------------------------
    def resume(self):
        # at boot: the deep-sleep Resume or None (firmware/board_setup.py)
        if self._resume_done:
            return self._resumed
        from firmware import board_setup
        return board_setup.resume(self)

    def deep_sleep(self, ms, node):
        # Save the node's state (see Resume) and power down for ms. On a board this
        # does not return: the board boots again and resume() returns the same
        # Resume. Returns it where the sleep returns (tests' fake machine).
        ms = self._clamp_sleep(ms)
        from firmware.board_sleep import Resume
        r = Resume.from_node(node, ms, self._wall_ok)
        data = r.pack()
        if self.RTC_MAX and len(data) > self.RTC_MAX:
            raise ValueError("resume record of %d bytes exceeds the %d of RTC memory (too many sensors)"
                             % (len(data), self.RTC_MAX))
        self._rtc_store(data)
        self.log("deep sleep %d ms: epoch %d, next seq %d" % (ms, r.epoch, r.next_seq))
        self.close()
        self._sleep_now(ms)
        return r

    # --- flash ------------------------------------------------------------------------------
    def _path(self, name):
        d = self.flash_dir
        if not d:
            return name
        return d + name if d.endswith("/") else d + "/" + name

    def read_file(self, name):
        path = self._path(name)
        for p in (path, path + ".tmp"):
            # .tmp: a FAT rename fallback interrupted between remove and rename
            # (littlefs never leaves that state)
            try:
                with open(p, "rb") as f:
                    return f.read()
            except OSError:
                pass
        return None

    def write_file_atomic(self, name, data):
        # write a temporary file, then rename over the old one: atomic on littlefs v2
        # (the default filesystem on ESP32 and RP2; there is no os.replace)
        import os
        path = self._path(name)
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        try:
            os.rename(tmp, path)
        except OSError:   # FAT (older ESP32 images) will not rename over a file
            os.remove(path)
            os.rename(tmp, path)

    def append_file(self, name, data):
        # append and close: the close commits the data on littlefs (batch the appends:
        # each small flushed append costs about one block erase)
        with open(self._path(name), "ab") as f:
            f.write(data)

    def remove_file(self, name):
        import os
        try:
            os.remove(self._path(name))
        except OSError:
            pass

    # --- memory and logs ----------------------------------------------------------------------
    def free_mem(self):
        import gc
        f = getattr(gc, "mem_free", None)
        return f() if f is not None else 0

    def mem_alloc(self):
        import gc
        f = getattr(gc, "mem_alloc", None)
        return f() if f is not None else 0

    def log(self, msg):
        if not self.quiet:
            print(msg)

    def stats(self):
        w = self._wifi
        return {"send_down": self.send_down, "send_errors": self.send_errors,
                "recv_errors": self.recv_errors, "ntp_syncs": self.ntp_syncs,
                "ntp_errors": self.ntp_errors, "wdt_ms": self.wdt_ms,
                "wifi_connects": w.connects if w else 0, "wifi_drops": w.drops if w else 0,
                "wifi_failures": w.failures if w else 0}

    # --- board hooks (subclasses) -----------------------------------------------------------
    def _set_country(self, network, code):
        # regulatory domain before the radio starts (channels 12-13 and power)
        if code:
            try:
                network.country(code)
            except (AttributeError, ValueError, OSError) as e:
                self.log("wifi: country %r not set: %s" % (code, e))

    def _check_uart(self, uid, tx, rx):
        raise ValueError("no UART rules for %s" % self.board)

    def _mcu_temp_reader(self):
        raise ValueError("mcu_temp: not on %s" % self.board)

    def _adc_reader(self, pin, samples):
        raise ValueError("adc: not on %s" % self.board)

    def _clamp_sleep(self, ms):
        return ms

    def _rtc_keeps_time(self):
        # does the wall clock run on through deep sleep?
        return False

    def _woke_from_deep_sleep(self):
        return False

    def _rtc_load(self):
        return None

    def _rtc_store(self, data):
        raise OSError(19, "deep sleep not supported on %s" % self.board)

    def _rtc_clear(self):
        pass

    def _sleep_now(self, ms):
        machine.deepsleep(ms)
