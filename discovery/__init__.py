"""Endpoint discovery: sources of pool snapshots (static config now; Consul next)."""

from .base import DiscoverySource, Endpoint, ModelRef, PoolSnapshot
from .static import StaticSource

__all__ = ["DiscoverySource", "Endpoint", "ModelRef", "PoolSnapshot", "StaticSource"]
