# Optional message authentication: truncated HMAC-SHA256 with per-node keys, and
# the replay window that rejects a captured datagram sent again.
#
# Theory of operation
# -------------------
# A node that has a key wraps each encoded message M as
#     SIGNED = [head(SIGNED), key_id, M, HMAC-SHA256(key, M)[:8]]
# where key_id is the node id. The receiver looks up the key, checks the tag in
# constant time, decodes M, and requires M's node id to equal key_id. Freshness
# comes from (epoch, seq): the epoch grows on every boot, and within an epoch a
# 64-entry bitmap behind the highest sequence number seen accepts reordered
# datagrams once each. MicroPython has hashlib.sha256 but no hmac module, so HMAC
# (RFC 2104) is built here; the padded keys are computed once per key.
import hashlib

from protocol import cbor
from protocol import codes
from protocol.messages import ProtocolError, Signed, head

_BLOCK = 64


class AuthError(ProtocolError):
    """A signed message failed verification (unknown key, bad tag, wrong node)."""


def _xor_pad(key, pad):
    out = bytearray(_BLOCK)
    for i in range(len(key)):
        out[i] = key[i] ^ pad
    for i in range(len(key), _BLOCK):
        out[i] = pad
    return bytes(out)


def check_key(key):
    if not isinstance(key, (bytes, bytearray)) or not codes.KEY_MIN_LEN <= len(key) <= codes.KEY_MAX_LEN:
        raise ValueError("an authentication key is %d..%d bytes" % (codes.KEY_MIN_LEN, codes.KEY_MAX_LEN))
    return bytes(key)


class Key:
    """A node key with its HMAC pads precomputed."""

    def __init__(self, key, checked=True):
        key = check_key(key) if checked else bytes(key)
        if len(key) > _BLOCK:  # RFC 2104: longer keys are hashed first
            key = hashlib.sha256(key).digest()
        self._inner = _xor_pad(key, 0x36)
        self._outer = _xor_pad(key, 0x5C)

    def hmac(self, message):
        h = hashlib.sha256(self._inner)
        h.update(message)
        inner = h.digest()
        h = hashlib.sha256(self._outer)
        h.update(inner)
        return h.digest()

    def tag(self, message):
        return self.hmac(message)[: codes.MAC_LEN]


def hmac_sha256(key, message):
    """Plain HMAC-SHA256 (RFC 2104) for a key of any length."""
    return Key(key, checked=False).hmac(message)


def equal_constant_time(a, b):
    if len(a) != len(b):
        return False
    diff = 0
    for i in range(len(a)):
        diff |= a[i] ^ b[i]
    return diff == 0


def sign(key_id, key, message):
    """Wrap an encoded message in a SIGNED envelope (key: a Key object)."""
    return cbor.dumps([head(codes.KIND_SIGNED), key_id, message, key.tag(message)])


def verify(signed, keys):
    """Check a decoded SIGNED message against `keys` (node id -> Key) and return the
    inner message bytes. Raises AuthError."""
    if not isinstance(signed, Signed):
        raise AuthError("message is not signed")
    key = keys.get(signed.key_id)
    if key is None:
        raise AuthError("no key for node %d" % signed.key_id)
    if not equal_constant_time(key.tag(signed.inner), signed.mac):
        raise AuthError("bad tag from node %d" % signed.key_id)
    return signed.inner


class ReplayWindow:
    """Freshness of (epoch, seq) for one node. `check` says whether a sequence
    number would be accepted; `commit` records it (call after the whole message
    is verified, so a rejected message leaves no trace)."""

    def __init__(self, size=codes.REPLAY_WINDOW):
        self.size = size
        self.epoch = -1
        self.highest = -1
        self.bits = 0  # bit i: highest - i has been seen

    def check(self, epoch, seq):
        if epoch != self.epoch:
            return epoch > self.epoch
        if seq > self.highest:
            return True
        behind = self.highest - seq
        if behind >= self.size:
            return False
        return not (self.bits >> behind) & 1

    def check_range(self, epoch, first, count):
        for seq in range(first, first + count):
            if not self.check(epoch, seq):
                return False
        return True

    def commit(self, epoch, seq):
        if epoch != self.epoch:
            if epoch < self.epoch:
                return
            self.epoch = epoch
            self.highest = seq
            self.bits = 1
            return
        if seq > self.highest:
            shift = seq - self.highest
            if shift >= self.size:
                self.bits = 1
            else:
                self.bits = ((self.bits << shift) | 1) & ((1 << self.size) - 1)
            self.highest = seq
        else:
            behind = self.highest - seq
            if behind < self.size:
                self.bits |= 1 << behind

    def accept(self, epoch, seq):
        if not self.check(epoch, seq):
            return False
        self.commit(epoch, seq)
        return True
