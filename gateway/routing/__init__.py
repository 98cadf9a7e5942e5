"""Endpoint selection."""
