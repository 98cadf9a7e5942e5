"""Endpoints: the live table (table.py), each endpoint's state (state.py) and the background
readiness checks (readiness.py)."""

from .state import EndpointState, Shared
from .table import AdapterMaker, EndpointTable, default_adapter_maker

__all__ = ["AdapterMaker", "EndpointState", "EndpointTable", "Shared", "default_adapter_maker"]
