"""Exactly-once delivery into stores that cannot join a Kafka transaction.

The pieces, each in its own module:

* :mod:`.intent_log`: before a batch is written, each partition's offset range is recorded
  in the same ClickHouse as the data (``consumer_intents``);
* :mod:`.replay`: after a crash or a rebalance, the recorded ranges at or after the committed
  offset are cut again as exactly the same chunks;
* :mod:`.insert`: every chunk is inserted with a deterministic deduplication token
  (``Chunk.token``), so ClickHouse drops a replayed chunk in the raw table and every rollup;
* :mod:`.chdb_dedup`: with the embedded engine, a crash between a block's dedup record and its
  part is repaired before the data directory is opened again;
* :mod:`.claims`: re-sent copies of an event (same identity, other Kafka coordinates) are
  dropped by an atomic first-writer-wins claim in Redis.

The consumer loop (:mod:`clickflow.kafka.consumer`) drives the first two; the pipelines use
the last three. This package's ``__init__`` imports nothing: :mod:`clickflow.stores.clickhouse`
runs the dedup-log repair, and must be able to import it without the rest.
"""
