"""docchat's load tools: the load generator with its echo floor, and the idle-sessions scenario.

The command line is `bench.cli.main(argv)` (not imported here, so `python -m bench.echo` stays clean).
"""

from .load import Load, LoadConfig, run_load
from .sessions import SessionsConfig, run_sessions

__all__ = ["Load", "LoadConfig", "SessionsConfig", "run_load", "run_sessions"]
