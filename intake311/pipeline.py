"""Assembling stages into a process: one stage alone, or the whole pipeline for a small city.

This is the composition root, the one module that knows every stage. Stages stay unaware of
each other: each exposes ``register(broker, settings)`` and talks only through Kafka topics.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from faststream.kafka import KafkaBroker
from faststream.specification import AsyncAPI

from intake311 import __version__
from intake311.bus import ensure_topics, make_broker
from intake311.embedded import EmbeddedKafka
from intake311.logging import get_logger
from intake311.settings import Settings

log = get_logger(__name__)

# Consuming stages: name -> "module:function" registering its subscribers on a broker.
STAGES: dict[str, str] = {
    "normalizer": "normalizer.app:register",
    "router": "router.app:register",
    "sinks": "sinks.app:register",
}
WEB = "web"
ALL = (WEB, *STAGES)
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
    names = [topics.requests, topics.deadletter, topics.status]
    names += [topics.contacts(c) for c in BUILTIN_CHANNELS]
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


def embedded_bootstrap_file(settings: Settings) -> Path:
    """Where a running embedded broker's address is written, for ``submit``/``tail`` to find."""
    return settings.data_dir / "run" / "embedded.bootstrap"


async def describe(settings: Settings) -> AsyncAPI:
    """The AsyncAPI document of every stage, without connecting to Kafka."""
    async with contextlib.AsyncExitStack() as stack:
        broker = make_broker(settings.kafka, settings.kafka.bootstrap_servers or ["embedded:9092"])
        for stage in STAGES:
            await _load(STAGES[stage])(broker, settings, stack)
        return asyncapi(broker)


@contextlib.asynccontextmanager
async def running_broker(settings: Settings, stages: Sequence[str]) -> AsyncIterator[KafkaBroker]:
    """A started broker with ``stages`` registered, on the configured or an embedded cluster."""
    embedded: EmbeddedKafka | None = None
    servers = settings.kafka.bootstrap_servers
    if settings.kafka.embedded:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        embedded = EmbeddedKafka(log_file=settings.data_dir / "embedded-broker.log")
        servers = [await asyncio.to_thread(embedded.start)]
        announce = embedded_bootstrap_file(settings)
        announce.parent.mkdir(parents=True, exist_ok=True)
        announce.write_text(servers[0])
    try:
        async with contextlib.AsyncExitStack() as stack:
            broker = make_broker(settings.kafka, servers, metadata_max_age_ms=30_000)
            for stage in stages:
                await _load(STAGES[stage])(broker, settings, stack)
            await ensure_topics(settings.kafka, servers, topic_names(settings))
            await broker.start()
            # Stop consuming before the stages' resources close (the stack unwinds last-in first).
            stack.push_async_callback(broker.stop)
            log.info("stages started", stages=list(stages), bootstrap=",".join(servers))
            yield broker
    finally:
        if embedded is not None:
            embedded.stop()
            embedded_bootstrap_file(settings).unlink(missing_ok=True)


def web_app(settings: Settings, broker: KafkaBroker) -> Any:
    """The web channel bound to ``broker``; its AsyncAPI page documents this very process."""
    from channels.base import KafkaContactPublisher
    from channels.web import create_app
    from schemas.taxonomy import load_taxonomy

    spec = asyncapi(broker)
    return create_app(
        settings,
        KafkaContactPublisher(broker, settings.topics),
        load_taxonomy(settings.taxonomy_file),
        asyncapi=lambda: spec.to_specification().to_jsonable(),
    )


async def serve(
    settings: Settings, stages: Sequence[str], *, on_ready: Callable[[], None] | None = None
) -> None:
    """Run ``stages`` (and the web channel if named) until SIGINT/SIGTERM."""
    consuming = [s for s in stages if s != WEB]
    async with running_broker(settings, consuming) as broker:
        if WEB in stages:
            import uvicorn

            app = web_app(settings, broker)
            config = uvicorn.Config(
                app,
                host=settings.web.host,
                port=settings.web.port,
                log_config=None,
                access_log=False,
                lifespan="on",
            )
            server = uvicorn.Server(config)
            if on_ready:
                asyncio.get_running_loop().call_later(0.5, on_ready)
            await server.serve()
            return
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if on_ready:
            on_ready()
        await stop.wait()
