"""`starling flash`: copy a bundle onto a board with mpremote, verify it, reset, watch.

    starling flash --port /dev/ttyUSB0 DIR [--dry-run] [--tail 5] [--reset auto|hard|soft|none]
    starling flash --list

DIR is a bundle from `starling build`. The steps, each one `python -m mpremote` run
from this interpreter (so the venv's mpremote 1.29), with a time limit:

1. probe    `exec` a line that prints sys.platform, the MicroPython version and the
            .mpy version the firmware loads. No answer: "board not responding". A
            board that cannot load the bundle (wrong platform, mpy not v6, firmware
            older than 1.19) is refused before anything is written (`--force` skips
            the platform check).
2. prepare  `exec`: mkdir /protocol and /firmware, and delete files there that the
            bundle does not have: a stale firmware/node.py would shadow node.mpy
            (MicroPython imports .py before .mpy).
3. copy     `fs cp` of every file, all in one mpremote session (mpremote itself skips
            files whose sha256 on the board already matches).
4. verify   `exec` a script that prints sha256 and size of every bundle file as the
            board reads them back (hashlib + binascii: boards and the unix port);
            each is compared with MANIFEST.json. A difference names the file.
4b. epoch   (--epoch-from DB) `exec`: write /epoch when the board's (read by the
            probe) is missing or below the newest epoch DB holds for the bundle's
            node id, so the node boots above it.
5. reset    and tail: pyserial opens the port, interrupts the REPL and resets the
            board, then prints what it says for --tail seconds (the first log lines
            of the node). "hard": machine.reset() from the raw REPL (reopening the
            port if USB re-enumerates); "soft": Ctrl-D at the friendly REPL, which
            reruns boot.py and main.py; "auto": soft on the unix port (no
            machine.reset there; the virtual board restarts on Ctrl-D), else hard.

With --romfs (a bundle built with `starling build --romfs`, on firmware with a ROMFS
partition: MicroPython >= 1.25 built with one, see docs/BOARDS.md) the modules go to
the ROMFS partition as DIR/romfs.img instead of to the filesystem:

1b. romfs    `exec`: does the firmware have vfs.rom_ioctl, a ROMFS partition, and
            is the image no larger than it? If not, nothing is written.
1c. deploy  `romfs deploy DIR/romfs.img` (mpremote's own command, partition 0).
2.  prepare removes /protocol and /firmware from the filesystem (files and the
            directories: an empty /firmware would be imported as a namespace package
            and hide /rom/firmware).
3.  copy    only the files outside protocol/ and firmware/: boot.py, main.py,
            node.json.
4.  verify  also reads the partition back: sha256 of its first len(romfs.img) bytes.
The reset then mounts the new image at /rom; the firmware puts /rom on sys.path.

mpremote soft-resets the board when it connects (stopping a running main.py and
leaving boot.py's state); that is also why every step can run on its own.
`--dry-run` prints the commands of steps 1-4 and what step 5 would do, and touches
nothing.

Errors (FlashError, exit status 1; bad arguments 2): port missing, port busy,
board not responding, board cannot load the bundle, copy failed, hash mismatch.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from base_station.argtypes import non_negative, positive
from base_station.build import MANIFEST, MPY_MAJOR, BuildError, read_manifest

RESETS = ("auto", "hard", "soft", "none")
_PREFIX = "STARLING"        # marks the lines our board-side scripts print
_STEP_TIMEOUT = 60.0         # seconds for one mpremote step (copy: plus per file)
_PROBE_TIMEOUT = 20.0


class FlashError(Exception):
    """Flashing failed; the message says which step and why."""


@dataclass
class FlashReport:
    port: str
    board: str                       # the bundle's board
    platform: str = ""               # what the board reported
    version: str = ""                # its MicroPython version
    copied: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    verified: int = 0
    romfs: int = 0                   # bytes written to the ROMFS partition (--romfs)
    romfs_partition: int = 0         # the partition's size
    epoch_written: int | None = None  # --epoch-from: the epoch file written, if it was
    reset: str = ""                  # the reset done: hard / soft / none
    tail: str = ""                   # the board's output after the reset
    commands: list[list[str]] = field(default_factory=list)


def mpremote_argv() -> list[str]:
    """How mpremote is run: the module of this interpreter (the venv's mpremote)."""
    return [sys.executable, "-m", "mpremote"]


# --- board-side scripts (MicroPython; kept small: they are sent through the raw REPL) ---

def _probe_script() -> str:
    # prints: platform, version, the mpy version it loads, 1 if "/" is a host's root,
    # 1 if a mounted ROMFS holds Starling modules (/rom/firmware), the epoch in /epoch
    # (-1: none or unreadable)
    return ("import sys, os\n"
            "v = sys.implementation\n"
            "r = 0\n"
            "try:\n"
            " l = os.listdir(\"/\")\n"
            " r = 1 if (\"usr\" in l and \"proc\" in l) else 0\n"
            "except OSError:\n"
            " pass\n"
            "m = 0\n"
            "try:\n"
            " os.stat(\"/rom/firmware\")\n"
            " m = 1\n"
            "except OSError:\n"
            " pass\n"
            "e = -1\n"
            "try:\n"
            " f = open(\"/epoch\")\n"
            " e = int(f.read())\n"
            " f.close()\n"
            "except Exception:\n"
            " pass\n"
            "print(\"%s-PROBE\", sys.platform, \"%%d.%%d.%%d\" %% v.version[:3], "
            "getattr(v, \"_mpy\", 0), r, m, e)\n" % _PREFIX)


def _romfs_probe_script() -> str:
    # prints: partitions (-1: no vfs.rom_ioctl, the firmware has no ROMFS), size of 0
    return ("import vfs\n"
            "n = -1\n"
            "s = 0\n"
            "if hasattr(vfs, \"rom_ioctl\"):\n"
            " n = vfs.rom_ioctl(1)\n"
            " if n > 0:\n"
            "  d = vfs.rom_ioctl(2, 0)\n"
            "  if isinstance(d, int):\n"
            "   s = d\n"
            "  elif hasattr(d, \"ioctl\"):\n"
            "   s = d.ioctl(4, 0) * d.ioctl(5, 0)\n"
            "  else:\n"
            "   s = len(d)\n"
            "print(\"%s-ROMFS\", n, s)\n" % _PREFIX)


def _romfs_verify_script(size: int) -> str:
    # sha256 of the partition's first `size` bytes, read in place (memory-mapped)
    return ("import vfs, hashlib, binascii\n"
            "m = memoryview(vfs.rom_ioctl(2, 0))\n"
            "h = hashlib.sha256()\n"
            "o = 0\n"
            "while o < %d:\n"
            " k = min(512, %d - o)\n"
            " h.update(m[o:o + k])\n"
            " o += k\n"
            "print(\"%s-ROMSHA\", binascii.hexlify(h.digest()).decode())\n" % (size, size, _PREFIX))


def _epoch_script(epoch: int) -> str:
    # the node's epoch file, written as firmware.core.save_epoch() writes it (the node
    # boots at epoch + 1)
    return ("f = open(\"/epoch\", \"w\")\n"
            "f.write(\"%d\")\n"
            "f.close()\n"
            "print(\"%s-EPOCH\", %d)\n" % (epoch, _PREFIX, epoch))


def database_epoch(db_path: str, node: int) -> int | None:
    """The newest epoch a Starling database holds for `node` (readings or statuses),
    or None. Raises FlashError when the file is not a Starling database."""
    import sqlite3
    if not os.path.exists(db_path):
        raise FlashError("--epoch-from %s: no such database" % db_path)
    try:
        db = sqlite3.connect(Path(db_path).resolve().as_uri() + "?mode=ro", uri=True)
        try:
            row = db.execute("SELECT MAX(e) FROM (SELECT MAX(epoch) AS e FROM readings WHERE node = ?"
                             " UNION ALL SELECT MAX(epoch) FROM statuses WHERE node = ?)",
                             (node, node)).fetchone()
        finally:
            db.close()
    except sqlite3.Error as e:
        raise FlashError("--epoch-from %s: not a Starling database (%s)" % (db_path, e)) from None
    return None if row is None or row[0] is None else int(row[0])


def _clear_script(dirs: list[str]) -> str:
    # remove the files of each directory, then the directory (--romfs)
    return ("import os\n"
            "for d in %s:\n"
            " try:\n"
            "  l = list(os.ilistdir(d))\n"
            " except OSError:\n"
            "  continue\n"
            " for e in l:\n"
            "  if e[1] != 0x4000:\n"
            "   os.remove(d + \"/\" + e[0])\n"
            "   print(\"%s-RM\", d + \"/\" + e[0])\n"
            " try:\n"
            "  os.rmdir(d)\n"
            "  print(\"%s-RM\", d)\n"
            " except OSError:\n"
            "  pass\n" % (json.dumps(dirs), _PREFIX, _PREFIX))


def _prepare_script(keep: dict[str, list[str]]) -> str:
    # JSON of str lists is a Python literal, with the double quotes a shell likes
    return ("import os\n"
            "keep = %s\n"
            "for d in keep:\n"
            " try:\n"
            "  os.mkdir(\"/\" + d)\n"
            " except OSError:\n"
            "  pass\n"
            " for e in os.ilistdir(\"/\" + d):\n"
            "  if e[0] not in keep[d] and e[1] != 0x4000:\n"
            "   os.remove(\"/\" + d + \"/\" + e[0])\n"
            "   print(\"%s-RM\", \"/\" + d + \"/\" + e[0])\n" % (json.dumps(keep), _PREFIX))


def _verify_script(paths: list[str]) -> str:
    # readinto a preallocated buffer: about 1 KB of heap whatever the file sizes
    return ("import hashlib, binascii\n"
            "b = bytearray(512)\n"
            "m = memoryview(b)\n"
            "for p in %s:\n"
            " try:\n"
            "  h = hashlib.sha256()\n"
            "  n = 0\n"
            "  f = open(p, \"rb\")\n"
            "  while True:\n"
            "   k = f.readinto(b)\n"
            "   if not k:\n"
            "    break\n"
            "   h.update(m[:k])\n"
            "   n += k\n"
            "  f.close()\n"
            "  print(\"%s-SHA\", p, binascii.hexlify(h.digest()).decode(), n)\n"
            " except OSError as e:\n"
            "  print(\"%s-SHA\", p, \"missing\", e.args[0])\n" % (json.dumps(paths), _PREFIX, _PREFIX))


# --- the plan ---------------------------------------------------------------------------

@dataclass
class _Plan:
    port: str
    bundle: Path
    manifest: dict[str, Any]
    romfs: bool = False

    @property
    def files(self) -> list[str]:
        """The files copied to the filesystem (--romfs: those outside the image)."""
        if self.romfs:
            inside = set(self.manifest["romfs"]["files"])
            return sorted(f for f in self.manifest["files"] if f not in inside)
        return sorted(self.manifest["files"])

    @property
    def romfs_dirs(self) -> list[str]:
        return sorted({"/" + f.split("/", 1)[0] for f in self.manifest["romfs"]["files"] if "/" in f})

    def romfs_probe(self) -> list[str]:
        return self.connect() + ["exec", _romfs_probe_script()]

    def romfs_deploy(self) -> list[str]:
        # mpremote deploys a file ending in .img as it is (partition 0)
        return self.connect() + ["romfs", "deploy", str(self.bundle / self.manifest["romfs"]["image"])]

    def romfs_verify(self) -> list[str]:
        return self.connect() + ["exec", _romfs_verify_script(self.manifest["romfs"]["size"])]

    def connect(self) -> list[str]:
        return mpremote_argv() + ["connect", self.port]

    def probe(self) -> list[str]:
        return self.connect() + ["exec", _probe_script()]

    def prepare(self) -> list[str]:
        if self.romfs:
            return self.connect() + ["exec", _clear_script(self.romfs_dirs)]
        keep: dict[str, list[str]] = {}
        for f in self.files:
            if "/" in f:
                d, name = f.split("/", 1)
                keep.setdefault(d, []).append(name)
        return self.connect() + ["exec", _prepare_script(keep)]

    def copy(self) -> list[str]:
        # one `fs cp SRC... :/DIR/` per directory, chained with `+`: one session
        groups: dict[str, list[str]] = {}
        for f in self.files:
            d = f.rsplit("/", 1)[0] if "/" in f else ""
            groups.setdefault(d, []).append(str(self.bundle / f))
        argv = self.connect()
        for i, d in enumerate(sorted(groups)):
            if i:
                argv.append("+")
            argv += ["fs", "cp", *groups[d], ":/%s" % (d + "/" if d else "")]
        return argv

    def verify(self) -> list[str]:
        return self.connect() + ["exec", _verify_script(["/" + f for f in self.files])]

    def epoch(self, epoch: int) -> list[str]:
        return self.connect() + ["exec", _epoch_script(epoch)]


def _show(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


def _run_mpremote(argv: list[str], step: str, port: str, timeout: float) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        seen = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        raise FlashError("%s: board not responding on %s (no answer within %.0f s; is MicroPython "
                         "running on it, or is its REPL busy?)%s" % (
                             step, port, timeout, ("\n" + seen[-500:]) if seen else "")) from None
    text = proc.stdout + proc.stderr
    if proc.returncode != 0:
        if "failed to access" in text:
            if os.path.exists(port) and not os.access(port, os.R_OK | os.W_OK):
                raise FlashError("%s: no permission to open %s: add yourself to its group "
                                 "(dialout on Debian/Ubuntu: sudo usermod -aG dialout $USER, then "
                                 "log in again)" % (step, port))
            raise FlashError("%s: %s is busy: another program holds it (an mpremote, a serial "
                             "monitor, Thonny?); close it and retry\n%s" % (step, port, text.strip()[-500:]))
        if "could not enter raw repl" in text:
            raise FlashError("%s: board not responding on %s: no raw REPL (is MicroPython flashed? is "
                             "main.py stuck with interrupts off?)\n%s" % (step, port, text.strip()[-500:]))
        raise FlashError("%s failed (mpremote exit %d):\n%s" % (step, proc.returncode, text.strip()[-2000:]))
    return proc.stdout


def _lines(out: str, tag: str) -> list[list[str]]:
    marker = "%s-%s" % (_PREFIX, tag)
    return [line.split()[1:] for line in out.splitlines() if line.startswith(marker + " ")]


def _check_local(bundle: Path, manifest: dict[str, Any]) -> None:
    import hashlib
    for name, meta in sorted(manifest["files"].items()):
        path = bundle / name
        try:
            data = path.read_bytes()
        except OSError:
            raise FlashError("bundle: %s is missing in %s: rebuild it" % (name, bundle)) from None
        if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
            raise FlashError("bundle: %s does not match %s (changed after the build?): rebuild it"
                             % (name, MANIFEST))


def _check_board(probe: list[list[str]], manifest: dict[str, Any], force: bool, port: str) -> tuple[str, str]:
    if not probe:
        raise FlashError("probe: no answer from the board on %s" % port)
    platform, version, mpy, host_root = probe[-1][:4]
    if host_root == "1":
        raise FlashError("probe: %s is a unix-port REPL whose / is this computer's root: refusing to "
                         "write there (use sim.virtual_board.VirtualBoard)" % port)
    want = manifest.get("platform", "")
    if want and platform != want and not force:
        raise FlashError("probe: the bundle is for %s (sys.platform %r) but the board on %s reports %r "
                         "(--force to flash anyway)" % (manifest.get("board"), want, port, platform))
    mpy_major = int(mpy) & 0xFF if mpy.isdigit() else 0
    major, minor = (int(x) for x in version.split(".")[:2])
    if (mpy_major and mpy_major != MPY_MAJOR) or (major, minor) < (1, 19):
        raise FlashError("probe: the board runs MicroPython %s, which cannot load mpy v%d files "
                         "(needs >= %s): update its firmware" % (version, MPY_MAJOR,
                                                                   manifest.get("min_micropython", "1.19")))
    return platform, version


# --- reset and tail (pyserial) ------------------------------------------------------------

def _read_until(ser: Any, ending: bytes, timeout: float) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not data.endswith(ending):
        chunk = ser.read(ser.in_waiting or 1)
        if chunk:
            data += chunk
    return data


def _open_serial(port: str, timeout: float) -> Any:
    import serial
    deadline = time.monotonic() + timeout
    while True:
        try:
            # exclusive: fail fast if mpremote or a monitor still holds the port (posix only)
            extra = {"exclusive": True} if os.name == "posix" else {}
            return serial.Serial(port, 115200, timeout=0.05, **extra)
        except (serial.SerialException, OSError) as e:
            if time.monotonic() > deadline:
                raise FlashError("reset: cannot open %s: %s" % (port, e)) from None
            time.sleep(0.2)


def reset_and_tail(port: str, mode: str, seconds: float, echo: Callable[[str], None] | None = None) -> str:
    """Reset the board on `port` ("hard" or "soft") and return what it prints in `seconds`.

    Keeps the port open from before the reset so the first lines are not lost; if
    the port vanishes (native USB re-enumerating after a hard reset) it is reopened."""
    import serial
    ser = _open_serial(port, 5.0)
    try:
        ser.write(b"\r\x03\x03")          # stop a running program
        time.sleep(0.1)
        ser.reset_input_buffer()
        if mode == "hard":
            ser.write(b"\r\x01")          # raw REPL: no echo, the reset line runs as sent
            got = _read_until(ser, b"raw REPL; CTRL-B to exit\r\n>", 5.0)
            if not got.endswith(b">"):
                raise FlashError("reset: board not responding on %s (no raw REPL)" % port)
            ser.write(b"import machine\nmachine.reset()\x04")
        else:
            ser.write(b"\r\x02")          # friendly REPL, where Ctrl-D is a soft reset
            got = _read_until(ser, b">>> ", 5.0)
            if not got.endswith(b">>> "):
                raise FlashError("reset: board not responding on %s (no REPL prompt)" % port)
            ser.write(b"\x04")
        out = bytearray()
        end = time.monotonic() + seconds
        pending = b""
        while time.monotonic() < end:
            try:
                chunk = ser.read(ser.in_waiting or 1)
            except (serial.SerialException, OSError):
                ser.close()
                ser = _open_serial(port, max(0.5, end - time.monotonic()))
                continue
            if chunk:
                out += chunk
                pending += chunk
                *done, pending = pending.split(b"\n")
                for line in done:
                    if echo:
                        echo(line.decode("utf-8", "replace").rstrip("\r"))
        if pending and echo:
            echo(pending.decode("utf-8", "replace").rstrip("\r"))
        return out.decode("utf-8", "replace")
    finally:
        ser.close()


# --- the command ------------------------------------------------------------------------

def flash_bundle(port: str, bundle_dir: str | os.PathLike[str], *, reset: str = "auto",
                 tail: float = 3.0, dry_run: bool = False, force: bool = False,
                 timeout: float = _STEP_TIMEOUT, out: Callable[[str], None] = print,
                 romfs: bool = False, epoch_from: str | None = None) -> FlashReport:
    """Copy, verify, reset, tail; see the module docstring. Raises FlashError.

    romfs: the modules go to the board's ROMFS partition as the bundle's romfs.img.
    epoch_from: a Starling database; when the board's epoch file is missing or below
    the newest epoch the database holds for the bundle's node id, that epoch is
    written to it, so the node goes on above it (a board whose flash was erased, or
    a new board taking an old node id, would start again at epoch 1)."""
    if reset not in RESETS:
        raise FlashError("--reset must be one of %s" % ", ".join(RESETS))
    bundle = Path(bundle_dir)
    try:
        manifest = read_manifest(bundle)
    except BuildError as e:
        raise FlashError(e.message) from None
    _check_local(bundle, manifest)
    if romfs:
        _check_local_romfs(bundle, manifest)
    plan = _Plan(port, bundle, manifest, romfs)
    report = FlashReport(port, manifest.get("board", "?"))
    carry = None          # (node id, the database's newest epoch of it, or None)
    if epoch_from is not None:
        node = _bundle_node(bundle)
        carry = (node, database_epoch(epoch_from, node))
    steps = [("probe", plan.probe())]
    if romfs:
        steps += [("romfs", plan.romfs_probe()), ("deploy", plan.romfs_deploy())]
    steps += [("prepare", plan.prepare()), ("copy", plan.copy()), ("verify", plan.verify())]
    if romfs:
        steps.append(("verify romfs", plan.romfs_verify()))
    report.commands = [argv for _, argv in steps]
    if dry_run:
        for name, argv in steps:
            out("# %s\n%s" % (name, _show(argv)))
        what = {"auto": "hard (machine.reset() in the raw REPL), or soft (Ctrl-D at the REPL) "
                        "if the board is the unix port",
                "hard": "hard (machine.reset() in the raw REPL)",
                "soft": "soft (Ctrl-D at the friendly REPL)", "none": "none"}[reset]
        if carry is not None and carry[1] is not None:
            out("# epoch (only if the board's epoch file is missing or below %d, the newest "
                "epoch of node %d in %s)\n%s" % (carry[1], carry[0], epoch_from,
                                                  _show(plan.epoch(carry[1]))))
        out("# reset: %s; then print the board's output for %.1f s (pyserial on %s)" % (what, tail, port))
        return report

    if port.startswith("/dev/") and not os.path.exists(port):
        raise FlashError("port %s does not exist (is the board plugged in? `starling flash --list` "
                         "shows connected boards)" % port)

    out("probe %s ..." % port)
    probe = _lines(_run_mpremote(plan.probe(), "probe", port, min(timeout, _PROBE_TIMEOUT)), "PROBE")
    report.platform, report.version = _check_board(probe, manifest, force, port)
    out("  %s, MicroPython %s" % (report.platform, report.version))
    if not romfs and probe[-1][4:5] == ["1"]:
        out("  warning: the board's ROMFS (/rom) holds Starling modules from an earlier `flash --romfs`;"
            " if the firmware puts /rom before the filesystem on sys.path they are imported instead of"
            " the files copied now: flash with --romfs, or deploy another ROMFS image")

    if romfs:
        _romfs_deploy(plan, report, timeout, out)

    report.removed = [p[0] for p in _lines(_run_mpremote(plan.prepare(), "prepare", port, timeout),
                                            "RM")]
    for p in report.removed:
        out("  removed stale %s" % p)

    out("copy %d files (%d bytes) ..." % (len(plan.files), sum(manifest["files"][f]["size"] for f in plan.files)))
    copy_out = _run_mpremote(plan.copy(), "copy", port, timeout + 2.0 * len(plan.files))
    report.copied = [line.split()[1] for line in copy_out.splitlines() if line.startswith("cp ")]

    out("verify ...")
    got = {p[0]: p[1:] for p in _lines(_run_mpremote(plan.verify(), "verify", port, timeout), "SHA")}
    for name in plan.files:
        meta = manifest["files"][name]
        have = got.get("/" + name)
        if not have:
            raise FlashError("verify: the board did not report /%s" % name)
        if have[0] == "missing":
            raise FlashError("verify: /%s is missing on the board after the copy (OSError %s)"
                             % (name, have[1] if len(have) > 1 else "?"))
        if have[0] != meta["sha256"] or int(have[1]) != meta["size"]:
            raise FlashError("verify: hash mismatch for /%s: the board has sha256 %s (%s bytes), "
                             "the bundle %s (%d bytes)" % (name, have[0], have[1], meta["sha256"],
                                                          meta["size"]))
        report.verified += 1
    out("  %d files verified by sha256 on the board" % report.verified)
    if romfs:
        got_rom = _lines(_run_mpremote(plan.romfs_verify(), "verify romfs", port, timeout), "ROMSHA")
        want = manifest["romfs"]["sha256"]
        if not got_rom or got_rom[-1][0] != want:
            raise FlashError("verify: the ROMFS partition does not hold romfs.img: sha256 of its first %d "
                             "bytes is %s, the image's %s" % (manifest["romfs"]["size"],
                                                             got_rom[-1][0] if got_rom else "?", want))
        out("  ROMFS partition verified by sha256 (%d bytes)" % report.romfs)

    if carry is not None:
        _carry_epoch(plan, report, carry, int(probe[-1][5]) if len(probe[-1]) > 5 else -1,
                     epoch_from or "", timeout, out)

    mode = reset
    if mode == "auto":
        mode = "soft" if report.platform == "linux" else "hard"
    report.reset = mode
    if mode != "none":
        out("reset (%s); board output for %.1f s:" % (mode, tail))
        report.tail = reset_and_tail(port, mode, tail, echo=lambda line: out("  | " + line))
    return report


def _bundle_node(bundle: Path) -> int:
    try:
        node = json.loads((bundle / "node.json").read_text(encoding="utf-8"))["node"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FlashError("--epoch-from: cannot read the node id from %s: %s"
                         % (bundle / "node.json", e)) from None
    return int(node)


def _carry_epoch(plan: _Plan, report: FlashReport, carry: tuple[int, int | None], board: int,
                 db_path: str, timeout: float, out: Callable[[str], None]) -> None:
    node, newest = carry
    had = "no epoch file" if board < 0 else "epoch %d" % board
    if newest is None:
        out("epoch: %s has no epoch of node %d; the board keeps %s" % (db_path, node, had))
        return
    if board >= newest:
        out("epoch: the board's epoch %d is not below %d, the newest of node %d in %s: kept"
            % (board, newest, node, db_path))
        return
    got = _lines(_run_mpremote(plan.epoch(newest), "epoch", plan.port, timeout), "EPOCH")
    if not got or got[-1][0] != str(newest):
        raise FlashError("epoch: the board did not confirm writing its epoch file")
    report.epoch_written = newest
    out("epoch: the board had %s; wrote %d, the newest epoch of node %d in %s: it boots at %d"
        % (had, newest, node, db_path, newest + 1))


def _check_local_romfs(bundle: Path, manifest: dict[str, Any]) -> None:
    import hashlib
    r = manifest.get("romfs")
    if not isinstance(r, dict):
        raise FlashError("bundle: %s has no ROMFS image: build it with `starling build --romfs`" % bundle)
    try:
        data = (bundle / r["image"]).read_bytes()
    except OSError:
        raise FlashError("bundle: %s is missing in %s: rebuild it" % (r["image"], bundle)) from None
    if hashlib.sha256(data).hexdigest() != r.get("sha256") or len(data) != r.get("size"):
        raise FlashError("bundle: %s does not match %s (changed after the build?): rebuild it"
                         % (r["image"], MANIFEST))


def _romfs_deploy(plan: _Plan, report: FlashReport, timeout: float, out: Callable[[str], None]) -> None:
    """Steps 1b and 1c: check the board's ROMFS partition, then `mpremote romfs deploy`."""
    port, size = plan.port, plan.manifest["romfs"]["size"]
    got = _lines(_run_mpremote(plan.romfs_probe(), "romfs", port, min(timeout, _PROBE_TIMEOUT)), "ROMFS")
    if not got:
        raise FlashError("romfs: no answer from the board on %s" % port)
    count, part = (int(x) for x in got[-1][:2])
    if count < 0:
        raise FlashError("romfs: the firmware on %s (MicroPython %s) has no ROMFS support (no "
                         "vfs.rom_ioctl). Stock ESP32, Pico and Pico W firmware have none: flash without "
                         "--romfs, or use a build with a ROMFS partition (docs/BOARDS.md, \"ROMFS\")"
                         % (port, report.version))
    if count == 0 or part <= 0:
        raise FlashError("romfs: the firmware on %s supports ROMFS but has no ROMFS partition (ESP32: "
                         "a partition table with a \"romfs\" data partition; RP2: a build with "
                         "MICROPY_HW_ROMFS_BYTES; docs/BOARDS.md, \"ROMFS\")" % port)
    if size > part:
        raise FlashError("romfs: romfs.img is %d bytes, the ROMFS partition on %s only %d: use a larger "
                         "partition, or flash without --romfs" % (size, port, part))
    report.romfs_partition = part
    out("deploy romfs.img (%d bytes) to the ROMFS partition (%d bytes) ..." % (size, part))
    text = _run_mpremote(plan.romfs_deploy(), "deploy", port, timeout + size / 2048.0)
    if "ROMFS image deployed" not in text:
        raise FlashError("deploy: mpremote did not confirm the ROMFS deploy:\n%s" % text.strip()[-1000:])
    report.romfs = size


def list_boards() -> int:
    """`mpremote connect list`: the serial ports with their USB ids."""
    proc = subprocess.run(mpremote_argv() + ["connect", "list"], text=True)
    return proc.returncode


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", nargs="?", metavar="DIR", help="bundle directory from `starling build`")
    parser.add_argument("--port", help="serial port of the board (e.g. /dev/ttyUSB0, /dev/ttyACM0, "
                                       "a virtual board's /dev/pts/N)")
    parser.add_argument("--list", action="store_true", help="list connected boards and exit")
    parser.add_argument("--dry-run", action="store_true", help="print the mpremote commands, touch nothing")
    parser.add_argument("--tail", type=non_negative, default=3.0, metavar="S",
                        help="seconds of board output to print after the reset (default 3)")
    parser.add_argument("--reset", choices=RESETS, default="auto",
                        help="how to restart the board after flashing (default auto: hard, "
                             "soft on the unix port)")
    parser.add_argument("--force", action="store_true",
                        help="flash even if the board's platform differs from the bundle's")
    parser.add_argument("--romfs", action="store_true",
                        help="write the modules to the board's ROMFS partition as the bundle's romfs.img "
                             "(`starling build --romfs`; firmware with a ROMFS partition only)")
    parser.add_argument("--epoch-from", metavar="DB",
                        help="a Starling database: if the board's epoch file is missing or below "
                             "the newest epoch DB holds for the bundle's node id, write that epoch "
                             "(a board whose flash was erased, or a new board taking an old id, "
                             "would start again at epoch 1)")
    parser.add_argument("--timeout", type=positive, default=_STEP_TIMEOUT, metavar="S",
                        help="time limit of one mpremote step (default %.0f)" % _STEP_TIMEOUT)


def run(args: argparse.Namespace) -> int:
    """Exit status: 0 flashed (or listed / dry run), 1 flashing failed, 2 bad arguments."""
    if args.list:
        return list_boards()
    if not args.bundle:
        print("starling flash: error: a bundle directory is required (starling build --out DIR)",
              file=sys.stderr)
        return 2
    if not args.port:
        print("starling flash: error: --port is required (`starling flash --list` shows boards)",
              file=sys.stderr)
        return 2
    try:
        report = flash_bundle(args.port, args.bundle, reset=args.reset, tail=args.tail,
                              dry_run=args.dry_run, force=args.force, timeout=args.timeout,
                              romfs=getattr(args, "romfs", False),
                              epoch_from=getattr(args, "epoch_from", None))
    except FlashError as e:
        print("starling flash: error: %s" % e, file=sys.stderr)
        return 1
    if not args.dry_run:
        print("flashed %s bundle to %s: %d files verified%s, reset %s"
              % (report.board, args.port, report.verified,
                 (" + romfs.img (%d bytes) in the ROMFS partition" % report.romfs) if report.romfs else "",
                 report.reset))
    return 0


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="starling flash", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(None if argv is None else list(argv)))


if __name__ == "__main__":
    sys.exit(main())
