"""Store access: one module per store. Nothing outside clickhouse.py knows chDB from a server."""
