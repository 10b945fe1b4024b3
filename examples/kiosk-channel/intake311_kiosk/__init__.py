"""An example intake311 channel: self-service kiosks in libraries and city halls.

A kiosk POSTs JSON to ``/channels/kiosk/reports`` with its id and a shared token; the channel
turns it into a ``RawContact``, publishes it, and answers with the ticket to print on the slip.
Everything a real channel needs is here: a validated config, a pure ``parse`` function, an
HTTP route, publish-before-answer, and a health check.
"""

from __future__ import annotations

import hmac
from datetime import UTC, datetime

from fastapi import APIRouter, Header, HTTPException
from pydantic import BaseModel, Field, SecretStr

from channels.plugin import ChannelConfig, ChannelHealth, ChannelPlugin
from intake311.bus import PublishError
from schemas import Location, RawContact, make_contact_id, ticket_for


class KioskConfig(ChannelConfig):
    """Which kiosks may report, and the token they share with the city."""

    kiosks: dict[str, str] = Field(min_length=1, description="kiosk id -> where it stands")
    token: SecretStr = Field(min_length=16)


class KioskReport(BaseModel):
    kiosk_id: str
    report_id: str = Field(min_length=1, max_length=64, description="the kiosk's own id: retries reuse it")
    text: str = Field(min_length=3, max_length=4000)
    address: str | None = Field(default=None, max_length=500)


def parse(report: KioskReport, config: KioskConfig, now: datetime) -> RawContact:
    """The kiosk report as a contact; where the kiosk stands is the fallback location."""
    contact_id = make_contact_id(KioskChannel.name, f"{report.kiosk_id}.{report.report_id}")
    return RawContact(
        contact_id=contact_id,
        request_id=ticket_for(contact_id),
        channel=KioskChannel.name,
        received_at=now,
        text=report.text,
        location=Location(address=report.address or config.kiosks[report.kiosk_id]),
        metadata={"kiosk_id": report.kiosk_id},
    )


class KioskChannel(ChannelPlugin):
    name = "kiosk"
    config_model = KioskConfig
    description = "Reports from self-service kiosks in city buildings."
    config: KioskConfig

    def http_routes(self) -> APIRouter:
        router = APIRouter()

        @router.post("/reports", status_code=201)
        async def report(body: KioskReport, x_kiosk_token: str = Header(default="")) -> dict[str, str]:
            if not hmac.compare_digest(x_kiosk_token, self.config.token.get_secret_value()):
                raise HTTPException(403, "bad kiosk token")
            if body.kiosk_id not in self.config.kiosks:
                raise HTTPException(403, f"unknown kiosk {body.kiosk_id!r}")
            contact = parse(body, self.config, datetime.now(UTC))
            try:
                await self.context.publisher.publish(contact)
            except PublishError as exc:  # never print a ticket for a report that is not on the bus
                raise HTTPException(503, "report not accepted, please try again") from exc
            return {"ticket": contact.request_id}

        return router

    async def health(self) -> ChannelHealth:
        return ChannelHealth(True, f"{len(self.config.kiosks)} kiosk(s) configured")
