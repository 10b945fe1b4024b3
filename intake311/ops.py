"""Operator views: which departments exist, where their requests go, and how far behind each
sink is; the service-level report from the case store; dead letters and their replay. Used by
the CLI and the operator console."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from intake311.settings import KafkaSettings, Settings
from schemas.deadletter import DeadLetter

REPLAY_OF = "x-intake311-replay-of"
"""Header on a re-published record: the dead letter it came from (``letter_id``). A stage that
fails on it again copies it into the new letter, so a replay can tell a letter that failed
again after a replay from a first failure."""


def client_options(kafka: KafkaSettings) -> dict[str, Any]:
    """Keyword arguments every aiokafka client of the operator commands needs: the client id and
    the configured security (SASL/TLS, from ``intake311.bus.security_for``).

    Why one place: the pipeline's clients come from ``make_broker``, but ``tail``,
    ``departments`` and ``replay`` build plain aiokafka clients, which connected without TLS or
    SASL to a cluster that requires them (and failed, or worse, spoke plaintext).
    """
    from faststream.kafka.security import parse_security

    from intake311.bus import security_for

    security = security_for(kafka)
    return {"client_id": kafka.client_id, **(parse_security(security) if security is not None else {})}


def tail_consumer(settings: Settings, bootstrap: list[str], topic: str, *, from_beginning: bool) -> Any:
    """The consumer ``intake311 tail`` follows ``topic`` with: no group, nothing committed."""
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest" if from_beginning else "latest",
        **client_options(settings.kafka),
    )


def department_rows(settings: Settings) -> list[dict[str, Any]]:
    """Every department the router can send to, its topic and its (sink, consumer group) pairs."""
    from router.app import build_router
    from sinks.app import departments as sink_departments
    from sinks.app import group_id
    from sinks.subscriptions import load_subscriptions

    subscriptions = load_subscriptions(settings.subscriptions_file)
    router = build_router(settings)
    names = sorted(set(router.all_departments()) | set(sink_departments(settings, subscriptions)))
    return [
        {
            "department": name,
            "topic": settings.topics.department(name),
            "sinks": [
                {"name": s.name, "type": s.type, "group": group_id(settings.topics, name, s.name)}
                for s in subscriptions.sinks_for(name)
            ],
        }
        for name in names
    ]


async def add_backlog(settings: Settings, bootstrap: list[str], rows: list[dict[str, Any]]) -> None:
    """Set ``backlog`` on each sink: records on the department topic its group has not committed.

    Reads end offsets from the broker, so the figure is only as good as the broker's answer
    (the embedded Tansu build's end offsets are approximate).
    """
    options = {**client_options(settings.kafka), "client_id": "intake311-ops"}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **options)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, **options)
    await admin.start()
    await consumer.start()
    try:
        for row in rows:
            partitions = consumer.partitions_for_topic(row["topic"]) or set()
            if not partitions:
                await consumer._client.force_metadata_update()
                partitions = consumer.partitions_for_topic(row["topic"]) or set()
            tps = [TopicPartition(row["topic"], p) for p in sorted(partitions)]
            ends = await consumer.end_offsets(tps) if tps else {}
            for sink in row["sinks"]:
                committed = (
                    await admin.list_consumer_group_offsets(sink["group"], partitions=tps) if tps else {}
                )
                sink["backlog"] = sum(
                    max(
                        0,
                        ends.get(tp, 0)
                        - (committed[tp].offset if tp in committed and committed[tp].offset >= 0 else 0),
                    )
                    for tp in tps
                )
    finally:
        await consumer.stop()
        await admin.close()


async def service_report(
    settings: Settings, since: datetime, until: datetime, by: str | None = None
) -> dict[str, Any]:
    """Volume by channel and service, median time to close and share within the service level;
    with ``by`` (a boundary layer such as ``ward``) the same per district of that layer, with
    ``by="priority"`` per priority."""
    from schemas.taxonomy import load_taxonomy
    from sinks.postgres.store import CaseStore

    if settings.case_store_dsn is None:
        raise ValueError("no case store configured: set INTAKE311_CASE_STORE_DSN")
    taxonomy = load_taxonomy(settings.taxonomy_file)
    async with CaseStore(settings.case_store_dsn.get_secret_value(), taxonomy=taxonomy) as store:
        return (await store.report(since, until, by=by)).as_dict()


def _figure_rows(title: str, groups: dict[str, dict[str, Any]], order: list[str]) -> list[str]:
    """A header and one line per group: received, closed, median hours, SLA share, overdue.

    The name column widens to the longest name (district names run longer than department ids),
    so the numbers stay aligned whatever the city calls its districts.
    """
    width = max([22, *(len(name) + 2 for name in order)])
    columns = f"{'received':>9}{'closed':>8}{'median h':>10}{'within SLA':>12}{'overdue':>9}"
    lines = [f"  {title:<{width}}{columns}"]
    for name in order:
        d = groups[name]
        median = f"{d['median_hours_to_close']:.1f}" if d["median_hours_to_close"] is not None else "-"
        share = f"{d['share_within_sla']:.0%}" if d["share_within_sla"] is not None else "-"
        counts = f"{d['received']:>9}{d['closed']:>8}{median:>10}{share:>12}{d['open_overdue']:>9}"
        lines.append(f"  {name:<{width}}{counts}")
    return lines


def format_report(report: dict[str, Any]) -> str:
    """The report as text a budget office can paste into an email."""
    lines = [
        f"311 service report {report['since'][:10]} .. {report['until'][:10]} (as of {report['as_of'][:16]})",
        f"requests received: {report['received']}   open and overdue: {report['open_overdue']}",
        "",
        "by channel:",
        *(f"  {k:<24}{v:>8}" for k, v in sorted(report["by_channel"].items(), key=lambda kv: -kv[1])),
        "by service:",
        *(f"  {k:<24}{v:>8}" for k, v in sorted(report["by_service"].items(), key=lambda kv: -kv[1])),
        "",
        *_figure_rows("department", report["departments"], sorted(report["departments"])),
    ]
    if report.get("by") and "priorities" in report:
        priorities = report["priorities"]  # already most urgent first
        lines += ["", *_figure_rows("by priority", priorities, list(priorities))]
        if not priorities:
            lines.append("  (no requests in this period)")
    elif report.get("by"):
        from sinks.postgres.store import NO_DISTRICT  # listed last, not among the names

        districts = report["districts"]
        order = sorted(n for n in districts if n != NO_DISTRICT) + [n for n in districts if n == NO_DISTRICT]
        lines += ["", *_figure_rows(f"by {report['by']}", districts, order)]
        if not districts:
            lines.append("  (no requests in this period)")
    return "\n".join(lines)


@dataclass
class ReplayReport:
    """What one replay did (or, in a dry run, would do), so the operator sees every record."""

    replayed: list[DeadLetter] = field(default_factory=list)
    already_replayed: int = 0  # replayed by an earlier run (any operator, any --stage)
    other_stages: int = 0  # left for a replay of their own stage, still replayable
    no_source: int = 0  # letters that do not say where they came from: nowhere to send them
    no_original: int = 0  # too large to keep their original: it is only on the source topic
    not_letters: list[str] = field(default_factory=list)  # "partition/offset: why" of each
    failed_again: int = 0  # of the letters replayed: re-failures of an earlier replay
    considered: int = 0  # records on the dead-letter topic up to the snapshot of its end
    per_stage: dict[str, dict[str, int]] = field(default_factory=dict)  # stage -> outcome -> count

    def count(self, stage: str, outcome: str) -> None:
        """One more letter of ``stage`` with ``outcome`` (replayed, already replayed, …)."""
        counts = self.per_stage.setdefault(stage, {})
        counts[outcome] = counts.get(outcome, 0) + 1


def replayed_topic(settings: Settings) -> str:
    """Where replays record which letters they re-published: shared by every operator."""
    return f"{settings.topics.deadletter}.replayed"


def letter_id(record: ConsumerRecord[Any, Any]) -> str:
    """A dead letter's identity: its place on the dead-letter topic (the same for everyone)."""
    return f"{record.topic}/{record.partition}/{record.offset}"


async def end_offsets(settings: Settings, bootstrap: list[str], topic: str) -> dict[TopicPartition, int]:
    """The end offset (next offset to be written) of every partition of ``topic``, right now."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, **client_options(settings.kafka))
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        return dict(await consumer.end_offsets(tps)) if tps else {}
    finally:
        await consumer.stop()


async def _read_until(
    settings: Settings,
    bootstrap: list[str],
    ends: dict[TopicPartition, int],
    idle_s: float,
    progress: Callable[[str], None] | None = None,
    *,
    bounded: bool = True,
) -> list[ConsumerRecord[Any, Any]]:
    """Every record from the beginning up to ``ends`` (a snapshot of the end offsets), no further.

    Bounded by the snapshot, not by the topic going quiet: a replayed record that fails again is
    dead-lettered at a new offset, and a running pipeline keeps adding letters, so "read until
    idle" could read for ever (and a run would see its own re-failures). ``idle_s`` only stops
    a read the broker cannot complete (the embedded broker's end offsets are approximate).
    No consumer group: nothing is committed, so reading never hides a record from the next run.
    ``bounded=False`` reads every partition of ``ends`` until idle instead (the replay marks:
    a mark written just before is sometimes still beyond the end offsets the embedded broker
    reports, and a missed mark would replay its letter twice; marks grow only with replays).
    """
    if not bounded:
        ends = {tp: 2**62 for tp in ends}
    todo = {tp: end for tp, end in ends.items() if end > 0}
    if not todo:
        return []
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        session_timeout_ms=settings.kafka.consumer_session_timeout_ms,
        **client_options(settings.kafka),
    )
    await consumer.start()
    records: list[ConsumerRecord[Any, Any]] = []
    total = sum(todo.values())
    try:
        consumer.assign(list(todo))
        await consumer.seek_to_beginning(*todo)
        last = time.monotonic()
        while todo and time.monotonic() - last < idle_s:
            batches = await consumer.getmany(*todo, timeout_ms=200, max_records=500)
            for tp, batch in batches.items():
                records.extend(r for r in batch if r.offset < ends[tp])
                last = time.monotonic()
            for tp in list(todo):
                if await consumer.position(tp) >= todo[tp]:
                    del todo[tp]
            if batches and progress is not None:
                progress(f"read {len(records)} of {total} record(s) of {next(iter(ends)).topic}")
    finally:
        await consumer.stop()
    return records


@dataclass(frozen=True)
class LetterRow:
    """One record of the dead-letter topic as an operator sees it."""

    letter_id: str  # see ``letter_id``: what ``replay(only=...)`` takes
    letter: DeadLetter | None  # None: the record is not a dead letter (``problem`` says why)
    replayed: bool  # a replay already re-published it
    problem: str | None = None

    @property
    def replayable(self) -> bool:
        return (
            self.letter is not None
            and not self.replayed
            and bool(self.letter.source_topic)
            and self.letter.original_encoding != "omitted"
        )


async def dead_letters(
    settings: Settings, bootstrap: list[str], *, limit: int = 200, idle_s: float = 2.0
) -> list[LetterRow]:
    """The newest ``limit`` records of the dead-letter topic, newest first, each marked replayed
    or not (read as ``replay`` reads them: bounded by a snapshot of the end, no consumer group)."""
    from intake311.bus import ensure_topics

    topic = settings.topics.deadletter
    marks_topic = replayed_topic(settings)
    await ensure_topics(settings.kafka, bootstrap, [topic, marks_topic])
    letter_ends = await end_offsets(settings, bootstrap, topic)
    mark_ends = await end_offsets(settings, bootstrap, marks_topic)
    done = {
        r.key.decode(errors="replace")
        for r in await _read_until(settings, bootstrap, mark_ends, idle_s, bounded=False)
        if r.key
    }
    records = await _read_until(settings, bootstrap, letter_ends, idle_s)
    records.sort(key=lambda r: (r.timestamp, r.partition, r.offset), reverse=True)
    rows = []
    for record in records[:limit]:
        try:
            letter: DeadLetter | None = DeadLetter.model_validate_json(record.value or b"")
            problem = None
        except ValueError as exc:
            letter, problem = None, str(exc).splitlines()[0][:200]
        rows.append(LetterRow(letter_id(record), letter, letter_id(record) in done, problem))
    return rows


async def replay(
    settings: Settings,
    bootstrap: list[str],
    *,
    stage: str | None = None,
    only: Collection[str] | None = None,
    dry_run: bool = False,
    idle_s: float = 2.0,
    progress: Callable[[str], None] | None = None,
) -> ReplayReport:
    """Re-publish dead letters' original bytes to their source topics, each letter once.

    A run first takes a snapshot of the dead-letter topic's end offsets and considers only the
    letters below it, so it always ends: what it replays and fails again lands beyond the
    snapshot, for the next run (each re-published record names its letter in ``REPLAY_OF``,
    which the new letter keeps, counted as ``failed_again`` when that one is replayed).
    Letters a replay already re-published are skipped, as recorded on ``replayed_topic``
    (keyed by ``letter_id``). That record is on the cluster, so every operator sees it;
    ``--stage`` only chooses which letters to replay and marks just those, so other stages'
    letters stay replayable. Records on the topic that are not dead letters are skipped and
    reported, never fatal. Marks are written after the replayed records are acknowledged: a
    crash in between replays those letters again next time, which is harmless because ids are
    stable downstream; so are two operators replaying at the same moment. ``dry_run`` reports
    what would be replayed, publishing and marking nothing. ``progress`` is told what is done.
    ``only``: just the letters with these ``letter_id``s (the console's replay of one letter);
    the others are left as they are, counted as other stages' letters are.
    """
    from intake311.bus import ensure_topics

    say = progress or (lambda _: None)
    topic = settings.topics.deadletter
    marks_topic = replayed_topic(settings)
    await ensure_topics(settings.kafka, bootstrap, [topic, marks_topic])
    letter_ends = await end_offsets(settings, bootstrap, topic)
    mark_ends = await end_offsets(settings, bootstrap, marks_topic)
    say(f"{topic}: {sum(letter_ends.values())} record(s) up to now; later ones are left for the next run")
    done = {
        r.key.decode(errors="replace")
        for r in await _read_until(settings, bootstrap, mark_ends, idle_s, bounded=False)
        if r.key
    }
    report = ReplayReport()
    todo: list[tuple[str, DeadLetter]] = []
    letters = await _read_until(settings, bootstrap, letter_ends, idle_s, say)
    report.considered = len(letters)
    for record in letters:
        try:
            letter = DeadLetter.model_validate_json(record.value or b"")
        except ValueError as exc:
            report.not_letters.append(f"{record.partition}/{record.offset}: {str(exc).splitlines()[0][:120]}")
            continue
        if (stage and letter.stage != stage) or (only is not None and letter_id(record) not in only):
            report.other_stages += 1
            report.count(letter.stage, "other stage")
        elif not letter.source_topic:
            report.no_source += 1
            report.count(letter.stage, "no source topic")
        elif letter.original_encoding == "omitted":
            report.no_original += 1
            report.count(letter.stage, "no original")
        elif letter_id(record) in done:
            report.already_replayed += 1
            report.count(letter.stage, "already replayed")
        else:
            todo.append((letter_id(record), letter))
            report.count(letter.stage, "would replay" if dry_run else "replayed")
            report.failed_again += REPLAY_OF in letter.headers
    report.replayed = [letter for _, letter in todo]
    if dry_run or not todo:
        return report
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, **client_options(settings.kafka)
    )
    await producer.start()
    try:
        sends = []
        for ident, letter in todo:
            headers = [
                (k, v.encode()) for k, v in letter.headers.items() if k not in ("content-type", REPLAY_OF)
            ]
            sends.append(
                await producer.send(
                    letter.source_topic or "",
                    letter.original,
                    key=letter.key.encode() if letter.key else None,
                    headers=[("content-type", b"application/json"), (REPLAY_OF, ident.encode()), *headers],
                )
            )
        for sent in sends:
            await sent
        say(f"{len(sends)} record(s) re-published; marking them replayed")
        now = datetime.now(UTC).isoformat()
        marks = [
            await producer.send(
                marks_topic,
                json.dumps({"stage": letter.stage, "source_topic": letter.source_topic, "at": now}).encode(),
                key=ident.encode(),
            )
            for ident, letter in todo
        ]
        for mark in marks:
            await mark
    finally:
        await producer.stop()
    return report


async def replay_dead_letters(
    settings: Settings,
    bootstrap: list[str],
    *,
    stage: str | None = None,
    dry_run: bool = False,
    idle_s: float = 2.0,
) -> list[DeadLetter]:
    """The letters ``replay`` re-published (or would, with ``dry_run``); see ``replay``."""
    report = await replay(settings, bootstrap, stage=stage, dry_run=dry_run, idle_s=idle_s)
    return report.replayed
