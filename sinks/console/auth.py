"""Who is logged in to the console: accounts, password hashes, signed sessions and CSRF tokens.

Why signed cookies and not a session table: every web replica must accept every operator's
session with no host-local state, and a signature (itsdangerous, keyed by
``console.session_secret``) is all a replica needs to read one. Logging out records the session
as ended in the case store (``Sessions.key``), which every replica asks on each console request,
so a copied cookie dies with the logout; changing the secret ends every session at once.

Why a CSRF token although the cookie is ``SameSite=Strict``: old browsers and some proxies
ignore SameSite; a token in the session, echoed by every form, is what the OWASP cheat sheet
asks for. Passwords are argon2id hashes (argon2-cffi's defaults), never stored in clear.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as concurrent_futures
import contextlib
import hashlib
import hmac
import math
import os
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
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


LOGIN_NICE = 10  # how much lower than the web stage's own the login checks' CPU priority is


def _lower_priority() -> None:
    """Make the calling thread (and the argon2 lanes it starts) yield the CPU to the event loop.

    Linux keeps a nice value per thread: this one, a login checker, gets ``LOGIN_NICE`` more than
    the process, so while a hash runs on every core the residents' submissions still get the CPU
    first (raising one's own nice needs no privilege). Elsewhere it is a no-op.
    """
    with contextlib.suppress(AttributeError, OSError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + LOGIN_NICE)


@dataclass(frozen=True)
class LoginRefused:
    """Why a login attempt was not even checked: the status, the page's reason, when to retry."""

    status: int  # 429: too many failures from this address; 503: too many logins at once
    reason: str
    retry_after_s: int


class LoginGuard:
    """Checks console logins off the event loop, one at a time, and brakes password guessing.

    Why off the loop: an argon2id verification takes 50-300 ms of CPU on a 2-core VM (argon2-cffi's
    defaults; ~315 ms measured beside a benchmark), and the console lives in the web stage's
    process. Run on the loop, every login attempt, right or wrong, stopped the residents' Open311
    submissions for that long: a few wrong passwords a second were an outage of the 311 intake.
    Now the hash runs in a thread of its own (argon2 releases the GIL) at a lower CPU priority
    (``_lower_priority``), ``concurrent`` at a time, with at most ``max_waiting`` more queued;
    beyond that a login is refused at once with 503.

    Why a brake: a console on the city's network can be guessed at. After ``max_failures`` wrong
    logins from one client address within ``window_s``, that address is refused (429 with
    Retry-After) until its oldest failure in the window is ``window_s`` old; a successful login
    clears its count. Counted by address, not by account name, so nobody can lock an operator out
    by typing their name wrong on purpose. The counts are this process's own (each web host
    brakes its own clients; nothing shared to keep consistent), and at most ``max_clients``
    addresses are remembered (the ones with the oldest failure are forgotten first).
    """

    def __init__(
        self,
        *,
        max_failures: int = 10,
        window_s: float = 900.0,
        concurrent: int = 1,
        max_waiting: int = 16,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_waiting = max_waiting
        self.max_clients = max_clients
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()  # oldest failure first
        self._slots = asyncio.Semaphore(concurrent)
        self._waiting = 0
        self._checks = concurrent_futures.ThreadPoolExecutor(
            max_workers=concurrent, thread_name_prefix="console-login", initializer=_lower_priority
        )

    def retry_after(self, client: str) -> float | None:
        """Seconds until ``client`` may try again, or None when it may now."""
        failures = self._failures.get(client)
        if failures is None:
            return None
        cutoff = self._clock() - self.window_s
        while failures and failures[0] <= cutoff:
            failures.popleft()
        if not failures:
            del self._failures[client]
            return None
        if len(failures) < self.max_failures:
            return None
        return failures[-self.max_failures] + self.window_s - self._clock()

    def failed(self, client: str) -> None:
        """Count a wrong login from ``client``."""
        failures = self._failures.pop(client, None) or deque(maxlen=self.max_failures)
        failures.append(self._clock())
        self._failures[client] = failures  # the most recent failure last
        while len(self._failures) > self.max_clients:
            self._failures.popitem(last=False)

    def succeeded(self, client: str) -> None:
        """A right login from ``client``: its count starts again."""
        self._failures.pop(client, None)

    async def login(
        self, settings: Settings, client: str, name: str, password: str
    ) -> Identity | LoginRefused | None:
        """``authenticate`` for an attempt from ``client``: the identity, None (wrong), or a refusal."""
        if (wait := self.retry_after(client)) is not None:
            return self._too_many(wait)
        if self._waiting >= self.max_waiting:
            return LoginRefused(503, "Too many logins are being checked right now. Try again in a moment.", 5)
        self._waiting += 1
        try:
            async with self._slots:
                # Checked again: attempts from one address that queued together count in turn.
                if (wait := self.retry_after(client)) is not None:
                    return self._too_many(wait)
                loop = asyncio.get_running_loop()
                who = await loop.run_in_executor(self._checks, authenticate, settings, name, password)
                if who is None:
                    self.failed(client)
                else:
                    self.succeeded(client)
                return who
        finally:
            self._waiting -= 1

    def _too_many(self, wait_s: float) -> LoginRefused:
        minutes = max(1, math.ceil(wait_s / 60))
        return LoginRefused(
            429,
            f"Too many wrong logins from your address. Try again in {minutes} "
            f"minute{'s' if minutes > 1 else ''}.",
            max(1, math.ceil(wait_s)),
        )


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

    @staticmethod
    def key(identity: Identity) -> str:
        """The session's id where it is recorded as ended (a hash: the CSRF token stays secret).

        Each login draws a fresh CSRF token, so the token names the session.
        """
        return hashlib.sha256(b"intake311.console.session\x1f" + identity.csrf.encode()).hexdigest()

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
