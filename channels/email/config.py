"""The email channel's configuration: which ways in are on, and where acknowledgements go out.

Every way in (SMTP listener, IMAP poller, Mailgun and Postmark webhooks) is optional, because
cities run mail differently; at least one must be on. Secrets are ``SecretStr`` and can come
from environment variables (``*_env``) so they stay out of YAML files.
"""

from __future__ import annotations

import email.utils
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, field_validator, model_validator

from channels.plugin import ChannelConfig
from intake311.secrets import resolve_secret

_DOMAIN = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9-]{1,63})*$")
_SECURITY_PORTS = {"ssl": (993, 465), "starttls": (143, 587), "none": (143, 25)}

MB = 1024 * 1024


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def check_address(value: str, what: str) -> str:
    """A bare ``local@domain`` address, lowercased (mail systems compare domains case-blind)."""
    if "\r" in value or "\n" in value:
        raise ValueError(f"{what} must not contain line breaks")
    _, addr = email.utils.parseaddr(value)
    local, at, domain = addr.rpartition("@")
    if not at or not local or not _DOMAIN.match(domain):
        raise ValueError(f"{what} {value!r} is not an email address")
    return f"{local}@{domain.lower()}"


class SmtpListenerConfig(_Section):
    """The SMTP listener a city's MX (or relay) delivers the 311 mailbox to."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=2525, ge=0, le=65535, description="0: any free port (tests)")
    hostname: str | None = Field(default=None, description="name in the banner; default: the machine's")
    tls_cert_file: Path | None = Field(default=None, description="offer STARTTLS with this certificate")
    tls_key_file: Path | None = None
    max_recipients: int = Field(default=20, ge=1)
    timeout_s: float = Field(default=300, gt=0)

    @model_validator(mode="after")
    def _tls_pair(self) -> SmtpListenerConfig:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        return self


class ImapConfig(_Section):
    """An existing mailbox polled over IMAP; a UID checkpoint under data_dir survives restarts."""

    enabled: bool = True
    host: str = Field(min_length=1)
    port: int | None = Field(default=None, ge=1, le=65535, description="default 993 (ssl) or 143")
    security: Literal["ssl", "starttls", "none"] = "ssl"
    username: str = Field(min_length=1)
    password: SecretStr | None = None
    password_env: str | None = None
    folder: str = "INBOX"
    poll_interval_s: float = Field(default=60, gt=0)
    batch: int = Field(default=50, ge=1, le=1000, description="messages fetched per IMAP session")
    first_run: Literal["new", "all"] = Field(
        default="new", description="with no checkpoint yet: skip the mailbox's old mail, or read it all"
    )
    timeout_s: float = Field(default=30, gt=0)

    _password: SecretStr | None = PrivateAttr(default=None)

    @field_validator("folder")
    @classmethod
    def _folder(cls, value: str) -> str:
        if not value or any(c in value for c in '\r\n"\\') or not value.isascii():
            raise ValueError("folder must be a non-empty ASCII mailbox name without quotes")
        return value

    @model_validator(mode="after")
    def _resolve(self) -> ImapConfig:
        self._password = resolve_secret(self.password, self.password_env, "password", required=True)
        return self

    @property
    def imap_port(self) -> int:
        return self.port or _SECURITY_PORTS[self.security][0]

    @property
    def secret(self) -> SecretStr:
        assert self._password is not None
        return self._password


class MailgunConfig(_Section):
    """Mailgun inbound routes (``forward("https://…/channels/email/mailgun")``)."""

    enabled: bool = True
    signing_key: SecretStr | None = None
    signing_key_env: str | None = None
    max_age_s: int = Field(
        default=900, ge=30, description="older timestamps are refused as stale (and never retried)"
    )

    _key: SecretStr | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _resolve(self) -> MailgunConfig:
        self._key = resolve_secret(self.signing_key, self.signing_key_env, "signing_key", required=True)
        return self

    @property
    def key(self) -> bytes:
        assert self._key is not None
        return self._key.get_secret_value().encode()


class PostmarkConfig(_Section):
    """Postmark inbound webhook. Postmark does not sign, so the URL carries a secret.

    Give ``token`` (sent as ``?token=…`` or an ``X-Intake311-Token`` header) and/or
    ``username``+``password`` (HTTP basic auth, ``https://user:pass@host/…`` in Postmark).
    """

    enabled: bool = True
    token: SecretStr | None = None
    token_env: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    password_env: str | None = None

    _token: SecretStr | None = PrivateAttr(default=None)
    _password: SecretStr | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _resolve(self) -> PostmarkConfig:
        self._token = resolve_secret(self.token, self.token_env, "token", required=False)
        self._password = resolve_secret(self.password, self.password_env, "password", required=False)
        if (self.username is None) != (self._password is None):
            raise ValueError("'username' and a password ('password_env' or 'password') go together")
        if self._token is None and self.username is None:
            raise ValueError("Postmark does not sign requests: set 'token' and/or 'username'+'password'")
        if self._token is not None and len(self._token.get_secret_value()) < 16:
            raise ValueError("token must be at least 16 characters")
        return self

    @property
    def expected_token(self) -> str | None:
        return self._token.get_secret_value() if self._token else None

    @property
    def expected_password(self) -> str | None:
        return self._password.get_secret_value() if self._password else None


class RelayConfig(_Section):
    """The SMTP relay acknowledgements are sent through (``aiosmtplib``)."""

    host: str = Field(min_length=1)
    port: int | None = Field(default=None, ge=1, le=65535, description="default 587/465/25 by security")
    security: Literal["starttls", "ssl", "none"] = "starttls"
    validate_certs: bool = True
    username: str | None = None
    password: SecretStr | None = None
    password_env: str | None = None
    timeout_s: float = Field(default=30, gt=0, le=300)

    _password: SecretStr | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _resolve(self) -> RelayConfig:
        self._password = resolve_secret(self.password, self.password_env, "password", required=False)
        if (self.username is None) != (self._password is None):
            raise ValueError("'username' and a password ('password_env' or 'password') go together")
        return self

    @property
    def smtp_port(self) -> int:
        return self.port or _SECURITY_PORTS[self.security][1]

    @property
    def secret(self) -> str | None:
        return self._password.get_secret_value() if self._password else None


class MediaConfig(_Section):
    """Where image attachments go: the filesystem store under data_dir/media/ unless ``store``."""

    max_bytes: int = Field(default=10 * MB, ge=1024, description="larger images are dropped")
    max_per_message: int = Field(default=5, ge=0)
    base_url: str | None = Field(
        default=None, description="public URL the media route is reached at; default web.base_url"
    )
    store: str | None = Field(
        default=None, description="'package.module:factory' called with (config, context) -> MediaStore"
    )

    @field_validator("store")
    @classmethod
    def _target(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[\w.]+:\w+$", value):
            raise ValueError("store must look like 'package.module:factory'")
        return value


class EmailConfig(ChannelConfig):
    """Settings of the ``email`` channel (``channels: {email: {...}}``)."""

    addresses: list[str] = Field(min_length=1, description="the 311 addresses we accept mail for")
    from_address: str | None = Field(
        default=None, description="From of acknowledgements; default addresses[0]"
    )
    from_name: str = "311"
    domain: str | None = Field(
        default=None, description="right side of our Message-IDs; default from_address's"
    )
    max_message_bytes: int = Field(default=25 * MB, ge=10_000, description="bigger mail is refused (552)")
    smtp: SmtpListenerConfig | None = None
    imap: ImapConfig | None = None
    mailgun: MailgunConfig | None = None
    postmark: PostmarkConfig | None = None
    relay: RelayConfig | None = None
    acknowledge: bool = Field(default=True, description="email the resident their ticket number")
    ack_limit_per_hour: int = Field(default=5, ge=0, description="acknowledgements per sender per hour")
    media: MediaConfig = MediaConfig()

    @field_validator("addresses")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(check_address(v, "addresses") for v in value))

    @field_validator("from_address")
    @classmethod
    def _from(cls, value: str | None) -> str | None:
        return check_address(value, "from_address") if value is not None else None

    @field_validator("from_name")
    @classmethod
    def _from_name(cls, value: str) -> str:
        if "\r" in value or "\n" in value:
            raise ValueError("from_name must not contain line breaks")
        return value

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str | None) -> str | None:
        if value is not None and not _DOMAIN.match(value):
            raise ValueError(f"domain {value!r} is not a domain name")
        return value.lower() if value else None

    @model_validator(mode="after")
    def _ways_in(self) -> EmailConfig:
        if not any(
            way is not None and way.enabled for way in (self.smtp, self.imap, self.mailgun, self.postmark)
        ):
            raise ValueError("no way in is enabled: configure at least one of smtp, imap, mailgun, postmark")
        if self.acknowledge and self.relay is None:
            raise ValueError("acknowledge: true needs a 'relay' to send through (or set acknowledge: false)")
        return self

    @property
    def sender(self) -> str:
        """The From address of what we send."""
        return self.from_address or self.addresses[0]

    @property
    def message_domain(self) -> str:
        """The domain our Message-IDs end in: replies that reference it continue a request."""
        return self.domain or self.sender.rpartition("@")[2]

    def is_ours(self, address: str | None) -> bool:
        """True for one of our addresses, also with a ``+tag`` (``311+potholes@city.gov``)."""
        if not address:
            return False
        local, _, domain = address.strip().strip("<>").rpartition("@")
        base = local.split("+", 1)[0]
        candidate = f"{base}@{domain}".lower()
        return candidate in {a.lower() for a in self.addresses} or candidate == self.sender.lower()
