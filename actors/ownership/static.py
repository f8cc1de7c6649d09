"""One host serves every partition: the embedded default (SQLite), where no other host can write."""

from __future__ import annotations

from contracts.barrier import flushed
from contracts.subjects import PARTITIONS

from .partition import Ownership


class StaticOwnership(Ownership):
    """Serves all partitions from entry to exit; shutdown drains them all."""

    async def __aenter__(self) -> "StaticOwnership":
        try:
            for number in range(PARTITIONS):
                await self.serve(number, self.deps, flush=False)
            await flushed(self.deps.nc)  # the server knows every subscription before we say we are ready
        except BaseException:
            await self.leave_all()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.leave_all()
