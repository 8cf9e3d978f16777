"""The ingest HTTP app (port 8001)."""
