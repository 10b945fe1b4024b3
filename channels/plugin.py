"""The channel plugin contract: how an operator adds a way for residents to reach 311.

Modelled on Kafka Connect source connectors: a channel is one class with a validated config.
It may expose HTTP endpoints (provider webhooks, mounted at ``/channels/<name>/``), run
background loops (mailbox polling, a mention poller, an SMTP listener), and send messages back
to residents. Its only outputs are ``RawContact``s through ``context.publisher`` and
``OutboundMessage``s through ``context.outbox``; it never talks to other stages.

Built-in channels are listed in ``BUILTIN_CHANNELS``; third-party packages register under the
``intake311.channels`` entry-point group (``name = "package.module:PluginClass"``). A channel
runs when ``settings.channels`` has an entry for it (its config, validated at start).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

from channels.base import ContactPublisher
from intake311.bus import Outgoing, publish_all
from intake311.logging import get_logger
from schemas.deadletter import DeadLetter
from schemas.emergency import EmergencyRules, rules_for
from schemas.ids import is_slug
from schemas.outbound import OutboundMessage

if TYPE_CHECKING:
    from fastapi import APIRouter
    from faststream.kafka import KafkaBroker

    from intake311.settings import Settings
    from schemas.topics import Topics

log = get_logger(__name__)

ENTRY_POINT_GROUP = "intake311.channels"
BUILTIN_CHANNELS: dict[str, str] = {
    "sms": "channels.sms:SmsChannel",
    "voice": "channels.voice:VoiceChannel",
    "email": "channels.email:EmailChannel",
    "x": "channels.social.x:XChannel",
    "mastodon": "channels.social.mastodon:MastodonChannel",
}


class ChannelConfig(BaseModel):
    """Base of every channel's config; subclasses add their fields (secrets as SecretStr)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SendError(Exception):
    """A message could not be sent; ``retryable`` says whether trying again can help."""

    def __init__(self, reason: str, *, retryable: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


class Outbox:
    """Queues messages to residents on ``intake311.outbound.<channel>`` (acknowledged publish)."""

    def __init__(self, broker: KafkaBroker | None, topics: Topics) -> None:
        self._broker = broker
        self._topics = topics

    async def send(self, *messages: OutboundMessage) -> None:
        if self._broker is None:
            raise RuntimeError("outbox used before the broker started")
        await publish_all(
            self._broker,
            [
                Outgoing(
                    self._topics.outbound(m.channel),
                    m.model_dump_json().encode(),
                    key=m.request_id or m.message_id,
                )
                for m in messages
            ],
        )

    async def dead_letter(self, letter: DeadLetter) -> None:
        """Keep input a channel received but can never turn into a contact (``topics.deadletter``).

        For webhook posts that are authentic yet malformed: kept for an operator instead of being
        refused into a provider's retry loop. Returns once the broker acknowledged it.
        """
        if self._broker is None:
            raise RuntimeError("outbox used before the broker started")
        await publish_all(
            self._broker,
            [
                Outgoing(
                    self._topics.deadletter,
                    letter.model_dump_json().encode(),
                    key=letter.key,
                    headers={"x-stage": letter.stage},
                )
            ],
        )


@dataclass
class ChannelContext:
    """What a channel may use from the running process."""

    settings: Settings
    publisher: ContactPublisher
    outbox: Outbox
    http: httpx.AsyncClient
    data_dir: Path = field(default=Path("var"))


@dataclass(frozen=True)
class ChannelHealth:
    ok: bool
    detail: str = ""


class ChannelPlugin:
    """Base class for channels. Override what the channel needs; the defaults do nothing."""

    name: ClassVar[str]
    config_model: ClassVar[type[ChannelConfig]] = ChannelConfig
    description: ClassVar[str] = ""

    def __init__(self, config: ChannelConfig, context: ChannelContext) -> None:
        self.config = config
        self.context = context

    @property
    def emergencies(self) -> EmergencyRules:
        """The emergency rules of ``settings.emergency_rules_file``: what gets "call 911" first."""
        return rules_for(self.context.settings.emergency_rules_file)

    def http_routes(self) -> APIRouter | None:
        """Endpoints mounted at ``/channels/<name>``: provider webhooks."""
        return None

    async def start(self) -> None:
        """Start background work (polling, listeners). Must return promptly."""

    async def stop(self) -> None:
        """Stop background work; safe to call more than once."""

    async def send(self, message: OutboundMessage) -> None:
        """Deliver one message to a resident, or raise ``SendError``."""
        raise SendError(f"channel {self.name} cannot send messages", retryable=False)

    async def health(self) -> ChannelHealth:
        return ChannelHealth(True)


def _import(target: str) -> type[ChannelPlugin]:
    module, _, attr = target.partition(":")
    plugin = getattr(importlib.import_module(module), attr)
    if not (isinstance(plugin, type) and issubclass(plugin, ChannelPlugin)):
        raise TypeError(f"{target} is not a ChannelPlugin subclass")
    return plugin


def available_channels() -> dict[str, str]:
    """Channel name -> import target: built-ins plus installed entry points."""
    found = dict(BUILTIN_CHANNELS)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in found:
            log.warning("channel entry point ignored: name taken", channel=ep.name, target=ep.value)
            continue
        found[ep.name] = ep.value
    return found


def load_plugin(name: str) -> type[ChannelPlugin]:
    known = available_channels()
    if name not in known:
        raise ValueError(f"unknown channel {name!r}; installed channels: {', '.join(sorted(known))}")
    plugin = _import(known[name])
    if plugin.name != name:
        raise ValueError(f"channel {name!r}: {known[name]} declares name {plugin.name!r}")
    return plugin


def configured_channels(settings: Settings) -> list[tuple[type[ChannelPlugin], ChannelConfig]]:
    """Every channel with an entry in ``settings.channels``, its config validated now.

    Errors name the channel and the field, so a typo stops the process at start instead of
    losing the first resident's message.
    """
    out = []
    problems = []
    for name, raw in settings.channels.items():
        if not is_slug(name):
            problems.append(f"channel name {name!r} must be a lowercase slug")
            continue
        try:
            plugin = load_plugin(name)
            config = plugin.config_model.model_validate(raw or {})
        except ValidationError as exc:
            fields = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(config)'}: {e['msg']}" for e in exc.errors()
            )
            problems.append(f"channel {name}: {fields}")
            continue
        except (ValueError, TypeError, ImportError) as exc:
            problems.append(f"channel {name}: {exc}")
            continue
        out.append((plugin, config))
    if problems:
        raise ValueError("invalid channel configuration:\n  " + "\n  ".join(problems))
    return out
