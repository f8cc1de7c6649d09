"""A secret made once in the data directory and read by every process that starts on it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def made_once(path: Path, make: Callable[[], str]) -> str:
    """The secret in `path`, made by `make()` if there is none yet (mode 0600).

    Processes starting together on one data directory all get the same secret: each writes its
    candidate to a file of its own and links it into place, which only the first link does."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        candidate = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(make() + "\n")
            os.link(candidate, path)  # never half-written, never replaced
        except FileExistsError:
            pass  # another process made it first: theirs is the one
        finally:
            candidate.unlink()
    return path.read_text().strip()
