"""`starling build`: bundles for every board, the per-board file table, config checks
that name the field, and a unix bundle that really runs from .mpy under the unix port."""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from base_station import build
from base_station.build import BOARDS, BuildError, board_modules, build_bundle, validate_config
from conftest import ROOT

UDP_UNIX: dict[str, Any] = {
    "node": 7, "transport": "udp",
    "sensors": [{"topic": "temp", "kind": "sine", "period_ms": 1000}],
    "bases": [["127.0.0.1", 5684]], "discovery": {"port": 5685}, "key": None,
}
UDP_WIFI = dict(UDP_UNIX, wifi={"ssid": "lab", "password": "secret"})
SERIAL_ESP32 = dict(UDP_UNIX, transport="serial",
                    uart={"up": {"id": 1, "tx": 17, "rx": 16, "baud": 115200},
                          "down": {"id": 2, "tx": 25, "rx": 26, "baud": 115200}})
SERIAL_PICO = dict(UDP_UNIX, transport="serial",
                   uart={"up": {"id": 0, "tx": 0, "rx": 1, "baud": 115200},
                         "down": {"id": 1, "tx": 4, "rx": 5, "baud": 115200}})
SERIAL_UNIX = dict(UDP_UNIX, transport="serial",
                   uart={"up": {"path": "/dev/uart-up", "baud": 115200},
                         "down": {"path": "/dev/uart-down", "baud": 115200}})
SAMPLES = {"esp32": UDP_WIFI, "pico": SERIAL_PICO, "pico-w": UDP_WIFI, "unix": UDP_UNIX}


def write_config(tmp_path: Path, cfg: Any, name: str = "node.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(cfg))
    return path


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    """One bundle per board, built once for the module."""
    base = tmp_path_factory.mktemp("bundles")
    out = {}
    for board, cfg in SAMPLES.items():
        out[board] = base / board
        build_bundle(board, write_config(base, cfg, board + ".json"), out[board])
    return out


@pytest.mark.parametrize("board", sorted(BOARDS))
def test_bundle_layout_and_manifest(bundles, board):
    bundle = bundles[board]
    manifest = json.loads((bundle / "MANIFEST.json").read_text())
    files = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())
    files.remove("MANIFEST.json")
    assert sorted(manifest["files"]) == files
    for name in ("boot.py", "main.py", "node.json", "protocol/__init__.mpy", "protocol/cbor.mpy",
                 "firmware/__init__.mpy", "firmware/node.mpy"):
        assert name in files, name
    # root scripts are source, byte for byte; nothing else is .py
    assert (bundle / "main.py").read_bytes() == (ROOT / "firmware" / "main.py").read_bytes()
    assert (bundle / "boot.py").read_bytes() == (ROOT / "firmware" / "boot.py").read_bytes()
    assert [f for f in files if f.endswith(".py")] == ["boot.py", "main.py"]
    for name, meta in manifest["files"].items():
        data = (bundle / name).read_bytes()
        assert meta == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    assert manifest["board"] == board
    assert manifest["platform"] == BOARDS[board].platform
    assert manifest["mpy_version"].startswith("6.")
    assert manifest["starling_version"]
    assert manifest["total_size"] == sum(m["size"] for m in manifest["files"].values())
    # node.json: the config as compact JSON
    text = (bundle / "node.json").read_text()
    assert json.loads(text) == SAMPLES[board]
    assert text.strip() == json.dumps(SAMPLES[board], separators=(",", ":"))


@pytest.mark.parametrize("board", sorted(BOARDS))
def test_every_mpy_is_bytecode_v6(bundles, board):
    mpys = list(bundles[board].rglob("*.mpy"))
    assert len(mpys) >= 5
    for path in mpys:
        head = path.read_bytes()[:4]
        # b"M", version 6, feature byte 0 (no native arch: loads on any firmware >= 1.19)
        assert head[:3] == b"M\x06\x00", (path, head)


@pytest.mark.parametrize("board", sorted(BOARDS))
def test_hal_of_other_boards_left_out(bundles, board):
    present = {p.stem for p in (ROOT / "firmware").glob("hal_*.py")}
    bundled = {p.stem for p in (bundles[board] / "firmware").glob("hal_*.mpy")}
    assert bundled == present & set(BOARDS[board].hals)


def test_board_file_table(tmp_path):
    """Per-board selection on a made-up tree: tests, caches and foreign HALs stay out."""
    for rel in ("protocol/__init__.py", "protocol/cbor.py", "protocol/test_cbor.py",
                "protocol/__pycache__/cbor.py", "firmware/__init__.py", "firmware/node.py",
                "firmware/boot.py", "firmware/main.py", "firmware/hal_unix.py",
                "firmware/hal_esp32.py", "firmware/hal_pico.py", "firmware/hal_board.py",
                "firmware/tests/test_node.py",
                "firmware/drivers/__init__.py", "firmware/drivers/sht3x.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x = 1\n")
    common = {"protocol/__init__.py", "protocol/cbor.py", "firmware/__init__.py", "firmware/node.py",
              "firmware/drivers/__init__.py", "firmware/drivers/sht3x.py"}
    board_hal = "firmware/hal_board.py"
    expect = {"esp32": {board_hal, "firmware/hal_esp32.py"}, "pico": {board_hal, "firmware/hal_pico.py"},
              "pico-w": {board_hal, "firmware/hal_pico.py"}, "unix": {"firmware/hal_unix.py"}}
    for board, hal in expect.items():
        assert {p.as_posix() for p in board_modules(board, tmp_path)} == common | hal, board


def test_unix_bundle_runs_from_mpy_under_the_unix_port(bundles, micropython, tmp_path):
    bundle = bundles["unix"]
    code = ("import sys; sys.path.insert(0, %r)\n"
            "import protocol.cbor as c; print(c.dumps([1, 2]), c.__file__)\n"
            "from firmware import config, node\n"
            "print('node', config.parse(open(%r).read()).node, node.__file__)\n"
            % (str(bundle), str(bundle / "node.json")))
    # cwd away from the repo, so that nothing can come from the .py sources
    proc = subprocess.run([micropython, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "b'\\x82\\x01\\x02' %s/protocol/cbor.mpy" % bundle
    assert lines[1] == "node 7 %s/firmware/node.mpy" % bundle


def test_cli_prints_count_and_size(tmp_path, capsys):
    out = tmp_path / "b"
    rc = build.main(["--board", "unix", "--config", str(write_config(tmp_path, UDP_UNIX)),
                     "--out", str(out)])
    assert rc == 0
    manifest = json.loads((out / "MANIFEST.json").read_text())
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "%d files, %d bytes" % (len(manifest["files"]), manifest["total_size"]) in last


def test_no_line_numbers_makes_smaller_modules_that_run_and_trace_without_lines(
        bundles, micropython, tmp_path):
    out = tmp_path / "b"
    rc = build.main(["--board", "unix", "--config", str(write_config(tmp_path, UDP_UNIX)),
                     "--out", str(out), "-q", "--no-line-numbers"])
    assert rc == 0
    lean = json.loads((out / "MANIFEST.json").read_text())
    full = json.loads((bundles["unix"] / "MANIFEST.json").read_text())
    assert lean["line_numbers"] is False and full["line_numbers"] is True
    mpy = [f for f in full["files"] if f.endswith(".mpy") and full["files"][f]["size"] > 200]
    assert all(lean["files"][f]["size"] < full["files"][f]["size"] for f in mpy)
    # the modules run; a traceback names the file but no line (line 1 for every frame)
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from firmware import config\n"
            "print('node', config.parse(open(%r).read()).node)\n"
            "config.parse('{\"node\": -1}')\n" % (str(out), str(out / "node.json")))
    for bundle, lines in ((out, False), (bundles["unix"], True)):
        code_b = code.replace(str(out), str(bundle))
        proc = subprocess.run([micropython, "-c", code_b], capture_output=True, text=True,
                              cwd=tmp_path, timeout=30)
        assert proc.stdout.startswith("node 7"), proc.stdout + proc.stderr
        trace = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "firmware/config.py" in ln]
        assert len(trace) >= 2, proc.stdout + proc.stderr
        assert any(", line 1," not in ln for ln in trace) is lines, trace


def test_cli_bad_config_exit_2(tmp_path, capsys):
    cfg = write_config(tmp_path, dict(UDP_UNIX, node=0))
    rc = build.main(["--board", "unix", "--config", str(cfg), "--out", str(tmp_path / "b")])
    assert rc == 2
    assert "node.json: node: expected an integer 1..4294967295, got 0" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_firmware_rejection_is_a_warning(tmp_path):
    # the firmware's own checker runs too: what it rejects is reported, not fatal
    report = build_bundle("unix", write_config(tmp_path, dict(UDP_UNIX, future_key=1)), tmp_path / "b")
    assert any("future_key" in w for w in report.warnings)


def test_out_dir_rules(tmp_path):
    cfg = write_config(tmp_path, UDP_UNIX)
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(BuildError) as err:
        build_bundle("unix", cfg, other)
    assert err.value.field == "--out" and "refusing" in str(err.value)
    assert (other / "cat.jpg").exists()
    # an earlier bundle is replaced, stale files go
    out = tmp_path / "bundle"
    build_bundle("unix", cfg, out)
    (out / "firmware" / "stale.mpy").write_bytes(b"M\x06")
    build_bundle("unix", cfg, out)
    assert not (out / "firmware" / "stale.mpy").exists()


def test_failed_compile_keeps_previous_bundle(tmp_path):
    src = tmp_path / "src"
    for rel in ("protocol/__init__.py", "firmware/__init__.py", "firmware/boot.py", "firmware/main.py",
                "firmware/node.py"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text("x = 1\n")
    cfg = write_config(tmp_path, UDP_UNIX)
    out = tmp_path / "bundle"
    build_bundle("unix", cfg, out, source_root=src)
    before = (out / "MANIFEST.json").read_bytes()
    (src / "firmware" / "broken.py").write_text("def f(:\n")
    with pytest.raises(BuildError) as err:
        build_bundle("unix", cfg, out, source_root=src)
    assert err.value.field == "firmware/broken.py" and "mpy-cross failed" in str(err.value)
    assert (out / "MANIFEST.json").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bundle-")]  # temp dir cleaned


# --- config checks: (board, change, field, words the message must contain) ----------------

def _set(path: str, value: Any):
    def change(cfg: dict[str, Any]) -> None:
        keys = path.split(".")
        d = cfg
        for k in keys[:-1]:
            d = d[int(k)] if isinstance(d, list) else d[k]
        if value is _DELETE:
            del d[keys[-1]]
        elif isinstance(d, list):
            d[int(keys[-1])] = value
        else:
            d[keys[-1]] = value
    return change


_DELETE = object()

BAD = [
    ("unix", _set("node", _DELETE), "node", "missing"),
    ("unix", _set("node", "7"), "node", "1..4294967295"),
    ("unix", _set("node", 0), "node", "got 0"),
    ("unix", _set("node", 2 ** 32), "node", "got 4294967296"),
    ("unix", _set("node", True), "node", "got True"),
    ("unix", _set("transport", "tcp"), "transport", '"udp" or "serial"'),
    ("pico", _set("transport", "udp"), "transport", "no Wi-Fi"),
    ("esp32", _set("wifi", _DELETE), "wifi.ssid", "Wi-Fi network name"),
    ("pico-w", _set("wifi.ssid", ""), "wifi.ssid", "missing"),
    ("esp32", _set("wifi.ssid", "x" * 33), "wifi.ssid", "32 bytes"),
    ("esp32", _set("wifi.password", 1234), "wifi.password", "string"),
    ("unix", _set("sensors", {"topic": "t"}), "sensors", "list"),
    ("unix", _set("sensors.0.topic", "room/#"), "sensors[0].topic", "without + #"),
    ("unix", _set("sensors.0.topic", ""), "sensors[0].topic", "1..64"),
    ("unix", _set("sensors.0.period_ms", 0), "sensors[0].period_ms", "> 0"),
    ("unix", _set("sensors.0.period_ms", 1.5), "sensors[0].period_ms", "integer"),
    ("unix", _set("sensors.0.kind", None), "sensors[0].kind", "kind"),
    ("unix", _set("sensors", [{"topic": "a", "kind": "sine"}, {"topic": "a", "kind": "sine"}]),
     "sensors[1].topic", "already used"),
    ("unix", _set("bases", [["127.0.0.1", 70000]]), "bases[0]", "[host, port]"),
    ("unix", _set("discovery.port", 0), "discovery.port", "1..65535"),
    ("unix", _set("key", "00" * 15), "key", "got 15 bytes"),
    ("unix", _set("key", "00" * 65), "key", "got 65 bytes"),
    ("unix", _set("key", "zz" * 16), "key", "not valid hex"),
    ("unix", _set("key", 12345), "key", "type int"),
    ("esp32", _set("uart.up.tx", 34), "uart.up.tx", "input-only"),
    ("esp32", _set("uart.up.tx", 7), "uart.up.tx", "SPI flash"),
    ("esp32", _set("uart.up.rx", 11), "uart.up.rx", "SPI flash"),
    ("esp32", _set("uart.up.tx", 40), "uart.up.tx", "does not exist"),
    ("esp32", _set("uart.up.rx", 24), "uart.up.rx", "does not exist"),
    ("esp32", _set("uart.up.id", 0), "uart.up.id", "UART0 is the REPL"),
    ("esp32", _set("uart.down.id", 1), "uart.down.id", "already used by uart.up"),
    ("esp32", _set("uart.down.tx", 17), "uart.down.tx", "already used"),
    ("esp32", _set("uart.up.baud", 0), "uart.up.baud", "1200..5000000"),
    ("esp32", _set("uart", _DELETE), "uart.up", "serial node needs"),
    ("pico", _set("uart.up.tx", 4), "uart.up.tx", "GP4 is TX of UART1"),
    ("pico", _set("uart.up.rx", 2), "uart.up.rx", "UART0 RX: GP1/GP13/GP17"),
    ("pico", _set("uart.down.tx", 24), "uart.down.tx", "UART1 TX: GP4/GP8/GP20"),
    ("pico", _set("uart.up.tx", "GP0"), "uart.up.tx", "GPIO number"),
    ("pico", _set("uart.up.id", 2), "uart.up.id", "0/1"),
    # chain nodes: the firmware's own checks of the chain keys are errors at build time
    ("esp32", _set("uart.up.buad", 9600), "uart.up", "unknown key 'buad'"),
    ("esp32", _set("uart.down.rxbuf", 8), "uart.down.rxbuf", "64..65536"),
    ("pico", _set("window", 0), "window", "1..64"),
    ("pico", _set("link", {"keepalive_ms": 5000}), "link.keepalive_ms", "less than dead_after_ms"),
    ("pico", _set("link", {"rto": 500}), "link", "unknown key 'rto'"),
    ("pico", _set("outbox", {"policy": "newest"}), "outbox.policy", "drop_oldest"),
    ("pico", _set("log", {"segment_bytes": 100}), "log.segment_bytes", "2048..65535"),
    ("pico", _set("durable", "yes"), "durable", "true or false"),
    ("unix-serial", _set("uart.up.path", _DELETE), "uart.up.path", "opens its UART by path"),
    ("unix-serial", _set("uart.down.path", ""), "uart.down.path", "device path"),
    ("unix-serial", _set("uart.up.baud", 100), "uart.up.baud", "1200..5000000"),
    ("unix-serial", _set("uart", _DELETE), "uart.up", '{"path": ..., "baud": ...}'),
    ("unix-serial", _set("uart", [1, 2]), "uart", "expected an object"),
]


def _sample(board: str) -> dict[str, Any]:
    if board == "unix-serial":
        return copy.deepcopy(SERIAL_UNIX)
    cfg = copy.deepcopy(SAMPLES[board] if board != "esp32" else dict(SERIAL_ESP32, wifi={"ssid": "lab"}))
    return cfg


@pytest.mark.parametrize("board,change,field,words", BAD,
                         ids=["%s-%s-%s" % (b, f, w[:12]) for b, _, f, w in BAD])
def test_config_error_names_the_field(board, change, field, words):
    cfg = _sample(board)
    if board == "esp32" and field.startswith("wifi"):
        cfg["transport"] = "udp"
    change(cfg)
    with pytest.raises(BuildError) as err:
        validate_config(board.split("-serial")[0], cfg)
    assert err.value.field == field
    assert str(err.value).startswith("node.json: %s: " % field)
    assert words in str(err.value)


def test_samples_are_valid():
    for board in BOARDS:
        validate_config(board, _sample(board))
    validate_config("pico-w", dict(SERIAL_PICO))          # serial on a Pico W: fine
    validate_config("unix", dict(UDP_UNIX, key="ab" * 16))
    assert validate_config("unix", SERIAL_UNIX) == []
    # a UDP node ignores the chain keys: the firmware's opinion stays a warning
    assert validate_config("unix", dict(UDP_UNIX, window=0)) != []
    validate_config("esp32", dict(UDP_WIFI, key="ab" * 64, extra={"future": True}))  # extra keys ok


def test_unknown_board_and_bad_json(tmp_path):
    with pytest.raises(BuildError) as err:
        validate_config("arduino", UDP_UNIX)
    assert err.value.field == "--board" and "esp32, pico, pico-w, unix" in str(err.value)
    bad = tmp_path / "node.json"
    bad.write_text('{"node": 7,\n "transport": }')
    with pytest.raises(BuildError) as err:
        build_bundle("unix", bad, tmp_path / "out")
    assert "not valid JSON" in str(err.value) and "line 2" in str(err.value)
    with pytest.raises(BuildError) as err:
        build_bundle("unix", tmp_path / "missing.json", tmp_path / "out")
    assert err.value.field == "--config"


def test_cli_chain_config_error_exit_2(tmp_path, capsys):
    cfg = write_config(tmp_path, dict(SERIAL_UNIX, uart={"up": {"baud": 115200}}))
    rc = build.main(["--board", "unix", "--config", str(cfg), "--out", str(tmp_path / "b")])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("starling build: error: node.json: uart.up.path: missing: the unix port "
                          "opens its UART by path")
    assert not (tmp_path / "b").exists()


def test_board_sensor_kinds_are_known_to_the_firmware_check():
    # the board HAL registers mcu_temp / adc / sht3x before node.json is checked at boot
    cfg = dict(UDP_WIFI, sensors=[{"topic": "die", "kind": "mcu_temp", "period_ms": 1000},
                                  {"topic": "pot", "kind": "adc", "pin": 34}])
    assert validate_config("esp32", cfg) == []
    assert validate_config("pico-w", cfg) == []
    warnings = validate_config("pico-w", dict(cfg, sensors=[{"topic": "pot", "kind": "adc",
                                                             "pin": "GP26"}]))
    assert len(warnings) == 1 and "sensors[0].pin" in warnings[0]
    # the unix port has no such kinds: the firmware there would refuse it
    assert any("mcu_temp" in w for w in validate_config("unix", dict(UDP_UNIX, sensors=cfg["sensors"])))
    from firmware import sensors
    assert "mcu_temp" not in sensors.KINDS            # the registration was undone
