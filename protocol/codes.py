# Starling wire registry: every number that appears on the wire, in one place.
#
# Theory of operation
# -------------------
# Every Starling message is one CBOR array whose first element is the *head*:
#     head = (version - 1) * 32 + kind        (kind in 0..31)
# so every version-1 message starts with a one-byte head (0x01..0x17, or 0x18 xx
# for kinds 24..31). A receiver rejects a head whose version it does not speak
# (ProtocolError), skips kinds it does not know (counted), and ignores extra
# trailing fields (counted), so newer nodes and older bases interoperate.
# docs/PROTOCOL.md is the normative text; tests check its vectors against this code.
try:
    from micropython import const
except ImportError:  # CPython
    const = lambda x: x  # noqa: E731

VERSION = const(1)
KIND_BITS = const(5)
KIND_MASK = const(31)

# Message kinds (protocol/messages.py)
KIND_EVENT = const(1)      # node -> base: one reading
KIND_BATCH = const(2)      # node -> base: consecutive readings
KIND_STATUS = const(3)     # node -> base: health, counters, last sequence number
KIND_ANNOUNCE = const(4)   # base -> nodes: who I am, where to send, what I accept
KIND_ACK = const(5)        # serial link: cumulative + selective acknowledgement
KIND_DATA = const(6)       # serial link: one message carried with a link sequence number
KIND_HELLO = const(7)      # serial link: session start / resynchronisation
KIND_ENUMERATE = const(8)  # base -> chain: who is there (answered by STATUS with a hop index)
KIND_DEADLETTER = const(9) # node -> base: events that exceeded their retry budget
KIND_SIGNED = const(15)    # any message wrapped with a truncated HMAC-SHA256 tag

# STATUS counters: an int-keyed map, keys below; receivers ignore keys they do not know.
CTR_PUBLISHED = const(1)   # events accepted by publish()
CTR_DROPPED = const(2)     # events shed (outbox full, send error)
CTR_RETRIES = const(3)     # link retransmissions
CTR_QUEUE = const(4)       # events waiting in the outbox now
CTR_FREE_MEM = const(5)    # bytes of free heap
CTR_RATE_SHED = const(6)   # events not sent to some subscriber because of its rate cap
CTR_RX_BAD = const(7)      # malformed datagrams / frames received by the node
CTR_SEND_ERRORS = const(8) # datagrams the network stack refused
CTR_DEADLETTER = const(9)  # events moved to the dead-letter log
# serial chain: statistics of the node's upstream link (toward the base)
CTR_LINK_FRAMES = const(10)    # DATA frames sent upstream
CTR_LINK_RETRANS = const(11)   # DATA frames retransmitted upstream
CTR_LINK_CRC = const(12)       # frames received with a bad CRC or undecodable, both sides
CTR_LINK_RTT = const(13)       # smoothed round-trip time upstream, ms
CTR_LINK_WINDOW = const(14)    # DATA frames in flight upstream now
CTR_LINK_DOWNS = const(15)     # times the upstream link was declared down
CTR_FORWARDED = const(16)      # messages of downstream nodes forwarded upstream
# UDP node: subscriptions started afresh because their base id announced another
# instance (a base restarted; again and again: two stations share one base id)
CTR_RESUBSCRIBED = const(17)

COUNTER_NAMES = {
    CTR_PUBLISHED: "published",
    CTR_DROPPED: "dropped",
    CTR_RETRIES: "retries",
    CTR_QUEUE: "queue_depth",
    CTR_FREE_MEM: "free_mem",
    CTR_RATE_SHED: "rate_shed",
    CTR_RX_BAD: "rx_bad",
    CTR_SEND_ERRORS: "send_errors",
    CTR_DEADLETTER: "dead_letter",
    CTR_LINK_FRAMES: "link_frames",
    CTR_LINK_RETRANS: "link_retransmissions",
    CTR_LINK_CRC: "link_crc_errors",
    CTR_LINK_RTT: "link_rtt_ms",
    CTR_LINK_WINDOW: "link_window_in_use",
    CTR_LINK_DOWNS: "link_downs",
    CTR_FORWARDED: "forwarded",
    CTR_RESUBSCRIBED: "resubscribed",
}

# STATUS capability bits
CAP_UDP = const(1)
CAP_SERIAL = const(2)
CAP_DURABLE = const(4)
CAP_AUTH = const(8)
CAP_TIME = const(16)       # the node knows wall-clock time
CAP_BATCH = const(32)

# Authentication (protocol/auth.py)
MAC_LEN = const(8)         # truncated HMAC-SHA256, 64 bits
KEY_MIN_LEN = const(16)
KEY_MAX_LEN = const(64)
REPLAY_WINDOW = const(64)  # sequence numbers remembered behind the highest one seen

# Transport defaults
UDP_PORT = const(5684)         # events to a base station
DISCOVERY_PORT = const(5685)   # ANNOUNCEs to nodes
MAX_DATAGRAM = const(1400)     # fits one Ethernet/Wi-Fi frame without IP fragmentation
MAX_FRAME = const(1024)        # serial frame payload limit (bytes before stuffing)
