# What every Starling node runs, whatever its transport: NodeCore (identity, the boot
# epoch, uptime, the time base, the sensors), the epoch file and counters.json in
# flash, the platform's HAL, node.json, and main(), which /main.py calls. main() boots
# the UDP node (firmware/node.py) or the serial-chain node (firmware/chain.py) and
# imports only that one: a chain node does not hold the UDP node's code and its
# subscriber table in RAM, nor a UDP node the chain's link and outbox.
#
# Boot: make_hal() picks the HAL by sys.platform (esp32, rp2, else unix); load_config()
# registers the board's sensor kinds, checks node.json and drops firmware.config
# afterwards (MicroPython); hal.begin(cfg) starts watchdog, Wi-Fi and NTP on a board.
# The epoch: the one in flash + 1, written back (temporary file + rename) before
# anything is sent, so (epoch, seq) never repeats; a write that fails (a full flash)
# does not stop the node: it runs on and tries again with each STATUS.
import sys

from firmware import sensors

_EPOCH_FILE = "epoch"
_COUNTERS_FILE = "counters.json"


class NodeCore:
    # What the UDP node (firmware/node.py, Node) and the serial-chain node (firmware/chain.py,
    # ChainNode) share: identity, the boot epoch, uptime from the HAL's ticks, the time
    # base and where it comes from, and the sensors. A subclass says in
    # _time_changed() how the base hears of a new time base (a STATUS).
    def __init__(self, cfg, hal):
        self.cfg = cfg
        self.hal = hal
        self.node_id = cfg.node
        self.epoch = 0
        self.epoch_saved = True   # False while the epoch file could not be written
        self.next_seq = 0
        self.uptime = 0
        self._ticks = 0
        self.time_base = None
        self._tb_clock = False    # time_base came from the HAL's synced clock (NTP)
        self.done = False
        self.booted = False
        # board HALs add their own kinds (mcu_temp, adc, sht3x) beside the synthetic ones
        mk = getattr(hal, "make_sensors", None)
        if mk is not None:
            self.sensors = mk(cfg.sensors, cfg.node, cfg.float32)
        else:
            self.sensors = sensors.make(cfg.sensors, cfg.node, cfg.float32)

    def _advance(self, now):
        d = self.hal.ticks_diff(now, self._ticks)
        if d > 0:
            self.uptime += d
            self._ticks = now

    def _host_clock(self):
        # node.json host_clock (the simulator): the host's clock gives the time base at
        # boot; uptime is brought up to now first (opening sockets, UARTs and the log
        # took time since boot read the ticks, and every t counts from there)
        if self.cfg.host_clock:
            self._advance(self.hal.ticks_ms())
            wall = self.hal.wall_ms()
            if wall is not None:
                self.time_base = wall - self.uptime

    def _take_time_base(self, wall, announced=False):
        # wall - uptime becomes the time base when there is none or it moved by more
        # than 1 s (jitter of an ANNOUNCE's delivery does not count); True then.
        # announced: wall is an ANNOUNCE's wall_ms (None: it has none), which does not
        # count once the board's clock gives the time base.
        if announced and (wall is None or self._tb_clock):
            return False
        tb = wall - self.uptime
        if self.time_base is None or tb - self.time_base > 1000 or self.time_base - tb > 1000:
            self.time_base = tb
            return True
        return False

    def _clock_time(self, announce=True):
        # The HAL's wall clock is set (NTP on a board): time_base from it, replacing
        # one learned from an ANNOUNCE when they differ by more than 1 s; from now on
        # ANNOUNCEs no longer move it. announce: tell the base (_time_changed).
        wall = self.hal.wall_ms()
        if wall is None:
            return
        self._advance(self.hal.ticks_ms())   # uptime at the same moment as wall
        self._tb_clock = True
        if self._take_time_base(wall):
            self.hal.log("time base from the board clock: %d" % self.time_base)
            if announce:
                self._time_changed()


def new_epoch(hal):
    # this boot's epoch: the one in flash + 1 (0 + 1 without a readable file)
    raw = hal.read_file(_EPOCH_FILE)
    prev = 0
    if raw:
        try:
            prev = int(raw)
        except ValueError:
            hal.log("epoch file unreadable (%r): starting from 0" % (raw,))
    return prev + 1


def save_epoch(hal, epoch, first):
    # Write the epoch file; False if the flash refused (full, worn): the node runs on
    # and its caller tries again later. Logged on the first failure and on success
    # after one, not on every retry.
    try:
        hal.write_file_atomic(_EPOCH_FILE, str(epoch).encode())
    except OSError as e:
        if first:
            hal.log("epoch %d not saved (%s): running on; until it is saved, a reboot "
                    "repeats this epoch" % (epoch, e))
        return False
    if not first:
        hal.log("epoch %d saved" % epoch)
    return True


def write_counters(hal, text):
    # the final report (JSON text) in flash as counters.json; a full flash only logs
    try:
        hal.write_file_atomic(_COUNTERS_FILE, text.encode())
    except OSError as e:
        hal.log("cannot write %s: %s" % (_COUNTERS_FILE, e))


def make_hal(flash_dir=None, stdin_control=False, platform=None, **board):
    # The HAL of this platform (sys.platform, or `platform`): "esp32" -> Esp32Hal,
    # "rp2" -> PicoHal (flash at "/" unless flash_dir), anything else (linux, darwin,
    # the simulator) -> the unix HAL. `board`: keyword arguments for a board HAL's
    # constructor (tests pass a fake clock, sockets and poller). A board's bundle
    # holds only its own HAL module, so each is imported only here.
    plat = sys.platform if platform is None else platform
    if plat == "esp32":
        from firmware import hal_esp32
        return hal_esp32.Esp32Hal("/" if flash_dir is None else flash_dir, **board)
    if plat == "rp2":
        from firmware import hal_pico
        return hal_pico.PicoHal("/" if flash_dir is None else flash_dir, **board)
    from firmware import hal_unix
    return hal_unix.UnixHal("." if flash_dir is None else flash_dir, stdin_control=stdin_control)


def _forget(name):
    # drop an imported module (sys.modules and its package's attribute) so its code
    # and data can be collected once nothing else refers to it
    sys.modules.pop(name, None)
    dot = name.rfind(".")
    pkg = sys.modules.get(name[:dot]) if dot > 0 else None
    if pkg is not None:
        try:
            delattr(pkg, name[dot + 1:])
        except (AttributeError, KeyError, TypeError):   # MicroPython: KeyError if absent
            pass


def load_config(hal, name="node.json"):
    # node.json from the HAL's flash -> firmware.config.Config (raises its ConfigError,
    # a ValueError). The board's sensor kinds are registered first. On MicroPython
    # firmware.config (~14 KB of code and strings, needed only here) is dropped from
    # sys.modules afterwards: a Config holds nothing of the module, so it is freed
    # (a serial-chain node imports it again with firmware/chain.py).
    reg = getattr(hal, "register_kinds", None)
    if reg is not None:   # board sensor kinds, before node.json is checked
        reg()
    from firmware import config
    try:
        return config.load(hal, name)
    finally:
        if sys.implementation.name == "micropython":
            _forget("firmware.config")
            _forget("protocol.codes")   # only config needed it


def boot_done():
    # Once the node has booted: drop what only boot needed (MicroPython; on a board
    # without ROMFS its bytecode would stay in RAM). A later call of one of the board
    # HAL's boot methods imports it again.
    if sys.implementation.name == "micropython":
        _forget("firmware.board_setup")


def stop_on_sigterm():
    # CPython: SIGTERM stops the node like Ctrl-C (final STATUS, counters written).
    # The MicroPython unix port has no signal module: SIGTERM ends it at once, so the
    # simulator stops nodes through stdin (stdin_control) or SIGINT instead.
    try:
        import signal  # type: ignore
    except ImportError:
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        pass


def main(flash_dir=None, hal=None, stdin_control=False):
    # Boot from node.json in flash and run the node its "transport" names until stopped
    # (Ctrl-C / SIGINT, SIGTERM on CPython, "stop" or end of stdin when stdin_control,
    # or max_events). On the way out: final STATUS, counters written to flash as
    # counters.json and printed as one JSON line starting with {"report": ...}.
    # Returns 0, or 1 when node.json is unusable.
    stop_on_sigterm()
    if hal is None:
        hal = make_hal(flash_dir, stdin_control)
    try:
        cfg = load_config(hal)
    except ValueError as e:   # config.ConfigError
        hal.log(str(e))
        return 1
    begin = getattr(hal, "begin", None)
    if begin is not None:   # board: watchdog, Wi-Fi (waits for the first join), NTP
        begin(cfg)
    if cfg.transport == "serial":   # a serial-chain node (firmware/chain.py)
        if cfg.sleep_ms:
            hal.log("deep_sleep: not for serial-chain nodes; running on")
        from firmware import chain
        return chain.main(hal=hal, cfg=cfg)
    from firmware import node
    return node.main(hal=hal, cfg=cfg)
