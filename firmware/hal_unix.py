# Hardware abstraction for the MicroPython unix port and CPython: UDP on the host's
# network (loopback in the simulator), a directory as flash, the host's clocks.
#
# The HAL seam (board HALs implement the same methods):
#   ticks_ms() / ticks_diff(a, b)   wrapping ms ticks on MicroPython, monotonic on CPython
#   wall_ms()                       Unix time in ms, or None if the board does not know it
#   udp_open(port, reuse, broadcast, bind) -> handle   non-blocking UDP socket
#   resolve(host, port) -> addr     opaque address for udp_send (getaddrinfo()[0][-1])
#   addr_with_port(addr, port)      the same host as a received address, another port
#   addr_str(addr)                  "ip:port" for logs
#   udp_send(handle, addr, data) -> bool   never blocks; False when the stack refused
#   udp_recv(handle) -> (data, addr) or None   non-blocking
#   wait_readable(timeout_ms) -> bool   sleep until a socket is readable or timeout
#   read_file(name) -> bytes or None / write_file_atomic(name, data)   flash
#   append_file(name, data) / remove_file(name)   flash, for the chain's outbox log
#   uart_open(spec) -> UART (read_into/any/write, firmware/uart_unix.py), watched by
#                   wait_readable                 serial chain
#   free_mem() / mem_alloc() / log(msg) / close()
#   feed()                          once per node loop: nothing here (boards: watchdog,
#                                   Wi-Fi, NTP; see firmware/hal_board.py)
#   commands: lines other than "stop" read from stdin (stdin_control), oldest first
import sys

try:
    import errno
except ImportError:  # pragma: no cover
    errno = None  # type: ignore

_MP = sys.implementation.name == "micropython"
_MAX_DATAGRAM = 1500


def _join(d, name):
    if not d:
        return name
    return d + "/" + name if not d.endswith("/") else d + name


class UnixHal:
    def __init__(self, flash_dir=".", quiet=False, stdin_control=False):
        import select
        import time
        self._time = time
        self.flash_dir = flash_dir
        self.quiet = quiet
        self._poll = select.poll()
        self._pollin = select.POLLIN
        self._socks = []
        # stdin_control: the simulator stops a node by writing "stop" to its stdin or
        # closing it (the unix port has no signal module, so SIGTERM cannot be caught
        # there; this stops at a clean point, between two steps)
        self.stop_requested = False
        self.commands = []       # other control lines ("pause"), at most 8 waiting
        self._streams = []       # UARTs (anything with fileno()) watched by wait_readable
        self._stdin = None
        if stdin_control:
            self._stdin = sys.stdin
            self._stdin_fd = sys.stdin.fileno()
            self._poll.register(sys.stdin, self._pollin)
        if _MP:
            self.ticks_ms = time.ticks_ms  # type: ignore[attr-defined]
            self.ticks_diff = time.ticks_diff  # type: ignore[attr-defined]

    # --- clocks -----------------------------------------------------------------
    def ticks_ms(self):
        # CPython only (MicroPython binds time.ticks_ms in __init__)
        return int(self._time.monotonic() * 1000)  # type: ignore[attr-defined]

    def ticks_diff(self, a, b):
        return a - b

    def wall_ms(self):
        return self._time.time_ns() // 1000000

    def sleep_ms(self, ms):
        if ms > 0:
            self._time.sleep(ms / 1000)

    def feed(self):
        # the board HALs' once-per-loop hook (watchdog, Wi-Fi, NTP): no work here
        pass

    # --- network ----------------------------------------------------------------
    def udp_open(self, port=0, reuse=False, broadcast=False, bind="0.0.0.0"):
        import socket
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            if reuse:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if broadcast:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            s.bind(socket.getaddrinfo(bind, port)[0][-1])
            s.setblocking(False)
        except Exception:
            s.close()
            raise
        self._socks.append(s)
        self._poll.register(s, self._pollin)
        return s

    def resolve(self, host, port):
        import socket
        return socket.getaddrinfo(host, port)[0][-1]

    def addr_with_port(self, addr, port):
        if isinstance(addr, tuple):
            return (addr[0], port)
        # MicroPython unix: raw struct sockaddr_in, port big-endian at bytes 2..3
        b = bytearray(addr)
        b[2] = (port >> 8) & 255
        b[3] = port & 255
        return bytes(b)

    def addr_str(self, addr):
        if isinstance(addr, tuple):
            return "%s:%d" % (addr[0], addr[1])
        import socket
        fam, ip, port = socket.sockaddr(addr)  # type: ignore[attr-defined]
        return "%s:%d" % (socket.inet_ntop(fam, ip), port)  # type: ignore[attr-defined]

    def udp_send(self, sock, addr, data):
        try:
            sock.sendto(data, addr)
            return True
        except OSError:
            # EAGAIN (buffer full), ENETUNREACH, ...: fire-and-forget, the caller counts
            return False

    def udp_recv(self, sock):
        try:
            data, addr = sock.recvfrom(_MAX_DATAGRAM)
        except OSError:
            # EAGAIN: nothing waiting (also ECONNREFUSED from an earlier ICMP error)
            return None
        return data, addr

    def wait_readable(self, timeout_ms):
        if timeout_ms < 0:
            timeout_ms = 0
        if not self._socks and not self._streams and self._stdin is None:
            self.sleep_ms(timeout_ms)
            return False
        try:
            ready = self._poll.poll(timeout_ms)
        except OSError as e:  # EINTR on a signal: let the loop look again
            if errno is not None and e.args and e.args[0] == errno.EINTR:
                return False
            raise
        if self._stdin is not None:
            for entry in ready:
                if entry[0] is self._stdin or entry[0] == self._stdin_fd:
                    self._control()
        return bool(ready)

    def _control(self):
        line = self._stdin.readline()
        if not line or line.strip() == "stop":
            self.stop_requested = True
            self._poll.unregister(self._stdin)
            self._stdin = None
        elif line.strip() and len(self.commands) < 8:
            self.commands.append(line.strip())

    # --- serial ------------------------------------------------------------------
    def uart_open(self, spec):
        # spec: a checked uart.up / uart.down dict from node.json; the unix port needs its
        # "path" (a pty, e.g. the simulator's virtual wire)
        from firmware.uart_unix import UnixUart
        if not spec.get("path"):
            raise OSError("uart: the unix port needs a \"path\" (a serial device or pty)")
        u = UnixUart(spec["path"], spec.get("baud", 115200))
        self._streams.append(u)
        self._poll.register(u.stream(), self._pollin)
        return u

    def close(self):
        for u in self._streams:
            try:
                self._poll.unregister(u.stream())
            except Exception:
                pass
            u.close()
        self._streams = []
        for s in self._socks:
            try:
                self._poll.unregister(s)
            except Exception:
                pass
            s.close()
        self._socks = []

    # --- flash --------------------------------------------------------------------
    def read_file(self, name):
        try:
            with open(_join(self.flash_dir, name), "rb") as f:
                return f.read()
        except OSError:
            return None

    def write_file_atomic(self, name, data):
        # write a temporary file, then rename over the old one: atomic on littlefs
        # and POSIX, so a reset mid-write leaves the old or the new file, never half
        import os
        path = _join(self.flash_dir, name)
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.rename(tmp, path)

    def append_file(self, name, data):
        # append and close: the close commits the data on littlefs (one append per batch)
        with open(_join(self.flash_dir, name), "ab") as f:
            f.write(data)

    def remove_file(self, name):
        import os
        try:
            os.remove(_join(self.flash_dir, name))
        except OSError:
            pass

    # --- memory and logs -----------------------------------------------------------
    mem_every_ms = 1000   # chain nodes sample the heap each second (the simulator's mem_max)

    def free_mem(self):
        import gc
        if _MP:
            return gc.mem_free()  # type: ignore[attr-defined]
        return 0

    def mem_alloc(self):
        import gc
        if _MP:
            return gc.mem_alloc()  # type: ignore[attr-defined]
        return 0

    def log(self, msg):
        if not self.quiet:
            print(msg)
