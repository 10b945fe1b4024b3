"""Refusing early under overload: a few submissions in progress, a short wait, then a quick 503.

Why: a POST that is accepted holds the event loop's time in many small turns (the form, the
recent-submission claim, the publish and its acknowledgement, the broker check, the local
record). When more arrive than the process can finish, every one of them slows down together:
at 500/s offered against ~300/s of capacity the stage took every connection and answered almost
none within the clients' 20 s, and its own broker check, starved on the same loop, then called a
healthy broker "not answering". Refusing costs ~50 µs, says so clearly (503, ``Retry-After``, a
reason, nothing published), and keeps the accepted ones about as fast as an unloaded process
answers them.

Why a wait and not only a limit: refusing the moment the limit is reached turns a burst (or a
client with more connections than the limit) into a storm of instant 503s and instant retries,
which costs more than it saves (measured: 50 closed-loop connections against a limit of 24 gave
a third of the throughput). A submission beyond the limit waits for a slot, first come first
served, but never longer than ``max_wait_s``: that is the queue-time check, and what bounds an
accepted submission's time to about ``max_wait_s`` plus its own work however large the overload.

The gate counts submissions, not connections (uvicorn's ``limit_concurrency``, the
``web.max_concurrency`` setting, counts every request and connection, GETs and health probes
too, and refuses without a reason a client can show). Only the accept paths are gated: a
resident's ticket lookup or a load balancer's probe is never turned away because submissions
are queueing.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from typing import Any

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from intake311.logging import get_logger

log = get_logger("channels.web")

RETRY_AFTER_S = 1  # a refused submission is retried by apps at once or by the resident pressing Send


Refusal = Callable[[Scope, str], Response]
"""The 503 for a refused POST to ``scope["path"]``, in that path's format, saying ``reason``."""


class AcceptGate:
    """ASGI middleware: at most ``limit`` POSTs to ``gated`` paths in progress, ``max_queue``
    more waiting up to ``max_wait_s`` each for a slot; anything else is refused with a 503.

    ``refuse(scope, reason)`` renders the refusal in the path's own format (Open311's error
    list, the resident form page); the gate adds ``Retry-After``. A slot that frees is handed to
    the oldest waiter still waiting. Refusals are counted and logged at most once per
    ``log_every_s`` (a line per refusal would be the overload's own cost). ``limit=None``: no
    gate.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        limit: int | None,
        gated: Callable[[str], bool],
        refuse: Refusal,
        max_wait_s: float = 0.1,
        max_queue: int | None = None,
        log_every_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.limit = limit
        self.gated = gated
        self.refuse = refuse
        self.max_wait_s = max_wait_s
        # Beyond this many waiting, nobody could be served within max_wait_s anyway.
        self.max_queue = max_queue if max_queue is not None else 4 * (limit or 0)
        self.in_flight = 0
        self.refused = 0
        self._waiters: collections.deque[asyncio.Future[bool]] = collections.deque()
        self._log_every_s = log_every_s
        self._clock = clock
        self._logged_at: float | None = None  # the first refusal is logged at once
        self._unlogged = 0

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.limit is None
            or scope["type"] != "http"
            or scope["method"] != "POST"
            or not self.gated(scope["path"])
        ):
            await self.app(scope, receive, send)
            return
        reason = await self._enter(self.limit)
        if reason is not None:
            self._count_refusal()
            refusal = self.refuse(scope, f"{reason}; nothing was created: please retry in {RETRY_AFTER_S} s")
            refusal.headers["Retry-After"] = str(RETRY_AFTER_S)
            await refusal(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self._leave()

    async def _enter(self, limit: int) -> str | None:
        """Take a slot (None), or say why not."""
        if self.in_flight < limit and not self._waiters:
            self.in_flight += 1
            return None
        if len(self._waiters) >= self.max_queue:
            return f"this server is busy ({self.in_flight} submissions in progress, {self.waiting} waiting)"
        loop = asyncio.get_running_loop()
        turn: asyncio.Future[bool] = loop.create_future()
        self._waiters.append(turn)
        expiry = loop.call_later(self.max_wait_s, self._expire, turn)
        try:
            handed = await turn
        except BaseException:  # cancelled while waiting: a slot handed over meanwhile passes on
            if turn.done() and not turn.cancelled() and turn.result():
                self._leave()
            elif turn in self._waiters:
                self._waiters.remove(turn)
            raise
        finally:
            expiry.cancel()
        if handed:
            return None  # the slot of the submission that finished passed to this one
        return (
            f"this server is busy: no submission slot freed within {self.max_wait_s * 1000:.0f} ms"
            f" ({self.in_flight} in progress)"
        )

    def _expire(self, turn: asyncio.Future[bool]) -> None:
        if not turn.done():
            turn.set_result(False)
            self._waiters.remove(turn)

    def _leave(self) -> None:
        while self._waiters:
            turn = self._waiters.popleft()
            if not turn.done():
                turn.set_result(True)  # in_flight unchanged: the slot changes hands
                return
        self.in_flight -= 1

    def _count_refusal(self) -> None:
        self.refused += 1
        self._unlogged += 1
        now = self._clock()
        last = self._logged_at
        if last is None or now - last >= self._log_every_s:
            since = {} if last is None else {"since_s": round(now - last)}
            log.warning(
                "busy: submissions refused with 503", refused=self._unlogged, limit=self.limit, **since
            )
            self._logged_at, self._unlogged = now, 0


def gate_of(app: Any) -> AcceptGate | None:
    """The ``AcceptGate`` of the web app (``WebApp.gate``) or of a built Starlette/FastAPI
    middleware stack, if any (tests, metrics)."""
    gate = getattr(app, "gate", None)
    if isinstance(gate, AcceptGate):
        return gate
    layer = getattr(app, "middleware_stack", None)
    while layer is not None:
        if isinstance(layer, AcceptGate):
            return layer
        layer = getattr(layer, "app", None)
    return None
