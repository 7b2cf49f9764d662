# Helpers shared by the dual-interpreter tests (CPython and MicroPython alike).


class Lcg:
    # Deterministic pseudo-random numbers, identical on both interpreters.
    def __init__(self, seed):
        self.x = seed & 0x7FFFFFFF

    def next(self):
        self.x = (self.x * 1103515245 + 12345) & 0x7FFFFFFF
        return self.x >> 8

    def below(self, n):
        return self.next() % n if n > 0 else 0

    def per_mille(self, p):
        return p > 0 and self.next() % 1000 < p

    def u32(self):
        return ((self.next() & 0xFFFF) << 16) | (self.next() & 0xFFFF)

    def data(self, n, zero_every=0):
        out = bytearray(n)
        for i in range(n):
            b = self.next() & 0xFF
            if zero_every and self.below(zero_every) == 0:
                b = 0
            out[i] = b
        return bytes(out)


class DictFlash:
    # A dict as a board's flash, for firmware code that takes a HAL: every append and
    # atomic write is committed at once (littlefs does so on close). full = True: every
    # write fails as littlefs does when no block is free (OSError ENOSPC).
    def __init__(self, files=None):
        self.files = {} if files is None else files
        self.appends = 0
        self.renames = 0
        self.logs = []
        self.full = False

    def read_file(self, name):
        return self.files.get(name)

    def _check_space(self):
        if self.full:
            raise OSError(28, "ENOSPC")

    def write_file_atomic(self, name, data):
        self._check_space()
        self.files[name] = bytes(data)
        self.renames += 1

    def append_file(self, name, data):
        self._check_space()
        self.files[name] = self.files.get(name, b"") + bytes(data)
        self.appends += 1

    def remove_file(self, name):
        if name in self.files:
            del self.files[name]

    def log(self, msg):
        self.logs.append(msg)
