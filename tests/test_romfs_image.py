"""`starling build --romfs`: the bundle's .mpy modules as a MicroPython ROMFS image.

The image is checked with the real components: mpremote 1.29's own ROMFS writer
(byte for byte), and the MicroPython unix port, which mounts it with vfs.VfsRom,
imports the node's modules from it in place and runs firmware.node.main(), whose
EVENTs arrive at a UDP socket in this test.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from base_station import build
from base_station.build import BuildError, build_bundle
from base_station.romfs import RomfsError, build_image, encode_uint, read_image
from conftest import ROOT
from protocol import messages

NODE = 7


def _config(tmp_path: Path, port: int = 5684, **extra) -> Path:
    cfg = {"node": NODE, "transport": "udp", "bases": [["127.0.0.1", port]],
           "sensors": [{"topic": "temp", "kind": "counter", "period_ms": 20}],
           "status_every_ms": 60000}
    cfg.update(extra)
    path = tmp_path / "node.json"
    path.write_text(json.dumps(cfg))
    return path


@pytest.fixture(scope="module")
def romfs_bundle(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("romfs")
    out = tmp / "bundle"
    build_bundle("unix", _config(tmp), out, romfs=True)
    return out


def test_manifest_lists_the_image_apart_from_the_flashed_files(romfs_bundle):
    manifest = json.loads((romfs_bundle / "MANIFEST.json").read_text())
    r = manifest["romfs"]
    data = (romfs_bundle / "romfs.img").read_bytes()
    assert r["image"] == "romfs.img" and r["size"] == len(data) and r["limit"] is None
    assert "romfs.img" not in manifest["files"]      # plain `starling flash` does not copy it
    mpy = sorted(p for p in manifest["files"] if p.endswith(".mpy"))
    assert r["files"] == mpy and "firmware/node.mpy" in mpy
    # the image holds exactly those files, byte for byte; nothing else
    assert read_image(data) == {p: (romfs_bundle / p).read_bytes() for p in mpy}


def test_image_is_what_mpremote_romfs_build_writes(romfs_bundle, tmp_path):
    from importlib.metadata import version

    from mpremote.romfs import make_romfs
    assert version("mpremote") == "1.29.0"      # pinned in pyproject.toml
    tree = tmp_path / "tree"
    for p in json.loads((romfs_bundle / "MANIFEST.json").read_text())["romfs"]["files"]:
        (tree / p).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(romfs_bundle / p, tree / p)
    with contextlib.redirect_stdout(io.StringIO()):
        theirs = make_romfs(str(tree), mpy_cross=False)
    assert (romfs_bundle / "romfs.img").read_bytes() == theirs


def test_format_details():
    assert encode_uint(0) == b"\x00" and encode_uint(127) == b"\x7f"
    assert encode_uint(128) == b"\x81\x00" and encode_uint(0x14A6B1) == b"\xd2\xcd\x31"
    for files in ({}, {"a.mpy": b""}, {"a.mpy": b"x"}, {"d/e/f.mpy": b"xyz" * 100, "d/g": b"1"}):
        image = build_image(files)
        assert image.startswith(b"\xd2\xcd\x31") and len(image) % 2 == 0
        assert read_image(image) == files
    with pytest.raises(RomfsError, match="not a ROMFS image"):
        read_image(b"M\x06\x00\x1f")
    with pytest.raises(RomfsError, match="claims"):
        read_image(build_image({"a": b"12345"})[:-2])
    with pytest.raises(RomfsError, match="not ASCII"):
        build_image({"firmware/capteur_\u00e9.mpy": b"M\x06"})
    with pytest.raises(RomfsError, match="is a file"):
        build_image({"a": b"1", "a/b": b"2"})


MOUNT_AND_RUN = r'''
import sys, vfs, gc
image, flash = sys.argv[1], sys.argv[2]
f = open(image, "rb")
buf = f.read()
f.close()
vfs.mount(vfs.VfsRom(buf), "/rom")
sys.path.insert(0, "/rom")
import os
print("listing", sorted(os.listdir("/rom")), sorted(os.listdir("/rom/firmware"))[:3])
from firmware import node
import protocol.cbor
print("from", node.__file__, protocol.cbor.__file__)
print("exit", node.main(flash))
'''


def test_node_boots_and_publishes_from_the_mounted_image(romfs_bundle, micropython, tmp_path):
    base = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    base.bind(("127.0.0.1", 0))
    base.settimeout(10)
    try:
        # the board's writable filesystem: node.json (and boot.py/main.py), no modules
        flash = tmp_path / "flash"
        flash.mkdir()
        _config(flash, base.getsockname()[1], max_events=5)
        for name in ("boot.py", "main.py"):
            shutil.copyfile(romfs_bundle / name, flash / name)
        script = tmp_path / "run.py"
        script.write_text(MOUNT_AND_RUN)
        # cwd away from the repo and the bundle: the modules can only come from /rom
        proc = subprocess.run([micropython, "-X", "heapsize=256K", str(script),
                               str(romfs_bundle / "romfs.img"), str(flash)],
                              capture_output=True, text=True, cwd=tmp_path, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "listing ['firmware', 'protocol'] ['__init__.mpy', " in proc.stdout
        assert "from /rom/firmware/node.mpy /rom/protocol/cbor.mpy" in proc.stdout
        assert "exit 0" in proc.stdout
        events = []
        deadline = time.monotonic() + 10
        while len(events) < 5 and time.monotonic() < deadline:
            msg = messages.decode(base.recvfrom(2048)[0])
            assert msg.node == NODE
            if isinstance(msg, messages.Event):
                events.append(msg)
        assert [e.topic for e in events] == ["temp"] * 5
        assert [e.seq for e in events] == sorted(e.seq for e in events)
    finally:
        base.close()


HELD = r'''
import sys, gc, vfs
mode, where = sys.argv[1], sys.argv[2]
if mode == "rom":
    f = open(where, "rb")
    buf = f.read()        # before the baseline: the image is not counted
    f.close()
    vfs.mount(vfs.VfsRom(buf), "/rom")
    sys.path.insert(0, "/rom")
else:
    sys.path.insert(0, where)
gc.collect()
a = gc.mem_alloc()
import protocol.cbor, protocol.nodewire, firmware.sensors, firmware.subscribers
import firmware.hal_unix, firmware.node
gc.collect()
print(firmware.node.__file__, gc.mem_alloc() - a)
'''


def test_imports_from_the_image_hold_far_less_ram(romfs_bundle, micropython, tmp_path):
    script = tmp_path / "held.py"
    script.write_text(HELD)
    held = {}
    for mode, where in (("rom", romfs_bundle / "romfs.img"), ("mpy", romfs_bundle)):
        proc = subprocess.run([micropython, "-X", "heapsize=256K", str(script), mode, str(where)],
                              capture_output=True, text=True, cwd=tmp_path, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        path, n = proc.stdout.split()
        assert path.startswith("/rom/" if mode == "rom" else str(romfs_bundle))
        held[mode] = int(n)
    # bytecode and constant strings stay in the image: measured 56 % on 1.29 unix
    assert held["rom"] < 0.7 * held["mpy"], held


def test_corrupt_image_is_refused_by_vfsrom(romfs_bundle, micropython, tmp_path):
    bad = tmp_path / "bad.img"
    data = bytearray((romfs_bundle / "romfs.img").read_bytes())
    data[0] ^= 0xFF
    bad.write_bytes(bytes(data))
    code = ("import vfs\nf = open(%r, 'rb')\ntry:\n vfs.VfsRom(f.read())\nexcept OSError as e:\n"
            " print('refused', e.errno)\n" % str(bad))
    proc = subprocess.run([micropython, "-c", code], capture_output=True, text=True, timeout=30)
    assert proc.stdout.strip() == "refused 19", proc.stdout + proc.stderr    # ENODEV


def test_oversize_image_is_a_build_error(tmp_path, capsys):
    with pytest.raises(BuildError) as err:
        build_bundle("unix", _config(tmp_path), tmp_path / "b", romfs_size=16 * 1024)
    assert err.value.field == "--romfs-size"
    assert "more than the ROMFS partition's 16384 bytes" in str(err.value)
    assert not (tmp_path / "b").exists()
    # the command line: exit 2, the message on stderr; a size that fits prints its share
    rc = build.main(["--board", "unix", "--config", str(_config(tmp_path)), "--out",
                     str(tmp_path / "c"), "-q", "--romfs-size", "16K"])
    assert rc == 2
    assert "--romfs-size: romfs.img would be" in capsys.readouterr().err
    rc = build.main(["--board", "unix", "--config", str(_config(tmp_path)), "--out",
                     str(tmp_path / "c"), "-q", "--romfs-size", "0x40000"])
    assert rc == 0
    r = json.loads((tmp_path / "c" / "MANIFEST.json").read_text())["romfs"]
    assert r["limit"] == 262144
    assert "romfs.img: %d bytes, %d modules (%d%% of the 262144-byte partition)" % (
        r["size"], len(r["files"]), 100 * r["size"] // 262144) in capsys.readouterr().out


def test_bad_romfs_size_argument(capsys):
    with pytest.raises(SystemExit) as err:
        build.main(["--board", "unix", "--config", "x", "--out", "y", "--romfs-size", "lots"])
    assert err.value.code == 2
    assert "expected a size in bytes" in capsys.readouterr().err


def test_malformed_module_name_is_a_build_error(tmp_path):
    src = tmp_path / "src"
    for package in ("protocol", "firmware"):
        shutil.copytree(ROOT / package, src / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (src / "firmware" / "capteur_\u00e9t\u00e9.py").write_text("X = 1\n")
    # as plain .mpy files it builds (the filesystem takes the name) ...
    build_bundle("unix", _config(tmp_path), tmp_path / "plain", source_root=src)
    # ... but ROMFS names are ASCII: the error names the image and the file
    with pytest.raises(BuildError) as err:
        build_bundle("unix", _config(tmp_path), tmp_path / "rom", source_root=src, romfs=True)
    assert err.value.field == "romfs.img"
    assert "capteur_" in str(err.value) and "not ASCII" in str(err.value)
    assert not (tmp_path / "rom").exists()


def test_bench_measures_ram_after_boot_from_the_image(romfs_bundle, micropython):
    """bench/mp_node.py ram / ram_rom: the figures docs/PERFORMANCE.md records."""
    got = {}
    for mode in ("ram", "ram_rom"):
        proc = subprocess.run([micropython, "-X", "heapsize=256K", str(ROOT / "bench" / "mp_node.py"),
                               mode, str(romfs_bundle)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        got[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["ram"]["from"] == "%s/firmware/node.mpy" % romfs_bundle
    assert got["ram_rom"]["from"] == "/rom/firmware/node.mpy"
    assert got["ram_rom"]["image_bytes"] == (romfs_bundle / "romfs.img").stat().st_size
    assert got["ram_rom"]["config_dropped"] and got["ram_rom"]["sensors"] == 1
    assert got["ram_rom"]["total"] < 0.7 * got["ram"]["total"], (got["ram"]["total"], got["ram_rom"]["total"])


STEPPED_DRIVER = """
import sys
MP_ARGS = sys.argv[1:]
MP_STEPPED = True
f = open(%r)
exec(f.read())
f.close()
steps = 0
while not STEP_DONE:
    STEP()
    steps += 1
print(steps)
"""


def test_bench_ram_stepped_as_the_webassembly_runner_drives_it(romfs_bundle, micropython, tmp_path):
    """The webassembly port frees nothing inside one call from JavaScript, so its runner
    answers each measuring point of bench/mp_node.py in a call of its own (STEP()).
    Driven that way on the unix port, the figures are those of the in-line driver."""
    driver = tmp_path / "stepped.py"
    driver.write_text(STEPPED_DRIVER % str(ROOT / "bench" / "mp_node.py"))
    runs = {}
    for name, cmd in (("stepped", [str(driver)]), ("inline", [str(ROOT / "bench" / "mp_node.py")])):
        proc = subprocess.run([micropython, "-X", "heapsize=256K", *cmd, "ram_rom", str(romfs_bundle)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        lines = proc.stdout.strip().splitlines()
        runs[name] = json.loads(lines[-2] if name == "stepped" else lines[-1])
        if name == "stepped":
            # one step per measuring point: baseline, each module, config, boot, running
            assert int(lines[-1]) == len(runs[name]["modules"]) + 4
    a, b = runs["stepped"], runs["inline"]
    assert a["config_dropped"] and b["config_dropped"]
    assert set(a["modules"]) == set(b["modules"])
    # the same code imported the same way: totals agree to the qstr pools' steps
    assert abs(a["total"] - b["total"]) <= 4096, (a["total"], b["total"])


def test_bench_ram_of_an_esp32_bundle_boots_the_board_hal(tmp_path, micropython):
    """bench/mp_node.py ram_esp32: the board HAL joins the fake access point, takes the
    time from NTP and the node publishes, so its figure is a working node's."""
    cfg = tmp_path / "node.json"
    cfg.write_text(json.dumps({"node": 7, "bases": [["127.0.0.1", 5684]],
                               "wifi": {"ssid": "lab", "password": "secret"},
                               "sensors": [{"topic": "temp", "kind": "sine", "period_ms": 1000}]}))
    build_bundle("esp32", cfg, tmp_path / "esp32")
    proc = subprocess.run([micropython, "-X", "heapsize=256K", str(ROOT / "bench" / "mp_node.py"),
                           "ram_esp32", str(tmp_path / "esp32"), str(ROOT / "tests")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["link_up"] and r["time_base"] and r["published"] >= 4
    assert "firmware.hal_board" in r["modules"] and r["config_dropped"]
    assert r["total"] == r["imports"] + r["node_boot"] + r["node_running"]
