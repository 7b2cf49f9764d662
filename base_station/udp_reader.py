"""Receiving UDP in a separate process, so decoding gets a core to itself.

Theory of operation
-------------------
On this kind of machine a `recvmsg` costs about 3 µs per datagram, as much as decoding
and accounting an EVENT. In one process the two add up; here a reader process (this
file, run as a script with nothing but the standard library) does the system calls
and the station's process decodes, like a broker's I/O thread would, but without
sharing a GIL:

    kernel socket buffer -> reader process: recvfrom_into (or recvmsg_into, see
                            below), many datagrams per wake-up
                         -> pipe: records, one write per wake-up (up to CHUNK bytes)
                         -> station process: one read per CHUNK, ingest(data, addr)

The station opens and binds the socket (bind errors surface there, and it reads the
kernel's drop count from /proc/net/udp by the socket's inode as before) and passes
the descriptor to the reader. When /proc/net/udp has the socket (last argument
"proc") the reader uses recvfrom_into, ~0.6 µs per datagram cheaper than
recvmsg_into with ancillary data; else ("ovfl") recvmsg_into, passing on the
SO_RXQ_OVFL drop count. Nothing is lost between the two: the pipe does not drop, and
when it is full the reader waits, so the kernel socket buffer fills and drops what it
must, counted as kernel drops as without a reader process.

Records on the pipe, big-endian:

    u16 length | u16 address id | datagram             length < 0xFFFD
    0xFFFF     | u16 address id | u16 n | n bytes       an address: "host|port[|flowinfo|scope]"
    0xFFFE     | 0              | u32 drops             cumulative SO_RXQ_OVFL drop count
    0xFFFD     | 0              | u32 errors            cumulative receive errors

An address gets an id the first time a datagram comes from it (ids restart when
MAX_ADDRESSES are in use; a definition replaces the old one). A UDP payload is at
most 65527 bytes (MAX_PAYLOAD), below the markers; a length in between is an error.

Stopping: the station closes the reader's stdin; the reader reads what the socket
holds, writes it and exits, and the station reads the pipe to its end, so a stop
after a quiet period loses nothing. If the station dies, stdin closes too. If the
reader dies, the station sees the pipe end and goes back to reading the socket
itself (base_station.listener.UdpListener).
"""

from __future__ import annotations

import os
import select
import socket
import struct
import sys

HEAD = struct.Struct(">HH")
U16 = struct.Struct(">H")
U32 = struct.Struct(">I")
MARK_ADDRESS = 0xFFFF
MARK_DROPS = 0xFFFE
MARK_ERRORS = 0xFFFD
MAX_PAYLOAD = 65527            # the largest UDP payload (IPv6: 65535 - 8)
MAX_ADDRESSES = 60000
READ_SIZE = 65536              # any UDP payload fits
CHUNK = 256 * 1024             # bytes of records gathered before a write
SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)


class RecordReader:
    """The station's side: turns the pipe's bytes back into ingest(data, addr) calls.

    feed() takes any split of the stream (a record may straddle two reads) and returns
    the number of datagrams handed to `ingest`; `drops` and `errors` are the reader's
    latest cumulative counts. A record that makes no sense (an unknown address id, a
    length no UDP payload has) means the stream is broken: ValueError."""

    def __init__(self, ingest) -> None:
        self.ingest = ingest
        self.addresses: dict[int, tuple] = {}
        self.drops = 0
        self.errors = 0
        self._rest = b""

    @property
    def pending(self) -> int:
        """Bytes of an incomplete record kept for the next feed()."""
        return len(self._rest)

    def feed(self, data: bytes) -> int:
        if self._rest:
            data = self._rest + data
        head = HEAD.unpack_from
        addresses = self.addresses
        ingest = self.ingest
        end = len(data)
        p = 0
        n = 0
        while end - p >= 4:
            length, aid = head(data, p)
            if length <= MAX_PAYLOAD:
                q = p + 4 + length
                if q > end:
                    break
                addr = addresses.get(aid)
                if addr is None:
                    raise ValueError("reader stream: datagram from undefined address id %d" % aid)
                ingest(data[p + 4:q], addr)
                n += 1
                p = q
            elif length == MARK_ADDRESS:
                if end - p < 6:
                    break
                size = U16.unpack_from(data, p + 4)[0]
                q = p + 6 + size
                if q > end:
                    break
                addresses[aid] = parse_address(data[p + 6:q])
                p = q
            else:
                if length < MARK_ERRORS:
                    raise ValueError("reader stream: a record of %d bytes (no UDP payload is"
                                     " longer than %d)" % (length, MAX_PAYLOAD))
                if end - p < 8:
                    break
                value = U32.unpack_from(data, p + 4)[0]
                if length == MARK_DROPS:
                    self.drops = value
                else:
                    self.errors = value
                p += 8
        self._rest = data[p:]
        return n


def format_address(addr: tuple) -> bytes:
    return "|".join(str(x) for x in addr).encode()


def parse_address(text: bytes) -> tuple:
    parts = text.decode().split("|")
    return (parts[0],) + tuple(int(x) for x in parts[1:])


def serve(sock_fd: int, pipe_fd: int, burst: int, ancillary: bool = True) -> int:
    """The reader process: socket -> records -> pipe until stdin closes.

    ancillary: read SO_RXQ_OVFL drop counts (recvmsg_into) and pass them on; False
    when the station reads them from /proc (recvfrom_into, cheaper)."""
    sock = socket.socket(fileno=sock_fd)
    sock.setblocking(False)
    anc_size = socket.CMSG_SPACE(4) if ancillary else 0
    buf = bytearray(CHUNK + READ_SIZE + 1024)
    mv = memoryview(buf)
    recv_into = sock.recvmsg_into
    recvfrom_into = sock.recvfrom_into
    pack_into = HEAD.pack_into
    ids: dict[tuple, int] = {}
    drops = errors = 0
    poller = select.poll()
    poller.register(sock_fd, select.POLLIN)
    stdin = sys.stdin.fileno()
    poller.register(stdin, select.POLLIN)
    stopping = False
    while True:
        try:
            events = poller.poll(1000)
        except InterruptedError:
            continue
        for fd, _ev in events:
            if fd == stdin:
                stopping = True      # closed (or anything written): a last drain, then exit
        while True:                  # one write per CHUNK, until the socket is empty
            off = 0
            n = 0
            last_anc = None
            err_before = errors
            while n < burst and off < CHUNK:
                try:
                    if anc_size:
                        nbytes, anc, _flags, addr = recv_into([mv[off + 4:off + 4 + READ_SIZE]],
                                                              anc_size)
                    else:
                        nbytes, addr = recvfrom_into(mv[off + 4:off + 4 + READ_SIZE])
                        anc = None
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    errors += 1      # e.g. an ICMP error surfacing on the socket
                    break
                n += 1
                if anc:
                    last_anc = anc
                aid = ids.get(addr)
                if aid is None:
                    if len(ids) >= MAX_ADDRESSES:
                        ids.clear()
                    aid = ids[addr] = len(ids)
                    text = format_address(addr)
                    data = bytes(mv[off + 4:off + 4 + nbytes])
                    HEAD.pack_into(buf, off, MARK_ADDRESS, aid)
                    U16.pack_into(buf, off + 4, len(text))
                    buf[off + 6:off + 6 + len(text)] = text
                    off += 6 + len(text)
                    mv[off + 4:off + 4 + nbytes] = data
                pack_into(buf, off, nbytes, aid)
                off += 4 + nbytes
            if last_anc:
                for level, kind, cdata in last_anc:
                    if level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL and len(cdata) >= 4:
                        d = struct.unpack("=I", cdata[:4])[0]
                        if d > drops:
                            drops = d
                            HEAD.pack_into(buf, off, MARK_DROPS, 0)
                            U32.pack_into(buf, off + 4, drops)
                            off += 8
            if errors != err_before:
                HEAD.pack_into(buf, off, MARK_ERRORS, 0)
                U32.pack_into(buf, off + 4, errors)
                off += 8
            if off:
                try:
                    w = 0
                    while w < off:
                        w += os.write(pipe_fd, mv[w:off])
                except (BrokenPipeError, OSError):
                    return 0          # the station is gone
            if n < burst and off < CHUNK:
                break                 # the socket is empty (or an error): wait again
        if stopping:
            return 0


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 4) or (len(argv) == 4 and argv[3] not in ("ovfl", "proc")):
        sys.stderr.write("usage: udp_reader.py SOCKET_FD PIPE_FD BURST [ovfl|proc]"
                         " (started by the base station)\n")
        return 2
    import signal
    # Ctrl-C in a terminal reaches the whole process group: the station stops the
    # reader itself (stdin), after reading what is in flight
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return serve(int(argv[0]), int(argv[1]), int(argv[2]), argv[3:] != ["proc"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
