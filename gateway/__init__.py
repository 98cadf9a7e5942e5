"""meshgate: gRPC inference mesh gateway (server side)."""

__version__ = "0.1.0"
