"""`starling flash --romfs`: the ROMFS steps, against a virtual board (the unix port
behind a pty, driven by the real mpremote 1.29).

The unix port has no vfs.rom_ioctl (no ROMFS partition to write), so the refusal
is tested for real; the paths that need a partition answer the "romfs", "deploy"
and "verify romfs" steps with what a board with one prints, while probe, prepare,
copy and verify run on the virtual board. That the image itself mounts and runs a
node is tests/test_romfs_image.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from base_station import flash
from base_station.build import build_bundle
from base_station.flash import FlashError, flash_bundle
from sim.virtual_board import VirtualBoard

pytestmark = pytest.mark.slow


@pytest.fixture
def bundle(tmp_path) -> Path:
    cfg = {"node": 7, "transport": "udp", "bases": [["127.0.0.1", 5684]],
           "sensors": [{"topic": "temp", "kind": "sine", "period_ms": 100}]}
    path = tmp_path / "node.json"
    path.write_text(json.dumps(cfg))
    build_bundle("unix", path, tmp_path / "bundle", romfs=True)
    return tmp_path / "bundle"


@pytest.fixture
def board(tmp_path):
    with VirtualBoard(tmp_path / "board", log_path=tmp_path / "board.log") as b:
        yield b


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "MANIFEST.json").read_text())


def test_dry_run_deploys_the_image_and_copies_only_the_root_files(bundle, capsys):
    rc = flash.main(["--port", "/dev/ttyUSB0", str(bundle), "--romfs", "--dry-run"])
    assert rc == 0
    out = capsys.readouterr().out
    steps = [line for line in out.splitlines() if line.startswith("# ")]
    assert [s.split(":")[0] for s in steps] == ["# probe", "# romfs", "# deploy", "# prepare", "# copy",
                                               "# verify", "# verify romfs", "# reset"]
    mpremote = "%s -m mpremote connect /dev/ttyUSB0" % sys.executable
    assert "%s romfs deploy %s\n" % (mpremote, bundle / "romfs.img") in out
    copy_line = next(line for line in out.splitlines() if " fs cp " in line)
    assert copy_line == "%s fs cp %s %s %s :/" % (mpremote, bundle / "boot.py", bundle / "main.py",
                                                  bundle / "node.json")
    assert 'for d in ["/firmware", "/protocol"]:' in out         # prepare clears both
    assert "while o < %d:" % _manifest(bundle)["romfs"]["size"] in out


def test_bundle_without_image(tmp_path, bundle):
    manifest = _manifest(bundle)
    del manifest["romfs"]
    (bundle / "MANIFEST.json").write_text(json.dumps(manifest))
    with pytest.raises(FlashError, match="has no ROMFS image: build it with `starling build --romfs`"):
        flash_bundle("/dev/ttyUSB0", bundle, romfs=True, dry_run=True, out=lambda line: None)


def test_changed_image_is_refused(bundle):
    (bundle / "romfs.img").write_bytes(b"\xd2\xcd\x31\x00")
    with pytest.raises(FlashError, match="romfs.img does not match MANIFEST.json"):
        flash_bundle("/dev/ttyUSB0", bundle, romfs=True, dry_run=True, out=lambda line: None)


def test_firmware_without_romfs_is_refused_before_writing(board, bundle, capsys):
    rc = flash.main(["--port", board.port, str(bundle), "--romfs", "--reset", "none"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "has no ROMFS support (no vfs.rom_ioctl)" in err and "flash without --romfs" in err
    assert not (board.root / "node.json").exists()        # nothing was written


def _board_with_partition(monkeypatch, bundle: Path, answer: str, written: list[str]):
    """The romfs, deploy and verify romfs steps answer as a board with a ROMFS
    partition would (the probe's line; mpremote's last line; the image's sha256)."""
    real = flash._run_mpremote
    sha = _manifest(bundle)["romfs"]["sha256"]

    def run(argv, step, port, timeout):
        if step == "romfs":
            return answer
        if step == "deploy":
            written.append(argv[-1])
            return "Image size is ...\nROMFS0 partition has size ...\nROMFS image deployed\n"
        if step == "verify romfs":
            return "STARLING-ROMSHA %s\n" % sha
        return real(argv, step, port, timeout)

    monkeypatch.setattr(flash, "_run_mpremote", run)


@pytest.mark.parametrize("answer, words", [
    ("STARLING-ROMFS 0 0\n", "supports ROMFS but has no ROMFS partition"),
    ("STARLING-ROMFS 1 65536\n", "romfs.img is %d bytes, the ROMFS partition on %s only 65536"),
])
def test_no_partition_or_too_small(board, bundle, monkeypatch, answer, words):
    written: list[str] = []
    _board_with_partition(monkeypatch, bundle, answer, written)
    with pytest.raises(FlashError) as err:
        flash_bundle(board.port, bundle, romfs=True, reset="none", out=lambda line: None)
    if "%d" in words:
        words = words % (_manifest(bundle)["romfs"]["size"], board.port)
    assert words in str(err.value)
    assert written == [] and not (board.root / "node.json").exists()


def test_flash_with_partition_clears_the_module_directories(board, bundle, monkeypatch):
    # modules of an earlier plain flash: they would shadow /rom (or, left as an empty
    # /firmware directory, be imported as a namespace package)
    for d in ("firmware", "protocol"):
        (board.root / d).mkdir()
        (board.root / d / "__init__.mpy").write_bytes(b"M\x06\x00\x1f stale")
    (board.root / "firmware" / "node.py").write_text("raise SystemExit('stale')\n")
    written: list[str] = []
    _board_with_partition(monkeypatch, bundle, "STARLING-ROMFS 1 131072\n", written)
    lines: list[str] = []
    report = flash_bundle(board.port, bundle, romfs=True, reset="none", out=lines.append)
    assert written == [str(bundle / "romfs.img")]
    assert report.romfs == _manifest(bundle)["romfs"]["size"] and report.romfs_partition == 131072
    assert sorted(report.removed) == ["/firmware", "/firmware/__init__.mpy", "/firmware/node.py",
                                      "/protocol", "/protocol/__init__.mpy"]
    assert report.verified == 3
    assert sorted(p.name for p in board.root.iterdir()) == ["boot.py", "main.py", "node.json"]
    for name in ("boot.py", "main.py", "node.json"):
        assert (board.root / name).read_bytes() == (bundle / name).read_bytes()
    assert any("ROMFS partition verified by sha256" in line for line in lines)


def test_partition_that_reads_back_wrong(board, bundle, monkeypatch):
    written: list[str] = []
    _board_with_partition(monkeypatch, bundle, "STARLING-ROMFS 1 131072\n", written)
    real = flash._run_mpremote

    def wrong(argv, step, port, timeout):
        if step == "verify romfs":
            return "STARLING-ROMSHA %s\n" % ("0" * 64)
        return real(argv, step, port, timeout)

    monkeypatch.setattr(flash, "_run_mpremote", wrong)
    with pytest.raises(FlashError, match="the ROMFS partition does not hold romfs.img"):
        flash_bundle(board.port, bundle, romfs=True, reset="none", out=lambda line: None)


def test_plain_flash_warns_about_modules_left_in_rom(board, bundle):
    # what a board shows after an earlier `flash --romfs`: /rom/firmware (here a
    # directory of the virtual board's root, where the firmware would mount the image)
    (board.root / "rom" / "firmware").mkdir(parents=True)
    lines: list[str] = []
    report = flash_bundle(board.port, bundle, reset="none", out=lines.append)
    assert any("warning: the board's ROMFS (/rom) holds Starling modules" in line for line in lines)
    # a plain flash of a --romfs bundle copies the .mpy files, never the image
    assert report.verified == len(_manifest(bundle)["files"])
    assert (board.root / "firmware" / "node.mpy").exists() and not (board.root / "romfs.img").exists()
