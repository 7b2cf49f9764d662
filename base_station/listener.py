"""UDP I/O for the base station: the receive socket(s) and the ANNOUNCE sender.

Theory of operation
-------------------
`UdpListener` is an asyncio.DatagramProtocol whose `datagram_received` hands each
datagram to a callback (BaseStation.ingest), which never raises (it counts and logs).
On Linux it opens the socket itself: a 4 MB receive buffer by default (`rcvbuf`; the
kernel caps it at net.core.rmem_max unless we may force it, and reports twice the
size asked for), SO_RXQ_OVFL so datagrams carry the
socket's cumulative kernel drop count as ancillary data, and a reader callback that
drains up to `burst` datagrams per wake-up (asyncio's own datagram transport reads
one per wake-up). Elsewhere, or if the loop has no add_reader, it falls back to
loop.create_datagram_endpoint. Kernel drops are the larger of the SO_RXQ_OVFL count
and the `drops` column of /proc/net/udp{,6} for the socket's inode (current even when
no datagram came after the burst; read once more by close(), so the count kept
afterwards is final); without either they stay 0. When /proc/net/udp has the socket
(checked at bind), the callback reads with recvfrom, about 0.5 µs per datagram
cheaper than a recvmsg that takes ancillary data (22 %, measured side by side on
loopback), and the drop count comes from /proc alone; else with recvmsg and the
SO_RXQ_OVFL count.

The receive buffer is the only slack for scheduling stalls: at 1M readings/s in
977-byte, 60-reading datagrams (~2.3 KB of buffer each) the default (8 MB granted)
holds ~220 ms. High-rate stations should ask for more (RCVBUF_LARGE, 32 MB asked,
64 MB granted: ~1.7 s there); when the kernel grants less than asked
(net.core.rmem_max without CAP_NET_ADMIN), a warning says so.

With `reader_process=True` (Linux) the system calls move to a separate process
(base_station/udp_reader.py: it reads the socket and hands records through a pipe,
so this process only decodes); if that process cannot start or dies, the listener
logs it and reads the socket itself.

Datagrams are read into a 64 KiB buffer (a UDP payload is at most 65507 bytes over
IPv4); the station rejects anything above its `max_datagram` (default
protocol.codes.MAX_DATAGRAM, 1400) as oversize, so a truncated read cannot be
mistaken for a message.

`Announcer` sends ANNOUNCE to every discovery address every lease/3 s, at most 5 s apart (first
one at once) from a socket with SO_BROADCAST, and a lease-0 goodbye on stop so nodes
drop our subscription at once (a restarted base then gets a fresh `since`).
Send errors (no route, network down) are counted and logged, never fatal.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import select
import socket
import struct
import subprocess
import sys
import time
from typing import Any, Callable

from protocol import codes
from protocol.messages import Announce

from base_station import udp_reader, wire

log = logging.getLogger("starling.base.listener")

SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)   # Linux include/uapi/asm-generic/socket.h
# Python's socket module does not export SO_RCVBUFFORCE (Linux: 33, as above); it
# lets a process with CAP_NET_ADMIN go beyond net.core.rmem_max
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33 if sys.platform.startswith("linux") else None)
RCVBUF = 4 * 1024 * 1024
RCVBUF_LARGE = 32 * 1024 * 1024   # for high-rate stations
READ_SIZE = 65536
BURST = 512          # datagrams read per wake-up before yielding to the loop
PIPE_READ = 256 * 1024   # reader process: bytes of records taken per wake-up
PIPE_SIZE = 1024 * 1024  # reader process: pipe capacity asked for (F_SETPIPE_SZ)
F_SETPIPE_SZ = 1031      # Linux include/uapi/linux/fcntl.h
STOP_TIMEOUT = 5.0       # seconds close() waits for the reader process to hand over the rest


def parse_hostport(text: str, default_host: str = "0.0.0.0", default_port: int = 0) -> tuple[str, int]:
    """"HOST:PORT", "[v6]:PORT", ":PORT", "PORT" or "HOST" -> (host, port).

    Raises:
        ValueError: the port is not 0..65535.
    """
    text = text.strip()
    host, port = default_host, default_port
    if text.startswith("["):
        end = text.index("]")
        host = text[1:end]
        rest = text[end + 1:]
        if rest.startswith(":"):
            port = int(rest[1:])
    elif text.count(":") == 1:
        h, p = text.split(":")
        host = h or default_host
        port = int(p)
    elif text.isdigit():
        port = int(text)
    elif text:
        host = text
    if not 0 <= port <= 65535:
        raise ValueError("port out of range: %d" % port)
    return host, port


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def proc_udp_drops(sock: socket.socket) -> int | None:
    """The kernel's drop count for `sock` from /proc/net/udp{,6}, or None."""
    try:
        inode = os.fstat(sock.fileno()).st_ino
    except OSError:
        return None
    for name in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if len(cols) >= 13 and cols[9] == str(inode):
                        return int(cols[-1])
        except (OSError, ValueError, StopIteration):
            continue
    return None


class UdpListener(asyncio.DatagramProtocol):
    """Receives datagrams on host:port and calls `ingest(data, addr)` for each.

    Args:
        ingest: called with (bytes, (host, port)); must not raise.
        host, port: where to bind (port 0: any free port, see `address`).
        rcvbuf: requested SO_RCVBUF in bytes (see RCVBUF_LARGE); `rcvbuf_actual` is
            what the kernel granted.
        reader_process: read the socket in a separate process (Linux; see the module
            docstring); `reader_pid` is its pid while it runs.
    Raises:
        ValueError: rcvbuf is not a positive int (at construction).
        OSError: the address cannot be bound (from start).
    """

    def __init__(self, ingest: Callable[[bytes, Any], None], host: str = "0.0.0.0",
                 port: int = codes.UDP_PORT, rcvbuf: int = RCVBUF, burst: int = BURST,
                 reader_process: bool = False):
        if type(rcvbuf) is not int or rcvbuf <= 0:
            raise ValueError("rcvbuf must be a positive number of bytes, got %r" % (rcvbuf,))
        self.ingest = ingest
        self.host = host
        self.port = port
        self.rcvbuf = rcvbuf
        self.burst = burst
        self.sock: socket.socket | None = None
        self.transport: asyncio.DatagramTransport | None = None
        self.datagrams = 0
        self.errors = 0
        self._drops = 0            # from SO_RXQ_OVFL ancillary data or /proc/net/udp
        self._ovfl = False         # SO_RXQ_OVFL enabled
        self._drops_from_proc = False   # /proc/net/udp has the socket's drop count
        self._reader = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.rcvbuf_actual = 0
        self._address: tuple[str, int] = (host, 0)
        self.reader_process = reader_process
        self._proc: subprocess.Popen | None = None
        self._pipe: int | None = None
        self._records: udp_reader.RecordReader | None = None
        # who reads the socket: "in-process", "process" (a reader process), or "in-process
        # after the reader process ended"; kept after close()
        self.reader = "in-process"

    @property
    def reader_pid(self) -> int | None:
        """The reader process's pid while one runs, else None."""
        return self._proc.pid if self._proc is not None else None

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); (host, 0) before start(). Kept after close()."""
        return self._address

    @property
    def kernel_drops(self) -> int:
        """Datagrams the kernel dropped for this socket (receive buffer full).

        SO_RXQ_OVFL stamps a datagram with the drop count when it is queued, so it lags:
        drops during a burst show only on the next datagram queued after it. The
        /proc/net/udp counter is current; the larger of the two is reported (and kept
        after close)."""
        if self.sock is not None:
            n = proc_udp_drops(self.sock)
            if n is not None and n > self._drops:
                self._drops = n
        return self._drops

    def open_socket(self) -> socket.socket:
        sock = socket.socket(_family(self.host), socket.SOCK_DGRAM)
        try:
            for opt in (SO_RCVBUFFORCE, socket.SO_RCVBUF):
                if opt is None:
                    continue
                try:
                    sock.setsockopt(socket.SOL_SOCKET, opt, self.rcvbuf)
                    break
                except OSError:
                    continue
            self.rcvbuf_actual = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            # Linux reports twice what it grants (the doubling covers its bookkeeping)
            granted = self.rcvbuf_actual // 2 if sys.platform.startswith("linux") \
                else self.rcvbuf_actual
            if granted < self.rcvbuf:
                log.warning("receive buffer: asked for %d bytes, got %d (raise "
                            "net.core.rmem_max, or run with CAP_NET_ADMIN)",
                            self.rcvbuf, self.rcvbuf_actual)
            if hasattr(socket.socket, "recvmsg"):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
                    self._ovfl = True
                except OSError:
                    self._ovfl = False
            try:
                sock.bind((self.host, self.port))
            except OSError as e:     # say which address (EADDRINUSE: another station?)
                hint = " (another station on that port?)" if e.errno == errno.EADDRINUSE else ""
                raise OSError(e.errno, "cannot receive on %s:%d: %s%s"
                              % (self.host, self.port, e.strerror or e, hint)) from None
            # /proc/net/udp counts this socket's drops: no ancillary data needed
            self._drops_from_proc = proc_udp_drops(sock) is not None
            sock.setblocking(False)
            name = sock.getsockname()
            self._address = (name[0], name[1])
        except BaseException:
            sock.close()
            raise
        return sock

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        sock = self.sock = self.open_socket()
        if self.reader_process and self._ovfl and hasattr(loop, "add_reader"):
            try:
                self._start_reader_process(loop)
                log.info("listening on %s:%d (rcvbuf %d, reader process %d)", *self.address,
                         self.rcvbuf_actual, self.reader_pid)
                return
            except (OSError, NotImplementedError) as e:
                log.warning("no reader process for %s:%d (%s): reading in this process",
                            *self.address, e)
        elif self.reader_process:
            log.warning("no reader process for %s:%d (it needs recvmsg and SO_RXQ_OVFL: Linux):"
                        " reading in this process", *self.address)
        if self._ovfl:
            try:
                loop.add_reader(sock.fileno(), self._socket_reader())
                self._reader = True
                log.info("listening on %s:%d (rcvbuf %d)", *self.address, self.rcvbuf_actual)
                return
            except (NotImplementedError, AttributeError):
                self._ovfl = False
        self.transport, _ = await loop.create_datagram_endpoint(lambda: self, sock=sock)
        log.info("listening on %s:%d (rcvbuf %d, asyncio transport)", *self.address,
                 self.rcvbuf_actual)

    def _socket_reader(self) -> Callable[[], None]:
        return self._readable_plain if self._drops_from_proc else self._readable

    def _readable_plain(self) -> None:
        # _readable without ancillary data: the drop count is read from /proc
        sock = self.sock
        if sock is None:
            return
        ingest = self.ingest
        recvfrom = sock.recvfrom
        n = 0
        try:
            while n < self.burst:
                data, addr = recvfrom(READ_SIZE)
                n += 1
                ingest(data, addr)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as e:
            self.errors += 1
            log.debug("receive error on %s: %s", self.address, e)
        self.datagrams += n

    def _readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        anc_size = socket.CMSG_SPACE(4)
        ingest = self.ingest
        recvmsg = sock.recvmsg
        n = 0
        last_anc: list = []
        try:
            while n < self.burst:
                data, anc, _flags, addr = recvmsg(READ_SIZE, anc_size)
                n += 1
                if anc:
                    last_anc = anc      # the drop count is cumulative: the newest one will do
                ingest(data, addr)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as e:
            # e.g. ICMP errors surfacing on the socket; the socket stays usable
            self.errors += 1
            log.debug("receive error on %s: %s", self.address, e)
        self.datagrams += n
        for level, kind, cdata in last_anc:
            if level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL and len(cdata) >= 4:
                drops = struct.unpack("=I", cdata[:4])[0]
                if drops > self._drops:
                    self._drops = drops

    # -- reader process ---------------------------------------------------------------
    def _start_reader_process(self, loop: asyncio.AbstractEventLoop) -> None:
        sock = self.sock
        assert sock is not None
        r, w = os.pipe()
        try:
            try:
                import fcntl
                fcntl.fcntl(w, F_SETPIPE_SZ, PIPE_SIZE)
            except (ImportError, OSError):
                pass          # the default (64 KiB) works, with less slack
            argv = [sys.executable, "-I", udp_reader.__file__, str(sock.fileno()), str(w),
                    str(self.burst), "proc" if self._drops_from_proc else "ovfl"]
            self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE,
                                          pass_fds=(sock.fileno(), w), close_fds=True)
        except BaseException:
            os.close(r)
            os.close(w)
            raise
        os.close(w)
        os.set_blocking(r, False)
        self._pipe = r
        self._records = udp_reader.RecordReader(self.ingest)
        try:
            loop.add_reader(r, self._from_reader)
        except BaseException:
            self._stop_reader_process(drain=False)
            raise
        self._reader = True
        self.reader = "process"

    def _from_reader(self) -> None:
        try:
            data = os.read(self._pipe, PIPE_READ) if self._pipe is not None else b""
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            log.warning("reader process pipe for %s:%d: %s", *self.address, e)
            data = b""
        if not data or not self._take_records(data):
            self._reader_ended()

    def _take_records(self, data: bytes) -> bool:
        # False: the stream is broken (never expected: the reader is ended)
        rec = self._records
        assert rec is not None
        try:
            self.datagrams += rec.feed(data)
        except ValueError as e:
            log.error("%s:%d: %s", *self.address, e)
            return False
        if rec.drops > self._drops:
            self._drops = rec.drops
        self.errors = rec.errors
        return True

    def _reader_ended(self) -> None:
        # the reader process died (or its stream broke): take the socket back
        proc = self._proc
        code = proc.poll() if proc is not None else None
        self.reader = "in-process after the reader process ended"
        self._stop_reader_process(drain=False)
        log.warning("the reader process for %s:%d ended (exit %s): reading in this process",
                    *self.address, code)
        if self._loop is not None and self.sock is not None:
            self._loop.add_reader(self.sock.fileno(), self._socket_reader())
            self._reader = True

    def _stop_reader_process(self, drain: bool) -> None:
        # drain: ask the reader to hand over what the socket holds and read the pipe
        # to its end (bounded by STOP_TIMEOUT); else just end it
        proc, r = self._proc, self._pipe
        self._proc = None
        if r is not None and self._loop is not None:
            try:
                self._loop.remove_reader(r)
            except (ValueError, OSError):
                pass
        if proc is not None:
            try:
                if proc.stdin is not None:
                    proc.stdin.close()     # the reader's signal to stop
            except OSError:
                pass
            if not drain:
                proc.kill()
        if r is not None:
            if drain and proc is not None and self._records is not None:
                deadline = time.monotonic() + STOP_TIMEOUT
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0 or not select.select([r], [], [], left)[0]:
                        log.warning("reader process for %s:%d: no end of data after %.0f s",
                                    *self.address, STOP_TIMEOUT)
                        break
                    try:
                        data = os.read(r, PIPE_READ)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        break
                    if not data or not self._take_records(data):
                        break
            os.close(r)
            self._pipe = None
        if proc is not None:
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._reader = False

    # asyncio.DatagramProtocol (fallback path)
    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.datagrams += 1
        self.ingest(data, addr)

    def error_received(self, exc: Exception) -> None:
        self.errors += 1
        log.debug("receive error: %s", exc)

    def close(self) -> None:
        if self._proc is not None or self._pipe is not None:
            self._stop_reader_process(drain=True)   # what it read is ingested first
        if self.sock is not None:
            self.kernel_drops              # a last read of /proc/net/udp: the kept count is final
        if self._reader and self._loop is not None and self.sock is not None:
            try:
                self._loop.remove_reader(self.sock.fileno())
            except (ValueError, OSError):
                pass
            self._reader = False
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        elif self.sock is not None:
            self.sock.close()
        self.sock = None


class Announcer:
    """Periodically sends our ANNOUNCE to discovery addresses.

    Args:
        targets: [(host, port)] to send to (a broadcast address needs SO_BROADCAST,
            which is always set).
        make: returns the Announce to send (called at every send, so wall_ms and
            the advertised port are current).
        interval: seconds between sends (lease / 3, at most 5).
    """

    def __init__(self, targets: list[tuple[str, int]], make: Callable[[int | None], Announce],
                 interval: float):
        self.targets = list(targets)
        self.make = make
        self.interval = max(0.05, interval)
        self.sent = 0
        self.errors = 0
        self._socks: dict[int, socket.socket] = {}
        self._task: asyncio.Task | None = None
        self._last_error_log = 0.0

    def _sock(self, family: int) -> socket.socket:
        s = self._socks.get(family)
        if s is None:
            s = socket.socket(family, socket.SOCK_DGRAM)
            if family == socket.AF_INET:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            s.setblocking(False)
            self._socks[family] = s
        return s

    def send_once(self, lease: int | None = None) -> int:
        """Send one ANNOUNCE (lease overrides the configured one, 0 = goodbye) to every
        target; returns how many sends succeeded."""
        data = wire.encode(self.make(lease))
        ok = 0
        for host, port in self.targets:
            try:
                self._sock(_family(host)).sendto(data, (host, port))
                ok += 1
                self.sent += 1
            except OSError as e:
                self.errors += 1
                now = time.monotonic()
                if now - self._last_error_log >= 10:
                    self._last_error_log = now
                    log.warning("cannot send ANNOUNCE to %s:%d: %s", host, port, e)
        return ok

    async def run(self) -> None:
        while True:
            self.send_once()
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run(), name="starling-announce")

    async def stop(self, goodbye: bool = True) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if goodbye:
            self.send_once(lease=0)
        for s in self._socks.values():
            s.close()
        self._socks.clear()
