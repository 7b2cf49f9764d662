# The serial-chain UART of the board HALs (firmware/hal_board.py uart_open()), in its
# own module: only a serial-chain node imports it, so UDP nodes do not keep its code
# in RAM.


class BoardUart:
    # machine.UART behind the chain's UART interface (firmware/uart_unix.py):
    #   read_into(buf) -> n    bytes copied into buf, 0 when nothing waits (never blocks:
    #                          asks only for what any() says has arrived)
    #   any() -> bool          bytes are waiting
    #   write(data) -> n       all of data; waits while the TX buffer is full (RP2 with
    #                          timeout=0 writes what fits and raises EAGAIN when nothing
    #                          does, so this loops), as UnixUart.write does
    #   stream() / close()     the machine.UART (select.poll watches it) / deinit
    def __init__(self, uart, uid, baud, rxbuf, sleep_ms):
        self.uart = uart
        self.id = uid
        self.baud = baud
        self.rxbuf = rxbuf
        self.bytes_in = 0
        self.bytes_out = 0
        self.overruns = 0        # reads that found the receive buffer full: bytes lost
        self._sleep_ms = sleep_ms

    def stream(self):
        return self.uart

    def any(self):
        return self.uart.any() > 0

    def read_into(self, buf):
        u = self.uart
        n = u.any()
        if not n:
            return 0
        if n >= self.rxbuf:
            self.overruns += 1
        if n > len(buf):
            n = len(buf)
        got = u.readinto(buf, n)
        if not got:
            return 0
        self.bytes_in += got
        return got

    def write(self, data):
        n = len(data)
        try:
            done = self.uart.write(data) or 0
        except OSError:   # EAGAIN: TX buffer full (RP2, timeout=0)
            done = 0
        if done < n:      # the rest in pieces; the memoryview (~32 bytes) only here
            mv = memoryview(data)
            while done < n:
                try:
                    k = self.uart.write(mv[done:])
                except OSError:
                    k = 0
                if not k:
                    self._sleep_ms(1)   # ~11 bytes drain at 115200 baud meanwhile
                    k = 0
                done += k
        self.bytes_out += n
        return n

    def close(self):
        try:
            self.uart.deinit()
        except (AttributeError, OSError):
            pass
