# MicroPython side of bench/node.py: the node runtime's cost, measured inside the
# interpreter. Prints one JSON object. Runs on the unix port (64-bit) and on the
# webassembly port (wasm32: 32-bit objects, as on ESP32/RP2), see bench/node.py.
#
#   micropython -X heapsize=256K bench/mp_node.py ram BUNDLE
#       RAM held after boot: gc.mem_alloc() after gc.collect(), per imported module
#       (leaves first, so each delta is that module's own code and data), then
#       core.load_config() as main() does it (firmware.config imported, node.json
#       checked, the module dropped again: its row is what stays), and the booted Node
#       (config, sensors, subscriber table, writer buffers).
#   micropython -X heapsize=256K bench/mp_node.py ram_esp32 BUNDLE TESTS
#       the same for an ESP32 bundle (hal_board + hal_esp32 instead of hal_unix) on
#       the unix port, with the fake machine / network / ntptime modules of
#       TESTS/board_fakes standing in for the board's built-in ones (counted in the
#       baseline, as firmware modules are on a board): main()'s sequence with
#       begin() (Wi-Fi join, NTP) before the Node boots.
#   micropython -X heapsize=256K bench/mp_node.py ram_picow|ram_picow_rom BUNDLE TESTS
#       the same for a Pico W bundle (hal_board + hal_pico), the rp2 fakes.
#   micropython -X heapsize=256K bench/mp_node.py ram_rom BUNDLE
#   micropython -X heapsize=256K bench/mp_node.py ram_esp32_rom BUNDLE TESTS
#       the same two measurements with the modules imported from BUNDLE/romfs.img
#       (`starling build --romfs`) mounted at /rom with vfs.VfsRom, as firmware with
#       a ROMFS partition mounts it at boot: .mpy bytecode and str/bytes constants
#       are used in place, only the objects the imports create are on the heap.
#       The image buffer: on a board it is the memory-mapped flash partition, not
#       RAM. Here it is a bytes object read before the baseline (this unix build
#       has no ffi or mmap to place it outside the GC heap), so no row counts it;
#       its size is reported as "image_bytes".
#   micropython -X heapsize=256K bench/mp_node.py ram_chain|ram_chain_rom|ram_chain_durable BUNDLE
#       the same for a serial-chain node (firmware/chain.py, middle of a chain: up and
#       down UART) booted from a unix bundle's modules, from .mpy files or ROMFS, with
#       the RAM-only outbox (the config default) or durable (the flash log's buffers).
#   micropython -X heapsize=256K bench/mp_node.py ram_chain_esp32|ram_chain_esp32_rom BUNDLE TESTS
#   micropython -X heapsize=256K bench/mp_node.py ram_chain_pico|ram_chain_pico_rom BUNDLE TESTS
#       a serial-chain node on the ESP32 or Pico HAL (board modules faked as for
#       ram_esp32), BUNDLE a bundle built from a chain node's node.json (UART pins, no
#       Wi-Fi).
#   micropython -X heapsize=256K bench/mp_node.py heap BUNDLE
#       heap bytes per publish with a HAL whose udp_send does nothing (both ports:
#       the webassembly port has no sockets), int and float EVENT, int BATCH of 20.
#   micropython -X heapsize=256K bench/mp_node.py publish BUNDLE PORT ROUNDS
#       µs and heap bytes per publish through the real firmware Node with the unix
#       HAL, sending each datagram to 127.0.0.1:PORT (bench/node.py counts them).
#
# Method: time with ticks_us, best of 3 runs of ROUNDS/3 publishes, GC enabled (its
# amortised cost included); heap with gc.disable() around 200 publishes after a warm-up, delta of
# gc.mem_alloc() (docs: /work/shared/MICROPYTHON.md, "Memory").
import gc
import json
import sys
import time

# arguments: sys.argv on the unix port; the webassembly port has no sys.argv, so its
# runner passes them as the global MP_ARGS
ARGS = globals().get("MP_ARGS") or sys.argv[1:]
MODE = ARGS[0]
BUNDLE = ARGS[1]
sys.path.insert(0, BUNDLE)

# the modules a node imports at boot, leaves first (firmware/core.py's and
# firmware/node.py's imports; not protocol.cbor: "cbor_loaded" in the output tells
# whether anything imported it); firmware.config (and protocol.codes, which only it
# uses) come after them, through core.load_config(), which drops both again
MODULES = ("protocol", "protocol.topics", "protocol.nodewire", "protocol.cbor_lite",
           "firmware", "firmware.sensors", "firmware.subscribers",
           "firmware.hal_unix", "firmware.core", "firmware.node")


class NullUart:
    # a serial line with nobody on it (the chain node's UART interface)
    def read_into(self, buf):
        return 0

    def any(self):
        return 0

    def write(self, data):
        return len(data)


class MemHal:
    # Just enough HAL to boot without sockets or flash writes (both ports)
    def __init__(self, flash):
        self.flash = flash
        self.files = {}
        self.now = 0

    def ticks_ms(self):
        return self.now

    def ticks_diff(self, a, b):
        return a - b

    def wall_ms(self):
        return None

    def udp_open(self, port=0, reuse=False, broadcast=False, bind="0.0.0.0"):
        return 1

    def resolve(self, host, port):
        return (host, port)

    def addr_with_port(self, addr, port):
        return (addr[0], port)

    def addr_str(self, addr):
        return "%s:%d" % addr

    def udp_send(self, sock, addr, data):
        return True

    def udp_recv(self, sock):
        return None

    def wait_readable(self, timeout_ms):
        return False

    def read_file(self, name):
        if name in self.files:
            return self.files[name]
        try:
            with open(self.flash + "/" + name, "rb") as f:
                return f.read()
        except OSError:
            return None

    def write_file_atomic(self, name, data):
        self.files[name] = data

    def append_file(self, name, data):
        self.files[name] = (self.files.get(name) or b"") + data

    def remove_file(self, name):
        self.files.pop(name, None)

    def uart_open(self, spec):
        return NullUart()

    def free_mem(self):
        return gc.mem_free()

    def mem_alloc(self):
        return gc.mem_alloc()

    def log(self, msg):
        pass


def used():
    gc.collect()
    gc.collect()
    return gc.mem_alloc()


def mount_rom():
    # BUNDLE/romfs.img at /rom, first on sys.path (a board mounts its ROMFS partition
    # there at boot); the bytes object lives from here on, before any baseline
    import vfs
    f = open(BUNDLE + "/romfs.img", "rb")
    image = f.read()
    f.close()
    vfs.mount(vfs.VfsRom(image), "/rom")
    sys.path.insert(0, "/rom")
    return image


def install_fakes(board, tests):
    # the fake machine / network / ... modules of TESTS/board_fakes, before the
    # baseline (a board's built-in modules are not the node's RAM); returns the clock
    sys.path.append(tests)
    import board_fakes
    return board_fakes.install(board)


def board_hal(core, board, clk):
    # the board's HAL on the fakes, its flash the bundle directory (node.json there)
    from board_fakes import net
    return core.make_hal(BUNDLE, platform=board, quiet=True, clock=clk, sockets=net,
                         poller=net.Poll(), machine_name=MACHINE_NAMES[board])


def run_steps(node, hal, clk):
    # 50 node steps 100 ms apart: buffers reach their working size (clk: a board's
    # fake clock, fed as the board's loop feeds it; None: MemHal's own time)
    for _ in range(50):
        if clk is None:
            hal.now += 100
        else:
            clk.advance(100)
            hal.feed()
        node.step(hal.ticks_ms())


# The RAM measurements are generators: each `yield` asks for used(), sent back by the
# caller. The unix port calls used() in between (drive()). The webassembly port frees
# nothing while a Python call from JavaScript is running (its GC cannot see which
# words on the wasm stack are live, so a collection inside the call keeps everything
# allocated during it), so its runner calls used() in a call of its own at each step.
def import_rows(modules, out, prev):
    # import the modules in order (leaves first), each one's RAM into out["modules"];
    # returns the RAM in use after the last (prev: before the first)
    for name in modules:
        __import__(name)
        now = yield
        out["modules"][name] = now - prev
        prev = now
    return prev


def ram(board="unix", tests=None, rom=False):
    image = mount_rom() if rom else None
    clk = None
    if board == "unix":
        hal = MemHal(BUNDLE)     # created before the baseline: the HAL object is the board's
        modules = MODULES
    else:
        clk = install_fakes(board, tests)
        modules = tuple(BOARD_HAL_MODULE[board] if m == "firmware.hal_esp32" else m
                        for m in BOARD_MODULES)
    base = yield
    out = {"modules": {}}
    if image is not None:
        out["image_bytes"] = len(image)
    prev = yield from import_rows(modules, out, base)
    from firmware import core
    from firmware import node as node_mod
    if board != "unix":
        hal = board_hal(core, board, clk)
    cfg = core.load_config(hal)
    if board != "unix":
        hal.begin(cfg)        # Wi-Fi join, NTP
    now = yield
    out["modules"]["firmware.config"] = now - prev
    out["config_dropped"] = "firmware.config" not in sys.modules
    prev = now
    node = node_mod.Node(cfg, hal)
    node.boot(0 if board == "unix" else None)
    core.boot_done()          # as main() does: boot-only modules dropped
    now = yield
    out["node_boot"] = now - prev
    run_steps(node, hal, clk)
    after = yield
    out["node_running"] = after - now
    out["imports"] = prev - base
    out["total"] = after - base
    out["baseline"] = base
    out["word_bytes"] = 8 if sys.maxsize > 2 ** 32 else 4
    out["platform"] = sys.platform
    out["version"] = "%d.%d.%d" % sys.implementation.version[:3]
    out["sensors"] = len(node.sensors)
    out["published"] = node.published
    out["from"] = sys.modules["firmware.node"].__file__
    out["cbor_loaded"] = "protocol.cbor" in sys.modules
    if board != "unix":
        out["board_setup_dropped"] = "firmware.board_setup" not in sys.modules
        out["link_up"] = hal.link_up()
        out["time_base"] = node.time_base is not None
    return out


# A middle node of a serial chain (firmware/chain.py: up and down UART, two sensors,
# the config defaults otherwise), booted as firmware.core.main() boots it: node.json
# through load_config(), then ChainNode(cfg, hal). Its modules, leaves first; what
# they import besides (protocol.cbor / protocol.messages, if anything still does)
# is counted in the row of the module that imported it, and reported as flags.
CHAIN_MODULES = ("protocol", "protocol.codes", "protocol.topics", "protocol.nodewire",
                 "protocol.cbor_lite", "protocol.framing", "protocol.link", "firmware",
                 "firmware.sensors", "firmware.uart_unix", "firmware.hal_unix",
                 "firmware.core", "firmware.outbox", "firmware.chain")
CHAIN_CONFIG = {"node": 7, "transport": "serial",
                "uart": {"up": {"path": "/dev/null", "baud": 115200},
                         "down": {"path": "/dev/null", "baud": 115200}},
                "sensors": [{"topic": "temp", "kind": "sine", "period_ms": 1000},
                            {"topic": "count", "kind": "counter", "period_ms": 1000}],
                "status_every_ms": 5000}


def ram_chain(rom=False, durable=False, board="unix", tests=None):
    # board "esp32": the ESP32 HAL on the board fakes of tests/board_fakes/, node.json
    # (a chain node's, with UART pins) read from the bundle as on a board
    image = mount_rom() if rom else None
    clk = None
    if board == "unix":
        hal = MemHal(BUNDLE)
        cfg_d = dict(CHAIN_CONFIG)
        cfg_d["durable"] = durable
        hal.files["node.json"] = json.dumps(cfg_d).encode()
        modules = CHAIN_MODULES
    else:
        clk = install_fakes(board, tests)
        modules = tuple(BOARD_HAL_MODULE[board] if m == "firmware.hal_esp32" else m
                        for m in CHAIN_BOARD_MODULES)
    base = yield
    out = {"modules": {}}
    if image is not None:
        out["image_bytes"] = len(image)
    prev = yield from import_rows(modules, out, base)
    from firmware import core
    if board != "unix":
        hal = board_hal(core, board, clk)
    cfg = core.load_config(hal)
    if board != "unix":
        hal.begin(cfg)        # watchdog (no Wi-Fi on a chain node here)
    now = yield
    out["modules"]["firmware.config"] = now - prev
    prev = now
    from firmware.chain import ChainNode
    node = ChainNode(cfg, hal)
    node.boot(0)
    core.boot_done()
    now = yield
    out["node_boot"] = now - prev
    run_steps(node, hal, clk)
    after = yield
    out["node_running"] = after - now
    out["total"] = after - base
    out["baseline"] = base
    out["durable"] = durable
    out["word_bytes"] = 8 if sys.maxsize > 2 ** 32 else 4
    out["version"] = "%d.%d.%d" % sys.implementation.version[:3]
    out["published"] = node.published
    out["from"] = sys.modules["firmware.chain"].__file__
    out["cbor_loaded"] = "protocol.cbor" in sys.modules
    out["messages_loaded"] = "protocol.messages" in sys.modules
    out["udp_node_loaded"] = "firmware.node" in sys.modules or "firmware.subscribers" in sys.modules
    if board != "unix":
        out["board_setup_dropped"] = "firmware.board_setup" not in sys.modules
    return out


# the chain node's modules on a board HAL (firmware.board_uart comes with uart_open())
CHAIN_BOARD_MODULES = ("protocol", "protocol.codes", "protocol.topics", "protocol.nodewire",
                       "protocol.cbor_lite", "protocol.framing", "protocol.link", "firmware",
                       "firmware.sensors", "firmware.hal_board", "firmware.hal_esp32",
                       "firmware.core", "firmware.outbox", "firmware.chain")

MACHINE_NAMES = {"esp32": "Generic ESP32 module with ESP32",
                 "rp2": "Raspberry Pi Pico W with RP2040"}   # a chain node does not join Wi-Fi
BOARD_HAL_MODULE = {"esp32": "firmware.hal_esp32", "rp2": "firmware.hal_pico"}

BOARD_MODULES = ("protocol", "protocol.topics", "protocol.nodewire", "protocol.cbor_lite",
                 "firmware", "firmware.sensors", "firmware.subscribers",
                 "firmware.hal_board", "firmware.hal_esp32", "firmware.core", "firmware.node")


def drive(gen):
    # run a RAM measurement to its end, answering each yield with used()
    try:
        gen.send(None)
        while True:
            gen.send(used())
    except StopIteration as e:
        return e.value


def heap():
    from firmware import config
    from firmware.node import Node
    res = {}
    for name, kind, batch_ms in (("event_int", "counter", 0), ("event_float", "sine", 0),
                                 ("batch20_int", "counter", 60000)):
        cfg = config.from_dict({"node": 7, "bases": [["127.0.0.1", 5684]],
                                "sensors": [{"topic": "temp", "kind": kind, "period_ms": 10}],
                                "status_every_ms": 86400000, "batch_ms": batch_ms})
        hal = MemHal(BUNDLE)
        node = Node(cfg, hal)
        node.boot(0)
        for _ in range(50):
            hal.now += 10
            node.step(hal.now)
        gc.collect()
        gc.disable()
        p0 = node.published
        m0 = gc.mem_alloc()
        for _ in range(200):
            hal.now += 10
            node.step(hal.now)
        m1 = gc.mem_alloc()
        gc.enable()
        res[name] = (m1 - m0) / (node.published - p0)
    res["word_bytes"] = 8 if sys.maxsize > 2 ** 32 else 4
    return res


def publish(port, rounds):
    from firmware import config
    from firmware.hal_unix import UnixHal
    from firmware.node import Node
    import os
    flash = "/tmp/starling-mp-node-%d" % port
    try:
        os.mkdir(flash)
    except OSError:
        pass
    res = {}
    cases = (("event_int", "counter", 0), ("event_float", "sine", 0), ("batch20_int", "counter", 60000))
    for name, kind, batch_ms in cases:
        cfg = config.from_dict({"node": 7, "bases": [["127.0.0.1", port]],
                                "sensors": [{"topic": "temp", "kind": kind, "period_ms": 10}],
                                "status_every_ms": 86400000, "batch_ms": batch_ms})
        hal = UnixHal(flash, quiet=True)
        node = Node(cfg, hal)
        t = hal.ticks_ms()
        node.boot(t)
        t0 = node.sensors[0].next_due

        def steps(n, t):
            for _ in range(n):
                t = time.ticks_add(t, 10)
                node.step(t)
            return t

        t = steps(40 + t0 // 10, t)          # warm-up (and past the first due time)
        best = None
        n = 0
        for _ in range(3):          # best of 3: the machine is shared and noisy
            gc.collect()
            p0 = node.published
            a = time.ticks_us()
            t = steps(rounds // 3, t)
            dt = time.ticks_diff(time.ticks_us(), a)
            k = node.published - p0
            n += k
            if best is None or dt / k < best:
                best = dt / k
        gc.collect()
        gc.disable()
        p1 = node.published
        m0 = gc.mem_alloc()
        t = steps(200, t)
        m1 = gc.mem_alloc()
        gc.enable()
        nh = node.published - p1
        res[name] = {"us": best, "heap": (m1 - m0) / nh, "published": n + nh,
                     "send_errors": node.send_errors, "dropped": node.dropped,
                     "datagrams": n + nh if not batch_ms else (n + nh) // 20}
        node.finish()
        hal.close()
    # the same steps with udp_send doing nothing: what the node's own code costs
    cfg = config.from_dict({"node": 7, "bases": [["127.0.0.1", port]],
                            "sensors": [{"topic": "temp", "kind": "counter", "period_ms": 10}],
                            "status_every_ms": 86400000})
    hal = MemHal(flash)
    node = Node(cfg, hal)
    node.boot(0)
    for _ in range(50):
        hal.now += 10
        node.step(hal.now)
    best = None
    for _ in range(3):
        p0 = node.published
        a = time.ticks_us()
        for _ in range(rounds // 3):
            hal.now += 10
            node.step(hal.now)
        us = time.ticks_diff(time.ticks_us(), a) / (node.published - p0)
        best = us if best is None or us < best else best
    res["event_int_no_socket"] = {"us": best}
    # a bare sendto of the same EVENT datagram, to the same receiver, for scale
    import socket
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    addr = socket.getaddrinfo("127.0.0.1", port)[0][-1]
    data = bytes(node.writer.view())
    best = None
    for _ in range(3):
        a = time.ticks_us()
        for _ in range(rounds // 3):
            s.sendto(data, addr)
        us = time.ticks_diff(time.ticks_us(), a) / (rounds // 3)
        best = us if best is None or us < best else best
    res["sendto_only"] = {"us": best, "count": 3 * (rounds // 3), "bytes": len(data)}
    s.close()
    for name in ("epoch", "epoch.tmp"):
        try:
            os.remove(flash + "/" + name)
        except OSError:
            pass
    try:
        os.rmdir(flash)
    except OSError:
        pass
    res["word_bytes"] = 8 if sys.maxsize > 2 ** 32 else 4
    return res


RAM_MODES = {"ram": ("unix", False), "ram_rom": ("unix", True),
             "ram_picow": ("rp2", False), "ram_picow_rom": ("rp2", True),
             "ram_esp32": ("esp32", False), "ram_esp32_rom": ("esp32", True)}

CHAIN_MODES = {"ram_chain": (False, False, "unix"), "ram_chain_rom": (True, False, "unix"),
               "ram_chain_durable": (False, True, "unix"),
               "ram_chain_esp32": (False, False, "esp32"), "ram_chain_esp32_rom": (True, False, "esp32"),
               "ram_chain_pico": (False, False, "rp2"), "ram_chain_pico_rom": (True, False, "rp2")}

if MODE in RAM_MODES or MODE in CHAIN_MODES:
    if MODE in CHAIN_MODES:
        rom, durable, board = CHAIN_MODES[MODE]
        gen = ram_chain(rom, durable, board, ARGS[2] if board != "unix" else None)
    else:
        board, rom = RAM_MODES[MODE]
        gen = ram(board, ARGS[2] if board != "unix" else None, rom)
    if globals().get("MP_STEPPED"):
        # webassembly: the runner calls STEP() in separate calls until STEP_DONE
        STEP_STATE = [True]
        STEP_DONE = False

        def STEP():
            global STEP_DONE
            try:
                gen.send(None if STEP_STATE[0] else used())
            except StopIteration as e:
                print(json.dumps(e.value))
                STEP_DONE = True
            STEP_STATE[0] = False
    else:
        print(json.dumps(drive(gen)))
elif MODE == "heap":
    print(json.dumps(heap()))
elif MODE == "publish":
    print(json.dumps(publish(int(ARGS[2]), int(ARGS[3]))))
else:
    raise SystemExit("usage: mp_node.py MODE BUNDLE [PORT ROUNDS | TESTS], MODE one of "
                     + "|".join(sorted(RAM_MODES) + sorted(CHAIN_MODES) + ["heap", "publish"]))
