"""Operational metrics of the service (Prometheus)."""
