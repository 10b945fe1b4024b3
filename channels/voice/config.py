"""Config of the ``voice`` channel: Twilio Voice webhooks and a call centre's transcript feed."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator

from channels.sms.config import TwilioWebhookConfig
from intake311.secrets import resolve_secret


class VoiceConfig(TwilioWebhookConfig):
    """``mode``: ``record`` (voicemail, Twilio transcribes it) or ``gather`` (live speech-to-text)."""

    mode: Literal["record", "gather"] = "record"
    max_recording_seconds: int = Field(
        default=120, ge=5, le=120, description="Twilio transcribes recordings up to 120 s"
    )
    transcripts_secret: SecretStr | None = Field(
        default=None, description="HMAC secret of the call-centre transcript webhook (off when unset)"
    )
    transcripts_secret_env: str | None = Field(
        default=None, description="read that secret from this environment variable"
    )
    transcripts_max_age_seconds: int = Field(
        default=300, ge=30, le=3600, description="older (or future) signed timestamps are replays"
    )
    sms_acknowledgement: bool = Field(
        default=False, description="text the caller their ticket through the sms channel"
    )
    sms_ack_prefixes: list[str] = Field(
        default_factory=list,
        description="only text numbers starting with one of these (e.g. ['+1']); empty: any E.164",
    )
    brand: str = Field(default="311", max_length=30)

    _transcripts_secret: SecretStr | None = PrivateAttr(default=None)

    @field_validator("sms_ack_prefixes")
    @classmethod
    def _prefixes(cls, prefixes: list[str]) -> list[str]:
        for prefix in prefixes:
            if not prefix.startswith("+") or not prefix[1:].isdigit():
                raise ValueError(f"prefix {prefix!r} must look like +1 or +4420")
        return prefixes

    @model_validator(mode="after")
    def _resolve(self) -> VoiceConfig:
        self._transcripts_secret = resolve_secret(
            self.transcripts_secret, self.transcripts_secret_env, "transcripts_secret", required=False
        )
        return self

    def transcripts_key(self) -> str | None:
        """The transcript webhook secret, or None when that webhook is off."""
        secret = self._transcripts_secret
        return secret.get_secret_value() if secret is not None else None
