# A UART on the unix port (and CPython): a serial device or pty opened by path, in raw
# mode, reads that never wait.
#
# The chain node needs only the small interface every board UART HAL will offer too:
#     read_into(buf) -> n    bytes copied into buf, 0 when nothing is waiting (never blocks)
#     any() -> bool          bytes are waiting
#     write(data) -> n       all of data (blocks while the line's buffers are full, as
#                            machine.UART.write does on a board)
#     stream() / close()     the object select.poll watches / release the device
# Raw mode: termios.setraw (no echo, no CR/LF translation, no XON/XOFF, 8 bits) and VMIN=0,
# VTIME=0 (cc[6], cc[5]: the unix port has no names for them), so a read returns what has
# arrived, possibly nothing. The unix port has no os.open/O_NONBLOCK, hence this. flush() is
# never called: on a tty the unix port raises EINVAL for it (the file is unbuffered anyway).
# The baud rate is set for real devices; the simulator's ptys ignore it (the virtual wire
# paces the bytes itself).
import sys

_MP = sys.implementation.name == "micropython"
_VMIN = 6
_VTIME = 5


def _raw(fd, baud):
    import termios  # type: ignore  # unix port and CPython only: not in the board stubs
    if _MP:
        termios.setraw(fd)
    else:
        import tty  # type: ignore
        tty.setraw(fd)
    attrs = termios.tcgetattr(fd)
    cc = attrs[6]
    if _MP:
        cc[_VMIN] = 0
        cc[_VTIME] = 0
    else:
        cc[termios.VMIN] = 0
        cc[termios.VTIME] = 0
        attrs[0] &= ~(termios.IXON | termios.IXOFF | termios.ICRNL | termios.INLCR | termios.IGNCR)
    speed = getattr(termios, "B%d" % baud, None)
    if speed is not None:
        attrs[4] = speed
        attrs[5] = speed
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


class UnixUart:
    def __init__(self, path, baud=115200):
        self.path = path
        self.baud = baud
        if _MP:
            self._f = open(path, "r+b")
        else:
            self._f = open(path, "r+b", buffering=0)
        try:
            _raw(self._f.fileno(), baud)
        except Exception:
            self._f.close()
            raise
        self._poll = None
        self.bytes_in = 0
        self.bytes_out = 0

    def stream(self):
        return self._f

    def read_into(self, buf):
        n = self._f.readinto(buf)
        if not n:
            return 0
        self.bytes_in += n
        return n

    def any(self):
        if self._poll is None:
            import select
            self._poll = select.poll()
            self._poll.register(self._f, select.POLLIN)
        return bool(self._poll.poll(0))

    def write(self, data):
        # all of data; a short write (the pty's buffer is full) is continued
        n = len(data)
        done = 0
        mv = None   # made only after a short write: a whole write allocates nothing
        while done < n:
            if done and mv is None:
                mv = memoryview(data)
            k = self._f.write(mv[done:] if done else data)
            if k is None:   # CPython non-blocking: not possible here, be safe
                k = 0
            done += k
        self.bytes_out += n
        return n

    def close(self):
        try:
            self._f.close()
        except OSError:
            pass
