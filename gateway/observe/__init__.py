"""What operators see: Prometheus metrics (metrics.py)."""
