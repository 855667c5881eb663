"""`python3 -m autoglm_mirror ...`: the command line (cli.py)."""
import sys

from .cli import main

sys.exit(main())
