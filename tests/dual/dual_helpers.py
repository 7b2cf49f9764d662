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
