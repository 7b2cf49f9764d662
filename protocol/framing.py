# Serial framing for Starling's UART links: COBS with a CRC-32 trailer.
#
# Theory of operation
# -------------------
# One frame on the wire is
#     00  COBS(payload || CRC32(payload) as 4 bytes little-endian)  00
# CRC32 is binascii.crc32 (IEEE 802.3, reflected, init and xorout 0xFFFFFFFF; check
# value 0xCBF43926 for b"123456789"), identical on CPython and MicroPython.
# COBS (Cheshire & Baker, IEEE/ACM ToN 1999) removes every 0x00 from the stuffed
# bytes, so 0x00 only ever appears as a delimiter. The stuffed bytes are a run of
# blocks; each block is a code byte c (1..255) followed by c-1 non-zero data bytes.
# A block with c < 255 stands for its data plus one 0x00, except the last block of
# the frame, whose 0x00 is dropped; a block with c = 255 carries 254 bytes and no
# 0x00. The encoder never emits an empty block after a final 255 block (the
# canonical form of the Wikipedia examples); the decoder also accepts one.
#
# A delimiter goes before AND after every frame, so a frame that follows line noise
# or a half-received frame still starts cleanly. A receiver splits the stream at
# every 0x00 and treats each piece on its own: an empty piece (two delimiters in a
# row, as between back-to-back frames) is ignored and counted nowhere; any other
# piece is COBS-decoded and must hold at least the 4 CRC bytes, decode cleanly and
# pass the CRC, else it is dropped and counted. Damage (a flipped bit, a dropped or
# inserted byte, garbage) costs at most the frames it touches: the next delimiter
# resynchronises. Back-to-back frames are separated by two delimiters, so one
# damaged delimiter never merges two frames. In the decoded bytes the CRC catches
# every 1-3 bit error and every burst up to 32 bits at these sizes; damage to a code
# byte reshapes the decoded frame and is then caught except with probability 2^-32.
#
# Sizes: payloads are at most max_frame bytes (codes.MAX_FRAME = 1024). The stuffed
# part of a frame of m = n + 4 bytes (payload + CRC) is at most m + m // 254 + 1
# bytes (1033 for MAX_FRAME); the decoder preallocates two buffers of that size for
# its max_frame (stuffed bytes, decoded bytes), and a piece that grows past it is
# discarded up to the next delimiter and counted `oversize` (as is a piece that
# decodes to more than max_frame payload bytes). Memory stays bounded whatever arrives.
#
# API: encode_frame(payload) -> bytes; encode_frame_into(buf, payload) -> length,
# for a preallocated bytearray of max_encoded_len(len(payload)) bytes; both raise
# FrameError (a ValueError) for a payload over max_frame or a short buffer.
# FrameDecoder(max_frame).feed(chunk) -> list of payloads, for chunks of any size
# (bytes, bytearray or memoryview); stats() -> dict of the counters; reset().
#
# Receive counters (FrameDecoder attributes, also stats()):
#   frames      good frames handed back
#   crc_errors  decoded cleanly, CRC mismatch
#   malformed   bad COBS (a code byte pointing past the end of the piece) or fewer
#               than 4 decoded bytes
#   oversize    a piece too long for max_frame
#   bytes_in    every byte fed, delimiters and garbage included
#
# Cost: feed() finds delimiters with bytes.find and moves whole COBS blocks with
# memoryview slice copies, so Python-level work is per frame and per block, not per
# byte. A good frame costs one allocation for the payload bytes plus small memoryview
# slices; the CRC is checked against the CRC-32 residue (crc32(data || crc_le) is
# always 0x2144DF1C, a small int on boards), so no bigint is made on the good path.
# feed() copies a memoryview chunk into bytes first (memoryview has no find); pass
# bytes or a bytearray to avoid that copy. Measured with 64-byte payloads (71-byte
# frames), best of 5 on a desktop x86-64, MB/s of wire bytes, MicroPython unix port
# 1.29-preview / CPython 3.11: feed() 14 / 23 in 64-byte chunks, 22 / 36 in 256-byte
# chunks, 27 / 41 in 4 KB chunks, 0.46 / 0.78 one byte at a time;
# encode_frame_into() 18 / 30; encode_frame() 15 / 26. Expect boards to be one to
# two orders of magnitude slower than the unix port; 921600 baud is 0.092 MB/s.
#
# The module does no I/O: the firmware, base station and simulator wrap it.
import binascii

from protocol.codes import MAX_FRAME

try:
    from micropython import const
except ImportError:  # CPython (a lambda, so mypy accepts the second definition)
    const = lambda x: x  # noqa: E731

CRC_LEN = const(4)
CRC_RESIDUE = const(0x2144DF1C)  # crc32(m || crc32(m) little-endian) for every m
_FULL = const(255)               # code byte of a block of 254 data bytes, no 0x00
_ZERO = b"\x00"


class FrameError(ValueError):
    """The caller asked for something the framing cannot do (payload or buffer size)."""


def max_stuffed_len(n):
    # Upper bound of the COBS output for n input bytes (one code byte per 254 bytes,
    # plus one): the decoder's buffer size for n = max_frame + CRC_LEN.
    return n + n // 254 + 1


def max_encoded_len(payload_len):
    # Bytes on the wire for a payload of payload_len bytes at most, both delimiters
    # included: the size of a buffer for encode_frame_into().
    return max_stuffed_len(payload_len + CRC_LEN) + 2


# Every function below keeps its MicroPython frame (arguments + locals + evaluation
# stack) within 11 words: a larger frame is heap-allocated and freed on every call
# (py/objfun.c VM_MAX_STATE_ON_STACK), which rewinds the allocator's search pointer so
# that later allocations scan over all uncollected garbage. Measured on the unix
# port with a 2 MB heap: 26 us per 1-byte feed() with one big function, 1.7 us split
# up (and 3x the throughput in 64-byte chunks).
# Hence the small helpers, and no for loops (an iterator takes 4 stack words).


def encode_frame_into(buf, payload, max_frame=MAX_FRAME):
    # Writes 00 COBS(payload || crc) 00 at buf[0:] and returns its length. buf is a
    # bytearray (or writable memoryview) of at least max_encoded_len(len(payload))
    # bytes. Allocates only small memoryview objects (one or two per run of non-zero
    # bytes); a memoryview payload is copied to bytes first (memoryview has no find).
    n = len(payload)
    if n > max_frame:
        raise FrameError("payload of %d bytes exceeds max_frame %d" % (n, max_frame))
    if len(buf) < max_encoded_len(n):
        raise FrameError("buffer of %d bytes is smaller than %d" % (len(buf), max_encoded_len(n)))
    if isinstance(payload, memoryview):
        payload = bytes(payload)
    buf[0] = 0
    w = _stuff_payload(buf, payload)
    # the payload's last run (after its last zero) is still open: the CRC continues it
    cp = w - 1 - (n - 1 - payload.rfind(_ZERO)) % 254
    return _stuff_crc(buf, cp, w, payload)


def _stuff_payload(buf, payload):
    # Writes each zero-terminated run of the payload as blocks from buf[1], then the
    # final run as if a zero followed (_stuff_crc corrects its code byte); returns
    # the index after the last block.
    w = 1
    i = 0
    j = payload.find(_ZERO)
    while j >= 0:
        w = _run(buf, w, payload, i, j)
        i = j + 1
        j = payload.find(_ZERO, i)
    j = len(payload)
    return _run(buf, w, payload, i, j)


def _run(buf, w, data, i, j):
    # data[i:j] holds no zero: writes it from buf[w] as full 255 blocks, then one
    # block with the remainder whose code (remainder + 1) implies a following zero;
    # returns the index after the blocks.
    src = memoryview(data)
    while j - i >= 254:
        buf[w] = _FULL
        buf[w + 1:w + _FULL] = src[i:i + 254]
        w += _FULL
        i += 254
    buf[w] = j - i + 1
    if j > i:
        buf[w + 1:w + 1 + j - i] = src[i:j]
    return w + 1 + j - i


def _stuff_crc(buf, cp, w, payload):
    # Appends CRC-32(payload), little-endian, to the open block whose code byte is at
    # buf[cp] (its data ends at w), adds the closing delimiter, returns the length.
    crc = binascii.crc32(payload)
    k = CRC_LEN
    while k:
        if crc & 0xFF:
            if w - cp == _FULL:  # close a full block only when more data follows
                buf[cp] = _FULL
                cp = w
                w += 1
            buf[w] = crc & 0xFF
            w += 1
        else:  # a zero byte ends the block
            if w - cp == _FULL:  # a full block implies no zero: the zero gets a block
                buf[cp] = _FULL
                cp = w
                w += 1
            buf[cp] = w - cp
            cp = w
            w += 1
        crc >>= 8
        k -= 1
    buf[cp] = w - cp
    buf[w] = 0
    return w + 1


def encode_frame(payload, max_frame=MAX_FRAME):
    # The frame for payload as bytes, both delimiters included. Raises FrameError
    # when payload is longer than max_frame.
    n = len(payload)
    if n > max_frame:
        raise FrameError("payload of %d bytes exceeds max_frame %d" % (n, max_frame))
    buf = bytearray(max_encoded_len(n))
    n = encode_frame_into(buf, payload, max_frame)
    if n == len(buf):
        return bytes(buf)
    return bytes(memoryview(buf)[:n])


def _unstuff(out, src, r, end):
    # COBS-decodes src[r:end] (no zeros in it) into out; returns the decoded length,
    # or -1 when a code byte points past the end.
    w = 0
    while True:
        code = src[r]
        if r + code > end:
            return -1
        if code > 1:
            out[w:w + code - 1] = src[r + 1:r + code]
            w += code - 1
        r += code
        if r >= end:
            return w
        if code != _FULL:
            out[w] = 0
            w += 1


class FrameDecoder:
    """Splits a byte stream into frame payloads; bounded memory, counts what it drops."""

    def __init__(self, max_frame=MAX_FRAME):
        if max_frame < 0:
            raise FrameError("max_frame must be >= 0")
        self.max_frame = max_frame
        # Both buffers are allocated once and never grow. _buf holds the stuffed bytes
        # of a piece split across feed() calls; _out receives the decoded bytes (a
        # piece of L stuffed bytes decodes to at most L - 1, so _cap is enough).
        self._cap = max_stuffed_len(max_frame + CRC_LEN)
        self._buf = bytearray(self._cap)
        self._bmv = memoryview(self._buf)
        self._out = bytearray(self._cap)
        self._omv = memoryview(self._out)
        self._src = self._bmv  # memoryview of the chunk being fed (during feed() only)
        self._len = 0        # stuffed bytes waiting in _buf
        self._skip = False   # discarding an oversize piece up to the next delimiter
        self.frames = 0
        self.crc_errors = 0
        self.malformed = 0
        self.oversize = 0
        self.bytes_in = 0

    def stats(self):
        return {
            "frames": self.frames,
            "crc_errors": self.crc_errors,
            "malformed": self.malformed,
            "oversize": self.oversize,
            "bytes_in": self.bytes_in,
        }

    def reset(self):
        # Forget a partial piece (e.g. after reopening the port); counters stay.
        self._len = 0
        self._skip = False

    def feed(self, chunk):
        # Returns the payloads (bytes) of the frames that chunk completes, in order.
        # Never raises on wire data; bad pieces only move the counters.
        if isinstance(chunk, memoryview):
            chunk = bytes(chunk)
        self.bytes_in += len(chunk)
        found = []
        self._src = memoryview(chunk)
        i = 0
        while i >= 0:
            i = self._next(chunk, i, found)
        self._src = self._bmv  # drop the reference to the caller's chunk
        return found

    def _next(self, chunk, i, found):
        # Handles chunk[i:] up to its next delimiter; returns the index after that
        # delimiter, or -1 once no delimiter is left (the tail is kept for later).
        j = chunk.find(_ZERO, i)
        if j < 0:
            if i < len(chunk) and not self._skip:
                self._keep(chunk, i)
            return -1
        if self._skip:  # this delimiter ends the discarded piece
            self._skip = False
        elif self._len:  # it completes a piece begun in an earlier chunk
            self._join(i, j, found)
        elif j > i:  # a whole piece inside chunk: decoded where it lies
            self._piece(self._src, i, j, found)
        return j + 1

    def _keep(self, chunk, i):
        # chunk[i:] starts or continues a piece: append it to _buf, or, if the piece
        # no longer fits, drop it and discard everything up to the next delimiter.
        fill = self._len
        n = len(chunk) - i
        if fill + n > self._cap:
            self._len = 0
            self._skip = True
            self.oversize += 1
        else:
            self._bmv[fill:fill + n] = self._src[i:]
            self._len = fill + n

    def _join(self, i, j, found):
        # chunk[i:j] ends the piece begun in _buf: complete it there and decode it.
        fill = self._len
        self._len = 0
        j = fill + j - i  # the whole piece's length
        if j > self._cap:
            self.oversize += 1
        else:
            self._bmv[fill:j] = self._src[i:i + j - fill]
            self._piece(self._bmv, 0, j, found)

    def _piece(self, src, r, end, found):
        # Decodes the stuffed piece src[r:end]; hands back its payload if it is good.
        if end - r > self._cap:
            self.oversize += 1
            return
        end = _unstuff(self._omv, src, r, end) - CRC_LEN  # payload length
        if end < 0:
            self.malformed += 1
        elif end > self.max_frame:
            self.oversize += 1
        elif binascii.crc32(self._omv[:end + CRC_LEN]) != CRC_RESIDUE:
            self.crc_errors += 1
        else:
            self.frames += 1
            found.append(bytes(self._omv[:end]))
