"""Property tests of protocol/framing.py (CPython only, hypothesis).

The dual-interpreter module tests/dual/test_framing.py holds the worked vectors and the
deterministic damage cases; here hypothesis searches for streams that break the
invariants: framing is transparent under any chunking, random bytes never raise and
never come out as a payload, and a flipped bit never yields a payload that was not sent.
"""

import binascii
import re
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ROOT
from protocol.codes import MAX_FRAME
from protocol.framing import CRC_LEN, FrameDecoder, encode_frame
import test_framing as dual

payloads = st.binary(min_size=0, max_size=MAX_FRAME) | st.lists(
    st.sampled_from([0, 1, 0xFF]), max_size=600).map(bytes)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points + [len(data)]:
        pieces.append(data[last:p])
        last = p
    return pieces


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(payloads, max_size=12), st.lists(st.integers(min_value=0), max_size=40),
       st.sampled_from([bytes, bytearray, memoryview]))
def test_any_payloads_any_chunking_round_trip(sent, cuts, kind):
    stream = b"".join(encode_frame(p) for p in sent)
    dec = FrameDecoder()
    got = []
    for piece in _split(stream, cuts):
        got.extend(dec.feed(kind(piece)))
    assert got == sent
    assert dec.frames == len(sent) and dec.bytes_in == len(stream)
    assert dec.crc_errors == dec.malformed == dec.oversize == 0


def _reference(stream: bytes, max_frame: int) -> tuple[list[bytes], dict[str, int]]:
    """A slow, obvious model of the decoder: split at zeros, COBS-decode byte by byte,
    compare the CRC field with crc32 of the payload (no residue trick)."""
    cap = (max_frame + 4) + (max_frame + 4) // 254 + 1
    counts = {"frames": 0, "crc_errors": 0, "malformed": 0, "oversize": 0}
    out = []
    pieces = stream.split(b"\x00")
    for n, piece in enumerate(pieces):
        if len(piece) > cap:
            counts["oversize"] += 1
            continue
        if n == len(pieces) - 1 or not piece:  # unterminated tail, or nothing
            continue
        data, r, ok = bytearray(), 0, True
        while r < len(piece):
            code = piece[r]
            if r + code > len(piece):
                ok = False
                break
            data += piece[r + 1:r + code]
            r += code
            if code != 0xFF and r < len(piece):
                data.append(0)
        if not ok or len(data) < 4:
            counts["malformed"] += 1
        elif len(data) - 4 > max_frame:
            counts["oversize"] += 1
        elif struct.unpack("<I", data[-4:])[0] != binascii.crc32(data[:-4]):
            counts["crc_errors"] += 1
        else:
            counts["frames"] += 1
            out.append(bytes(data[:-4]))
    return out, counts


noise = st.binary(max_size=400) | st.lists(
    st.sampled_from([0, 1, 2, 3, 0xFE, 0xFF]), max_size=1200).map(bytes)


@settings(max_examples=500)
@given(st.lists(noise, max_size=8), st.integers(min_value=0, max_value=MAX_FRAME))
def test_random_bytes_never_raise_and_match_the_reference(chunks, max_frame):
    dec = FrameDecoder(max_frame)
    got = []
    for chunk in chunks:
        got.extend(dec.feed(chunk))  # never raises
    want, counts = _reference(b"".join(chunks), max_frame)
    assert got == want  # nothing comes out unless its CRC field matched
    assert {k: v for k, v in dec.stats().items() if k != "bytes_in"} == counts
    assert dec.bytes_in == sum(map(len, chunks))
    assert all(len(p) <= max_frame for p in got)


@settings(max_examples=300)
@given(st.binary(min_size=1, max_size=3000))
def test_random_bytes_essentially_never_pass_the_crc(noise_bytes):
    # a payload from noise needs a piece whose last 4 decoded bytes are its CRC
    # (chance 2^-32 each); the one short valid frame, the empty payload
    # (stuffed 01 01 01 01 01), is the only one structured noise could plausibly hit
    got = FrameDecoder().feed(noise_bytes)
    assert all(p == b"" for p in got)
    assert not got or b"\x01\x01\x01\x01\x01" in noise_bytes


@settings(max_examples=400)
@given(st.lists(payloads.filter(lambda p: len(p) <= 300), min_size=1, max_size=6),
       st.data())
def test_single_bit_flip_never_yields_a_wrong_payload(sent, data):
    stream = bytearray(b"".join(encode_frame(p) for p in sent))
    pos = data.draw(st.integers(min_value=0, max_value=len(stream) - 1))
    stream[pos] ^= 1 << data.draw(st.integers(min_value=0, max_value=7))
    cuts = data.draw(st.lists(st.integers(min_value=0), max_size=10))
    dec = FrameDecoder()
    got = []
    for piece in _split(bytes(stream), cuts):
        got.extend(dec.feed(piece))
    # what comes out is an in-order subsequence of what was sent, at most one frame short
    it = iter(sent)
    assert all(any(p == q for q in it) for p in got), (sent, got)
    assert len(got) >= len(sent) - 1


@settings(max_examples=200)
@given(st.lists(payloads.filter(lambda p: len(p) <= 200), min_size=2, max_size=6), st.data())
def test_damage_costs_only_the_frames_it_touches(sent, data):
    frames = [encode_frame(p) for p in sent]
    k = data.draw(st.integers(min_value=0, max_value=len(frames) - 2))
    victim = bytearray(frames[k])
    i = data.draw(st.integers(min_value=1, max_value=len(victim) - 2))
    action = data.draw(st.sampled_from(["drop", "flip", "garbage"]))
    if action == "drop":
        del victim[i]
    elif action == "flip":
        victim[i] ^= 1 << data.draw(st.integers(min_value=0, max_value=7))
    else:
        victim[i:i] = data.draw(st.binary(min_size=1, max_size=50))
    frames[k] = bytes(victim)
    dec = FrameDecoder()
    got = dec.feed(b"".join(frames))
    assert got[-(len(sent) - k - 1):] == sent[k + 1:]  # everything after the damage survives
    assert got[:k] == sent[:k]


def test_crc_residue_matches_the_polynomial():
    # the decoder compares crc32(payload || crc) with a constant; check it independently
    for payload in (b"", b"a", bytes(range(256)) * 3):
        trailer = struct.pack("<I", binascii.crc32(payload))
        assert binascii.crc32(payload + trailer) == 0x2144DF1C
    assert CRC_LEN == 4


def test_doc_vectors_match_the_dual_tests():
    """docs/PROTOCOL.md section 6 shows the same hex."""
    texts = [(ROOT / "docs" / "PROTOCOL.md").read_text()]
    doc = " ".join(re.sub(r"\s+", " ", t.lower()) for t in texts)
    for payload_hex, frame_hex in dual.VECTORS:
        assert frame_hex in doc, frame_hex
        if payload_hex:
            assert payload_hex in doc, payload_hex
    assert dual.LONG_FRAME_TAIL in doc
    for payload, frame in dual.all_vectors():
        assert encode_frame(payload) == frame
