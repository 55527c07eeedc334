"""Grafana dashboards of coderd: `dashboard.py` builds `coderd.json` (python -m metrics.grafana.dashboard)."""
