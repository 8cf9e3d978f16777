"""Kafka plumbing shared by every domain: topics, producer, the batching consumer, DLQ."""
