"""Shared pytest fixtures: paths, the MicroPython interpreter, hardware options."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "dual"))

from sim.runtime import micropython_command  # noqa: E402  (re-exported for tests)


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
