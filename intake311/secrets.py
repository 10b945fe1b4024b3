"""Secrets in config: inline (``token: …``) or, preferred, from the environment (``token_env``).

Resolved when the config is validated, so a missing variable stops the process at start with a
message naming the field, instead of failing on the first resident's message.
"""

from __future__ import annotations

import os
import re
from typing import Any

from pydantic import SecretStr

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def env_value(var: str, what: str) -> str:
    """The value of environment variable ``var``; ``what`` names the config field in errors."""
    if not _ENV_NAME.match(var):
        raise ValueError(f"{what}: {var!r} is not an environment variable name")
    value = os.environ.get(var, "")
    if not value:
        raise ValueError(f"{what}: environment variable {var} is not set or is empty")
    return value


def resolve_secret(
    value: SecretStr | None, env: str | None, what: str, *, required: bool = True
) -> SecretStr | None:
    """``what`` from an inline secret or ``<what>_env``, never both; None only if not required."""
    if value is not None and env is not None:
        raise ValueError(f"give '{what}_env' (preferred) or '{what}', not both")
    if env is not None:
        return SecretStr(env_value(env, f"{what}_env"))
    if value is None:
        if required:
            raise ValueError(f"'{what}' or '{what}_env' is required")
        return None
    if not value.get_secret_value():
        raise ValueError(f"'{what}' is empty")
    return value


# --- keeping secrets out of logs -------------------------------------------------------------
#
# Webhook URLs carry their shared secret as a query parameter (Postmark ``?token=``, department
# webhooks, Open311 ``api_key=``), DSNs carry passwords, and an exception message quotes the URL
# it failed on. The log pipeline (intake311.logging) passes every event through ``redact`` as a
# last line of defence; the primary defence is never logging those values in the first place.

REDACTED = "***"

SECRET_FIELDS = frozenset(
    {
        "password",
        "passwd",
        "secret",
        "token",
        "api_key",
        "apikey",
        "auth_token",
        "access_token",
        "refresh_token",
        "authorization",
        "proxy_authorization",
        "cookie",
        "set_cookie",
        "signature",
        "x_twilio_signature",
        "x_slack_signature",
        "x_intake311_signature",
        "x_intake311_token",
        "signing_key",
        "signing_secret",
        "client_secret",
        "dsn",
    }
)
# Field names built on the above (``department_token``, ``slack_signing_secret``, ``case_store_dsn``).
_SECRET_SUFFIXES = ("_token", "_secret", "_password", "_signature", "_api_key", "_dsn")

# A query string: a '?' glued to a path or URL, up to whitespace, a quote or a fragment.
_QUERY = re.compile(r"(?<=[^\s?])\?([^\s\"'<>`#]+)")
# Credentials in a URL's authority: ``scheme://user:password@host``.
_USERINFO = re.compile(r"(//[^/\s:@\"'<>]*):([^@\s/\"'<>]+)@")


def is_secret_field(name: str) -> bool:
    """True for a field name that holds a credential (case- and ``-``/``_``-insensitive)."""
    key = name.strip().lower().replace("-", "_")
    return key in SECRET_FIELDS or key.endswith(_SECRET_SUFFIXES)


def _redact_query(match: re.Match[str]) -> str:
    parts = []
    for part in re.split(r"([&;])", match.group(1)):
        if part in ("&", ";", ""):
            parts.append(part)
        else:
            name, eq, _ = part.partition("=")
            # Every value goes, not only the known names: a city's webhook may call its token "k".
            parts.append(f"{name}={REDACTED}" if eq else REDACTED)
    return "?" + "".join(parts)


def redact_text(text: str) -> str:
    """``text`` with every URL query value and URL password replaced by ``***``.

    Keys stay (``?token=***&page=***``) so a log line still says which parameter was sent.
    """
    if "?" not in text and "@" not in text:
        return text  # the common case: no URL-ish content, no regex work
    return _QUERY.sub(_redact_query, _USERINFO.sub(rf"\1:{REDACTED}@", text))


def redact(value: Any, _depth: int = 0) -> Any:
    """``value`` with secrets removed: secret-named fields of mappings, query strings in text.

    Recurses into dicts, lists and tuples (to a bounded depth, so a cyclic structure cannot
    hang the logger); other objects are returned as they are, for the renderer to format.
    """
    if isinstance(value, str):
        return redact_text(value)
    if _depth > 8:
        return value
    if isinstance(value, dict):
        return {
            k: (REDACTED if isinstance(k, str) and is_secret_field(k) else redact(v, _depth + 1))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v, _depth + 1) for v in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):  # a namedtuple keeps its type
        return tuple(redact(v, _depth + 1) for v in value)
    return value


# --- residents' personal data and provider tokens, found by value ----------------------------
#
# Key names catch ``password=…``; they cannot catch a phone number in a resident's free text
# ("call me at (203) 555-0143"), an email address in an exception message, or a Twilio Account
# SID inside the REST URL the SDK failed on. These are found in the value itself, so whatever
# field (or nested dict/list) they travel in, at whatever level, they are masked.

# Twilio SIDs: Account (AC), API key (SK), messaging service (MG), number (PN), message (SM/MM),
# call (CA), recording (RE): a two-letter prefix and 32 hex digits. The prefix stays, so a line
# still says which kind of object it was about.
_TWILIO_SID = re.compile(r"\b(AC|SK|MG|PN|SM|MM|CA|RE)[0-9a-fA-F]{32}\b")
# ``Authorization: Bearer …`` / ``Basic …`` quoted in a message or a header dump.
_AUTH_SCHEME = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")
_EMAIL = re.compile(r"(?<![\w.+-])([A-Za-z0-9][\w.+-]*)@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)")
# Seven digits at least, whatever separates them: cheap pre-check before the phone matcher.
_MANY_DIGITS = re.compile(r"(?:\d\D{0,3}){7}")
# A bare ISO date/time (every line's ``timestamp``): never a phone number, and the matcher
# costs ~60 us a string, which every log line would pay.
_ISO_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}(?:[T ][\d:.]+)?(?:Z|[+-]\d{2}:?\d{2})?")


def _mask_phones(text: str) -> str:
    """Every phone number ``phonenumbers`` finds (US region: a city's residents), last 2 digits kept.

    The library's VALID leniency only matches numbers a carrier could assign, so dates,
    ticket numbers, offsets and house numbers ("45 Elm Street") are left as they are.
    """
    import phonenumbers

    if not _MANY_DIGITS.search(text) or _ISO_DATETIME.fullmatch(text):
        return text
    pieces: list[str] = []
    end = 0
    for match in phonenumbers.PhoneNumberMatcher(text, "US"):
        digits = [c for c in match.raw_string if c.isdigit()]
        pieces += [text[end : match.start], "***" + "".join(digits[-2:])]
        end = match.end
    return "".join(pieces) + text[end:] if pieces else text


def mask_pii_text(text: str) -> str:
    """``text`` with provider tokens, auth credentials, emails and phone numbers masked.

    Tokens first, so the matcher never sees (or half-masks) the digits inside a SID. An email
    keeps its first letter and domain, a phone number its last two digits, like
    ``schemas.contact.mask``: enough to tell two residents apart in a log, no more.
    """
    text = _TWILIO_SID.sub(lambda m: f"{m.group(1)}{REDACTED}", text)
    text = _AUTH_SCHEME.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    if "@" in text:
        text = _EMAIL.sub(lambda m: f"{m.group(1)[:1]}{REDACTED}@{m.group(2)}", text)
    return _mask_phones(text)


def mask_pii(value: Any, _depth: int = 0) -> Any:
    """``value`` with ``mask_pii_text`` applied to every string in it (dict values, lists, tuples)."""
    if isinstance(value, str):
        return mask_pii_text(value)
    if _depth > 8:
        return value
    if isinstance(value, dict):
        return {k: mask_pii(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_pii(v, _depth + 1) for v in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(mask_pii(v, _depth + 1) for v in value)
    return value
