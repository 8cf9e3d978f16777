"""One insert per chunk, with the chunk's deduplication token.

Every pipeline that writes ClickHouse inserts each chunk of a batch through
:func:`insert_chunk`: a replay of the same chunk (after a crash, a retry or a rebalance)
carries the same token, and ClickHouse drops the block in the table and, with
``deduplicate_blocks_in_dependent_materialized_views``, in every rollup fed from it.
"""

from __future__ import annotations

from collections.abc import Sequence

from clickhouse_connect.driver.client import Client

# Settings of every pipeline insert (one batch chunk, with a deduplication token):
# * the rollup blocks a replayed insert produces are dropped too (each schema.sql explains);
# * no parallel parsing: a chunk is a few MB at most, and splitting it across a segmenter
#   and parser threads cost ~1 us per row more CPU than parsing it in the query thread.
PIPELINE_INSERT_SETTINGS = {
    "deduplicate_blocks_in_dependent_materialized_views": 1,
    "input_format_parallel_parsing": 0,
}

# Settings of every chunk insert, rollups or not. A chunk may span any number of a table's
# partitions (a history import: page views of 150 months, ad clicks of 150 days on one Kafka
# partition); ClickHouse refuses an insert block over max_partitions_per_insert_block (100)
# with "Too many partitions for single INSERT block", on every retry. The limit guards against
# a wrong PARTITION BY, not against data: the block is written as one part per partition, each
# part deduplicated by the chunk's token and its partition's place in the block (the same in
# a replay of the same chunk), in the table and in every rollup. Each part takes one entry of
# the table's non_replicated_deduplication_window.
CHUNK_INSERT_SETTINGS = {"throw_on_max_partitions_per_insert_block": 0}


def insert_chunk(
    client: Client,
    table: str,
    rows: bytes,
    token: str,
    *,
    columns: Sequence[str] | None = None,
    fmt: str = "JSONCompactEachRow",
    rollups: bool = True,
) -> None:
    """Insert ``rows`` (already encoded in ``fmt``) as one block deduplicated by ``token``.

    ``rollups=False`` for a table no materialized view reads (the setting then costs a
    lookup of dependent views for nothing)."""
    settings: dict[str, object] = {"insert_deduplication_token": token, **CHUNK_INSERT_SETTINGS}
    if rollups:
        settings.update(PIPELINE_INSERT_SETTINGS)
    client.raw_insert(
        table,
        column_names=list(columns) if columns is not None else None,
        insert_block=rows,
        fmt=fmt,
        settings=settings,
    )
