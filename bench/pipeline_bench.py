"""Throughput of each pipeline stage on a real Kafka-protocol broker, next to a raw baseline.

    python bench/pipeline_bench.py [--messages N] [--bootstrap HOST:PORT] [--only raw,router,...]

Why: a stage's rate means little alone. Each stage is compared with a plain aiokafka consumer
that only copies bytes from one topic to another (the most a Python consumer+producer can do on
this broker), so the ratio shows what the stage's own work costs. Figures are printed, never
asserted: they depend on the machine. See bench/README.md for what each number means.

Every scenario gets fresh topics and consumer groups (a unique topic prefix) and a fresh data
directory, so no run sees another's records, offsets or dedupe state. Input is pre-loaded first;
the clock of a stage starts once all its consumer groups have joined (handlers are held until
then) and stops when a counting consumer (or, for sinks, the JSONL files) has seen all N outputs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # running as a script puts bench/ first, not the repo root
    sys.path.insert(0, str(ROOT))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient  # noqa: E402

import normalizer.app as normalizer_app  # noqa: E402
import router.app as router_app  # noqa: E402
import sinks.app as sinks_app  # noqa: E402
from channels.operator import operator_contact  # noqa: E402
from intake311.bus import ensure_topics  # noqa: E402
from intake311.dedupe import SeenStore  # noqa: E402
from intake311.embedded import EmbeddedKafka  # noqa: E402
from intake311.logging import configure_logging  # noqa: E402
from intake311.pipeline import running_broker, topic_names  # noqa: E402
from intake311.settings import Settings  # noqa: E402
from normalizer.normalize import Normalizer  # noqa: E402
from normalizer.state import StateStore, StoredRequest  # noqa: E402
from router.app import build_router  # noqa: E402
from schemas.contact import RawContact  # noqa: E402
from schemas.ids import delivery_id_for  # noqa: E402
from schemas.request import ServiceRequest  # noqa: E402
from schemas.taxonomy import load_taxonomy  # noqa: E402
from sinks.base import Delivery  # noqa: E402
from sinks.jsonl import JsonlSink, JsonlSinkConfig, line_for  # noqa: E402

SCENARIOS = ("raw", "normalizer", "router", "sinks", "pipeline")
# The city's own files (New Haven): with them the normalizer geocodes, finds districts and
# matches incidents, which is what a real deployment runs.
SHARED_DATA = ROOT.parent / "shared" / "data"
GEO = {
    "address_points": SHARED_DATA / "newhaven_address_points.csv",
    "boundaries": {
        "ward": SHARED_DATA / "newhaven_wards_2012.geojson",
        "neighborhood": SHARED_DATA / "newhaven_neighborhoods.geojson",
    },
}
HAVE_GEO = GEO["address_points"].is_file()  # type: ignore[union-attr]
BATCH = 500  # the stages' default max_batch, used by the raw baseline too
POLL_S = 0.02
# Only the "*" jsonl sink, written out so edits to the packaged default cannot change the figures.
SUBSCRIPTIONS_YAML = 'departments:\n  "*":\n    sinks:\n      - {name: file, type: jsonl}\n'

# Realistic operator reports: the classifier and the address extractor do their real work.
TEXTS = (
    "There is a huge pothole in front of {num} {street}, cars swerve around it",
    "Deep pothole at {num} {street} damaged my tire this morning",
    "The streetlight outside {num} {street} has been out for a week",
    "Street lamp flickering all night near {num} {street}",
    "Graffiti sprayed on the wall of the building at {num} {street}",
    "Someone tagged the bus shelter by {num} {street} with spray paint",
    "Trash was not picked up on {street} this week, bins still full at {num}",
    "Overflowing garbage bags left on the sidewalk at {num} {street}",
    "Loud music and a party every night at {num} {street}, way past midnight",
    "Barking dogs and noise from the construction site at {num} {street} at 5am",
)
STREETS = ("Elm Street", "Chapel Street", "Whalley Avenue", "Orange Street", "State Street", "Dixwell Ave")


def progress(message: str) -> None:
    """Progress on stderr, so stdout holds only the figures."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Result:
    """One measured scenario. ``seconds`` excludes group joins (``join_s``, shown apart);
    ``done`` < ``messages`` means it timed out."""

    name: str
    messages: int
    seconds: float
    done: int
    join_s: float

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0


# ---------------------------------------------------------------------------------------------
# Inputs


def make_contacts(n: int, run: str) -> list[RawContact]:
    """N distinct operator contacts; a third carry the address in its own field, like a call-taker's.

    The words are residents' own (``bench.texts.report_texts``: New Haven's held-out reports),
    the others' address said at their end ("... at 17 Elm Street"); without the city's files,
    ``TEXTS`` around ``STREETS``.
    """
    from bench.texts import report_texts

    real = report_texts()
    now = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
    contacts = []
    for i, (template, street) in enumerate(zip(itertools.cycle(TEXTS), itertools.cycle(STREETS))):
        if i == n:
            break
        num = 10 + (i * 7) % 990
        if real:
            said = real[i % len(real)]
            text = said if i % 3 == 0 else f"{said} at {num} {street}"
        else:
            text = template.format(num=num, street=street)
        contacts.append(
            operator_contact(
                text,
                provider_id=f"{run}-{i}",
                now=now + timedelta(seconds=i),
                address=f"{num} {street}" if i % 3 == 0 else None,
            )
        )
    return contacts


def city_contacts(n: int, run: str) -> list[RawContact]:
    """N contacts from New Haven's real 2014 reports: the residents' words and the address they
    gave, at the time they gave it (the file is replayed 400 days later as often as needed, so a
    second pass does not join the first pass's incidents). About 8% of them are reports of an
    incident someone reported first (bench/incidents_eval.py), as in a real city."""
    import csv

    from bench.classifier_eval import resident_text

    with (SHARED_DATA / "seeclickfix_newhaven_2014.csv").open(newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["Created At Local"]]
    rows.sort(key=lambda r: datetime.strptime(r["Created At Local"], "%m/%d/%Y - %I:%M%p"))
    contacts = []
    for i in range(n):
        row, lap = rows[i % len(rows)], i // len(rows)
        created = datetime.strptime(row["Created At Local"], "%m/%d/%Y - %I:%M%p").replace(tzinfo=UTC)
        contacts.append(
            operator_contact(
                resident_text(row)[:4000] or row["Summary"] or "report",
                provider_id=f"{run}-{i}",
                now=created + timedelta(days=400 * lap),
                address=(row["Address"] or "")[:500] or None,
            )
        )
    return contacts


def contact_records(settings: Settings, contacts: Sequence[RawContact]) -> list[tuple[str, bytes, bytes]]:
    """(topic, key, value) as the channels publish them: keyed by ticket."""
    topic = settings.topics.contacts("operator")
    return [(topic, c.request_id.encode(), c.model_dump_json().encode()) for c in contacts]


def normalized(settings: Settings, contacts: Sequence[RawContact]) -> list[ServiceRequest]:
    normalizer = Normalizer.from_taxonomy(load_taxonomy(settings.taxonomy_file))
    return [normalizer.normalize(c) for c in contacts]


# ---------------------------------------------------------------------------------------------
# Kafka helpers


def producer(bootstrap: str) -> AIOKafkaProducer:
    """Configured like intake311.bus.make_broker: acks=all, no idempotence (Tansu lacks it)."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=False,
        linger_ms=5,
        max_batch_size=256 * 1024,
    )


async def preload(bootstrap: str, records: Sequence[tuple[str, bytes | None, bytes]]) -> None:
    """Put records on the broker fast (pipelined sends, acks gathered per chunk)."""
    start = time.perf_counter()
    prod = producer(bootstrap)
    await prod.start()
    try:
        for offset in range(0, len(records), 2000):
            chunk = records[offset : offset + 2000]
            futures = [await prod.send(topic, value, key=key) for topic, key, value in chunk]
            await asyncio.gather(*futures)
    finally:
        await prod.stop()
    progress(f"  pre-loaded {len(records)} records in {time.perf_counter() - start:.2f}s")


class Progress:
    """Counts outputs; ``wait`` returns when ``target`` is reached or the timeout passes."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.count = 0
        self.finished_at: float | None = None
        self._done = asyncio.Event()

    def add(self, n: int) -> None:
        self.count += n
        if self.count >= self.target and self.finished_at is None:
            self.finished_at = time.perf_counter()
            self._done.set()

    async def wait(self, limit_s: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._done.wait(), limit_s)
        return self._done.is_set()


# The counting consumer's fetch wait: Tansu holds a fetch with nothing new for the whole wait,
# even when records arrive meanwhile, so the last records of a row were seen up to this long
# after they were written (100 ms until 2026-12-02: a third of a 5 000-record router row).
READER_FETCH_WAIT_MS = 5


async def count_topics(
    bootstrap: str, topics: Sequence[str], tally: Progress, *, distinct_keys: bool = False
) -> None:
    """Count records on ``topics`` by reading them (Tansu's end_offsets cannot be trusted).

    No group: partitions are assigned locally, so counting starts without a group join.
    ``distinct_keys``: count each key once (a report joining an incident also re-emits the
    incident's first request, under that request's key: one contact, one count).
    """
    seen: set[bytes | None] = set()
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=READER_FETCH_WAIT_MS,
        max_poll_records=2000,
    )
    await consumer.start()
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=20, max_records=2000)
            if distinct_keys:
                before = len(seen)
                seen.update(r.key for b in batches.values() for r in b)
                tally.add(len(seen) - before)
            else:
                tally.add(sum(len(b) for b in batches.values()))
    finally:
        await consumer.stop()


def new_lines(directory: Path, read: dict[Path, int]) -> int:
    """Whole lines appended to ``directory``'s JSONL files since the last call (a write may be
    observed half done, so a trailing partial line waits for the next call)."""
    if not directory.is_dir():
        return 0
    found = 0
    for path in directory.glob("*.jsonl"):
        with path.open("rb") as handle:
            handle.seek(read.get(path, 0))
            data = handle.read()
        whole = data.rfind(b"\n") + 1
        read[path] = read.get(path, 0) + whole
        found += data.count(b"\n", 0, whole)
    return found


async def count_lines(directory: Path, tally: Progress) -> None:
    """Count JSONL lines as the sinks append them (reads only the new bytes of each file)."""
    read: dict[Path, int] = {}
    while True:
        tally.add(new_lines(directory, read))
        await asyncio.sleep(POLL_S)


async def drop_topics(bootstrap: str, prefix: str) -> None:
    """Delete topics named ``prefix…``: on a shared cluster a bench must not leave dozens behind."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="intake311-bench")
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if names:
            await admin.delete_topics(names)
            progress(f"  deleted {len(names)} topics under {prefix}")
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def background(coro: Awaitable[None]) -> AsyncIterator[None]:
    task = asyncio.ensure_future(coro)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.contextmanager
def patched(module: ModuleType, name: str, value: Any) -> Iterator[None]:
    original = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, original)


def gated(func: Callable[..., Awaitable[Any]], gate: asyncio.Event) -> Callable[..., Awaitable[Any]]:
    """``func`` that first waits for ``gate``: holds a stage at its first await until told to go."""

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        await gate.wait()
        return await func(*args, **kwargs)

    return wrapper


@contextlib.contextmanager
def instrumented(prefix: str, gate: asyncio.Event) -> Iterator[None]:
    """Hold every stage handler until ``gate`` opens (the run's consumer groups are its own:
    groups are named under the topic prefix).

    Why the gate: FastStream starts subscribers one by one and aiokafka's ``start()`` waits for
    the group's assignment, so the first consumer works while later ones (the sinks stage has
    one per department) are still joining. Holding each handler at its first await (publishing,
    or delivering for sinks) until ``running_broker`` has returned keeps join time out of the
    rate; at most one batch per consumer is parsed/normalized before the clock starts.
    """
    with contextlib.ExitStack() as stack:
        for module, name in (
            (normalizer_app, "publish_output"),
            (router_app, "publish_output"),
            (sinks_app, "deliver_batch"),
        ):
            stack.enter_context(patched(module, name, gated(getattr(module, name), gate)))
        yield


# ---------------------------------------------------------------------------------------------
# Scenarios


@dataclass(frozen=True)
class Run:
    """What every scenario needs: the broker, the message count and a scratch directory."""

    bootstrap: str
    messages: int
    scratch: Path
    stamp: str
    external: bool  # a --bootstrap cluster: delete the run's topics afterwards

    @property
    def run_prefix(self) -> str:
        return f"bench{self.stamp}-"

    def prefix(self, scenario: str) -> str:
        return f"{self.run_prefix}{scenario}"

    def settings(self, scenario: str, *, geo: bool = False) -> Settings:
        data_dir = self.scratch / scenario
        data_dir.mkdir(parents=True, exist_ok=True)
        subscriptions = data_dir / "subscriptions.yaml"
        subscriptions.write_text(SUBSCRIPTIONS_YAML)
        return Settings(
            data_dir=data_dir,
            subscriptions_file=subscriptions,
            kafka={
                "bootstrap_servers": [self.bootstrap],
                "topic_prefix": self.prefix(scenario),
                "session_timeout_ms": 2000,
            },
            geo=GEO if geo else {},
        )

    @property
    def timeout(self) -> float:
        return max(60.0, self.messages / 100)


async def bench_raw(run: Run) -> list[Result]:
    """The raw baseline twice: with a short fetch wait (the ceiling, the ratios' denominator) and
    with aiokafka's default 500 ms, which FastStream subscribers (so the stages) use."""
    return [
        await raw_passthrough(run, "raw passthrough", fetch_max_wait_ms=20),
        await raw_passthrough(run, "raw, fetch wait 500", fetch_max_wait_ms=500),
    ]


async def raw_passthrough(run: Run, name: str, *, fetch_max_wait_ms: int) -> Result:
    """Copy bytes topic -> topic with a plain group consumer, pipelined sends and a commit per batch.

    Its clock stops as a stage row's does: when ``count_topics``, reading the output topic in
    this process, has seen every record. Both sides pay for that reader and its fetch wait
    (until 2026-12-02 this row stopped at its last acknowledged send, and every stage row paid
    for its reader alone).

    Why the fetch wait matters: aiokafka keeps one fetch per broker in flight and leaves out
    partitions that still have buffered records; when that fetch names only caught-up partitions,
    the broker holds it for ``fetch_max_wait_ms`` while the buffered ones drain and then wait.
    """
    settings = run.settings(f"raw{fetch_max_wait_ms}")
    prefix = settings.kafka.topic_prefix
    source, target = f"{prefix}.raw.in", f"{prefix}.raw.out"
    await ensure_topics(settings.kafka, [run.bootstrap], [source, target])
    contacts = make_contacts(run.messages, prefix)
    await preload(run.bootstrap, [(source, k, v) for _, k, v in contact_records(settings, contacts)])
    consumer = AIOKafkaConsumer(
        source,
        bootstrap_servers=run.bootstrap,
        group_id=f"{prefix}.raw",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=2000,
        heartbeat_interval_ms=500,
        max_poll_records=BATCH,
        fetch_max_wait_ms=fetch_max_wait_ms,
    )
    prod = producer(run.bootstrap)
    joining = time.perf_counter()
    await asyncio.gather(consumer.start(), prod.start())  # start() returns once the group is joined
    join_s = time.perf_counter() - joining
    started: float | None = None
    done = 0
    tally = Progress(run.messages)
    deadline = time.perf_counter() + run.timeout
    try:
        async with background(count_topics(run.bootstrap, [target], tally)):
            while done < run.messages and time.perf_counter() < deadline:
                batches = await consumer.getmany(timeout_ms=50, max_records=BATCH)
                records = [r for batch in batches.values() for r in batch]
                if not records:
                    continue
                if started is None:
                    started = time.perf_counter()
                futures = [await prod.send(target, r.value, key=r.key) for r in records]
                await asyncio.gather(*futures)
                await consumer.commit()
                done += len(records)
            await tally.wait(max(0.0, deadline - time.perf_counter()))
        ended = tally.finished_at or time.perf_counter()
    finally:
        await asyncio.gather(consumer.stop(), prod.stop())
    return Result(name, run.messages, ended - (started or ended), min(tally.count, run.messages), join_s)


async def measure_stage(
    run: Run, name: str, settings: Settings, stages: list[str], counter: Callable[[Progress], Awaitable[None]]
) -> Result:
    """Run ``stages`` over pre-loaded input until ``counter`` has seen N outputs.

    The clock starts when every consumer group has joined (``running_broker`` returned) and the
    gated handlers are released; it stops when the N-th output is seen.
    """
    gate = asyncio.Event()
    tally = Progress(run.messages)
    with instrumented(settings.kafka.topic_prefix, gate):
        joining = time.perf_counter()
        async with running_broker(settings, stages), background(counter(tally)):
            started = time.perf_counter()
            gate.set()
            progress(f"  {'+'.join(stages)}: groups joined in {started - joining:.1f}s, clock started")
            finished = await tally.wait(run.timeout)
    if not finished:
        progress(f"  TIMEOUT after {run.timeout:.0f}s: {tally.count} of {run.messages} outputs")
    ended = tally.finished_at or time.perf_counter()
    return Result(name, run.messages, ended - started, min(tally.count, run.messages), started - joining)


async def prepare_topics(settings: Settings, bootstrap: str) -> None:
    """Create the pipeline's topics before pre-loading, with the partitions the stages expect."""
    await ensure_topics(settings.kafka, [bootstrap], topic_names(settings))


async def bench_normalizer(run: Run) -> list[Result]:
    """The normalizer without the city's files (synthetic reports), and with them on New Haven's
    real reports (geocoding the address and text, districts, incident matching)."""
    results = []
    for name, geo in (("normalizer", False), ("normalizer+geo", True)):
        if geo and not HAVE_GEO:
            progress(f"  {name}: skipped, {SHARED_DATA} not found")
            continue
        settings = run.settings(name.replace("+", "-"), geo=geo)
        await prepare_topics(settings, run.bootstrap)
        contacts = city_contacts(run.messages, name) if geo else make_contacts(run.messages, name)
        await preload(run.bootstrap, contact_records(settings, contacts))
        results.append(
            await measure_stage(
                run,
                name,
                settings,
                ["normalizer"],
                # A report that joins an incident also re-emits the incident's first request:
                # count the contacts' own requests, not every record on the topic.
                lambda tally, s=settings: count_topics(
                    run.bootstrap, [s.topics.requests], tally, distinct_keys=True
                ),
            )
        )
    return results


def department_topics(settings: Settings) -> list[str]:
    return [settings.topics.department(d) for d in build_router(settings).all_departments()]


async def bench_router(run: Run) -> list[Result]:
    settings = run.settings("router")
    await prepare_topics(settings, run.bootstrap)
    requests = normalized(settings, make_contacts(run.messages, "router"))
    topic = settings.topics.requests
    await preload(
        run.bootstrap, [(topic, r.request_id.encode(), r.model_dump_json().encode()) for r in requests]
    )
    # The default routing table sends each request to exactly one department: N in, N out.
    return [
        await measure_stage(
            run,
            "router",
            settings,
            ["router"],
            lambda tally: count_topics(run.bootstrap, department_topics(settings), tally),
        )
    ]


async def bench_sinks(run: Run) -> list[Result]:
    settings = run.settings("sinks")
    await prepare_topics(settings, run.bootstrap)
    router = build_router(settings)
    requests = normalized(settings, make_contacts(run.messages, "sinks"))
    records: list[tuple[str, bytes | None, bytes]] = []
    for request in requests:
        for d in router.route(request):
            records.append((d.topic, d.request.request_id.encode(), d.request.model_dump_json().encode()))
    spread: dict[str, int] = {}
    for topic, _, _ in records:
        spread[topic.rsplit(".", 1)[-1]] = spread.get(topic.rsplit(".", 1)[-1], 0) + 1
    progress(f"  departments: {', '.join(f'{d}={n}' for d, n in sorted(spread.items()))}")
    await preload(run.bootstrap, records)
    return [
        await measure_stage(
            run,
            "sinks (jsonl)",
            settings,
            ["sinks"],
            lambda tally: count_lines(settings.data_dir / "departments", tally),
        )
    ]


async def bench_pipeline(run: Run) -> list[Result]:
    settings = run.settings("pipeline")
    await prepare_topics(settings, run.bootstrap)
    await preload(run.bootstrap, contact_records(settings, make_contacts(run.messages, "pipeline")))
    return [
        await measure_stage(
            run,
            "whole pipeline",
            settings,
            ["normalizer", "router", "sinks"],
            lambda tally: count_lines(settings.data_dir / "departments", tally),
        )
    ]


BENCHES: dict[str, Callable[[Run], Awaitable[list[Result]]]] = {
    "raw": bench_raw,
    "normalizer": bench_normalizer,
    "router": bench_router,
    "sinks": bench_sinks,
    "pipeline": bench_pipeline,
}


# ---------------------------------------------------------------------------------------------
# Pure functions: what each stage's Python work costs without Kafka


def timed(label: str, n: int, func: Callable[[], object]) -> tuple[str, int, float]:
    start = time.perf_counter()
    func()
    return label, n, time.perf_counter() - start


def pure_rates(n: int, scratch: Path) -> list[tuple[str, int, float]]:
    """Per-record CPU of each stage's logic and storage, measured in a loop."""
    settings = Settings(data_dir=scratch / "pure")
    taxonomy = load_taxonomy(settings.taxonomy_file)
    normalizer = Normalizer.from_taxonomy(taxonomy)
    router = build_router(settings)
    contacts = make_contacts(n, "pure")
    contact_json = [c.model_dump_json().encode() for c in contacts]
    requests = [normalizer.normalize(c) for c in contacts]
    request_json = [r.model_dump_json().encode() for r in requests]
    rows: list[tuple[str, int, float]] = [
        timed("normalize()", n, lambda: [normalizer.normalize(c) for c in contacts]),
        timed("route()", n, lambda: [router.route(r) for r in requests]),
        timed(
            "normalizer handler: parse+normalize+dump",
            n,
            lambda: [
                normalizer.normalize(RawContact.model_validate_json(b)).model_dump_json()
                for b in contact_json
            ],
        ),
        timed(
            "router handler: parse+route+dump",
            n,
            lambda: [
                [d.request.model_dump_json() for d in router.route(ServiceRequest.model_validate_json(b))]
                for b in request_json
            ],
        ),
        timed(
            "sink handler: parse+jsonl line",
            n,
            lambda: [
                line_for(ServiceRequest.model_validate_json(b), "public-works", "d") for b in request_json
            ],
        ),
    ]
    if HAVE_GEO:
        from normalizer.geo import Geo

        geo = Geo.from_settings(Settings(geo=GEO).geo)
        located = Normalizer.from_taxonomy(taxonomy, geo)
        texts = [c.text for c in contacts]
        fresh = Geo.from_settings(Settings(geo=GEO).geo)  # a cold cache: every text seen once
        rows += [
            timed(
                "Geo.place (free text, cold cache)",
                n,
                lambda: [fresh.place(text=t, address=None, lat=None, long=None) for t in texts],
            ),
            timed("normalize() with geo", n, lambda: [located.normalize(c) for c in contacts]),
        ]
    # Storage touched once per batch: measured on a slice so a slow disk cannot stall the run.
    m = min(n, 5 * BATCH)
    scratch_dir = scratch / "pure"
    scratch_dir.mkdir(parents=True, exist_ok=True)
    state = StateStore.sqlite(scratch_dir / "state.sqlite3")

    def put_batch(chunk: Sequence[ServiceRequest]) -> None:
        def work(snap: Any) -> None:
            for r in chunk:
                snap.put_request(StoredRequest(r))

        state.run(work)

    seen = SeenStore(scratch_dir / "delivered.sqlite3")
    sink = JsonlSink(JsonlSinkConfig(name="file"), scratch_dir)
    deliveries = [
        Delivery(r, "public-works", delivery_id_for(r.event_id, "public-works", "file")) for r in requests
    ]

    def batches(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
        return (items[i : i + BATCH] for i in range(0, m, BATCH))

    def seen_round() -> None:
        for chunk in batches(deliveries):
            keys = [d.delivery_id for d in chunk]
            seen.unseen("bench/file", keys)
            seen.mark("bench/file", keys)

    async def write_all() -> None:
        for chunk in batches(deliveries):
            await sink.deliver_many(list(chunk))
        await sink.close()

    try:
        rows += [
            timed(
                f"StateStore.run put ({BATCH}/batch)",
                m,
                lambda: [put_batch(list(b)) for b in batches(requests)],
            ),
            timed(f"SeenStore.unseen+mark ({BATCH}/batch)", m, seen_round),
            timed(f"JsonlSink.deliver_many ({BATCH}/batch)", m, lambda: asyncio.run(write_all())),
        ]
    finally:
        state.close()
        seen.close()
    return rows


# ---------------------------------------------------------------------------------------------
# Main


def print_table(rounds: Sequence[Sequence[Result]], pure: Sequence[tuple[str, int, float]]) -> None:
    """One row per scenario: the median round's figures, and the median of its per-round ratios.

    Each ratio divides a round's stage rate by the raw passthrough of the same round: a stage
    row takes a second or two, and this VM's speed moves by a third between such runs, so a
    ratio to a baseline measured minutes earlier said as much about the machine as the stage.
    """
    print(f"\n{'stage':<20} {'messages':>9} {'seconds':>8} {'msgs/s':>9} {'vs raw':>7} {'join s':>7}")
    names = list(dict.fromkeys(r.name for results in rounds for r in results))
    for name in names:
        mine = [(r, raw) for results in rounds for r, raw in _with_raw(results) if r.name == name]
        ratios = sorted(r.rate / raw for r, raw in mine if raw)
        row = sorted((r for r, _ in mine), key=lambda r: r.rate)[len(mine) // 2]  # the median round
        ratio = f"{statistics.median(ratios):.2f}" if ratios else "-"
        notes = []
        if len(ratios) > 1 and name != "raw passthrough":
            notes.append(f"ratios {ratios[0]:.2f}-{ratios[-1]:.2f} over {len(ratios)} rounds")
        short = [r.done for r, _ in mine if r.done < r.messages]
        if short:
            notes.append(f"TIMEOUT: {min(short)} done")
        note = f"  ({'; '.join(notes)})" if notes else ""
        figures = f"{row.messages:>9} {row.seconds:>8.2f} {row.rate:>9.0f} {ratio:>7} {row.join_s:>7.1f}"
        print(f"{name:<20} {figures}{note}")
    if pure:
        print(f"\n{'pure function (no Kafka)':<44} {'records':>8} {'seconds':>8} {'per s':>9}")
        for label, n, seconds in pure:
            print(f"{label:<44} {n:>8} {seconds:>8.2f} {n / seconds if seconds else 0:>9.0f}")
        raws = [r.rate for results in rounds for r in results if r.name == "raw passthrough" and r.rate]
        if raws:
            # A stage runs its handler's Python for every record, one at a time (one process, one
            # GIL), so it cannot go faster than that handler alone with no Kafka at all: its ratio
            # is at most the handler's rate over the raw passthrough's. (Not a sum of the two: the
            # passthrough's time a record is mostly the broker's, which runs beside the handler.)
            raw = statistics.median(raws)
            print(f"\n{'most a stage ratio can be: handler alone / raw':<44} {'bound':>8}")
            for label, n, seconds in pure:
                if " handler: " in label and n and seconds:
                    print(f"{label.split(' handler')[0]:<44} {n / seconds / raw:>8.2f}")


def _with_raw(results: Sequence[Result]) -> list[tuple[Result, float | None]]:
    """Each result of one round with that round's raw passthrough rate (None: not measured)."""
    raw = next((r.rate for r in results if r.name == "raw passthrough"), None)
    return [(r, raw) for r in results]


async def run_all(args: argparse.Namespace, bootstrap: str, scratch: Path) -> list[list[Result]]:
    """``args.rounds`` rounds of every scenario in ``args.only``, the raw passthrough in each."""
    rounds: list[list[Result]] = []
    for k in range(args.rounds):
        stamp = time.strftime("%Y%m%d%H%M%S") + f"r{k}"
        run = Run(bootstrap, args.messages, scratch / f"round{k}", stamp, bool(args.bootstrap))
        results = []
        for name in args.only:
            progress(f"round {k + 1}/{args.rounds}, {name}: {args.messages} messages")
            try:
                for result in await BENCHES[name](run):
                    progress(f"  {result.name}: {result.done} in {result.seconds:.2f}s = {result.rate:.0f}/s")
                    results.append(result)
            finally:
                if run.external:
                    await drop_topics(bootstrap, run.run_prefix)
        rounds.append(results)
    return rounds


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", "-n", type=int, default=20_000, help="records per scenario")
    parser.add_argument("--bootstrap", help="HOST:PORT of a Kafka cluster; default: start an embedded one")
    parser.add_argument(
        "--only",
        type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
        default=list(SCENARIOS),
        help=f"comma-separated scenarios ({','.join(SCENARIOS)}); the pure-function table always runs",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds of every scenario; a ratio is the median of its rounds'",
    )
    args = parser.parse_args(argv)
    unknown = set(args.only) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    configure_logging("WARNING", "console")
    with tempfile.TemporaryDirectory(prefix="intake311-bench-") as tmp:
        scratch = Path(tmp)
        with contextlib.ExitStack() as stack:
            bootstrap = args.bootstrap
            if not bootstrap:
                embedded = EmbeddedKafka(log_file=scratch / "embedded-broker.log")
                bootstrap = stack.enter_context(embedded).bootstrap
                progress(f"embedded broker on {bootstrap}")
            results = asyncio.run(run_all(args, bootstrap, scratch))
        # After the stages, not before: the pure loops run the same texts through the same
        # process-wide caches (stems, geocoder), which would have started every stage row warm.
        progress(f"pure functions: {args.messages} records")
        pure = pure_rates(args.messages, scratch)
    print_table(results, pure)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
