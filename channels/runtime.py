"""Running the configured channel plugins in a process: webhooks, background loops, outbound.

Each channel's outbound topic is consumed by its own consumer group
(``intake311.outbound.<channel>``), so a Twilio outage delays texts, not emails.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import httpx
from fastapi import FastAPI
from faststream.kafka import KafkaBroker

from channels.base import KafkaContactPublisher
from channels.plugin import (
    ChannelContext,
    ChannelHealth,
    ChannelPlugin,
    Outbox,
    SendError,
    configured_channels,
)
from intake311 import metrics as process_metrics
from intake311.bus import BusWatch, Outgoing
from intake311.dedupe import SeenStore
from intake311.logging import get_logger
from intake311.settings import Settings
from intake311.stage import (
    RawBatch,
    Record,
    batch_subscriber,
    dead_letter,
    explain,
    handled_records,
    publish_output,
)
from schemas.contact import mask
from schemas.outbound import OutboundMessage

MessageRecords = RawBatch[OutboundMessage]  # what the AsyncAPI document shows
STAGE = "outbound"
log = get_logger(__name__)


class ChannelSet:
    """The channel plugins of one process, sharing one HTTP client and one outbox."""

    def __init__(self, plugins: Sequence[ChannelPlugin], settings: Settings) -> None:
        self.plugins = list(plugins)
        self.settings = settings
        self._seen: SeenStore | None = None

    @classmethod
    async def open(
        cls,
        settings: Settings,
        broker: KafkaBroker,
        stack: contextlib.AsyncExitStack,
        *,
        watch: BusWatch | None = None,
    ) -> ChannelSet:
        """Validate every configured channel and build it (not started).

        ``watch`` is the process's ``BusWatch``: channel publishers then refuse to confirm a
        contact to a broker that lost the pipeline's topics.
        """
        from channels.web.accept import ACCEPTED_LOG

        configured = configured_channels(settings)
        stack.callback(ACCEPTED_LOG.flush)  # at exit, after the web server stopped: the last counts
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=15))
        plugins = []
        for plugin_cls, config in configured:
            context = ChannelContext(
                settings=settings,
                publisher=KafkaContactPublisher(broker, settings.topics, watch=watch),
                outbox=Outbox(broker, settings.topics),
                http=http,
                data_dir=settings.data_dir / "channels" / plugin_cls.name,
            )
            plugin = plugin_cls(config, context)
            # Stopped at exit whichever stages run: a web-only process opens resources lazily.
            stack.push_async_callback(plugin.stop)
            plugins.append(plugin)
        return cls(plugins, settings)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.plugins]

    def topic_names(self) -> list[str]:
        topics = self.settings.topics
        return [t for p in self.plugins for t in (topics.contacts(p.name), topics.outbound(p.name))]

    def mount(self, app: FastAPI) -> None:
        """Mount each channel's webhooks at ``/channels/<name>``."""
        for plugin in self.plugins:
            routes = plugin.http_routes()
            if routes is not None:
                app.include_router(routes, prefix=f"/channels/{plugin.name}", tags=[f"channel {plugin.name}"])

    async def health(self) -> dict[str, ChannelHealth]:
        """Each channel's own health check; a check that raises counts as unhealthy."""
        out = {}
        for plugin in self.plugins:
            try:
                out[plugin.name] = await plugin.health()
            except Exception as exc:
                out[plugin.name] = ChannelHealth(False, f"health check failed: {type(exc).__name__}: {exc}")
        return out

    async def start(self) -> None:
        """Start background work (pollers, listeners); ``open`` already arranged the stops."""
        for plugin in self.plugins:
            await plugin.start()

    def register_outbound(self, broker: KafkaBroker, stack: contextlib.AsyncExitStack) -> None:
        """One consumer group per channel sending what the outbox queued for it."""
        retention = self.settings.retention
        self._seen = SeenStore(
            self.settings.data_dir / "channels" / "sent.sqlite3",
            retention_s=retention.state_s,
            prune_every_s=retention.prune_every_s,
            prune_batch=retention.prune_batch,
        )
        stack.callback(self._seen.close)
        for plugin in self.plugins:
            _subscribe_outbound(broker, self.settings, plugin, self._seen)


async def send_batch(
    records: Sequence[Record], plugin: ChannelPlugin, seen: SeenStore, settings: Settings
) -> list[Outgoing]:
    """Send each message once (dedupe on message_id), retrying with backoff; dead-letter failures."""
    namespace = f"outbound/{plugin.name}"
    deadletter = settings.topics.deadletter
    letters: list[Outgoing] = []
    messages: list[tuple[Record, OutboundMessage]] = []
    for record in records:
        try:
            messages.append((record, OutboundMessage.model_validate_json(record.value)))
        except ValueError as exc:
            letters.append(dead_letter(record, STAGE, deadletter, explain(exc), type(exc).__name__))
    fresh = seen.unseen(namespace, (m.message_id for _, m in messages))
    sent: list[str] = []
    for record, message in messages:
        if message.message_id not in fresh or message.message_id in sent:
            continue
        error = await _send_with_retry(plugin, message, settings)
        if error is None:
            sent.append(message.message_id)
            continue
        log.warning(
            "outbound message dead-lettered",
            channel=plugin.name,
            to=mask(message.to),
            request_id=message.request_id,
            reason=error.reason[:200],
        )
        letters.append(dead_letter(record, STAGE, deadletter, error.reason, "SendError"))
    seen.mark(namespace, sent)
    return letters


async def _send_with_retry(
    plugin: ChannelPlugin, message: OutboundMessage, settings: Settings
) -> SendError | None:
    last = SendError("not attempted")
    for attempt in range(1, settings.retry_attempts + 1):
        try:
            await plugin.send(message)
            return None
        except SendError as exc:
            last = exc
        except Exception as exc:  # a provider SDK error we did not map: retry, then dead-letter
            last = SendError(f"{type(exc).__name__}: {exc}")
        if not last.retryable or attempt == settings.retry_attempts:
            break
        await asyncio.sleep(settings.retry_backoff_s * 2 ** (attempt - 1))
    return SendError(f"after {attempt} attempt(s): {last.reason}", retryable=last.retryable)


def _subscribe_outbound(
    broker: KafkaBroker, settings: Settings, plugin: ChannelPlugin, seen: SeenStore
) -> None:
    metrics = process_metrics.current()

    @batch_subscriber(
        broker,
        settings.topics.outbound(plugin.name),
        group_id=settings.topics.group(f"outbound.{plugin.name}"),
        settings=settings,
        title=f"outbound {plugin.name}",
        description=f"Messages to residents sent through the {plugin.name} channel.",
    )
    async def send_messages(records: MessageRecords) -> None:
        letters = await send_batch(handled_records(broker), plugin, seen, settings)
        await publish_output(broker, letters, settings, metrics)
