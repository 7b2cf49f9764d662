"""Runs every test function of tests/dual/ under the real MicroPython unix port.

The same modules are collected by pytest on CPython; here each one is executed in a
`micropython` process by tests/mp_runner.py and every function must pass there too.
"""

import ast
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, micropython_command

DUAL = ROOT / "tests" / "dual"


def _test_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    return sorted(
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
    )


CASES = [
    (path.stem, name)
    for path in sorted(DUAL.glob("test_*.py"))
    for name in _test_functions(path)
]

_results: dict[str, dict[str, str]] = {}


def _run_module(module: str) -> dict[str, str]:
    if module not in _results:
        proc = subprocess.run(
            [micropython_command(), "-X", "heapsize=8M", str(ROOT / "tests" / "mp_runner.py"),
             str(ROOT), str(DUAL), module],
            capture_output=True, text=True, timeout=600, cwd=str(ROOT),
        )
        outcome: dict[str, str] = {"__output__": proc.stdout + proc.stderr}
        for line in proc.stdout.splitlines():
            if line.startswith("PASS "):
                outcome[line[5:].strip()] = "PASS"
            elif line.startswith("FAIL "):
                name, _, error = line[5:].partition(":")
                outcome[name.strip()] = "FAIL:" + error
        _results[module] = outcome
    return _results[module]


def test_dual_modules_exist():
    assert CASES, "tests/dual/ holds no test functions"


@pytest.mark.parametrize("module,name", CASES, ids=[f"{m}::{n}" for m, n in CASES])
def test_on_micropython(module, name):
    outcome = _run_module(module)
    result = outcome.get(name)
    assert result is not None, f"{name} did not run under micropython:\n{outcome['__output__'][-3000:]}"
    assert result == "PASS", f"{name} failed under micropython: {result}\n{outcome['__output__'][-3000:]}"
