# The deep-sleep resume record of the board HALs (firmware/hal_board.py resume() /
# deep_sleep()), in its own module: only a node that sleeps or wakes imports it, so
# the others do not keep its code in RAM. See hal_board.py "Deep sleep".
import struct
import binascii

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore
        return x

# Resume record (little-endian): header, one (n, next_due) per sensor, CRC-32 of all
# before it. Layout: magic u32, flags u16, sensor count u16, epoch, next_seq, uptime
# at wake, time_base: i64 each.
_REC_MAGIC = const(0x5354524C)      # "STRL"; below 2^31 so it is a small int everywhere
_REC_HDR = "<IHHqqqq"
_REC_HDR_LEN = const(40)
_REC_SENSOR = "<qq"
_REC_SENSOR_LEN = const(16)
_REC_HAS_TIME_BASE = const(1)
_REC_WALL_OK = const(2)             # the RTC held NTP time when the board went to sleep

class Resume:
    # What deep_sleep() saved and resume() hands back: the node continues with the
    # same epoch, next_seq and uptime (uptime already includes the sleep).
    def __init__(self, epoch, next_seq, uptime, time_base=None, sensor_state=(), wall_ok=False):
        self.epoch = epoch
        self.next_seq = next_seq
        self.uptime = uptime
        self.time_base = time_base
        self.sensors = list(sensor_state)   # [(n, next_due), ...] in node.sensors order
        self.wall_ok = wall_ok

    @staticmethod
    def from_node(node, sleep_ms, wall_ok=False):
        # the state of a firmware.node.Node (or anything with the same attributes)
        st = []
        for s in node.sensors:
            st.append((getattr(s, "n", 0), getattr(s, "next_due", 0)))
        return Resume(node.epoch, node.next_seq, node.uptime + sleep_ms, node.time_base, st,
                      wall_ok)

    def apply(self, node):
        # put the saved state into a freshly built node; False (nothing changed) when
        # its sensors do not match the record (node.json changed while asleep)
        if len(self.sensors) != len(node.sensors):
            return False
        node.epoch = self.epoch
        node.next_seq = self.next_seq
        node.uptime = self.uptime
        node.time_base = self.time_base
        for i in range(len(self.sensors)):
            s = node.sensors[i]
            s.n = self.sensors[i][0]
            s.next_due = self.sensors[i][1]
        return True

    def pack(self):
        ns = len(self.sensors)
        buf = bytearray(_REC_HDR_LEN + ns * _REC_SENSOR_LEN + 4)
        flags = (_REC_HAS_TIME_BASE if self.time_base is not None else 0) | (
            _REC_WALL_OK if self.wall_ok else 0)
        struct.pack_into(_REC_HDR, buf, 0, _REC_MAGIC, flags, ns, self.epoch, self.next_seq,
                         self.uptime, self.time_base or 0)
        off = _REC_HDR_LEN
        for n, due in self.sensors:
            struct.pack_into(_REC_SENSOR, buf, off, n, due)
            off += _REC_SENSOR_LEN
        struct.pack_into("<I", buf, off, binascii.crc32(memoryview(buf)[:off]) & 0xFFFFFFFF)
        return bytes(buf)

    @staticmethod
    def unpack(raw):
        # a record from pack(), or None for anything else (empty, torn, foreign)
        if not raw or len(raw) < _REC_HDR_LEN + 4:
            return None
        end = len(raw) - 4
        if binascii.crc32(memoryview(raw)[:end]) & 0xFFFFFFFF != struct.unpack_from("<I", raw, end)[0]:
            return None
        magic, flags, ns, epoch, seq, up, tb = struct.unpack_from(_REC_HDR, raw, 0)
        if magic != _REC_MAGIC or end != _REC_HDR_LEN + ns * _REC_SENSOR_LEN:
            return None
        st = []
        for i in range(ns):
            st.append(struct.unpack_from(_REC_SENSOR, raw, _REC_HDR_LEN + i * _REC_SENSOR_LEN))
        return Resume(epoch, seq, up, tb if flags & _REC_HAS_TIME_BASE else None, st,
                      bool(flags & _REC_WALL_OK))
