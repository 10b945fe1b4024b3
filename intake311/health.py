"""Liveness and readiness of a stage, and the small HTTP server that serves them with /metrics.

``/health/live`` answers whenever the event loop does: a wedged process is restarted, nothing
else. ``/health/ready`` answers 503 with the reasons while the process cannot do its work: the
broker is unreachable or lost this process's topics (``BusWatch`` knows), a store it needs is
down, or one of its consumers has had no partition assignment for longer than a group needs to
settle. Readiness never restarts anything: a load balancer stops sending residents to a web
process that cannot promise tickets, and an operator sees *why* a consumer stage stalls.

Stages other than ``web`` serve no HTTP of their own, so ``serve_probes`` runs this app with
uvicorn inside the process's event loop (not prometheus_client's threaded server): the readiness
checks and the consumer-lag sampling are coroutines on the same loop as the consumers, and the
server stops with the process like every other task, without a thread left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from intake311.logging import get_logger
from intake311.metrics import CONTENT_TYPE_LATEST, Metrics

if TYPE_CHECKING:
    from intake311.bus import BusWatch

log = get_logger(__name__)

Check = Callable[[], Awaitable[str | None]]
"""A readiness check: None when fine, else the reason (one short sentence an operator can act on)."""

HEALTH_PATHS = (
    "/health/live",
    "/health/ready",
    "/healthz",
    "/metrics",
    "/health/channels",
    "/healthz/channels",
)


class Readiness:
    """The named checks a process is ready by; all must pass.

    Checks run concurrently, each bounded by ``timeout_s``: a store that hangs is a reason
    ("did not answer"), never a probe that hangs itself.
    """

    def __init__(self, timeout_s: float = 3.0) -> None:
        self.timeout_s = timeout_s
        self._checks: dict[str, Check] = {}

    def add(self, name: str, check: Check) -> None:
        self._checks[name] = check

    @property
    def names(self) -> list[str]:
        return list(self._checks)

    async def reasons(self) -> list[str]:
        """Why the process is not ready, one line per failing check ([] when ready)."""

        async def run(name: str, check: Check) -> str | None:
            try:
                reason = await asyncio.wait_for(check(), self.timeout_s)
            except TimeoutError:
                return f"{name}: did not answer within {self.timeout_s:g} s"
            except Exception as exc:
                return f"{name}: {type(exc).__name__}: {exc}"[:300]
            return f"{name}: {reason}" if reason else None

        results = await asyncio.gather(*(run(n, c) for n, c in self._checks.items()))
        return [r for r in results if r]


def broker_check(watch: BusWatch) -> Check:
    """Not ready while the watch has the broker unreachable, frozen, or without our topics."""

    async def check() -> str | None:
        if watch.ready.is_set():
            return None
        return "unreachable or lost this process's topics (recovering); nothing can be promised"

    return check


def consumers_check(
    subscribers: Callable[[], Iterable[Any]],
    settle_s: float,
    clock: Callable[[], float] = time.monotonic,
) -> Check:
    """Not ready when a consumer has had no partitions for longer than ``settle_s``.

    A rebalance empties every assignment for a moment, and a group's first join takes up to
    about a session timeout, so an empty assignment counts only once it has lasted ``settle_s``
    (measured from the first check that saw it). A consumer group with more members than
    partitions leaves some members idle on purpose: those report not ready too, which is the
    truth (they take no work) and harmless, since readiness restarts nothing.
    """
    empty_since: dict[str, float] = {}

    async def check() -> str | None:
        now = clock()
        idle = []
        current = set()
        for subscriber in subscribers():
            group = getattr(subscriber, "group_id", None) or "?"
            consumer = getattr(subscriber, "consumer", None)
            current.add(group)
            if consumer is not None and consumer.assignment():
                empty_since.pop(group, None)
                continue
            since = empty_since.setdefault(group, now)
            if now - since >= settle_s:
                idle.append(group)
        for gone in set(empty_since) - current:
            del empty_since[gone]
        if idle:
            return f"no partition assignment for {settle_s:g} s or more: {', '.join(sorted(idle))}"
        return None

    return check


def postgres_check(dsn: str, timeout_s: float = 2.0) -> Check:
    """A fresh connection and ``SELECT 1``: the database answers (in a thread, psycopg blocks)."""

    def ping() -> None:
        import psycopg

        with psycopg.connect(dsn, connect_timeout=max(1, int(timeout_s))) as conn:
            conn.execute("SELECT 1")

    async def check() -> str | None:
        try:
            await asyncio.to_thread(ping)
        except Exception as exc:
            return f"down ({type(exc).__name__})"
        return None

    return check


class Probes:
    """What the health and metrics routes answer from: one process's readiness and metrics."""

    def __init__(
        self,
        metrics: Metrics,
        readiness: Readiness,
        *,
        sample: Callable[[], Awaitable[None]] | None = None,
        channels: Callable[[], Awaitable[dict[str, Any]]] | None = None,
    ) -> None:
        self.metrics = metrics
        self.readiness = readiness
        self.sample = sample
        # The process's channel plugins' own checks (Twilio reachable, mailbox logged in…), which
        # ``intake311 channels`` asks the running process for: a fresh copy would prove nothing
        # about the poller that is actually stuck.
        self.channels = channels

    async def live(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(self, request: Request) -> Response:
        reasons = await self.readiness.reasons()
        if reasons:
            return JSONResponse({"status": "unavailable", "reasons": reasons}, status_code=503)
        return JSONResponse({"status": "ok", "reasons": []})

    async def scrape(self, request: Request) -> Response:
        if self.sample is not None:
            try:
                await self.sample()
            except Exception as exc:  # a failed sample leaves the last values; the counters still count
                log.warning("metrics sampling failed", error=f"{type(exc).__name__}: {exc}"[:300])
        return PlainTextResponse(self.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def channel_health(self, request: Request) -> Response:
        if self.channels is None:
            return JSONResponse({"error": "this process runs no channels"}, status_code=404)
        return JSONResponse(await self.channels())

    def routes(self) -> list[Route]:
        """``/health/live``, ``/health/ready``, ``/healthz`` (= ready, for older probes), ``/metrics``
        and ``/health/channels`` (``/healthz/channels``): each channel's health in this process."""
        return [
            Route("/health/live", self.live, methods=["GET"]),
            Route("/health/ready", self.ready, methods=["GET"]),
            Route("/healthz", self.ready, methods=["GET"]),
            Route("/metrics", self.scrape, methods=["GET"]),
            Route("/health/channels", self.channel_health, methods=["GET"]),
            Route("/healthz/channels", self.channel_health, methods=["GET"]),
        ]

    def app(self) -> Starlette:
        """The probe server of a stage without a web app."""
        return Starlette(routes=self.routes())


@contextlib.asynccontextmanager
async def serve_probes(app: Any, host: str, port: int) -> AsyncIterator[int]:
    """Serve ``app`` with uvicorn on the running loop until the block exits; yields the bound port.

    The socket is bound here, not by uvicorn: a taken port raises ``OSError`` to the caller (an
    operator who configured a metrics port expects it scraped, not a process that lives on
    without it), where uvicorn would ``sys.exit`` from inside a task. ``port=0``: a free port.
    """
    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restarted stage rebinds at once
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    bound = sock.getsockname()[1]
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    # The stage owns SIGINT/SIGTERM (pipeline.serve): uvicorn must not take them over.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve(sockets=[sock]), name="intake311-probes")
    try:
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        if task.done():
            await task  # raises what stopped it
            raise OSError(f"the probe server on {host}:{bound} stopped at start")
        log.info("serving /metrics and /health", host=host, port=bound)
        yield bound
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sock.close()
