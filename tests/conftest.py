"""Shared pytest fixtures: paths, the MicroPython interpreter, hardware options; and
run()/until() for tests that drive asyncio code."""

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "dual"))

from sim.runtime import micropython_command  # noqa: E402  (re-exported for tests)


def run(coro, timeout=20.0):
    """asyncio.run with an overall timeout (a hung test fails instead of hanging)."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def until(cond, timeout=20.0, what="condition"):
    """Wait until cond() is true, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("%s not met in %.1f s" % (what, timeout))
        await asyncio.sleep(0.005)


def pytest_addoption(parser):
    parser.addoption(
        "--serial-port",
        default=os.environ.get("STARLING_SERIAL_PORT"),
        help="a real serial port (TX jumpered to RX, or a board running Starling) for `hardware` tests",
    )


def pytest_collection_modifyitems(config, items):
    if config.getoption("--serial-port"):
        return
    skip = pytest.mark.skip(reason="needs --serial-port PORT")
    for item in items:
        if "hardware" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def micropython() -> str:
    return micropython_command()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT
