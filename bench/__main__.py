"""`python -m bench load ...` / `python -m bench sessions ...`."""

import sys

from .cli import main

sys.exit(main())
