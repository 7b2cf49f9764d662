"""`python -m sim ...`: the simulator without the starling CLI (see sim/cli.py)."""
import sys

from sim.cli import main

sys.exit(main())
