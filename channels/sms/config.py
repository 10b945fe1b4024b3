"""Validated config of the Twilio channels; errors name the field so a typo stops the start."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator

from channels.conversation import validate_state_url
from channels.plugin import ChannelConfig
from channels.sms.phone import E164
from intake311.secrets import resolve_secret

_URL_RE = re.compile(r"^https?://[^\s/?#]+(/[^\s?#]*)?$")


def _url(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if not _URL_RE.match(value):
        raise ValueError("must be an http(s) URL without query or fragment, e.g. https://311.city.gov")
    return value.rstrip("/")


class TwilioWebhookConfig(ChannelConfig):
    """What every Twilio webhook needs: the account, its auth token and the public URL."""

    account_sid: str = Field(pattern=r"^AC[0-9a-fA-F]{32}$", description="Twilio Account SID")
    auth_token: SecretStr | None = Field(default=None, description="signs webhooks, authenticates REST calls")
    auth_token_env: str | None = Field(default=None, description="read the auth token from this env variable")
    public_base_url: str | None = Field(
        default=None,
        description="the URL Twilio calls (scheme://host[/prefix]) when behind a proxy; "
        "default: web.base_url, else the URL the request arrived on",
    )

    _auth_token: SecretStr | None = PrivateAttr(default=None)

    @field_validator("public_base_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        return _url(value)

    @model_validator(mode="after")
    def _token_given(self) -> TwilioWebhookConfig:
        self._auth_token = resolve_secret(self.auth_token, self.auth_token_env, "auth_token")
        return self

    def token(self) -> str:
        """The auth token (never log it)."""
        assert self._auth_token is not None
        return self._auth_token.get_secret_value()


class SmsConfig(TwilioWebhookConfig):
    """Config of the ``sms`` channel (Twilio Programmable Messaging)."""

    phone_numbers: list[str] = Field(default_factory=list, description="the city's Twilio numbers, E.164")
    messaging_service_sid: str | None = Field(
        default=None, pattern=r"^MG[0-9a-fA-F]{32}$", description="Messaging Service (number pool)"
    )
    api_base_url: str | None = Field(default=None, description="Twilio REST base URL (tests, proxies)")
    conversation_window_minutes: int = Field(
        default=15, ge=1, le=24 * 60, description="texts from one number this close together join one ticket"
    )
    state_url: str | None = Field(
        default=None,
        description="sqlite:///PATH (relative: under the channel's data dir) or redis://HOST:PORT/DB; "
        "default: SQLite in the data dir",
    )
    status_callback: bool = Field(default=True, description="ask Twilio for delivery status callbacks")
    ask_for_location: bool = Field(default=True, description="ask where, when a report has no address")
    default_language: Literal["en", "es"] = "en"
    brand: str = Field(default="311", max_length=30, description="how replies introduce themselves")
    help_phone: str = Field(
        default="311", max_length=40, description="the number HELP tells residents to call"
    )

    @field_validator("api_base_url")
    @classmethod
    def _api_url(cls, value: str | None) -> str | None:
        return _url(value)

    @field_validator("state_url")
    @classmethod
    def _state_url(cls, value: str | None) -> str | None:
        return validate_state_url(value)

    @field_validator("phone_numbers")
    @classmethod
    def _e164(cls, numbers: list[str]) -> list[str]:
        bad = [n for n in numbers if not E164.match(n)]
        if bad:
            raise ValueError(f"phone numbers must be E.164 (+15551234567); got {len(bad)} that are not")
        return numbers

    @model_validator(mode="after")
    def _has_sender(self) -> SmsConfig:
        if not self.phone_numbers and not self.messaging_service_sid:
            raise ValueError("set phone_numbers, messaging_service_sid, or both")
        return self

    @property
    def window_s(self) -> float:
        return self.conversation_window_minutes * 60.0
