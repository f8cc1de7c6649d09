"""Which partitions of users this host serves: all of them (one host), or those it holds leases on."""

from .leases import LeasedOwnership
from .partition import Ownership, Partition
from .static import StaticOwnership

__all__ = ["LeasedOwnership", "Ownership", "Partition", "StaticOwnership"]
