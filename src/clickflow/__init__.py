"""clickflow: real-time event analytics (HTTP collector -> Kafka -> ClickHouse / PostgreSQL)."""

__version__ = "0.1.0"
