"""Make chDB's insert-deduplication logs truthful again after a crash (embedded mode only).

A MergeTree table with ``non_replicated_deduplication_window`` appends each new block's ID
to ``deduplication_logs/`` and only then renames the block's part into the table, both
under the table's parts lock. A process that dies between the two leaves a record whose
part is gone: the exactly-once replay of that chunk, with the same token, would be dropped
as a duplicate and the chunk lost from that table (docs/design.md). With chDB
the engine dies with the consumer, so before a process first opens a data directory,
each table's last record is checked against its part directories. Under the parts lock no
other block can be numbered between a record and its rename, so only the last record can
lack its part, and a part holding its block number exists iff it was committed (merged or
not). A record without its part gets a DROP record, which is what ClickHouse itself appends
when a part is dropped; the log then forgets the block and the replay inserts it.
"""

from __future__ import annotations

import fcntl
import re
from dataclasses import dataclass
from pathlib import Path

# partition_min_max_level[_mutation], as MergeTreePartInfo names parts
PART_NAME = re.compile(r"(?P<partition>.+?)_(?P<min>\d+)_(?P<max>\d+)_\d+(?:_\d+)?")
_ADD, _DROP = "1", "2"


@dataclass(frozen=True, slots=True)
class ForgottenBlock:
    """A deduplication record dropped because its part was never committed."""

    table_dir: Path
    part: str
    block_id: str


def forget_uncommitted_blocks(data_dir: Path) -> list[ForgottenBlock]:
    """Append a DROP record for every table whose last ADD record has no part on disk.

    Call it before this process opens ``data_dir``. It holds the lock chDB holds while a
    process has the directory open (``flock`` on its ``status`` file), and does nothing if
    another process holds it: that process's inserts may be between record and rename."""
    status = data_dir / "status"
    if not status.exists():
        return _forget(data_dir)
    with status.open("rb") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return []
        try:
            return _forget(data_dir)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _forget(data_dir: Path) -> list[ForgottenBlock]:
    forgotten: list[ForgottenBlock] = []
    for logs_dir in sorted(data_dir.glob("store/*/*/deduplication_logs")):
        found = _last_record(logs_dir)
        if found is None:
            continue
        log_file, (op, part, block_id) = found
        name = PART_NAME.fullmatch(part)
        if op != _ADD or name is None:
            continue
        if _committed(logs_dir.parent, name["partition"], int(name["min"])):
            continue
        with log_file.open("a", encoding="utf-8") as out:
            out.write(f"{_DROP}\t{part}\t{block_id}\n")
        forgotten.append(ForgottenBlock(logs_dir.parent, part, block_id))
    return forgotten


def _last_record(logs_dir: Path) -> tuple[Path, tuple[str, str, str]] | None:
    """The newest complete record and the log file holding it."""
    logs = sorted(
        logs_dir.glob("deduplication_log_*.txt"), key=lambda p: int(p.stem.rsplit("_", 1)[1])
    )
    for log_file in reversed(logs):
        text = log_file.read_text(encoding="utf-8", errors="replace")
        if text and not text.endswith("\n"):
            return None  # a torn last record: ClickHouse does not load it anyway
        for line in reversed(text.splitlines()):
            fields = line.split("\t")
            if len(fields) == 3:
                return log_file, (fields[0], fields[1], fields[2])
    return None


def _committed(table_dir: Path, partition: str, block: int) -> bool:
    """Whether a part directory (not a temporary one) holds ``block`` of ``partition``."""
    for entry in table_dir.iterdir():
        if entry.name.startswith(("tmp", "delete_tmp")) or not entry.is_dir():
            continue
        name = PART_NAME.fullmatch(entry.name)
        if (
            name is not None
            and name["partition"] == partition
            and int(name["min"]) <= block <= int(name["max"])
        ):
            return True
    return False
