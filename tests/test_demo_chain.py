"""`starling demo --chain`: real MicroPython chain nodes on virtual wires and a base
station on the head's pty, as a subprocess; the base receives exactly what each node
published."""

import json
import subprocess
import sys

import pytest

PY = sys.executable


def _need_micropython():
    try:
        from sim.fleet import micropython_command
        micropython_command()
    except (ImportError, RuntimeError) as e:
        pytest.skip("no MicroPython chain simulator: %s" % e)


def test_demo_chain_is_exact(tmp_path):
    _need_micropython()
    path = tmp_path / "d.json"
    r = subprocess.run([PY, "-m", "base_station.cli", "demo", "--chain", "2", "--duration", "6",
                        "--plain", "--no-db", "--summary-json", str(path)],
                       capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    s = json.loads(path.read_text())
    chain = s["chain"]
    assert chain["drained"] and set(chain["nodes"]) == set(s["nodes"]) == {"1", "2"}
    for node, hop in (("1", 1), ("2", 2)):
        n, published = s["nodes"][node], chain["nodes"][node]["published"]
        assert n["received"] == published > 0, (node, n, published)
        assert (n["lost"], n["duplicates"], n["out_of_order"]) == (0, 0, 0), (node, n)
        assert n["status"]["hop"] == hop
    assert "chain vs base" in r.stdout and r.stdout.count(" exact") == 2
    assert "not with --chain" in subprocess.run(
        [PY, "-m", "base_station.cli", "demo", "--chain", "2", "--loss", "0.1", "--no-db"],
        capture_output=True, text=True, timeout=30, cwd=str(tmp_path)).stderr
