"""The telecom domain (seed 004): mobile network usage on PostgreSQL, HTTP and gRPC.

    events.telecom (8 partitions, key user_id)
      ├─ telecom-ingest     → telecom.events_raw (monthly partitions) + event_keys     [DLQ]
      └─ telecom-aggregate  → agg_day, agg_month, agg_global_day/month (+ agg_applied)
                               └─ version → Redis ← cached answers ← HTTP + gRPC (queries.py)

events.py (schema), schema_postgres.sql, store.py (writers), pipeline.py, cache.py,
queries.py (the one query module), api.py (HTTP), grpc_server.py + proto/ (gRPC),
ratelimit.py, traffic.py (generator factory), verify.py + cli.py (verify mode, retention),
config.py (CLICKFLOW_TELECOM_* settings).
"""
