"""Smoke test of bench/chain.py: `--quick --json` runs one small configuration (one
MicroPython chain node at 921600 Bd and the simulated-time model beside it) and prints
one JSON object. No timing assertions beyond physics: nothing can beat the line rate."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_json_runs_and_is_consistent():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "chain.py"), "--quick", "--json"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout)          # exactly one JSON object on stdout
    assert res["bench"] == "chain"
    rows = res["rows"]
    assert {r["variant"] for r in rows} == {"mp", "model"}
    for r in rows:
        assert "error" not in r, r
        assert (r["baud"], r["hops"], r["ber"], r["window"]) == (921600, 1, 0.0, 8)
        assert r["line_Bps"] == 92160.0
        tp = r["throughput"]
        assert "error" not in tp, tp
        assert tp["events"] > 0 and tp["event_bytes"] > 0
        # delivered event bytes cannot exceed what crossed the wire, nor the line rate
        ov = tp["overhead"]
        assert 0 < ov["event_bytes"] <= ov["wire_bytes"]
        assert ov["link_and_framing_bytes"] > 0          # frames cost something
        assert tp["event_Bps"] <= r["line_Bps"] * 1.02   # 2 %: the window's edges
        assert 0 < tp["share"] <= tp["line_busy"] <= 1.02
        assert 12 <= tp["event_size"] <= 24                # EVENTs of section 3.1
        assert ov["events_per_frame"] > 1                  # several events per DATA frame
        assert tp["bottleneck"]
        lat = r["latency"]
        assert lat["samples"] > 0
        assert 0 <= lat["per_hop_p50_ms"] <= lat["per_hop_p99_ms"]
        assert lat["frame_time_ms"] > 0
        assert abs(lat["target_ms"] - (2 * lat["frame_time_ms"] + 5)) < 0.02
    mp = next(r for r in rows if r["variant"] == "mp")
    cpu = mp["throughput"]["cpu"]
    assert set(cpu["node_cores"]) == {"1"} and cpu["host_cpus"] >= 1
    # the targets list names the one-hop target for both variants
    names = {(t["target"], t["variant"]) for t in res["targets"]}
    assert ("one clean hop >= 90 % of line rate", "mp") in names
    assert ("one clean hop >= 90 % of line rate", "model") in names
    assert "share" in res["definitions"] and "latency" in res["definitions"]


def test_table_output_lists_the_targets():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "chain.py"), "--quick",
                           "--variants", "model"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert out.startswith("| variant | baud | hops |")
    assert "| model | 921600 | 1 | 0 | 8 |" in out
    assert "one clean hop >= 90 % of line rate" in out
