# Authentication (protocol/auth.py): HMAC-SHA256 built on hashlib, truncated tags,
# SIGNED envelopes and the replay window.
import binascii

from protocol import auth, codes, messages


def _h(s):
    return binascii.unhexlify(s.replace(" ", ""))


# RFC 4231 test cases 1, 2 and 6 (HMAC-SHA-256)
RFC4231 = [
    (b"\x0b" * 20, b"Hi There",
     "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
    (b"Jefe", b"what do ya want for nothing?",
     "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
    (b"\xaa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First",
     "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
]


def test_hmac_sha256_rfc4231_vectors():
    for key, msg, want in RFC4231:
        assert binascii.hexlify(auth.hmac_sha256(key, msg)).decode() == want


def test_key_length_is_checked():
    for bad in (b"", b"x" * 15, b"x" * 65, "text key"):
        try:
            auth.Key(bad)
        except ValueError:
            pass
        else:
            assert False, "accepted a bad key"
    assert len(auth.Key(b"k" * 16).tag(b"m")) == codes.MAC_LEN


def test_sign_and_verify_round_trip():
    key = auth.Key(b"0123456789abcdef")
    inner = messages.Event(7, 3, 1234, 3600000, "temp", 21.5).encode()
    signed = auth.sign(7, key, inner)
    msg = messages.decode(signed)
    assert isinstance(msg, messages.Signed)
    assert msg.key_id == 7
    assert auth.verify(msg, {7: key}) == inner
    assert len(signed) == len(inner) + 13


def test_forged_tag_unknown_key_and_other_key_are_rejected():
    key = auth.Key(b"0123456789abcdef")
    other = auth.Key(b"fedcba9876543210")
    inner = messages.Event(7, 3, 1, 10, "temp", 1).encode()
    signed = messages.decode(auth.sign(7, key, inner))
    for keys in ({7: other}, {8: key}, {}):
        try:
            auth.verify(signed, keys)
        except auth.AuthError:
            pass
        else:
            assert False, "accepted a bad signature"
    forged = messages.Signed(7, inner[:-1] + b"\x02", signed.mac)
    try:
        auth.verify(forged, {7: key})
    except auth.AuthError:
        pass
    else:
        assert False, "accepted a modified message"


def test_replay_window_accepts_each_sequence_once_in_any_order():
    w = auth.ReplayWindow(64)
    assert w.accept(1, 10)
    assert not w.accept(1, 10)
    assert w.accept(1, 12)
    assert w.accept(1, 11)  # reordered, still fresh
    assert not w.accept(1, 11)
    assert w.accept(1, 100)
    assert not w.accept(1, 36)  # 64 behind: too old to tell, refused
    assert w.accept(1, 37)
    assert not w.accept(1, 37)


def test_replay_window_epochs():
    w = auth.ReplayWindow(64)
    assert w.accept(2, 50)
    assert not w.accept(1, 51)  # an older boot epoch is a replay
    assert w.accept(3, 0)  # a reboot starts a fresh window
    assert not w.accept(3, 0)
    assert not w.accept(2, 51)


def test_replay_window_check_does_not_commit():
    w = auth.ReplayWindow()
    assert w.check(1, 5)
    assert w.check(1, 5)
    assert w.check_range(1, 5, 3)
    w.commit(1, 6)
    assert not w.check_range(1, 5, 3)
    assert w.check_range(1, 7, 3)
