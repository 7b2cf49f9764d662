# protocol/framing.py on both interpreters: plain test functions, bare asserts,
# only imports MicroPython has. Run under MicroPython by tests/mp_runner.py.
import binascii
import gc
import struct

from protocol import framing
from protocol.codes import MAX_FRAME
from protocol.framing import FrameDecoder, FrameError, encode_frame, encode_frame_into
from dual_helpers import Lcg


def h(text):
    return binascii.unhexlify(text.replace(" ", ""))


# The worked examples of docs/PROTOCOL.md section 6, (payload hex, frame hex), both
# delimiters included. Keep this table and the document in step
# (tests/test_framing_props.py checks that every frame below appears in the doc).
VECTORS = [
    # empty payload: CRC 00000000, every byte stuffed as a 01 block
    ("", "00 01 01 01 01 01 00"),
    # "123456789": CRC cbf43926 (the CRC-32 check value) sent as 26 39 f4 cb
    ("31 32 33 34 35 36 37 38 39", "00 0e 31 32 33 34 35 36 37 38 39 26 39 f4 cb 00"),
    # zeros in the payload: CRC 1c81ae02
    ("11 00 00 22", "00 02 11 01 06 22 02 ae 81 1c 00"),
    # zeros at both ends of the payload and one in the CRC (39ef00de, sent de 00 ef 39)
    ("00 16 00 00", "00 01 02 16 01 02 de 03 ef 39 00"),
]
# 254 non-zero bytes 01..fe fill one 255 block exactly; CRC 7963003c (sent 3c 00 63 79).
LONG_PAYLOAD = bytes(range(1, 255))
LONG_FRAME_TAIL = "02 3c 03 63 79 00"
LONG_FRAME = b"\x00\xff" + LONG_PAYLOAD + h(LONG_FRAME_TAIL)


def all_vectors():
    out = [(h(p), h(f)) for p, f in VECTORS]
    out.append((LONG_PAYLOAD, LONG_FRAME))
    return out



def decode_all(stream, max_frame=MAX_FRAME):
    dec = FrameDecoder(max_frame)
    return dec.feed(stream), dec


def feed_in_chunks(dec, stream, sizes):
    # sizes: an Lcg (random 1..300 byte pieces) or an int (fixed size)
    out = []
    i = 0
    n = len(stream)
    while i < n:
        k = sizes if isinstance(sizes, int) else 1 + sizes.below(300)
        out.extend(dec.feed(stream[i:i + k]))
        i += k
    return out


def payload_patterns(n, rng):
    return [
        bytes([(i % 255) + 1 for i in range(n)]),  # no zeros
        bytes(n),                                    # all zeros
        rng.data(n, zero_every=7),                   # mixed
    ]


def assert_clean(dec):
    assert dec.crc_errors == 0 and dec.malformed == 0 and dec.oversize == 0, dec.stats()


# --- encoding ---------------------------------------------------------------

def test_vectors_encode():
    buf = bytearray(framing.max_encoded_len(len(LONG_PAYLOAD)))
    for payload, frame in all_vectors():
        assert encode_frame(payload) == frame, (payload, encode_frame(payload))
        n = encode_frame_into(buf, payload)
        assert bytes(buf[:n]) == frame


def test_crc_is_ieee_and_residue_constant():
    assert binascii.crc32(b"123456789") == 0xCBF43926
    for payload in (b"", b"123456789", bytes(300)):
        crc = struct.pack("<I", binascii.crc32(payload))
        assert binascii.crc32(payload + crc) == framing.CRC_RESIDUE


def test_encoded_frames_have_zeros_only_at_the_ends():
    rng = Lcg(1)
    for n in (0, 1, 200, 253, 254, 255, 508, 509, 1000, MAX_FRAME):
        for payload in payload_patterns(n, rng):
            frame = encode_frame(payload)
            assert frame[0] == 0 and frame[-1] == 0
            assert frame.find(b"\x00", 1) == len(frame) - 1
            assert len(frame) <= framing.max_encoded_len(n)


def test_final_full_block_has_no_empty_block_after_it():
    # 250 non-zero payload bytes whose CRC has no zero byte: 254 stuffed bytes, one 255 block
    rng = Lcg(7)
    while True:
        payload = bytes([1 + rng.below(255) for _ in range(250)])
        if b"\x00" not in struct.pack("<I", binascii.crc32(payload)):
            break
    frame = encode_frame(payload)
    assert len(frame) == 1 + 1 + 254 + 1
    assert frame[1] == 0xFF
    # the decoder also accepts the variant that ends with an empty 01 block
    variant = frame[:-1] + b"\x01\x00"
    got, dec = decode_all(variant)
    assert got == [payload]
    assert_clean(dec)


def test_crc_zero_right_after_a_full_block():
    # The payload's last run plus the CRC's first k non-zero bytes fill a block to 254
    # exactly and the next CRC byte is 0x00: the full block implies no zero, so the zero
    # needs its own 01 block (a regression: it was folded into the 255 code byte and the
    # frame failed its CRC on every transmission).
    rng = Lcg(11)
    for k in (1, 2, 3):
        base = bytes([1 + rng.below(255) for _ in range(252 - k)])
        found = 0
        tries = 0
        while found < 2 and tries < 65025:
            payload = base + bytes([1 + tries // 255, 1 + tries % 255])
            tries += 1
            crc = struct.pack("<I", binascii.crc32(payload))
            if b"\x00" in crc[:k] or crc[k] != 0:
                continue
            found += 1
            frame = encode_frame(payload)
            assert frame[1] == 0xFF and frame[1 + 255] == 0x01, frame.hex()
            got, dec = decode_all(frame)
            assert got == [payload], (k, payload.hex())
            assert_clean(dec)
        assert found == 2, (k, tries)


def test_encode_rejects_oversize_payload():
    try:
        encode_frame(bytes(MAX_FRAME + 1))
    except FrameError:
        pass
    else:
        assert False, "no FrameError"
    try:
        encode_frame(bytes(11), max_frame=10)
    except FrameError:
        pass
    else:
        assert False, "no FrameError"
    assert isinstance(FrameError("x"), ValueError)
    got, _ = decode_all(encode_frame(bytes(MAX_FRAME)))
    assert got == [bytes(MAX_FRAME)]


def test_encode_into_rejects_small_buffer_and_leaves_size_alone():
    payload = b"abc\x00def"
    need = framing.max_encoded_len(len(payload))
    try:
        encode_frame_into(bytearray(need - 1), payload)
    except FrameError:
        pass
    else:
        assert False, "no FrameError"
    buf = bytearray(need + 5)
    n = encode_frame_into(buf, payload)
    assert len(buf) == need + 5
    assert bytes(buf[:n]) == encode_frame(payload)


def test_encode_accepts_bytearray_memoryview_and_writes_into_memoryview():
    payload = b"\x05\x00\x06" * 40
    want = encode_frame(payload)
    assert encode_frame(bytearray(payload)) == want
    assert encode_frame(memoryview(payload)) == want
    big = bytearray(1000)
    n = encode_frame_into(memoryview(big)[100:], memoryview(bytearray(payload)))
    assert bytes(big[100:100 + n]) == want
    assert big[99] == 0 and len(big) == 1000


# --- decoding ---------------------------------------------------------------

def test_vectors_decode_whole_one_byte_and_with_trailing_data():
    for payload, frame in all_vectors():
        got, dec = decode_all(frame)
        assert got == [payload]
        assert dec.frames == 1 and dec.bytes_in == len(frame)
        assert_clean(dec)
        dec = FrameDecoder()
        assert feed_in_chunks(dec, frame, 1) == [payload]
        assert_clean(dec)
        # trailing data: the start of the next frame is kept for later
        dec = FrameDecoder()
        assert dec.feed(frame + frame[:-3]) == [payload]
        assert dec.feed(frame[-3:]) == [payload]
        assert dec.frames == 2
        assert_clean(dec)


def test_round_trip_all_lengths_0_to_600():
    rng = Lcg(2)
    dec = FrameDecoder()
    count = 0
    for n in range(601):
        for payload in payload_patterns(n, rng):
            frame = encode_frame(payload)
            got = dec.feed(frame)
            assert got == [payload], (n, payload, got)
            count += 1
    assert dec.frames == count
    assert_clean(dec)


def test_stream_whole_one_byte_and_random_chunks():
    rng = Lcg(3)
    payloads = []
    for n in (0, 1, 2, 3, 4, 5, 64, 253, 254, 255, 256, 507, 508, 509, 600, MAX_FRAME):
        payloads.extend(payload_patterns(n, rng))
    stream = b"".join([encode_frame(p) for p in payloads])
    got, dec = decode_all(stream)
    assert got == payloads
    assert_clean(dec)
    dec = FrameDecoder()
    assert feed_in_chunks(dec, stream, 1) == payloads
    assert dec.bytes_in == len(stream)
    assert_clean(dec)
    for seed in range(5):
        dec = FrameDecoder()
        assert feed_in_chunks(dec, stream, Lcg(100 + seed)) == payloads
        assert_clean(dec)


def test_feed_accepts_bytes_bytearray_memoryview():
    stream = encode_frame(b"one") + encode_frame(b"\x00two\x00")
    mid = len(stream) // 2 + 1
    for kind in (bytes, bytearray, memoryview):
        dec = FrameDecoder()
        got = dec.feed(kind(stream[:mid])) + dec.feed(kind(stream[mid:]))
        assert got == [b"one", b"\x00two\x00"]
        for p in got:
            assert type(p) is bytes
    assert FrameDecoder().feed(b"") == []


def test_empty_pieces_are_ignored_silently():
    frame = encode_frame(b"x")
    stream = b"\x00" * 10 + frame + b"\x00" * 5 + frame + frame + b"\x00"
    got, dec = decode_all(stream)
    assert got == [b"x", b"x", b"x"]
    assert dec.stats() == {"frames": 3, "crc_errors": 0, "malformed": 0, "oversize": 0,
                           "bytes_in": len(stream)}


def test_garbage_before_and_between_frames():
    rng = Lcg(4)
    a = encode_frame(b"first")
    b = encode_frame(b"second")
    for zero_every in (0, 3, 50):
        garbage = rng.data(500, zero_every)
        stream = garbage + a + garbage + b
        got, dec = decode_all(stream)
        assert got == [b"first", b"second"]
        assert dec.frames == 2
        dec = FrameDecoder()
        assert feed_in_chunks(dec, stream, Lcg(zero_every)) == [b"first", b"second"]


def test_malformed_and_crc_errors_are_counted():
    # 05 says 4 data bytes follow but only 1 does
    got, dec = decode_all(h("00 05 01 00"))
    assert got == [] and dec.malformed == 1
    # decodes to 1 byte: too short to hold a CRC
    got, dec = decode_all(h("00 02 11 00"))
    assert got == [] and dec.malformed == 1
    # good COBS, wrong CRC
    frame = bytearray(encode_frame(b"hello"))
    frame[3] ^= 0x01
    got, dec = decode_all(bytes(frame))
    assert got == [] and dec.crc_errors == 1 and dec.malformed == 0


def test_every_flipped_bit_loses_at_most_that_frame():
    a = encode_frame(b"\x10\x00\x20 sensor 0x2a \x00\x00")
    b = encode_frame(b"next frame")
    for i in range(len(a)):
        for bit in range(8):
            bad = bytearray(a)
            bad[i] ^= 1 << bit
            stream = bytes(bad) + b
            for chunking in (0, 1):
                if chunking:
                    dec = FrameDecoder()
                    got = feed_in_chunks(dec, stream, 1)
                else:
                    got, dec = decode_all(stream)
                if 0 < i < len(a) - 1:
                    assert got == [b"next frame"], (i, bit, got)
                    assert dec.crc_errors + dec.malformed >= 1, (i, bit, dec.stats())
                else:  # a damaged delimiter: the neighbour's delimiter still bounds the frame
                    assert got[-1] == b"next frame" and len(got) <= 2, (i, bit, got)


def test_every_dropped_byte_loses_at_most_that_frame():
    a = encode_frame(b"\x01\x02\x00\x03" * 20)
    b = encode_frame(b"survivor")
    for i in range(len(a)):
        stream = a[:i] + a[i + 1:] + b
        got, dec = decode_all(stream)
        if 0 < i < len(a) - 1:
            assert got == [b"survivor"], (i, got)
            assert dec.crc_errors + dec.malformed == 1, (i, dec.stats())
        else:  # dropped a delimiter: the other one still bounds the frame
            assert got == [b"\x01\x02\x00\x03" * 20, b"survivor"], (i, got)


def test_inserted_byte_loses_at_most_that_frame():
    a = encode_frame(b"abcdef\x00ghij")
    b = encode_frame(b"after")
    for i in range(1, len(a) - 1):
        for extra in (b"\x00", b"\x01", b"\xff"):
            got, _ = decode_all(a[:i] + extra + a[i:] + b)
            if i == 1 and extra == b"\x00":  # just one more delimiter
                assert got == [b"abcdef\x00ghij", b"after"], got
            else:
                assert got == [b"after"], (i, extra, got)


def test_oversize_frame_dropped_and_next_recovered():
    big = encode_frame(bytes(range(1, 101)), max_frame=100)
    good = encode_frame(b"ok")
    stream = good + big + good
    for chunks in (0, 1, 7):
        dec = FrameDecoder(max_frame=64)
        got = feed_in_chunks(dec, stream, chunks) if chunks else dec.feed(stream)
        assert got == [b"ok", b"ok"], (chunks, got)
        assert dec.oversize == 1 and dec.frames == 2
        assert dec.crc_errors == 0 and dec.malformed == 0


def test_oversize_after_decoding_is_counted():
    # 301 payload bytes (max_frame 300) with a zero every 100 bytes: no 255 blocks, so
    # the stuffed piece (306 bytes) fits the buffer but decodes past max_frame
    payload = bytes([(i % 100) and 7 for i in range(301)])
    frame = encode_frame(payload, max_frame=301)
    dec = FrameDecoder(max_frame=300)
    assert len(frame) - 2 <= len(dec._buf)
    assert dec.feed(frame + encode_frame(b"ok")) == [b"ok"]
    assert dec.oversize == 1 and dec.frames == 1
    dec = FrameDecoder(max_frame=300)
    assert feed_in_chunks(dec, frame + encode_frame(b"ok"), 1) == [b"ok"]
    assert dec.oversize == 1


def filled(size, value):
    # bytearray(size) of one byte value, without a second copy (MicroPython's
    # bytearray has no repeat), so a 2 MB heap has room for the rest.
    out = bytearray(size)
    view = memoryview(out)
    n = min(size, 64)
    for i in range(n):
        out[i] = value
    while n < size:
        k = min(n, size - n)
        view[n:n + k] = view[0:k]
        n += k
    return out


def test_memory_bound_after_a_megabyte_of_garbage():
    gc.collect()
    dec = FrameDecoder()
    size = len(dec._buf)
    assert size == MAX_FRAME + 4 + (MAX_FRAME + 4) // 254 + 1
    garbage = bytes([0x5A]) * 4096
    for _ in range(256):  # 1 MiB without a delimiter, in 4 KiB chunks
        assert dec.feed(garbage) == []
        assert len(dec._buf) == size and dec._len <= size
    assert dec.oversize == 1  # one over-long piece, counted once
    frame = encode_frame(b"back")
    assert dec.feed(frame) == [b"back"]
    assert dec.bytes_in == (1 << 20) + len(frame)
    garbage = None
    gc.collect()
    # 1 MiB of garbage and a frame in one chunk
    big = filled(1 << 20, 0xA5)
    big[len(big) - len(frame):] = frame
    dec = FrameDecoder()
    assert dec.feed(big) == [b"back"]
    assert dec.oversize == 1 and dec.frames == 1
    assert len(dec._buf) == size and len(dec._out) == size and dec._len == 0
    big = None
    gc.collect()


def test_megabyte_chunk_of_frames():
    gc.collect()
    # 2048 frames of 64-byte payloads, one per 512-byte slot: the zeros padding each
    # slot are empty pieces (and keep the decoded list small enough for the unix
    # port's default 2 MB heap)
    slot = 512
    count = (1 << 20) // slot
    stream = bytearray(count * slot)
    view = memoryview(stream)
    tail = Lcg(5).data(60, zero_every=9)
    for k in range(count):
        encode_frame_into(view[k * slot:], struct.pack("<I", k) + tail)
    dec = FrameDecoder()
    got = dec.feed(stream)
    assert len(got) == count and dec.frames == count
    for k in range(count):
        assert got[k] == struct.pack("<I", k) + tail
    assert_clean(dec)
    assert dec.bytes_in == 1 << 20
    got = stream = view = None
    gc.collect()


def test_random_bytes_never_raise_and_yield_nothing():
    rng = Lcg(6)
    dec = FrameDecoder(max_frame=300)
    for zero_every in (0, 2, 10, 100, 2000):
        for _ in range(20):
            assert dec.feed(rng.data(1 + rng.below(700), zero_every)) == []
    assert dec.frames == 0


def test_reset_forgets_partial_frame():
    frame = encode_frame(b"late")
    dec = FrameDecoder()
    dec.feed(b"\x00\x07\x07\x07")
    dec.reset()
    assert dec.feed(frame[1:]) == [b"late"]
    assert_clean(dec)
