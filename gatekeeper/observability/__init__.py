"""Observability: Prometheus metrics (``metrics.py``) and the live dashboard (``dashboard.py``).

Neither adds state the gateway does not already have, beyond label limits, a short
buffer of metric updates (flushed every second) and small ring buffers of recent events.
"""
