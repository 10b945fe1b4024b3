"""Assembling stages into a process: one stage alone, or the whole pipeline for a small city.

This is the composition root, the one module that knows every stage. Stages stay unaware of
each other: each exposes ``register(broker, settings, stack)`` and talks only through Kafka.

Stages: ``web`` (Open311 API, resident form, channel webhooks), ``channels`` (channel
background loops and messages to residents), ``normalizer``, ``router``, ``sinks``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from faststream.kafka import KafkaBroker
from faststream.specification import AsyncAPI

from intake311 import __version__
from intake311.bus import BusWatch, kafka_producer, make_broker
from intake311.commits import close_all as close_commits
from intake311.commits import discard_all as discard_commits
from intake311.embedded import EmbeddedKafka, embedded_bootstrap_file
from intake311.health import (
    HEALTH_PATHS,
    Probes,
    Readiness,
    broker_check,
    consumers_check,
    postgres_check,
    serve_probes,
)
from intake311.logging import get_logger
from intake311.metrics import Metrics
from intake311.metrics import installed as installed_metrics
from intake311.settings import Settings
from intake311.stage import settle_gc
from intake311.tracing import configure_tracing, instrument_app, instrument_broker
from intake311.tracing import shutdown as shutdown_tracing

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import TracerProvider

    from channels.runtime import ChannelSet

log = get_logger(__name__)

# Consuming stages: name -> "module:function" registering its subscribers on a broker.
STAGES: dict[str, str] = {
    "normalizer": "normalizer.app:register",
    "router": "router.app:register",
    "sinks": "sinks.app:register",
}
WEB = "web"
CHANNELS = "channels"
ALL = (WEB, CHANNELS, *STAGES)
# Channels whose raw topics exist from the start, so the normalizer's pattern subscription
# finds them at once (a topic created later is picked up at the next metadata refresh).
BUILTIN_CHANNELS = ("web", "open311", "operator")

Register = Callable[[KafkaBroker, Settings, contextlib.AsyncExitStack], Awaitable[None]]


def _load(ref: str) -> Register:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def topic_names(settings: Settings) -> list[str]:
    """Every topic the built-in stages use, created up front with the configured partitions."""
    from router.app import build_router

    topics = settings.topics
    names = [topics.requests, topics.deadletter, topics.status, topics.external_refs]
    names += [topics.contacts(c) for c in (*BUILTIN_CHANNELS, *settings.channels)]
    names += [topics.outbound(c) for c in settings.channels]
    names += [topics.department(d) for d in build_router(settings).all_departments()]
    return names


def asyncapi(broker: KafkaBroker) -> AsyncAPI:
    """The AsyncAPI document, generated from the subscribers and publishers actually registered."""
    return AsyncAPI(
        broker,
        title="intake311",
        version=__version__,
        description="Topics and payloads of the intake311 pipeline: contacts -> requests -> departments.",
    )


async def describe(settings: Settings) -> AsyncAPI:
    """The AsyncAPI document of every stage, without connecting to Kafka."""
    async with contextlib.AsyncExitStack() as stack:
        broker = make_broker(settings.kafka, settings.kafka.bootstrap_servers or ["embedded:9092"])
        for stage in STAGES:
            await _load(STAGES[stage])(broker, settings, stack)
        _document_shared_topics(broker, settings)
        return asyncapi(broker)


def _document_shared_topics(broker: KafkaBroker, settings: Settings) -> None:
    """Publishers for the topics no stage registered here documents: dead letters (every stage
    writes them), status changes (the status API and sinks write them) and each channel's
    outbound topic (the channels process consumes them, and it is not loaded here). Other teams
    consume these, so they belong in the contract."""
    from channels.plugin import available_channels
    from schemas.deadletter import DeadLetter
    from schemas.external import ExternalRef
    from schemas.outbound import OutboundMessage
    from schemas.status import StatusChange

    topics = settings.topics
    broker.publisher(
        topics.deadletter,
        schema=DeadLetter,
        title="deadletter",
        description="What a stage could not process: the original bytes, the reason, its source topic, "
        "partition and offset. `intake311 replay` re-publishes them.",
    )
    broker.publisher(
        topics.status,
        schema=StatusChange,
        title="status changes",
        description="Status changes to requests (acknowledged, in progress, closed), keyed by request_id.",
    )
    broker.publisher(
        topics.external_refs,
        schema=ExternalRef,
        title="external ids",
        description="Ids the city's own systems gave our requests (the open311 sink), keyed by request_id.",
    )
    for channel in sorted(set(available_channels()) | set(settings.channels)):
        broker.publisher(
            topics.outbound(channel),
            schema=OutboundMessage,
            title=f"outbound {channel}",
            description=f"Messages to residents, sent by the {channel} channel.",
        )


@dataclass
class Runtime:
    """What a running process has: the started broker and its channel plugins."""

    broker: KafkaBroker
    channels: ChannelSet | None
    settings: Settings
    case_store: Any = None  # sinks.postgres.CaseStore when settings.case_store_dsn is set
    watch: BusWatch | None = None  # notices a broker that lost its topics; gates web promises
    probes: Probes | None = None  # /metrics, /health/live, /health/ready of this process
    tracer_provider: TracerProvider | None = None  # intake311.tracing; a no-op one when off
    servers: Sequence[str] = ()  # the bootstrap servers the broker was started with


async def rejoin(broker: KafkaBroker) -> None:
    """Fresh consumers for every subscriber, after the broker came back empty.

    Why not let aiokafka carry on: its consumers keep their old fetch positions, beyond the end
    of the new (empty) logs, and wait there forever. New consumers find no committed offsets on
    the fresh broker and start from the earliest record (``auto_offset_reset="earliest"``).
    """
    subscribers = list(broker.subscribers)
    discard_commits(subscribers)  # pending offsets count records of the logs that are gone
    await asyncio.gather(*(s.stop() for s in subscribers), return_exceptions=True)
    await asyncio.gather(*(s.start() for s in subscribers))
    # The producer's partition counts are the old broker's: a topic the new one auto-created on a
    # publish has its own default (4 on Tansu), and a record sent to a partition it lacks fails
    # (or lands where no consumer reads) until aiokafka's next metadata refresh, minutes later.
    if (producer := kafka_producer(broker)) is not None:
        await producer.client.force_metadata_update()


def process_metrics(settings: Settings, broker: KafkaBroker) -> Metrics:
    """The process's one registry: intake311's metrics and FastStream's Kafka metrics in it.

    FastStream's middleware counts every message consumed and published (sizes, durations,
    exceptions by subscriber/topic); intake311's own metrics say what those messages meant.
    """
    from faststream.kafka.prometheus import KafkaPrometheusMiddleware

    metrics = Metrics(district_layer=settings.metrics_district_layer)
    broker.add_middleware(KafkaPrometheusMiddleware(registry=metrics.registry, app_name="intake311"))
    return metrics


def readiness_of(
    settings: Settings, stages: Sequence[str], broker: KafkaBroker, watch: BusWatch
) -> Readiness:
    """What this process needs to do its work: the broker, its consumers, and its stores.

    The consumers get three session timeouts to settle (a group's join takes about one); the
    stores are the PostgreSQL ones only: a SQLite file on the local disk is not a service that
    can be down while the process runs.
    """
    readiness = Readiness()
    readiness.add("broker", broker_check(watch))
    settle_s = max(10.0, 3 * settings.kafka.consumer_session_timeout_ms / 1000)
    readiness.add("consumers", consumers_check(lambda: broker.subscribers, settle_s))
    if settings.case_store_dsn is not None and (WEB in stages or "sinks" in stages):
        readiness.add("case store", postgres_check(settings.case_store_dsn.get_secret_value()))
    state_dsn = settings.incidents.state_dsn or settings.case_store_dsn
    if "normalizer" in stages and state_dsn is not None:
        readiness.add("normalizer state store", postgres_check(state_dsn.get_secret_value()))
    return readiness


async def _sample(metrics: Metrics, broker: KafkaBroker, watch: BusWatch) -> None:
    """Refresh the sampled gauges (broker reachability, consumer lag) just before a scrape."""
    metrics.sample_broker(watch)
    await metrics.sample_consumers(broker.subscribers)


@contextlib.asynccontextmanager
async def running(
    settings: Settings, stages: Sequence[str], *, span_exporter: SpanExporter | None = None
) -> AsyncIterator[Runtime]:
    """A started broker with ``stages`` registered, on the configured or an embedded cluster.

    ``span_exporter`` (tests) turns tracing on into that exporter, OTLP or not.
    """
    from schemas.messages import use_messages_dir

    use_messages_dir(settings.messages_dir)  # every stage of the process talks with the city's words
    embedded: EmbeddedKafka | None = None
    servers = settings.kafka.bootstrap_servers
    if settings.kafka.embedded:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        storage = settings.kafka.embedded_storage
        embedded = EmbeddedKafka(
            log_file=settings.data_dir / "embedded-broker.log",
            storage=storage,
            data_dir=settings.data_dir / "broker" if storage == "durable" else None,
        )
        servers = [await asyncio.to_thread(embedded.start)]
        announce = embedded_bootstrap_file(settings)
        announce.parent.mkdir(parents=True, exist_ok=True)
        announce.write_text(servers[0])
    try:
        async with contextlib.AsyncExitStack() as stack:
            broker = make_broker(settings.kafka, servers, metadata_max_age_ms=30_000)
            metrics = process_metrics(settings, broker)
            tracer_provider = configure_tracing(settings, span_exporter)
            stack.callback(shutdown_tracing, tracer_provider)  # flushed after the broker stops
            instrument_broker(broker, tracer_provider)
            channel_set = None
            topics = topic_names(settings)
            # Created before the channels so their publishers refuse to promise on a lost broker.
            watch = BusWatch(settings.kafka, servers, [], prefix=settings.topics.prefix)
            with installed_metrics(metrics):  # what the stages count into (metrics.current())
                if WEB in stages or CHANNELS in stages:
                    from channels.runtime import ChannelSet

                    channel_set = await ChannelSet.open(settings, broker, stack, watch=watch)
                    topics += channel_set.topic_names()
                    if CHANNELS in stages:
                        channel_set.register_outbound(broker, stack)
                for stage in stages:
                    if stage in STAGES:
                        await _load(STAGES[stage])(broker, settings, stack)
            watch.names = sorted(set(topics))
            stack.push_async_callback(watch.stop)
            await watch.establish_patiently()  # ensure_topics, then the epoch marker; waits for the broker
            settle_gc()  # what every stage built is kept for good: out of the collector's passes
            await broker.start()
            # Stop consuming before the stages' resources close (the stack unwinds last-in first).
            stack.push_async_callback(broker.stop)
            # Before the consumers stop: commit what their handled batches reached (intake311/commits.py).
            stack.push_async_callback(close_commits, broker.subscribers)
            watch.rejoin = functools.partial(rejoin, broker)
            await watch.watch()
            stack.push_async_callback(watch.stop)  # before broker.stop: no rejoin while stopping
            if channel_set is not None and CHANNELS in stages:
                await channel_set.start()
            case_store = None
            if WEB in stages and settings.case_store_dsn is not None:
                from sinks.postgres.store import CaseStore

                case_store = await stack.enter_async_context(
                    CaseStore(settings.case_store_dsn.get_secret_value())
                )
            log.info(
                "stages started",
                stages=list(stages),
                bootstrap=",".join(servers),
                channels=channel_set.names if channel_set else [],
            )
            probes = Probes(
                metrics,
                readiness_of(settings, stages, broker, watch),
                sample=functools.partial(_sample, metrics, broker, watch),
                channels=functools.partial(channel_health, channel_set) if channel_set is not None else None,
            )
            yield Runtime(broker, channel_set, settings, case_store, watch, probes, tracer_provider, servers)
    finally:
        if embedded is not None:
            embedded.stop()
            embedded_bootstrap_file(settings).unlink(missing_ok=True)


def web_app(runtime: Runtime) -> Any:
    """The web channel bound to the running broker, with every channel's webhooks mounted."""
    from channels.base import KafkaContactPublisher
    from channels.web import create_app
    from schemas.taxonomy import load_taxonomy

    settings = runtime.settings
    spec = asyncapi(runtime.broker)
    lookup = None
    if runtime.case_store is not None:
        from channels.web.lookup import accepted_requests

        lookup = StoreFirstLookup(runtime.case_store, accepted_requests(settings))
    app = create_app(
        settings,
        KafkaContactPublisher(runtime.broker, settings.topics, watch=runtime.watch),
        load_taxonomy(settings.taxonomy_file),
        lookup=lookup,
        asyncapi=lambda: spec.to_specification().to_jsonable(),
    )
    if runtime.case_store is not None:
        from sinks.api import department_routes
        from sinks.requests_api import request_api_routes

        app.include_router(department_routes(settings, runtime.broker, runtime.case_store))
        app.include_router(request_api_routes(settings, runtime.case_store))
    mount_console(app, runtime)
    if runtime.probes is not None:
        # The process's honest /healthz (= /health/ready) replaces the web channel's constant one.
        app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) not in HEALTH_PATHS]
        app.router.routes[:0] = runtime.probes.routes()
    if runtime.channels is not None:
        runtime.channels.mount(app)

    if runtime.tracer_provider is not None:
        instrument_app(app, runtime.tracer_provider)
    return app


def mount_console(app: Any, runtime: Runtime) -> None:
    """The operator console at ``/console``, when it has a case store to read and a session secret.

    Operators configured without a secret (or without a case store) stop the process at start:
    the city expects the screen, so a silent absence would be found only when someone needs it.
    """
    from router.app import build_router

    settings = runtime.settings
    wanted = bool(settings.console.operators) or settings.console.session_secret is not None
    if not wanted:
        return
    if settings.console.session_secret is None:
        raise ValueError(
            "console.operators are configured but console.session_secret is not "
            "(INTAKE311_CONSOLE__SESSION_SECRET, at least 32 characters)"
        )
    if runtime.case_store is None:
        raise ValueError(
            "the operator console reads the case store: set case_store_dsn (INTAKE311_CASE_STORE_DSN)"
        )
    from schemas.taxonomy import load_taxonomy
    from sinks.console.app import PREFIX, Console, console_app

    console = Console(
        settings=settings,
        broker=runtime.broker,
        store=runtime.case_store,
        taxonomy=load_taxonomy(settings.taxonomy_file),
        departments=build_router(settings).all_departments(),
        bootstrap=list(runtime.servers),
        configured_channels=frozenset(settings.channels),
    )
    app.mount(PREFIX, console_app(console))


class StoreFirstLookup:
    """Open311 lookups from the case store; a request this web process accepted a moment ago and
    the pipeline has not stored yet is still found (as "open") instead of a 404."""

    def __init__(self, store: Any, accepted: Any) -> None:
        self.store = store
        self.accepted = accepted

    async def get(self, request_id: str) -> dict[str, Any] | None:
        return await self.store.get(request_id) or await self.accepted.get(request_id)

    async def search(self, **filters: Any) -> list[dict[str, Any]]:
        return await self.store.search(**filters)

    async def record(self, contact: Any, service_name: str | None) -> None:
        await self.accepted.record(contact, service_name)


async def channel_health(channel_set: ChannelSet) -> dict[str, dict[str, Any]]:
    """``/health/channels``: each running channel's own check, as JSON."""
    return {name: {"ok": h.ok, "detail": h.detail} for name, h in (await channel_set.health()).items()}


def health_urls(settings: Settings, url: str | None = None) -> list[str]:
    """Where a running intake311 of these settings answers ``/health/channels``: ``url`` if given,
    else its web port (``up``, ``run web``) and its metrics port (``run channels``)."""
    if url:
        return [url.rstrip("/")]
    urls = [settings.web.public_url]
    if settings.metrics_port:
        host = "127.0.0.1" if settings.metrics_host in ("0.0.0.0", "::") else settings.metrics_host
        urls.append(f"http://{host}:{settings.metrics_port}")
    return urls


async def running_health(urls: Sequence[str], client: Any = None) -> tuple[str, dict[str, Any]] | None:
    """The channel health the first running process at ``urls`` reports, with its URL; None: none
    answered. ``client``: an ``httpx.AsyncClient`` to ask with (tests: one bound to the app)."""
    import httpx

    async with contextlib.AsyncExitStack() as stack:
        if client is None:
            client = await stack.enter_async_context(httpx.AsyncClient(timeout=3))
        for url in urls:
            try:
                response = await client.get(f"{url}/health/channels")
            except httpx.HTTPError:
                continue
            if response.status_code == 200:
                try:
                    return url, dict(response.json())
                except ValueError:
                    continue
    return None


async def channel_report(
    settings: Settings, running_at: Sequence[str] = (), *, client: Any = None
) -> list[dict[str, str]]:
    """Every installed channel: not configured, invalid config, broken plugin, healthy or not.

    Health comes from the running process at ``running_at`` when one answers there (its pollers,
    its provider connections: what residents depend on now), else from a fresh copy of each
    configured channel (its credentials and settings: what a start would find), each row saying
    which.
    """
    from channels.plugin import available_channels, configured_channels, load_plugin
    from channels.runtime import ChannelSet

    live = await running_health(running_at, client) if running_at else None
    rows = []
    for name in sorted(available_channels() | {n: "" for n in settings.channels}):
        if name not in settings.channels:
            try:
                plugin = load_plugin(name)
                rows.append({"channel": name, "status": "not configured", "detail": plugin.description})
            except Exception as exc:  # a broken third-party plugin is reported, not fatal here
                rows.append({"channel": name, "status": "broken", "detail": str(exc)[:200]})
            continue
        single = settings.model_copy(update={"channels": {name: settings.channels[name]}})
        try:
            configured_channels(single)
        except ValueError as exc:
            rows.append({"channel": name, "status": "invalid", "detail": str(exc).replace("\n", " ")[:300]})
            continue
        if live is not None:
            url, found = live
            health = found.get(name)
            if not isinstance(health, dict):
                rows.append(
                    {"channel": name, "status": "not running", "detail": f"configured, not running at {url}"}
                )
                continue
            ok = bool(health.get("ok"))
            detail = f"{health.get('detail') or ''} (running at {url})".strip()
            rows.append({"channel": name, "status": "healthy" if ok else "unhealthy", "detail": detail})
            continue
        async with contextlib.AsyncExitStack() as stack:
            channel_set = await ChannelSet.open(single, make_broker(settings.kafka, ["unused:9092"]), stack)
            health_now = (await channel_set.health())[name]
        detail = (
            f"{health_now.detail} (fresh check: no running intake311 answered)"
            if running_at
            else health_now.detail
        )
        rows.append(
            {"channel": name, "status": "healthy" if health_now.ok else "unhealthy", "detail": detail}
        )
    return rows


async def serve(
    settings: Settings, stages: Sequence[str], *, on_ready: Callable[[], None] | None = None
) -> None:
    """Run ``stages`` until SIGINT/SIGTERM, then unwind (with ``web``, the signals stop uvicorn first)."""
    async with running(settings, stages) as runtime:
        if WEB in stages:
            import uvicorn

            from schemas.language import detector

            # Built now (off the loop: the stages' consumers keep their heartbeats), not inside
            # the first POST: lingua takes ~1 s to build its models, which was the first
            # resident's wait and a stall of the loop for every request behind it.
            await asyncio.to_thread(detector, settings.languages)
            config = uvicorn.Config(
                web_app(runtime),
                host=settings.web.host,
                port=settings.web.port,
                # httptools when installed (a dependency), else h11; the loop is the running one,
                # which the CLI makes uvloop's (cli._loop_factory).
                http="auto",
                limit_concurrency=settings.web.max_concurrency,
                log_config=None,
                access_log=False,
                lifespan="on",
            )
            from channels.web import workers

            # web.workers > 1: this port shared (SO_REUSEPORT) with that many less one spawned
            # web processes on this process's broker; one worker: uvicorn binds as before.
            sockets = workers.listen(settings)
            server = uvicorn.Server(config)
            # uvicorn re-raises a SIGTERM it caught once it has shut down, under the default
            # handler: the process died right there, before this block unwound (the workers,
            # the consumers, an embedded broker left running). Here the signals stop the server
            # and the process ends by unwinding; a second SIGINT still forces uvicorn's exit.
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, server.handle_exit, sig, None)
            server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
            try:
                async with workers.spawned(settings, runtime.servers):
                    if on_ready:
                        loop.call_later(0.5, on_ready)
                    await server.serve(sockets=sockets)
            finally:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)  # a second signal while unwinding: the default
            return
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with contextlib.AsyncExitStack() as probes:
            if settings.metrics_port and runtime.probes is not None:
                await probes.enter_async_context(
                    serve_probes(runtime.probes.app(), settings.metrics_host, settings.metrics_port)
                )
            if on_ready:
                on_ready()
            await stop.wait()


@contextlib.asynccontextmanager
async def running_broker(settings: Settings, stages: Sequence[str]) -> AsyncIterator[KafkaBroker]:
    """``running`` for callers that only need the broker (benchmarks, scripts)."""
    async with running(settings, stages) as runtime:
        yield runtime.broker
