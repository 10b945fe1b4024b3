"""``OutboundMessage``: something to tell a resident, on the channel they used.

Acknowledgements, follow-up questions and status updates all travel as outbound messages on
``intake311.outbound.<channel>``; the channel's plugin sends them. Going through Kafka keeps a
provider outage (Twilio, SMTP, X) from blocking intake, and gives retries and dead letters for
free.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from schemas.ids import digest


class MessageKind(StrEnum):
    ACKNOWLEDGEMENT = "acknowledgement"
    QUESTION = "question"
    STATUS = "status"
    INCIDENT = "incident"  # "this problem is already reported"
    HELP = "help"
    OPT_OUT = "opt-out"
    OPT_IN = "opt-in"
    ANSWER = "answer"  # an operator's own words to the resident (the console)


class OutboundMessage(BaseModel):
    """One message to one resident. ``message_id`` is stable, so a replay is not sent twice."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    message_id: str
    request_id: str | None = None
    channel: str
    to: str = Field(max_length=320, description="personal data: never log it unmasked")
    thread: str | None = Field(default=None, description="provider id to reply under")
    language: str = "en"
    kind: MessageKind
    subject: str | None = None
    text: str = Field(max_length=5000)
    created_at: AwareDatetime = Field(default_factory=lambda: datetime.now(UTC))


def outbound_message_id(channel: str, to: str, kind: str, *parts: str) -> str:
    """Stable id from what makes a message unique (e.g. the request and the status change)."""
    return digest("outbound", channel, to, kind, *parts).hex()[:32]
