"""Kafka commands for operators: `clickflow topics`, `clickflow tail`, `clickflow dlq ...`.

They work on any Kafka, and on the embedded broker, whose ListOffsets answers Debian's kcat
and similar tools cannot rely on (see ``kafka.browse``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from clickflow.config import get_settings

dlq_app = typer.Typer(help="Dead letters: list, show and replay them.", no_args_is_help=True)
out = Console()
err = Console(stderr=True)

TopicOpt = Annotated[str, typer.Option("--topic", "-t", help="the topic (or its .dlq)")]
ReasonOpt = Annotated[
    str | None, typer.Option(help="only dead letters whose reason contains this (any case)")
]
SinceOpt = Annotated[
    str | None, typer.Option(help="only dead letters since: 30m, 2h, 7d or an ISO time")
]


def register(app: typer.Typer) -> None:
    app.command()(topics)
    app.command()(tail)
    app.command(
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        add_help_option=False,
    )(kcat)
    app.add_typer(dlq_app, name="dlq")


def _time(ms: int) -> str:
    if ms <= 0:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _printable(raw: bytes | None, limit: int = 2000) -> str:
    """Bytes as text a terminal can show: JSON re-serialized, anything else repr'ed."""
    if raw is None:
        return "(none)"
    try:
        text = orjson.dumps(orjson.loads(raw)).decode()
    except orjson.JSONDecodeError:
        text = repr(raw)
    return text if len(text) <= limit else text[:limit] + f"... ({len(raw)} bytes)"


@contextmanager
def _bars() -> Iterator[Callable[[str, int], Callable[[int], None]]]:
    """Rich progress bars on stderr: ``new(description, total)`` returns an advance callback."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    ) as progress:

        def new(description: str, total: int) -> Callable[[int], None]:
            task = progress.add_task(description, total=total)
            return lambda n: progress.advance(task, n)

        yield new


def _load(topic: str, since: str | None, reason: str | None):
    from clickflow.kafka.redrive import parse_since, read_dead_letters

    try:
        since_ms = parse_since(since)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    with _bars() as new:
        bar: list[Callable[[int], None]] = []
        return read_dead_letters(
            get_settings(),
            topic,
            since_ms,
            reason,
            on_total=lambda n: bar.append(new("reading dead letters", n)),
            on_record=lambda _p: bar[0](1) if bar else None,
        )


@dlq_app.command("list")
def dlq_list(
    topic: TopicOpt,
    reason: ReasonOpt = None,
    since: SinceOpt = None,
    limit: Annotated[int, typer.Option(help="show the newest N")] = 50,
) -> None:
    """Dead letters of a topic: when, which pipeline, from where, why, and if replayed."""
    from clickflow.kafka.redrive import SENT, read_markers, source_topic

    letters = _load(topic, since, reason)
    markers = read_markers(get_settings(), source_topic(topic))
    table = Table(title=f"{len(letters)} dead letters of {source_topic(topic)}")
    for column in ("dlq p/offset", "time (UTC)", "pipeline", "from p/offset"):
        table.add_column(column, no_wrap=True)
    table.add_column("reason", overflow="fold", ratio=1)
    table.add_column("replayed")
    newest = sorted(letters, key=lambda d: d.timestamp_ms)[-limit:] if limit > 0 else []
    for d in newest:
        replayed = markers.get(d.ref)
        table.add_row(
            d.ref,
            _time(d.timestamp_ms),
            escape(d.pipeline),
            f"{d.source_partition}/{d.source_offset}",
            escape(d.reason[:120]),
            "yes" if replayed and replayed.state == SENT else "",
        )
    out.print(table)
    counts: dict[str, int] = {}
    for d in letters:
        counts[d.reason.split(":")[0][:60]] = counts.get(d.reason.split(":")[0][:60], 0) + 1
    for what, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        out.print(f"{n:>8}  {escape(what)}")


@dlq_app.command("show")
def dlq_show(
    topic: TopicOpt,
    ref: Annotated[
        str | None, typer.Argument(help="one dead letter: <partition>/<offset> in the DLQ")
    ] = None,
    reason: ReasonOpt = None,
    since: SinceOpt = None,
    limit: Annotated[int, typer.Option(help="at most N dead letters")] = 10,
) -> None:
    """Dead letters in full: headers, key and original bytes."""
    letters = _load(topic, since, reason)
    if ref is not None:
        letters = [d for d in letters if d.ref == ref.strip()]
        if not letters:
            raise typer.BadParameter(f"no dead letter {ref!r} in {topic} (see `dlq list`)")
    for d in letters[:limit]:
        out.rule(f"{d.ref}  {_time(d.timestamp_ms)}")
        out.print(f"pipeline: {escape(d.pipeline)}")
        out.print(f"from:     {escape(d.topic)} {d.source_partition}/{d.source_offset}")
        out.print(f"reason:   {escape(d.reason)}")
        out.print(f"key:      {escape(_printable(d.key, 500))}")
        out.print(f"value:    {escape(_printable(d.value))}", soft_wrap=True)


@dlq_app.command("replay")
def dlq_replay(
    topic: TopicOpt,
    reason: ReasonOpt = None,
    since: SinceOpt = None,
    wait: Annotated[
        float, typer.Option(help="seconds to wait for the pipelines to handle them")
    ] = 60.0,
    group: Annotated[
        list[str] | None,
        typer.Option(help="also wait for this consumer group (default: the pipelines')"),
    ] = None,
) -> None:
    """Send dead letters back to their topic (once each) and report what became of them."""
    from clickflow.kafka.exceptions import DeliveryFailed, KafkaUnavailable
    from clickflow.kafka.redrive import replay

    letters = _load(topic, since, reason)
    try:
        with _bars() as new:
            report = replay(get_settings(), topic, letters, wait, group or [], new)
    except (DeliveryFailed, KafkaUnavailable) as e:
        raise SystemExit(f"clickflow: {e}") from None
    out.print(
        f"selected {report.selected}, already replayed {report.already_replayed}, "
        f"replayed {report.replayed}: stored {report.stored}, back to the DLQ "
        f"{report.back_to_dlq}, not handled yet {report.pending}"
        + (f" (groups: {', '.join(report.groups)})" if report.groups else " (no pipeline known)")
    )
    typer.echo(
        orjson.dumps(
            {
                "selected": report.selected,
                "already_replayed": report.already_replayed,
                "replayed": report.replayed,
                "stored": report.stored,
                "back_to_dlq": report.back_to_dlq,
                "pending": report.pending,
            }
        ).decode()
    )


def topics(
    names: Annotated[
        list[str] | None, typer.Argument(help="only these topics (default: every topic)")
    ] = None,
) -> None:
    """Topics with their partitions, end offsets and the lag of each consumer group."""
    from confluent_kafka.admin import AdminClient

    from clickflow.kafka.browse import browser, groups_committed, list_topics, partition_ranges
    from clickflow.kafka.exceptions import KafkaUnavailable

    settings = get_settings()
    try:
        found = list_topics(settings)
        if names:
            found = [t for t in found if t in names]
    except KafkaUnavailable as e:
        raise SystemExit(f"clickflow: {e}") from None
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap, "log_level": 0})
    try:
        groups = sorted(g.group_id for g in admin.list_consumer_groups().result(10).valid)
    except Exception:  # not every broker lists groups: lags are then left out
        groups = []
    groups = [g for g in groups if not g.startswith("clickflow-browse-")]
    table = Table(title=f"Kafka at {settings.kafka_bootstrap}")
    for column in ("topic", "partitions", "records", "end offsets", "group lag"):
        table.add_column(column)
    consumer = browser(settings)
    try:
        for name in found:
            ranges = partition_ranges(consumer, name)
            ends = {r.partition: r.high for r in ranges}
            lags = []
            for group, committed in groups_committed(admin, groups, name, list(ends)).items():
                if all(o < 0 for o in committed.values()):
                    continue
                lag = sum(ends[p] - max(o, 0) for p, o in committed.items())
                lags.append(f"{group}: {lag}")
            table.add_row(
                name,
                str(len(ranges)),
                str(sum(r.high - r.low for r in ranges)),
                " ".join(f"{p}:{e}" for p, e in ends.items()),
                "\n".join(lags),
            )
    finally:
        consumer.close()
    out.print(table)


def tail(
    topic: Annotated[str, typer.Argument(help="the topic")],
    n: Annotated[int, typer.Option("-n", help="the last N records of each partition")] = 10,
    follow_: Annotated[bool, typer.Option("--follow", "-f", help="then wait for more")] = False,
) -> None:
    """Records as JSON lines: partition, offset, time, key, headers and the decoded value."""
    from clickflow.kafka.browse import browser, follow, partition_ranges, read_records

    settings = get_settings()
    consumer = browser(settings)
    try:
        ranges = partition_ranges(consumer, topic)
        if not ranges:
            raise SystemExit(f"clickflow: no topic {topic!r} (see `clickflow topics`)")
        start = {r.partition: max(r.low, r.high - max(n, 0)) for r in ranges}
        end = {r.partition: r.high for r in ranges}
        for m in read_records(consumer, topic, start, end):
            typer.echo(_line(m))
        if follow_:
            try:
                for m in follow(consumer, topic, end):
                    typer.echo(_line(m))
            except KeyboardInterrupt:
                pass
    finally:
        consumer.close()


def _line(m) -> str:
    raw = m.value() or b""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        value = raw.decode("utf-8", "replace")
    return orjson.dumps(
        {
            "partition": m.partition(),
            "offset": m.offset(),
            "time": _time(m.timestamp()[1]),
            "key": (m.key() or b"").decode("utf-8", "replace") if m.key() is not None else None,
            "headers": {k: (v or b"").decode("utf-8", "replace") for k, v in m.headers() or []},
            "value": value,
        }
    ).decode()


def kcat(ctx: typer.Context) -> None:
    """Debian's kcat on the embedded broker: `clickflow kcat -L`, `clickflow kcat -C -t T -e`.

    kcat is run with the newer librdkafka that confluent-kafka bundles (Debian's 2.0.2 cannot
    read the broker's ApiVersions answer), and with ``-b`` set to CLICKFLOW_KAFKA_BOOTSTRAP
    unless given."""
    import os
    import shutil

    from clickflow.kafka.compat import kcat_environment

    binary = shutil.which("kcat") or shutil.which("kafkacat")
    if binary is None:
        raise SystemExit("clickflow: kcat is not installed (Debian: apt-get install kcat)")
    args = list(ctx.args)
    if "-b" not in args and not any(a.startswith("-b") and len(a) > 2 for a in args):
        args = ["-b", get_settings().kafka_bootstrap, *args]
    os.execve(binary, [binary, *args], kcat_environment(dict(os.environ)))
