"""The query app: mounts each domain's router, the dashboard, /healthz and /metrics."""
