"""Who is logged in to the console: accounts, password hashes, signed sessions and CSRF tokens.

Why signed cookies and not a session table: every web replica must accept every operator's
session with no host-local state, and a signature (itsdangerous, keyed by
``console.session_secret``) is all a replica needs. The cost: a session cannot be revoked one by
one before it expires (``console.session_hours``); changing the secret ends them all.

Why a CSRF token although the cookie is ``SameSite=Strict``: old browsers and some proxies
ignore SameSite; a token in the session, echoed by every form, is what the OWASP cheat sheet
asks for. Passwords are argon2id hashes (argon2-cffi's defaults), never stored in clear.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from typing import Any, Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, URLSafeTimedSerializer

from intake311.settings import Settings

COOKIE = "intake311_console"
_SALT = "intake311.console.session"
_hasher = PasswordHasher()
# Verified against when the name is unknown, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))

Role = Literal["operator", "department"]


def hash_password(password: str) -> str:
    """The argon2id hash to put under ``console.operators.<name>``."""
    if len(password) < 12:
        raise ValueError("a console password needs at least 12 characters")
    return _hasher.hash(password)


def _verify(hashed: str, password: str) -> bool:
    try:
        return _hasher.verify(hashed, password)
    except (VerificationError, InvalidHashError, UnicodeEncodeError):  # a lone surrogate: not a password
        return False


@dataclass(frozen=True)
class Identity:
    """A logged-in person: an operator (sees and does everything) or a department's staff
    (sees the requests routed to that department; changes their status, answers residents)."""

    role: Role
    name: str
    csrf: str

    @property
    def department(self) -> str | None:
        return self.name if self.role == "department" else None

    @property
    def is_operator(self) -> bool:
        return self.role == "operator"

    @property
    def source(self) -> str:
        """Who did it, as status changes and commands record it (``console:alice``)."""
        return f"console:{self.name}" if self.is_operator else f"console:{self.name}-staff"


def authenticate(settings: Settings, name: str, password: str) -> Identity | None:
    """The identity for a name and password (an operator's, or a department id and its token)."""
    name = name.strip()
    stored = settings.console.operators.get(name)
    if stored is not None:
        if _verify(stored.get_secret_value(), password):
            return Identity("operator", name, secrets.token_urlsafe(24))
        return None
    token = settings.department_tokens.get(name)
    if token is not None:
        offered = password.encode(errors="replace")  # a lone surrogate cannot match a token
        if password and hmac.compare_digest(offered, token.get_secret_value().encode()):
            return Identity("department", name, secrets.token_urlsafe(24))
        return None
    _verify(_DUMMY_HASH, password)
    return None


class Sessions:
    """Signs identities into cookie values and reads them back (expired or forged: None)."""

    def __init__(self, settings: Settings) -> None:
        secret = settings.console.session_secret
        if secret is None:
            raise ValueError(
                "console.session_secret is required for the operator console "
                "(INTAKE311_CONSOLE__SESSION_SECRET; at least 32 characters, the same on every web host)"
            )
        self._serializer = URLSafeTimedSerializer(secret.get_secret_value(), salt=_SALT)
        self.max_age_s = int(settings.console.session_hours * 3600)
        secure = settings.console.secure_cookie
        self.secure = secure if secure is not None else (settings.web.base_url or "").startswith("https:")
        self._settings = settings

    def dumps(self, identity: Identity) -> str:
        return self._serializer.dumps({"r": identity.role, "n": identity.name, "c": identity.csrf})

    def loads(self, value: str | None) -> Identity | None:
        if not value:
            return None
        try:
            data: Any = self._serializer.loads(value, max_age=self.max_age_s)
            identity = Identity(data["r"], data["n"], data["c"])
        except (BadSignature, KeyError, TypeError, ValueError):
            return None
        # An account removed from the settings loses its live sessions at once.
        known = self._settings.console.operators if identity.is_operator else self._settings.department_tokens
        return identity if identity.name in known else None


def csrf_ok(identity: Identity, submitted: str | None) -> bool:
    """The form's token is this session's (constant-time)."""
    return bool(submitted) and hmac.compare_digest(identity.csrf.encode(), (submitted or "").encode())
