"""``type: webhook`` — POST each request, signed, to a department's own system.

Signing follows Stripe/Slack: ``X-Intake311-Signature: v1=<hex HMAC-SHA256(secret,
"<timestamp>." + body)>`` with ``X-Intake311-Timestamp`` in unix seconds. The timestamp inside
the MAC lets receivers reject replays older than a few minutes; ``X-Intake311-Delivery`` (also
in the body) stays the same across retries so receivers can dedupe. Receivers verify with
``verify_signature`` (or the few lines in docs/sinks.md).
"""

from __future__ import annotations

import email.utils
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable
from datetime import UTC
from typing import Literal

import httpx
from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator

from intake311.secrets import env_value
from schemas.request import ServiceRequest
from sinks.base import DeliveryError, SinkConfig, SinkContext, request_payload

SIGNATURE_VERSION = "v1"
HEADER_DELIVERY = "X-Intake311-Delivery"
HEADER_TIMESTAMP = "X-Intake311-Timestamp"
HEADER_SIGNATURE = "X-Intake311-Signature"
USER_AGENT = "intake311-webhook/1"
DEFAULT_TOLERANCE_S = 300

_RESERVED_HEADERS = {"content-type", "content-length", "host", "transfer-encoding"}
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_RETRYABLE_STATUS = {408, 425, 429}

Secret = str | bytes | SecretStr


class WebhookSinkConfig(SinkConfig):
    """A signed HTTP POST per request. Give ``secret_env`` (preferred) or ``secret``, not both.

    ``headers`` are static extra headers; ``headers_env`` maps a header to an environment
    variable for values that are credentials (``Authorization: Bearer …``).
    """

    type: Literal["webhook"] = "webhook"
    url: str
    secret: SecretStr | None = None
    secret_env: str | None = None
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    headers: dict[str, str] = Field(default_factory=dict)
    headers_env: dict[str, str] = Field(default_factory=dict)
    max_retry_after_s: float = Field(default=60.0, ge=0, description="cap on the receiver's Retry-After")

    _secret: SecretStr = PrivateAttr()
    _env_headers: dict[str, str] = PrivateAttr(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        try:
            url = httpx.URL(value)
        except (httpx.InvalidURL, TypeError) as exc:
            raise ValueError(f"url is not a valid URL: {exc}") from exc
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"url must be an http:// or https:// URL with a host, got {value[:200]!r}")
        return value

    @field_validator("headers", "headers_env")
    @classmethod
    def _header_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name, header_value in value.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"header name {name!r} is not a valid HTTP header name")
            lowered = name.lower()
            if lowered in _RESERVED_HEADERS or lowered.startswith("x-intake311-"):
                raise ValueError(f"header {name!r} is set by the sink and cannot be configured")
            if "\r" in header_value or "\n" in header_value:
                raise ValueError(f"header {name!r} must not contain line breaks")
        return value

    @model_validator(mode="after")
    def _resolve_secrets(self) -> WebhookSinkConfig:
        # Resolved now, not at first delivery: a missing secret must stop the service at start.
        if (self.secret is None) == (self.secret_env is None):
            raise ValueError(
                "webhook needs exactly one of 'secret_env' (an environment variable holding the"
                " signing secret, preferred) or 'secret'"
                + (" - both were given" if self.secret is not None else "")
            )
        if self.secret_env is not None:
            self._secret = SecretStr(env_value(self.secret_env, "secret_env"))
        else:
            assert self.secret is not None
            if not self.secret.get_secret_value():
                raise ValueError("secret must not be empty")
            self._secret = self.secret
        self._env_headers = {
            name: env_value(var, f"headers_env.{name}") for name, var in self.headers_env.items()
        }
        return self

    @property
    def signing_secret(self) -> SecretStr:
        return self._secret

    def request_headers(self) -> dict[str, str]:
        """The configured extra headers, with environment-sourced values filled in."""
        return {**self.headers, **self._env_headers}

    def build(self, ctx: SinkContext) -> WebhookSink:
        return WebhookSink(self, client=ctx.http_client)


def _key(secret: Secret) -> bytes:
    if isinstance(secret, SecretStr):
        secret = secret.get_secret_value()
    return secret.encode() if isinstance(secret, str) else secret


def sign(secret: Secret, timestamp: str | int, body: bytes) -> str:
    """The ``X-Intake311-Signature`` value for a body sent at ``timestamp`` (unix seconds)."""
    mac = hmac.new(_key(secret), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_VERSION}={mac}"


def verify_signature(
    secret: Secret,
    timestamp: str | int | None,
    body: bytes,
    header: str | None,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """True if ``header`` signs ``body`` at ``timestamp`` and the timestamp is fresh.

    For receivers: pass the raw request body bytes (not re-serialised JSON). Accepts several
    comma-separated ``v1=`` values (secret rotation); compares in constant time; rejects
    timestamps more than ``tolerance_s`` away from ``now`` so captured requests cannot be replayed.
    """
    if timestamp is None or not header:
        return False
    stamp = str(timestamp).strip()
    if not stamp.isascii() or not stamp.isdigit():
        return False
    current = time.time() if now is None else now
    if abs(current - int(stamp)) > tolerance_s:
        return False
    expected = sign(secret, stamp, body).encode()
    valid = False
    for part in header.split(","):
        # Check every candidate: no early exit that would leak which one matched.
        valid |= hmac.compare_digest(part.strip().encode(), expected)
    return valid


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def body_for(request: ServiceRequest, *, department: str, delivery_id: str) -> bytes:
    payload = request_payload(request, department=department, delivery_id=delivery_id)
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


def _excerpt(text: str, limit: int = 200) -> str:
    return " ".join(text.split())[:limit]


class WebhookSink:
    """Posts to one URL. Uses the injected client if any (not closed here), else its own."""

    def __init__(
        self,
        config: WebhookSinkConfig,
        *,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = config.name
        self.config = config
        self._client = client
        self._owns_client = False
        self._clock = clock
        # For reasons and logs: query strings and user info often carry tokens.
        self._where = str(httpx.URL(config.url).copy_with(userinfo=b"", query=None, fragment=None))

    async def start(self) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(headers={"User-Agent": USER_AGENT})
            self._owns_client = True

    async def deliver(self, request: ServiceRequest, *, department: str, delivery_id: str) -> None:
        if self._client is None:
            await self.start()
        assert self._client is not None
        body = body_for(request, department=department, delivery_id=delivery_id)
        timestamp = str(int(self._clock()))
        headers = {
            "User-Agent": USER_AGENT,
            **self.config.request_headers(),
            "Content-Type": "application/json",
            HEADER_DELIVERY: delivery_id,
            HEADER_TIMESTAMP: timestamp,
            HEADER_SIGNATURE: sign(self.config.signing_secret, timestamp, body),
        }
        prefix = f"webhook {self.name!r} ({self._where})"
        try:
            response = await self._client.post(
                self.config.url,
                content=body,
                headers=headers,
                timeout=self.config.timeout_s,
                follow_redirects=False,
            )
        except httpx.TimeoutException as exc:
            raise DeliveryError(
                f"{prefix}: timed out after {self.config.timeout_s:g}s ({type(exc).__name__})"
            ) from exc
        except httpx.HTTPError as exc:
            raise DeliveryError(f"{prefix}: {type(exc).__name__}: {exc or 'request failed'}") from exc
        self._check(response, prefix)

    def _check(self, response: httpx.Response, prefix: str) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        detail = _excerpt(response.text)
        reason = f"{prefix}: HTTP {status}" + (f": {detail}" if detail else "")
        if status in _RETRYABLE_STATUS or status >= 500:
            retry_after = parse_retry_after(response.headers.get("Retry-After"), now=self._clock())
            if retry_after is not None:
                retry_after = min(retry_after, self.config.max_retry_after_s)
            raise DeliveryError(reason, retryable=True, retry_after_s=retry_after)
        if 300 <= status < 400:
            location = response.headers.get("Location", "?")
            reason = f"{prefix}: HTTP {status} redirect to {location[:200]}; configure the final URL"
        # Other 4xx: the receiver rejected this request or our credentials; retrying won't help.
        raise DeliveryError(reason, retryable=False)

    async def close(self) -> None:
        if self._owns_client and self._client is not None:
            await self._client.aclose()
            self._client = None
            self._owns_client = False


__all__ = [
    "HEADER_DELIVERY",
    "HEADER_SIGNATURE",
    "HEADER_TIMESTAMP",
    "WebhookSink",
    "WebhookSinkConfig",
    "body_for",
    "parse_retry_after",
    "sign",
    "verify_signature",
]
