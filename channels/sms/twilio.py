"""What the Twilio channels (``sms``, ``voice``) share: signed webhooks, counters, responses.

Both check every webhook against ``X-Twilio-Signature`` for the account in their
``TwilioWebhookConfig``, as reached at the public base URL, and count what they refuse.
"""

from __future__ import annotations

from collections import Counter

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from channels.plugin import ChannelContext, ChannelPlugin
from channels.sms.config import TwilioWebhookConfig
from channels.sms.signing import SIGNATURE_HEADER, TwilioSignature
from intake311.logging import get_logger

TWIML = "application/xml"


def xml_response(body: str) -> Response:
    """A TwiML document as Twilio expects it."""
    return Response(body, media_type=TWIML)


def forbidden() -> Response:
    """The answer to a webhook whose signature does not check out."""
    return PlainTextResponse("invalid signature", status_code=403)


def unavailable() -> Response:
    """Nothing was accepted: Twilio retries (or uses the fallback URL)."""
    return PlainTextResponse("temporarily unavailable", status_code=503, headers={"Retry-After": "5"})


class TwilioChannel(ChannelPlugin):
    """Base of the Twilio channels: the signature checker and the counters ``health`` reports."""

    config: TwilioWebhookConfig

    def __init__(self, config: TwilioWebhookConfig, context: ChannelContext) -> None:  # type: ignore[override]
        super().__init__(config, context)
        self.counters: Counter[str] = Counter()
        self.signature = TwilioSignature(config.token(), self.public_base_url)

    @property
    def public_base_url(self) -> str | None:
        return self.config.public_base_url or self.context.settings.web.base_url

    async def _verified(self, request: Request, endpoint: str) -> dict[str, str] | None:
        """The webhook's parameters if Twilio signed it, else None (counted and logged)."""
        params = await self.signature.verified_params(request)
        if params is None:
            self.counters["rejected_signature"] += 1
            get_logger(f"channels.{self.name}").warning(
                "twilio webhook refused: bad or missing signature",
                channel=self.name,
                endpoint=endpoint,
                signed=bool(request.headers.get(SIGNATURE_HEADER)),
                expected_url=self.signature.url_for(request),
            )
        return params

    def counter_summary(self) -> str:
        """The counters as ``name=value`` pairs, for ``health``."""
        return " ".join(f"{k}={v}" for k, v in sorted(self.counters.items()))
