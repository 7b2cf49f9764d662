# Fake socket module and poll object for the board HAL (passed to it as `sockets=`
# and `poller=`; the real socket and select modules are never replaced).
# getaddrinfo() answers IP literals always and names from `dns` only while the fake
# station is connected (else OSError(-202), lwIP's "host not found" on the ESP32).
# Sockets record sendto() in `sent`, raise OSError(send_errno) when it is set, and
# recvfrom() pops `inbox` or raises OSError(EAGAIN). poll(ms) returns the readable
# registered sockets, else advances the fake clock by ms and returns [].
from board_fakes import network

AF_INET = 2
SOCK_DGRAM = 2
SOL_SOCKET = 4095
SO_REUSEADDR = 4
SO_BROADCAST = 32
EAGAIN = 11

dns = {}
sent = []
sockets = []
send_errno = 0
_clock = None


def configure(clk):
    global _clock, send_errno
    _clock = clk
    dns.clear()
    del sent[:]
    del sockets[:]
    send_errno = 0


def _literal(host):
    parts = host.split(".")
    if len(parts) != 4:
        return False
    for p in parts:
        if not p.isdigit():
            return False
    return True


def getaddrinfo(host, port, af=0, type=0, proto=0, flags=0):
    if _literal(host):
        ip = host
    elif host in dns and network.connected():
        ip = dns[host]
    else:
        raise OSError(-202)
    return [(AF_INET, SOCK_DGRAM, 0, "", (ip, port))]


class socket:
    def __init__(self, af=AF_INET, kind=SOCK_DGRAM, proto=0):
        self.opts = {}
        self.bound = None
        self.blocking = True
        self.closed = False
        self.inbox = []
        sockets.append(self)

    def setsockopt(self, level, opt, value):
        self.opts[opt] = value

    def bind(self, addr):
        self.bound = addr

    def setblocking(self, flag):
        self.blocking = flag

    def sendto(self, data, addr):
        if send_errno:
            raise OSError(send_errno)
        sent.append((addr, bytes(data)))
        return len(data)

    def recvfrom(self, n):
        if not self.inbox:
            raise OSError(EAGAIN)
        return self.inbox.pop(0)

    def close(self):
        self.closed = True


class Poll:
    def __init__(self):
        self.objs = []
        self.calls = []

    def register(self, obj, mask=1):
        if obj not in self.objs:
            self.objs.append(obj)

    def unregister(self, obj):
        self.objs.remove(obj)

    def poll(self, ms=-1):
        self.calls.append(ms)
        ready = []
        for o in self.objs:
            if getattr(o, "inbox", None) or (hasattr(o, "any") and o.any()):
                ready.append((o, 1))
        if not ready and ms > 0:
            _clock.advance(ms)
        return ready
